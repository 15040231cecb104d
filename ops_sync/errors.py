"""The ops center's and the sync agent's exceptions, one tree. Status codes live only in
`ops_sync.server` (and the client maps them back by `reason`, the class name).

    SyncError
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
    ├── BadRequest             the request body or a parameter is wrong (names which)
    │   └── PayloadTooLarge
    ├── NotFound               no such publish, edge or pipeline
    ├── Conflict               the name is taken
    ├── StoreError             metadata or log files cannot be written
    └── Unreachable            the ops center did not answer (retryable)
"""

from __future__ import annotations

from edge.errors import ConfigError


class SyncError(Exception):
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


class BadRequest(SyncError):
    """The request body or a parameter is wrong; the message names which."""


class PayloadTooLarge(BadRequest):
    """The request body is larger than the server accepts."""


class NotFound(SyncError):
    """No such publish, edge or pipeline."""


class Conflict(SyncError):
    """The name is already taken by an enrolled edge."""


class StoreError(SyncError):
    """The metadata database or the log files cannot be written."""


class Unreachable(SyncError):
    """The ops center did not answer (refused, reset, timed out); retry later."""


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
        NotFound,
        Conflict,
        StoreError,
    )
}
