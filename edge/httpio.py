"""What both HTTP servers (the appliance and the ops center) do alike at their edge.

- `ErrorMapping`: each server's one table from exception class to HTTP status, looked up along
  the exception's MRO (as Starlette looks up its handlers), so a subclass is never shadowed by
  a base listed before it. Only the servers' mapping tables know status codes.
- `guarded`: a route whose every exception is answered once by the server's error body (an
  exception that is not ours is a bug: a 500, logged once with its traceback).
- `read_body`: a request body, bounded in size and in the time the client takes to send it.
- `parse_json`: JSON from the network that can only fail with the caller's own 4xx error.
- `header_text`: a safe header value.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from edge.errors import BadInput, PayloadTooLarge, RequestTimeout

log = logging.getLogger(__name__)

BODY_TIMEOUT = 30.0  # seconds a client may take to send a body (a dripping client is refused)


class ErrorMapping:
    """Exception class -> (status, source), walked along `type(exc).__mro__`."""

    def __init__(self, table: Mapping[type[BaseException], tuple[int, str]]) -> None:
        self._table = dict(table)

    def lookup(self, exc: BaseException) -> tuple[int, str] | None:
        """(status, source) of the nearest mapped class, or None: not one of ours (a bug)."""
        for kind in type(exc).__mro__:
            found = self._table.get(kind)
            if found is not None:
                return found
        return None

    def status(self, exc: BaseException) -> int:
        found = self.lookup(exc)
        return 500 if found is None else found[0]

    def classes(self) -> list[type[BaseException]]:
        return list(self._table)


Endpoint = Callable[[Request], Awaitable[Response]]


def guarded(endpoint: Endpoint, answer: Callable[[Request, Exception], Response]) -> Endpoint:
    """`endpoint`, with every exception it raises answered by `answer` (the server's error
    body). Answered here rather than by Starlette's `Exception` handler, which re-raises
    after answering (uvicorn would log an unexpected error a second time)."""

    async def route(request: Request) -> Response:
        try:
            return await endpoint(request)
        except Exception as exc:
            return answer(request, exc)

    route.__name__ = getattr(endpoint, "__name__", "route")
    route.__doc__ = endpoint.__doc__
    return route


def log_unexpected(request: Request, exc: BaseException) -> None:
    """An exception that is not ours reached a route: a bug. Logged once, with its traceback."""
    log.error(
        "unexpected error method=%s path=%s error=%s",
        request.method,
        request.url.path,
        type(exc).__name__,
        exc_info=exc,
    )


async def read_body(
    request: Request,
    limit: int,
    too_large: Callable[[str], Exception] = PayloadTooLarge,
    too_slow: Callable[[str], Exception] = RequestTimeout,
    timeout: float = BODY_TIMEOUT,
) -> bytes:
    """The request body, refused with `too_large` past `limit` bytes (before reading any of it
    when Content-Length says so), and with `too_slow` when it takes over `timeout` seconds."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large(f"request body of {declared} bytes exceeds the limit of {limit}")
    chunks = []
    size = 0
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise too_large(f"request body exceeds the limit of {limit} bytes")
                chunks.append(chunk)
    except TimeoutError:
        raise too_slow(
            f"the request body took more than {timeout:.0f} s to arrive ({size} bytes read)"
        ) from None
    return b"".join(chunks)


def parse_json(body: bytes, bad: Callable[[str], Exception] = BadInput, what: str = "body") -> Any:
    """`body` as JSON, or `bad` naming where it is broken. orjson bounds the nesting depth
    (1,024), refuses lone surrogates and invalid UTF-8, and reads numbers past 64 bits as
    floats (never a 5,000-digit int); callers bound the integers they take."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise bad(f"the {what} is not valid JSON: {exc.msg} at byte {exc.pos}") from None


def header_text(text: str) -> str:
    """A header value: latin-1 only, no line breaks (column names may be any Unicode)."""
    return text.encode("ascii", "backslashreplace").decode().replace("\r", " ").replace("\n", " ")
