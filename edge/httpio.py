"""What both HTTP servers (the appliance and the ops center) do alike at their edge.

- `ErrorMapping`: each server's one table from exception class to HTTP status, looked up along
  the exception's MRO (as Starlette looks up its handlers), so a subclass is never shadowed by
  a base listed before it. Only the servers' mapping tables know status codes.
- `guarded`: a route whose every exception is answered once by the server's error body (an
  exception that is not ours is a bug: a 500, logged once with its traceback).
- `read_body`: a request body, bounded in size and in the time the client takes to send it.
- `parse_json`, `Fields`: JSON from the network, read by code that can only fail with the
  caller's own 4xx error (bounded depth, sizes and integers; strings free of control
  characters; names matched whole).
- `header_text`: a safe header value.
- `requests_in_flight`: how many requests the server holds (told by `edge.wire`'s protocol).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from edge.errors import BadInput, PayloadTooLarge, RequestTimeout

log = logging.getLogger(__name__)

BODY_TIMEOUT = 30.0  # seconds a client may take to send a body (a dripping client is refused)
IN_FLIGHT = "edge.in_flight"  # a scope key (`edge.wire`): uvicorn's set of request tasks


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


def log_unexpected(path: str, exc: BaseException) -> None:
    """An exception that is not ours reached a route: a bug. Logged once, with its traceback."""
    log.error("unexpected error path=%s error=%s", path, type(exc).__name__, exc_info=exc)


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
    return await read_asgi_body(request.receive, declared, limit, too_large, too_slow, timeout)


async def read_asgi_body(
    receive: Callable[[], Awaitable[MutableMapping[str, Any]]],
    declared: str,
    limit: int,
    too_large: Callable[[str], Exception] = PayloadTooLarge,
    too_slow: Callable[[str], Exception] = RequestTimeout,
    timeout: float = BODY_TIMEOUT,
) -> bytes:
    """`read_body` on the ASGI `receive` callable (`declared`: the Content-Length header)."""
    chunks = await read_asgi_chunks(receive, declared, limit, too_large, too_slow, timeout)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def read_asgi_chunks(
    receive: Callable[[], Awaitable[MutableMapping[str, Any]]],
    declared: str,
    limit: int,
    too_large: Callable[[str], Exception] = PayloadTooLarge,
    too_slow: Callable[[str], Exception] = RequestTimeout,
    timeout: float = BODY_TIMEOUT,
) -> list[bytes]:
    """`read_asgi_body`'s chunks as they came (a caller that places them itself)."""
    digits = declared.lstrip("0") or "0"
    if declared.isascii() and declared.isdigit() and (len(digits) > 18 or int(digits) > limit):
        shown = digits if len(digits) <= 18 else f"{digits[:18]}..."  # never a huge int
        raise too_large(f"request body of {shown} bytes exceeds the limit of {limit}")
    chunks: list[bytes] = []
    size = 0
    if _arrived(receive):  # most small bodies: here whole, and no timer is needed (~5 µs)
        message = await receive()
        if message["type"] != "http.request":
            return [b""]  # the client went away
        chunks.append(message.get("body", b""))
        size = len(chunks[0])
        if size > limit:
            raise too_large(f"request body exceeds the limit of {limit} bytes")
        if not message.get("more_body", False):
            return chunks
    try:
        async with asyncio.timeout(timeout):
            more = True
            while more:
                message = await receive()
                if message["type"] != "http.request":
                    break  # the client went away
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > limit:
                    raise too_large(f"request body exceeds the limit of {limit} bytes")
                chunks.append(chunk)
                more = message.get("more_body", False)
    except TimeoutError:
        raise too_slow(
            f"the request body took more than {timeout:.0f} s to arrive ({size} bytes read)"
        ) from None
    return chunks or [b""]


def _arrived(receive: Callable[[], Awaitable[MutableMapping[str, Any]]]) -> bool:
    """True when `receive` is uvicorn's and will return at once: the request's body, or its
    first part, has arrived (its cycle's `message_event` is set). Anything else: False."""
    event = getattr(getattr(receive, "__self__", None), "message_event", None)
    return isinstance(event, asyncio.Event) and event.is_set()


def parse_json(body: bytes, bad: Callable[[str], Exception] = BadInput, what: str = "body") -> Any:
    """`body` as JSON, or `bad` naming where it is broken. orjson bounds the nesting depth
    (1,024), refuses lone surrogates and invalid UTF-8, and reads numbers past 64 bits as
    floats (never a 5,000-digit int); callers bound the integers they take."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise bad(f"the {what} is not valid JSON: {exc.msg} at byte {exc.pos}") from None


INT64_MAX = 2**63 - 1
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_CONTROL_BUT_LINES = re.compile(r"[\x00-\x09\x0b\x0c\x0e-\x1f\x7f]")


class Fields:
    """Typed reads of a JSON object from the network; each failure is `bad` naming the field.
    Strings are bounded in length and free of control characters (multi-line ones may hold
    line breaks), integers bounded (int64 by default), patterns matched whole."""

    def __init__(self, body: Any, what: str, bad: Callable[[str], Exception] = BadInput) -> None:
        if not isinstance(body, dict):
            raise bad(f"the {what} must be a JSON object")
        self.body, self.what, self.bad = body, what, bad

    def text(
        self,
        key: str,
        *,
        required: bool = True,
        max_len: int = 1024,
        pattern: re.Pattern[str] | None = None,
        hint: str = "",
        multiline: bool = False,
    ) -> str | None:
        value = self.body.get(key)
        if value is None or value == "":
            if required:
                raise self.bad(f"{self.what}: {key} is required (a non-empty string)")
            return None
        if not isinstance(value, str):
            raise self.bad(f"{self.what}: {key} must be a string, not {type(value).__name__}")
        if len(value) > max_len:
            raise self.bad(f"{self.what}: {key} is longer than {max_len} characters")
        control = _CONTROL_BUT_LINES if multiline else _CONTROL
        if control.search(value) or (pattern is not None and not pattern.fullmatch(value)):
            raise self.bad(f"{self.what}: {key} {value[:80]!r} is not valid{hint}")
        return value

    def integer(self, key: str, lo: int = 0, hi: int = INT64_MAX) -> int | None:
        value = self.body.get(key)
        if value is None:
            return None
        return bounded_int(value, f"{self.what}: {key}", lo, hi, self.bad)

    def strings(self, key: str, max_items: int = 64, max_len: int = 128) -> list[str]:
        values = self.body.get(key)
        if values is None:
            return []
        if not isinstance(values, list) or len(values) > max_items:
            raise self.bad(f"{self.what}: {key} must be a list of at most {max_items} strings")
        return [
            str(Fields({key: v}, self.what, self.bad).text(key, max_len=max_len)) for v in values
        ]

    def mapping(self, key: str) -> dict[str, Any] | None:
        value = self.body.get(key)
        if value is not None and not isinstance(value, dict):
            raise self.bad(f"{self.what}: {key} must be a JSON object")
        return value


def bounded_int(
    value: Any, what: str, lo: int, hi: int, bad: Callable[[str], Exception] = BadInput
) -> int:
    """`value` as an int within [lo, hi] (bools and floats refused), else `bad`."""
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise bad(f"{what} must be a whole number from {lo} to {hi}")
    return value


def header_text(text: str) -> str:
    """A header value: latin-1 only, no line breaks (column names may be any Unicode)."""
    return text.encode("ascii", "backslashreplace").decode().replace("\r", " ").replace("\n", " ")


def requests_in_flight(scope: Mapping[str, Any]) -> int | None:
    """How many requests the server holds, this one included: each connection's request
    whose head has arrived, begun or not (of one connection's pipelined requests, the
    first). None under a server that does not say (h11, in-process clients)."""
    tasks = scope.get(IN_FLIGHT)
    return None if tasks is None else len(tasks)
