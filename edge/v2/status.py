"""The Open Inference Protocol's one status table: each error class to its HTTP status and
its gRPC status code (by name), walked along the error's MRO (`edge.httpio.ErrorMapping`).
REST answers `{"error": "<message>"}` with the HTTP status, gRPC aborts with the code.
The codes are the appliance's own (`edge.server.STATUS`); only the error body differs.
"""

from __future__ import annotations

from edge.errors import (
    EdgeError,
    LogBufferDiskFull,
    LogBufferError,
    LogBufferFull,
    NotFound,
    NotReady,
    PayloadTooLarge,
    PipelineError,
    RequestError,
    RequestTimeout,
    UnsupportedMediaType,
)
from edge.httpio import ErrorMapping


class MethodNotAllowed(RequestError):
    """A protocol route asked with the wrong HTTP method."""


class UnsupportedEncoding(UnsupportedMediaType):
    """A request body in a Content-Encoding the appliance does not read."""


V2_STATUS = ErrorMapping(
    {
        NotFound: (404, "NOT_FOUND"),
        MethodNotAllowed: (405, "UNIMPLEMENTED"),
        UnsupportedMediaType: (415, "INVALID_ARGUMENT"),
        PayloadTooLarge: (413, "RESOURCE_EXHAUSTED"),
        RequestTimeout: (408, "DEADLINE_EXCEEDED"),
        RequestError: (400, "INVALID_ARGUMENT"),
        NotReady: (503, "UNAVAILABLE"),
        LogBufferFull: (503, "UNAVAILABLE"),  # transient: retry
        LogBufferDiskFull: (507, "RESOURCE_EXHAUSTED"),
        LogBufferError: (500, "INTERNAL"),
        PipelineError: (500, "INTERNAL"),
        EdgeError: (500, "INTERNAL"),
    }
)
