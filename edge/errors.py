"""The appliance's exceptions, one tree. Status codes live only in the servers' mapping tables.

EdgeError
├── ConfigError            bad settings or bundle at start-up (names the variable and the fix)
├── SpecError              a pipeline spec file a person wrote is invalid (names the field)
├── ArtifactError          a published artifact is unusable (names the layer digest)
│   ├── DigestMismatch     a pulled blob's sha256 differs from the manifest
│   ├── SignatureError     unsigned, or not signed for this digest by a verify key: retried
│   └── RuntimeNotInstalled  a model's runtime is not in this image (no retry fixes it)
├── RegistryError          talking to the OCI registry or layout failed
│   ├── RegistryUnreachable
│   ├── RegistryAuthError
│   ├── NotPublished       the reference does not exist
│   └── NoCachedCopy       the pull failed and nothing is cached (first start): retried
├── RequestError           the client sent something we cannot use (a 4xx)
│   ├── BadInput           body, column or value is wrong (names the column)
│   ├── UnsupportedMediaType
│   ├── NotAcceptable
│   ├── PayloadTooLarge
│   ├── RequestTimeout     the body took too long to arrive
│   └── NotFound           unknown pipeline or route
├── PipelineError          a step failed on valid input (names the step): a 5xx
├── NotReady               the pipeline is not loaded yet (the only 503)
└── LogBufferError         the inference log buffer cannot take or read rows
    ├── LogBufferFull      its writer's queue is full: nothing was journaled, retry shortly
    ├── LogBufferDiskFull  the disk or quota under its journal or SQLite file is full
    └── NotALogBuffer      the file at its path is something else (set aside at start)
"""

from __future__ import annotations


class EdgeError(Exception):
    """Base of every error the appliance raises on purpose."""


class ConfigError(EdgeError):
    """Settings, environment or bundle are invalid; raised before serving."""


class SpecError(EdgeError):
    """A pipeline spec file is invalid; the message names the field."""


class ArtifactError(EdgeError):
    """A published pipeline artifact cannot be used."""


class DigestMismatch(ArtifactError):
    """A blob's content does not match the digest the manifest promises."""


class SignatureError(ArtifactError):
    """PIPELINE_VERIFY_KEYS are set and the pipeline's signature is missing, by another key,
    or for another digest or reference; nothing is loaded (retried: a re-push may fix it)."""


class RuntimeNotInstalled(ArtifactError):
    """A model needs a runtime this installation lacks: the start ends (no retry fixes it)."""


class RegistryError(EdgeError):
    """The registry (or local layout) refused or failed a request."""


class RegistryUnreachable(RegistryError):
    """The registry did not answer (connection refused, DNS, timeout)."""


class RegistryAuthError(RegistryError):
    """The registry refused our credentials."""


class NotPublished(RegistryError):
    """The pipeline reference does not exist in the registry or layout."""


class NoCachedCopy(RegistryError):
    """The pull failed and the persist directory has no copy to serve (a first start); the
    appliance keeps retrying (a device often boots before its network)."""


class RequestError(EdgeError):
    """Something in the client's request is wrong."""


class BadInput(RequestError):
    """The request body, a column or a value cannot be used; says which."""


class UnsupportedMediaType(RequestError):
    """The Content-Type is not one we read."""


class NotAcceptable(RequestError):
    """The Accept header asks for a format we do not write."""


class PayloadTooLarge(RequestError):
    """The request body exceeds the configured limit."""


class RequestTimeout(RequestError):
    """The client took too long to send the request body."""


class NotFound(RequestError):
    """No such pipeline (or resource)."""


class PipelineError(EdgeError):
    """A step failed on input that passed validation (model or user code error)."""

    def __init__(self, message: str, step: str | None = None) -> None:
        super().__init__(f"step {step!r}: {message}" if step else message)
        self.step = step


class NotReady(EdgeError):
    """The pipeline is still loading (or failed to load); try again later."""


class LogBufferError(EdgeError):
    """The inference log buffer cannot store rows (disk full, corrupt, closed)."""


class LogBufferFull(LogBufferError):
    """The writer's queue is full (backpressure): nothing was stored; retry shortly."""


class LogBufferDiskFull(LogBufferError):
    """The journal or SQLite could not grow its file (disk or quota full)."""


class NotALogBuffer(LogBufferError):
    """The file at the buffer's path is a SQLite file of something else."""
