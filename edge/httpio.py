"""Request and response helpers both HTTP servers use (the appliance and the ops center).
No status codes here: oversize bodies raise the caller's own error class."""

from __future__ import annotations

from collections.abc import Callable

from starlette.requests import Request

from edge.errors import PayloadTooLarge


async def read_body(
    request: Request, limit: int, too_large: Callable[[str], Exception] = PayloadTooLarge
) -> bytes:
    """The request body, refused with `too_large` past `limit` bytes (before reading any of it
    when Content-Length says so). The ops center uses it with its own error class."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large(f"request body of {declared} bytes exceeds the limit of {limit}")
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large(f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def header_text(text: str) -> str:
    """A header value: latin-1 only, no line breaks (column names may be any Unicode)."""
    return text.encode("ascii", "backslashreplace").decode().replace("\r", " ").replace("\n", " ")
