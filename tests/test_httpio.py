"""edge.httpio: what both servers do alike at their edge. The error mapping walked along the
MRO, request bodies bounded in size and time, JSON from the network read so that it can only
fail with the caller's own 4xx error, and `Fields`' typed reads."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import pytest
from starlette.requests import Request
from starlette.responses import Response

from edge.errors import BadInput, EdgeError, NotFound, PayloadTooLarge, RequestError, RequestTimeout
from edge.httpio import (
    INT64_MAX,
    ErrorMapping,
    Fields,
    bounded_int,
    guarded,
    header_text,
    parse_json,
    read_asgi_body,
    read_body,
)
from edge.server import STATUS as EDGE_STATUS
from ops_sync.server import STATUS as OPS_STATUS

Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]

# ---------------------------------------------------------------------------- error mapping


class Base(Exception):
    pass


class Child(Base):
    pass


class GrandChild(Child):
    pass


class Other(Exception):
    pass


@pytest.mark.parametrize(
    "table",
    [
        {Base: (500, "engine"), Child: (400, "platform")},
        {Child: (400, "platform"), Base: (500, "engine")},
    ],
    ids=["base-listed-first", "child-listed-first"],
)
def test_the_nearest_class_wins_whatever_the_order(table: dict[Any, Any]) -> None:
    mapping = ErrorMapping(table)
    assert mapping.lookup(Base()) == (500, "engine")
    assert mapping.lookup(Child()) == (400, "platform")  # never shadowed by its base
    assert mapping.lookup(GrandChild()) == (400, "platform")  # inherits its parent's
    assert mapping.status(GrandChild()) == 400


def test_an_exception_that_is_not_mapped_is_a_500() -> None:
    mapping = ErrorMapping({Base: (400, "engine")})
    assert mapping.lookup(Other()) is None
    assert mapping.status(Other()) == 500
    assert mapping.status(ValueError()) == 500


def test_the_mapping_is_copied_from_the_table() -> None:
    table: dict[type[BaseException], tuple[int, str]] = {Base: (400, "engine")}
    mapping = ErrorMapping(table)
    table[Other] = (418, "engine")
    assert mapping.lookup(Other()) is None and mapping.classes() == [Base]


@pytest.mark.parametrize("status", [EDGE_STATUS, OPS_STATUS], ids=["appliance", "ops-center"])
def test_both_servers_give_a_client_error_its_4xx_and_ours_a_5xx(status: ErrorMapping) -> None:
    assert status.status(BadInput("x")) == 400
    assert status.status(NotFound("x")) == 404
    assert status.status(PayloadTooLarge("x")) == 413
    assert status.status(RequestTimeout("x")) == 408
    assert status.status(RequestError("x")) == 400
    assert status.status(EdgeError("x")) == 500
    assert status.status(KeyError("x")) == 500


# ---------------------------------------------------------------------------- guarded routes


def test_a_guarded_route_answers_every_exception_once() -> None:
    answered: list[Exception] = []

    async def broken(request: Request) -> Response:
        """Broken on purpose."""
        raise NotFound("nothing here")

    def answer(request: Request, exc: Exception) -> Response:
        answered.append(exc)
        return Response(str(exc), 404)

    route = guarded(broken, answer)
    assert route.__name__ == "broken" and route.__doc__ == "Broken on purpose."

    async def get() -> Response:
        return await route(Request({"type": "http", "method": "GET", "headers": []}))

    response = asyncio.run(get())
    assert response.status_code == 404 and response.body == b"nothing here"
    assert len(answered) == 1 and isinstance(answered[0], NotFound)


# ---------------------------------------------------------------------------- request bodies


def messages(*chunks: bytes, delay: float = 0.0) -> tuple[Receive, list[int]]:
    """An ASGI `receive` handing out `chunks` (the last without more_body), counting calls."""
    calls = [0]

    async def receive() -> MutableMapping[str, Any]:
        calls[0] += 1
        if delay:
            await asyncio.sleep(delay)
        index = calls[0] - 1
        if index >= len(chunks):
            return {"type": "http.disconnect"}
        return {"type": "http.request", "body": chunks[index], "more_body": index < len(chunks) - 1}

    return receive, calls


def read(receive: Receive, declared: str = "", limit: int = 100, **kw: Any) -> bytes:
    return asyncio.run(read_asgi_body(receive, declared, limit, **kw))


def test_a_body_in_one_or_many_messages() -> None:
    assert read(messages(b"hello")[0], "5") == b"hello"
    assert read(messages(b"he", b"", b"llo")[0]) == b"hello"
    assert read(messages(b"x" * 100)[0], "100") == b"x" * 100  # the limit itself is allowed


def test_a_declared_length_over_the_limit_is_refused_before_reading() -> None:
    receive, calls = messages(b"x" * 10)
    with pytest.raises(PayloadTooLarge) as refused:
        read(receive, "1000000", limit=100)
    assert str(refused.value) == "request body of 1000000 bytes exceeds the limit of 100"
    assert calls[0] == 0


def test_any_content_length_header_is_read_as_the_callers_own() -> None:
    """A header of 5,000 digits or of non-ASCII digits ('\xb2' is latin-1) is never a 500."""
    receive, calls = messages(b"x")
    with pytest.raises(PayloadTooLarge, match="exceeds the limit of 100"):
        read(receive, "9" * 5000, limit=100)
    assert calls[0] == 0
    for odd in ("\xb2", "\u0661", "12abc", "-1", " 5"):  # not a length: read the body as sent
        assert read(messages(b"hello")[0], odd, limit=100) == b"hello"
    assert read(messages(b"hello")[0], "0" * 30 + "5", limit=100) == b"hello"


def test_a_body_longer_than_declared_or_undeclared_is_cut_off_at_the_limit() -> None:
    receive, calls = messages(*([b"x" * 40] * 10))
    with pytest.raises(PayloadTooLarge, match="request body exceeds the limit of 100 bytes"):
        read(receive, "", limit=100)
    assert calls[0] == 3  # refused at the message that passed the limit, not at the end
    with pytest.raises(PayloadTooLarge):
        read(messages(b"x" * 40, b"x" * 80)[0], "50", limit=100)


def test_a_client_that_goes_away_ends_the_body() -> None:
    receive, _ = messages()
    assert read(receive) == b""


def test_a_body_that_takes_too_long_to_arrive_is_refused() -> None:
    async def drip() -> None:
        async def receive() -> dict[str, Any]:
            await asyncio.sleep(0.2)
            return {"type": "http.request", "body": b"x", "more_body": True}

        request = Request({"type": "http", "method": "POST", "headers": []}, receive)
        await read_body(request, 1 << 20, timeout=0.5)

    with pytest.raises(RequestTimeout, match=r"took more than \d+ s to arrive \(\d+ bytes read\)"):
        asyncio.run(drip())


def test_bodies_read_from_a_real_uvicorn_connection_whole_cut_off_or_too_slow() -> None:
    """Through uvicorn itself (its receive, whose arrived bodies are read without a timer):
    a whole body, one sent in parts, one over the limit, and ones that stop coming (a part,
    or none of it) refused with 408 after the timeout."""
    import socket
    import threading
    import time

    import uvicorn

    from tests.conftest import free_port

    async def app(scope: dict[str, Any], receive: Receive, send: Any) -> None:
        if scope["type"] != "http":
            return
        declared = dict(scope["headers"]).get(b"content-length", b"").decode()
        try:
            body = await read_asgi_body(receive, declared, 1000, timeout=0.5)
            status, answer = 200, str(len(body)).encode()
        except PayloadTooLarge:
            status, answer = 413, b"too large"
        except RequestTimeout:
            status, answer = 408, b"too slow"
        headers = [(b"content-length", str(len(answer)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": answer})

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, http="httptools", log_level="error")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)

    def post(length: int | None, *parts: bytes, pause: float = 0.0) -> tuple[str, float]:
        """The status line and body of the answer to a POST sent in `parts`; `length` None:
        chunked, with no Content-Length."""
        framing = "Transfer-Encoding: chunked" if length is None else f"Content-Length: {length}"
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            conn.sendall(f"POST / HTTP/1.1\r\nHost: x\r\n{framing}\r\n\r\n".encode())
            started = time.monotonic()
            for i, part in enumerate(parts):
                time.sleep(pause if i else 0)
                conn.sendall(part)
            reply = b""
            while True:  # the whole answer: uvicorn may send its head and body apart
                head, whole, answer = reply.partition(b"\r\n\r\n")
                length_found = re.search(rb"content-length: (\d+)", head.lower())
                if whole and length_found and len(answer) >= int(length_found[1]):
                    break
                more = conn.recv(4096)
                if not more:
                    break
                reply += more
            return head.decode().split("\r\n")[0] + " " + answer.decode(), started

    try:
        assert post(5, b"hello")[0] == "HTTP/1.1 200 OK 5"
        assert post(10, b"hello", b"world", pause=0.1)[0] == "HTTP/1.1 200 OK 10"
        assert post(2000, b"x" * 2000)[0].startswith("HTTP/1.1 413")
        chunked = b"7d0\r\n" + b"x" * 2000 + b"\r\n0\r\n\r\n"  # no length declared
        assert post(None, chunked)[0] == "HTTP/1.1 413 Request Entity Too Large too large"
        assert post(None, b"5\r\nhello\r\n0\r\n\r\n")[0] == "HTTP/1.1 200 OK 5"
        for parts in ((b"half",), ()):
            reply, started = post(10, *parts)
            assert reply == "HTTP/1.1 408 Request Timeout too slow", parts
            assert 0.4 < time.monotonic() - started < 5
    finally:
        server.should_exit = True
        thread.join(10)


def test_each_server_names_its_own_errors_for_a_body() -> None:
    class Huge(Exception):
        pass

    class Slow(Exception):
        pass

    with pytest.raises(Huge):
        read(messages(b"x")[0], "500", limit=10, too_large=Huge, too_slow=Slow)
    receive, _ = messages(b"x", b"y", delay=0.3)
    with pytest.raises(Slow):
        read(receive, "", limit=10, too_large=Huge, too_slow=Slow, timeout=0.1)


def test_read_body_takes_the_declared_length_from_the_headers() -> None:
    receive, calls = messages(b"x")
    scope = {"type": "http", "method": "POST", "headers": [(b"content-length", b"999")]}
    with pytest.raises(PayloadTooLarge, match="999 bytes"):
        asyncio.run(read_body(Request(scope, receive), 100))
    assert calls[0] == 0


# ---------------------------------------------------------------------------- JSON


def test_json_is_parsed() -> None:
    assert parse_json(b'{"a": [1, 2.5, "x", null, true]}') == {"a": [1, 2.5, "x", None, True]}


@pytest.mark.parametrize(
    "body,words",
    [
        (b"[" * 2000 + b"]" * 2000, "depth limit exceeded"),  # bounded nesting
        (b'"\\ud800"', "surrogate"),  # a lone surrogate (escaped)
        (b'"\xed\xa0\x80"', "not valid UTF-8"),  # ... and raw
        (b'"\xff"', "not valid UTF-8"),
        (b"9" * 5000, "infinity"),  # a 5,000-digit number
        (b"1e400", "infinity"),
        (b'{"a": 1', "at byte"),
        (b"", "at byte 0"),
        (b"NaN", "at byte"),
    ],
)
def test_hostile_json_is_the_callers_error(body: bytes, words: str) -> None:
    with pytest.raises(BadInput) as refused:
        parse_json(body)
    assert str(refused.value).startswith("the body is not valid JSON: ") and words in str(
        refused.value
    )


def test_numbers_past_64_bits_are_read_as_floats_never_as_huge_ints() -> None:
    value = parse_json(b"18446744073709551616")
    assert isinstance(value, float)
    with pytest.raises(BadInput, match="whole number"):
        bounded_int(value, "seq", 0, INT64_MAX)


def test_a_json_error_is_the_callers_class_naming_what() -> None:
    class Refused(Exception):
        pass

    with pytest.raises(Refused, match="^the join body is not valid JSON"):
        parse_json(b"{", Refused, "join body")


# ---------------------------------------------------------------------------- Fields


def test_fields_must_come_from_an_object() -> None:
    bodies: tuple[Any, ...] = ([], "x", 1, None)
    for body in bodies:
        with pytest.raises(BadInput, match="^the join must be a JSON object$"):
            Fields(body, "join")


def test_text_fields() -> None:
    fields = Fields({"name": "edge-1", "note": "two\nlines", "empty": ""}, "add_edge")
    assert fields.text("name") == "edge-1"
    assert fields.text("missing", required=False) is None
    assert fields.text("empty", required=False) is None
    assert fields.text("note", multiline=True) == "two\nlines"
    assert fields.text("name", pattern=re.compile(r"[a-z0-9-]+")) == "edge-1"


@pytest.mark.parametrize(
    "body,kw,message",
    [
        ({}, {}, "add_edge: name is required (a non-empty string)"),
        ({"name": ""}, {}, "add_edge: name is required"),
        ({"name": 5}, {}, "add_edge: name must be a string, not int"),
        ({"name": ["a"]}, {}, "add_edge: name must be a string, not list"),
        ({"name": "x" * 65}, {"max_len": 64}, "add_edge: name is longer than 64 characters"),
        ({"name": "edge\n"}, {}, "add_edge: name 'edge\\n' is not valid"),
        ({"name": "a\x00b"}, {"multiline": True}, "is not valid"),
        ({"name": "a\x7fb"}, {}, "is not valid"),
        # a pattern must match the whole value: "edge-1\n" or "x edge" never slip through
        ({"name": "edge-1 "}, {"pattern": re.compile(r"[a-z0-9-]+")}, "is not valid"),
        ({"name": "Edge"}, {"pattern": re.compile(r"[a-z]+"), "hint": " (lower case)"}, "(lower"),
    ],
)
def test_text_field_refusals_name_the_field(
    body: dict[str, Any], kw: dict[str, Any], message: str
) -> None:
    with pytest.raises(BadInput) as refused:
        Fields(body, "add_edge").text("name", **kw)
    assert message in str(refused.value)


def test_integer_fields_are_bounded() -> None:
    fields = Fields({"n": 5, "big": INT64_MAX, "over": INT64_MAX + 1, "flag": True, "f": 1.0}, "b")
    assert fields.integer("n") == 5 and fields.integer("big") == INT64_MAX
    assert fields.integer("absent") is None
    for key in ("over", "flag", "f"):  # past int64, a bool, a float
        with pytest.raises(BadInput, match=f"^b: {key} must be a whole number from 0 to "):
            fields.integer(key)
    with pytest.raises(BadInput, match="^b: n must be a whole number from 1 to 4$"):
        fields.integer("n", lo=1, hi=4)
    assert bounded_int(-3, "x", -5, 5) == -3


def test_string_list_fields() -> None:
    assert Fields({"tags": ["a", "b"]}, "add_edge").strings("tags") == ["a", "b"]
    assert Fields({}, "add_edge").strings("tags") == []
    for value in ("a", ["a"] * 65, [1]):
        with pytest.raises(BadInput, match="add_edge: tags"):
            Fields({"tags": value}, "add_edge").strings("tags")
    with pytest.raises(BadInput, match="longer than 3"):
        Fields({"tags": ["abcd"]}, "add_edge").strings("tags", max_len=3)


def test_mapping_fields() -> None:
    assert Fields({"m": {"a": 1}}, "hb").mapping("m") == {"a": 1}
    assert Fields({}, "hb").mapping("m") is None
    with pytest.raises(BadInput, match="^hb: m must be a JSON object$"):
        Fields({"m": [1]}, "hb").mapping("m")


def test_fields_raise_the_callers_class() -> None:
    class Refused(Exception):
        pass

    with pytest.raises(Refused):
        Fields({"n": -1}, "b", Refused).integer("n")


# ---------------------------------------------------------------------------- headers


def test_header_text_is_one_latin_1_line() -> None:
    shown = header_text("columns: in.tensör\r\nSet-Cookie: x")
    assert "\r" not in shown and "\n" not in shown
    assert shown.encode("latin-1").decode("latin-1") == shown
    assert shown == "columns: in.tens\\xf6r  Set-Cookie: x"


def test_unexpected_errors_are_logged_once_with_their_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from edge.httpio import log_unexpected

    try:
        raise KeyError("boom")
    except KeyError as exc:
        with caplog.at_level(logging.ERROR, logger="edge.httpio"):
            log_unexpected("/x", exc)
    (record,) = caplog.records
    assert "path=/x error=KeyError" in record.getMessage() and record.exc_info is not None
