"""`edge.wire`: a response's head and body go out in one write, bytes and order unchanged;
each request is told how many requests the server holds."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from typing import Any

import httpx
import uvicorn

from edge.httpio import requests_in_flight
from edge.wire import CoalescingTransport, Protocol
from tests.conftest import free_port


class Recording:
    """Stands in for uvloop's transport: what was written, in one list entry per write."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.vectored: list[int] = []  # the parts' sizes of the last vectored write
        self.closed = False
        self.paused = False

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def writelines(self, parts: list[bytes]) -> None:  # one vectored write
        self.writes.append(b"".join(parts))
        self.vectored = [len(p) for p in parts]

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None:
        self.paused = True


def _transport() -> tuple[CoalescingTransport, Recording, asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    inner = Recording()
    wrapped: Any = inner
    return CoalescingTransport(wrapped, loop), inner, loop


def test_a_head_and_its_body_go_out_as_one_write() -> None:
    transport, inner, loop = _transport()
    transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
    assert inner.writes == [] and transport.get_write_buffer_size() == 38
    transport.write(b"{}")
    assert inner.writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"]
    loop.run_until_complete(asyncio.sleep(0))  # the step's flush finds nothing held
    assert len(inner.writes) == 1
    loop.close()


def test_a_large_body_goes_out_beside_its_head_in_one_vectored_write() -> None:
    transport, inner, loop = _transport()
    body = memoryview(b"x" * (1 << 20))  # as the Arrow answer is sent: not copied to bytes
    transport.write(b"head")
    transport.write(body)
    assert inner.writes == [b"head" + bytes(body)] and inner.vectored == [4, 1 << 20]
    loop.close()


def test_a_lone_write_goes_out_at_the_end_of_the_loop_step_and_before_a_close() -> None:
    transport, inner, loop = _transport()
    transport.write(b"head")  # a streamed response: the next chunk comes later
    loop.run_until_complete(asyncio.sleep(0))
    assert inner.writes == [b"head"]
    transport.write(b"last")
    transport.close()
    assert inner.writes == [b"head", b"last"] and inner.closed
    transport.pause_reading()  # the rest is the transport's own
    assert inner.paused
    loop.close()


def test_each_request_is_told_how_many_the_server_holds() -> None:
    """Through a real uvicorn server on the protocol: a request alone is told 1; one that
    arrives while another is held, 2; under another protocol (h11), nothing."""
    gate: dict[str, asyncio.Event] = {}

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        count = requests_in_flight(scope)
        if scope["path"] == "/hold":
            await gate["released"].wait()
        elif scope["path"] == "/release":
            gate["released"].set()
        body = str(count).encode()
        length = str(len(body)).encode()
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-length", length)]}
        )
        await send({"type": "http.response.body", "body": body})

    for protocol, alone in ((Protocol, "1"), ("h11", "None")):
        gate["released"] = asyncio.Event()  # each server runs its own loop
        port = free_port()
        config = uvicorn.Config(app, port=port, http=protocol, lifespan="off", log_level="warning")
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run)
        thread.start()
        try:
            while not server.started:
                time.sleep(0.01)
            url = f"http://127.0.0.1:{port}"
            assert httpx.get(f"{url}/count").text == alone
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                held = pool.submit(httpx.get, f"{url}/hold", timeout=10)
                time.sleep(0.3)  # its head has arrived: it is in flight
                assert httpx.get(f"{url}/release").text == ("2" if protocol is Protocol else alone)
                assert held.result().text == alone  # it was alone when it began
            assert httpx.get(f"{url}/count").text == alone
        finally:
            server.should_exit = True
            thread.join(10)
