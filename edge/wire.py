"""uvicorn's httptools protocol with a response's head and body sent in one write.

uvicorn writes a response's status line and headers when the ASGI app sends
`http.response.start`, and the body at `http.response.body`: two `send` system calls and, on
loopback or a LAN, two TCP segments, each waking the client. For a small answer (most
inferences) the second write costs about as much as the first. Here the transport holds a
write back until the next one (the body, which follows at once) or the end of the loop's
current step, and sends both as one: the bytes and their order are unchanged.

The protocol also tells a request how many the server holds (`edge.httpio.requests_in_flight`):
one alone has no one to share a journal record with (`edge.logbuffer.batcher`).
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from edge.httpio import IN_FLIGHT

JOIN_BYTES = 64 << 10  # a write up to this joins the held one; a larger one goes beside it


class CoalescingTransport:
    """A transport whose writes made back to back go out as one (see the module doc)."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        held = self._held
        if held is None:
            self._held = bytes(data)
            self._loop.call_soon(self.flush)
            return
        self._held = None
        if len(data) <= JOIN_BYTES:
            self._transport.write(held + data)
        else:  # a large body is not copied to join it: one vectored write of both
            self._transport.writelines([held, data])

    def writelines(self, parts: Any) -> None:
        self.write(b"".join(parts))

    def flush(self) -> None:
        held, self._held = self._held, None
        if held is not None and not self._transport.is_closing():
            self._transport.write(held)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + len(self._held or b"")

    def __getattr__(self, name: str) -> Any:  # everything else is the transport's own
        return getattr(self._transport, name)


class Protocol(HttpToolsProtocol):
    """uvicorn's httptools protocol over a `CoalescingTransport`; each request's scope also
    holds the server's requests in flight (`edge.httpio.requests_in_flight`)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        wrapped: Any = CoalescingTransport(transport, self.loop)
        super().connection_made(wrapped)

    def _start_asgi_task(self, cycle: Any, app: Any) -> None:
        cycle.scope[IN_FLIGHT] = self.tasks  # a key, not a dict more per request (the GC)
        super()._start_asgi_task(cycle, app)
