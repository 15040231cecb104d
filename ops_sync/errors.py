"""The ops center's and the sync agent's exceptions, one tree under the appliance's
`edge.errors.EdgeError` (ops_sync builds on edge; edge never imports ops_sync). Status codes live
only in `ops_sync.server`'s mapping (and the client maps them back by `reason`, a class name).

    SyncError                  (an edge.errors.EdgeError)
    ├── BundleError            EDGE_BUNDLE cannot be read (also an `edge.errors.ConfigError`)
    ├── IdentityError          a key, certificate or CSR is unusable
    ├── Refused                the ops center said no; retrying will not help
    │   ├── AdminAuthRequired  no or wrong admin token
    │   ├── CertificateRequired  an edge call without a client certificate of ours
    │   ├── TokenUnknown       no such join token (mistyped, or never minted here)
    │   ├── TokenUsed          the join token was already redeemed (replay)
    │   ├── TokenExpired       the join token is older than 24 h (the attempt consumed it)
    │   ├── EdgeRemoved        the edge was removed: its token and certificates are revoked
    │   └── CredentialsExpired the edge was silent for more than 7 days, or its cert expired
    ├── BadRequest             the request body or a parameter is wrong (an edge BadInput)
    │   ├── PayloadTooLarge    (an edge PayloadTooLarge)
    │   └── UnsupportedCoding  a batch's Content-Encoding is not read (an edge UnsupportedMediaType)
    ├── NotFound               no such publish, edge or pipeline (an edge NotFound)
    ├── Conflict               the name is taken
    ├── StoreError             metadata or log files cannot be written
    └── Unreachable            the ops center did not answer (retryable)
"""

from __future__ import annotations

from edge import errors as edge_errors
from edge.errors import ConfigError, EdgeError


class SyncError(EdgeError):
    """Base of every error the ops center or the sync agent raises on purpose."""


class BundleError(SyncError, ConfigError):
    """The EDGE_BUNDLE is malformed; the message says what and never holds the token."""


class IdentityError(SyncError):
    """A key, certificate or CSR cannot be used."""


class Refused(SyncError):
    """The ops center refused the call for a reason retrying will not change."""


class AdminAuthRequired(Refused):
    """The admin API needs `Authorization: Bearer <admin token>`, and this one is wrong."""


class CertificateRequired(Refused):
    """Edge calls need a client certificate issued by this ops center."""


class TokenUnknown(Refused):
    """The join token is not one this ops center minted."""


class TokenUsed(Refused):
    """The join token was already redeemed; tokens are one-time."""


class TokenExpired(Refused):
    """The join token is more than 24 h old; this attempt consumed it."""


class EdgeRemoved(Refused):
    """The edge was removed; its token and certificates no longer work."""


class CredentialsExpired(Refused):
    """The edge's credentials expired (silent more than 7 days); a new bundle is needed."""


class BadRequest(SyncError, edge_errors.BadInput):
    """The request body or a parameter is wrong; the message names which."""


class PayloadTooLarge(BadRequest, edge_errors.PayloadTooLarge):
    """The request body is larger than the server accepts."""


class UnsupportedCoding(BadRequest, edge_errors.UnsupportedMediaType):
    """A batch's Content-Encoding is not one the ops center reads (the agent falls back)."""


class NotFound(SyncError, edge_errors.NotFound):
    """No such publish, edge or pipeline."""


class Conflict(SyncError):
    """The name is already taken by an enrolled edge."""


class StoreError(SyncError):
    """The metadata database or the log files cannot be written."""


class Unreachable(SyncError):
    """The ops center did not answer (refused, reset, timed out); retry later."""


class RequestTimeout(BadRequest, edge_errors.RequestTimeout):
    """The client took too long to send the request body."""


REFUSALS: dict[str, type[SyncError]] = {
    cls.__name__: cls
    for cls in (
        AdminAuthRequired,
        CertificateRequired,
        TokenUnknown,
        TokenUsed,
        TokenExpired,
        EdgeRemoved,
        CredentialsExpired,
        BadRequest,
        PayloadTooLarge,
        UnsupportedCoding,
        RequestTimeout,
        NotFound,
        Conflict,
        StoreError,
    )
}


def reason(exc: BaseException) -> str:
    """The `reason` an error reply names: the most specific class of `exc` the client knows
    (an appliance error raised inside the ops center names its ops_sync counterpart)."""
    for kind in type(exc).__mro__:
        if kind.__name__ in REFUSALS:
            return kind.__name__
        if kind is edge_errors.RequestError:  # BadInput and the like: the client's BadRequest
            return BadRequest.__name__
    return "InternalError"
