"""The sync agent against the ops center app in process, with a real LogBuffer.

The agent's HTTPS client is swapped for a transport that calls the app directly and puts the
agent's current certificate (read from its persist directory) into the ASGI TLS extension,
where `ops_sync.serve` puts it in production (tests/test_ops_e2e.py checks that path)."""

from __future__ import annotations

import asyncio
import logging
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from edge.logbuffer import LogBuffer
from ops_sync import protocol as bundle
from ops_sync.agent import SyncAgent, backoff
from ops_sync.errors import BundleError, TokenExpired, TokenUsed
from tests.test_ops_support import DAY, Ops, cert_transport, result_table, table_rows

T0 = 1_790_000_000_000
FAST = dict(ship_interval=0.02, heartbeat_interval=0.2, backoff_base=0.02, backoff_cap=0.1)
Fault = Callable[
    [httpx.Request, Callable[[], Awaitable[httpx.Response]]], Awaitable[httpx.Response]
]


class Recording(httpx.AsyncBaseTransport):
    """Calls the app as the agent's certificate; records paths; can inject faults."""

    def __init__(self, ops: Ops, persist: Path) -> None:
        cert_file = persist / "ops_sync" / "edge.crt"
        self.inner = cert_transport(
            ops.app, lambda: cert_file.read_text() if cert_file.exists() else None
        )
        self.paths: list[str] = []
        self.timeouts: list[dict[str, Any]] = []
        self.fault: Fault | None = None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.paths.append(request.url.path)
        self.timeouts.append(request.extensions.get("timeout", {}))

        async def forward() -> httpx.Response:
            response = await self.inner.handle_async_request(request)
            await response.aread()
            return response

        if self.fault is not None:
            return await self.fault(request, forward)
        return await forward()


def new_bundle(ops: Ops, name: str) -> dict[str, str]:
    return bundle.decode(ops.add_edge(name)["docker_run_variables"]["EDGE_BUNDLE"])


async def wait_until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError("condition not reached")
        await asyncio.sleep(0.02)


def stored_rows(ops: Ops, partition: str) -> list[int]:
    rows = table_rows(ops.center.logs.table_url("ccfraud"), f"partition = '{partition}'")
    return [seq for _, _, seq in rows]


@pytest.fixture()
def ops(tmp_path: Path) -> Ops:
    return Ops(tmp_path / "ops")


@pytest.fixture()
def buffer(tmp_path: Path) -> Any:
    buf = LogBuffer(tmp_path / "persist" / "logbuffer.db")
    buf.start()
    yield buf
    buf.close()


def make_agent(
    ops: Ops, persist: Path, buf: LogBuffer, values: dict[str, str], **kw: Any
) -> tuple[SyncAgent, Recording]:
    transport = Recording(ops, persist)
    health = lambda: {"pipelines": [{"id": "ccfraud", "status": "Running"}]}  # noqa: E731
    agent = SyncAgent(
        values, persist, buf, health, ops.clock, transport=transport, **{**FAST, **kw}
    )
    return agent, transport


def test_join_stores_credentials_0600_and_a_restart_never_redeems_again(
    ops: Ops, buffer: LogBuffer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    persist = tmp_path / "persist"
    values = new_bundle(ops, "edge-a")

    async def scenario() -> None:
        agent, transport = make_agent(ops, persist, buffer, values)
        with caplog.at_level(logging.INFO, logger="ops_sync.agent"):
            await agent.start()
        await agent.stop()
        assert transport.paths[0] == "/v1/edge/join"
        status = agent.status()
        assert status["joined"] and status["credentials"] == "valid" and status["health"] == "ok"
        assert status["spiffe_id"].endswith(status["edge_id"])

        again, transport = make_agent(ops, persist, buffer, values)
        await again.start()
        await wait_until(lambda: "/v1/edge/heartbeat" in transport.paths)
        await again.stop()
        assert "/v1/edge/join" not in transport.paths
        assert again.status()["edge_id"] == status["edge_id"]

    asyncio.run(scenario())
    assert "Node attestation was successful" in caplog.text
    assert values["JOIN_TOKEN"] not in caplog.text
    files = persist / "ops_sync"
    for name in ("edge.key", "edge.crt", "state.json"):
        assert stat.S_IMODE((files / name).stat().st_mode) == 0o600, name
    assert values["JOIN_TOKEN"] not in (files / "state.json").read_text()


def test_ships_in_order_and_acks_only_what_the_ops_center_stored(
    ops: Ops, buffer: LogBuffer, tmp_path: Path
) -> None:
    persist = tmp_path / "persist"

    async def scenario() -> None:
        for i in range(5):
            buffer.log(result_table(40, T0 + 100 * i))
            await asyncio.to_thread(buffer.flush)  # stored in SQLite
        agent, transport = make_agent(
            ops, persist, buffer, new_bundle(ops, "edge-a"), batch_rows=64
        )
        cut = {"count": 0}

        async def cut_after_store(request: httpx.Request, forward: Any) -> httpx.Response:
            response = await forward()
            if request.url.path == "/v1/edge/logs" and cut["count"] < 2:
                cut["count"] += 1
                raise httpx.ReadError("connection reset after the server stored the batch")
            return response

        transport.fault = cut_after_store
        await agent.start()
        await wait_until(lambda: buffer.stats()["unsynced_rows"] == 0)
        await agent.stop()
        assert agent.status()["shipped_rows"] == 200

    asyncio.run(scenario())
    assert stored_rows(ops, "edge-a") == list(range(1, 201))  # resent twice, stored once


def test_nothing_is_acked_while_the_ops_center_fails(
    ops: Ops, buffer: LogBuffer, tmp_path: Path
) -> None:
    persist = tmp_path / "persist"

    async def scenario() -> None:
        buffer.log(result_table(10, T0))
        await asyncio.to_thread(buffer.flush)  # stored in SQLite
        agent, transport = make_agent(ops, persist, buffer, new_bundle(ops, "edge-a"))

        async def down(request: httpx.Request, forward: Any) -> httpx.Response:
            if request.url.path == "/v1/edge/logs":
                return httpx.Response(503, json={"error": "maintenance", "reason": "x"})
            return await forward()

        transport.fault = down
        await agent.start()
        await wait_until(lambda: transport.paths.count("/v1/edge/logs") >= 3)
        assert buffer.stats()["unsynced_rows"] == 10
        assert "maintenance" in (agent.status()["last_error"] or "")
        transport.fault = None
        await wait_until(lambda: buffer.stats()["unsynced_rows"] == 0)
        await agent.stop()

    asyncio.run(scenario())
    assert stored_rows(ops, "edge-a") == list(range(1, 11))


def test_start_does_not_raise_when_the_ops_center_is_down_and_joins_later(
    ops: Ops, buffer: LogBuffer, tmp_path: Path
) -> None:
    persist = tmp_path / "persist"

    async def scenario() -> None:
        agent, transport = make_agent(ops, persist, buffer, new_bundle(ops, "edge-a"))

        async def unreachable(request: httpx.Request, forward: Any) -> httpx.Response:
            raise httpx.ConnectError("connection refused")

        transport.fault = unreachable
        await agent.start()
        assert agent.status()["joined"] is False and agent.status()["credentials"] == "missing"
        await wait_until(lambda: len(transport.paths) >= 3)  # retrying with backoff
        transport.fault = None
        await wait_until(lambda: agent.status()["joined"])
        await agent.stop()

    asyncio.run(scenario())


def test_refused_join_tokens_raise_at_start_without_the_token(
    ops: Ops, buffer: LogBuffer, tmp_path: Path
) -> None:
    values = new_bundle(ops, "edge-a")
    ops.clock.advance(DAY + 60)

    async def scenario() -> None:
        agent, _ = make_agent(ops, tmp_path / "p1", buffer, values)
        with pytest.raises(TokenExpired) as caught:
            await agent.start()
        assert values["JOIN_TOKEN"] not in str(caught.value)
        fresh = new_bundle(ops, "edge-b")
        first, _ = make_agent(ops, tmp_path / "p2", buffer, fresh)
        await first.start()
        await first.stop()
        wiped, _ = make_agent(ops, tmp_path / "p3", buffer, fresh)  # persist volume lost
        with pytest.raises(TokenUsed, match="already redeemed"):
            await wiped.start()

    asyncio.run(scenario())


def test_bundle_without_required_keys_is_a_config_error(
    ops: Ops, buffer: LogBuffer, tmp_path: Path
) -> None:
    values = new_bundle(ops, "edge-a")
    del values["JOIN_TOKEN"]
    with pytest.raises(BundleError, match="JOIN_TOKEN"):
        SyncAgent(values, tmp_path, buffer, dict)


def test_renews_at_about_half_life_and_expires_offline_then_a_new_bundle_ships_the_backlog(
    ops: Ops, buffer: LogBuffer, tmp_path: Path
) -> None:
    persist = tmp_path / "persist"
    cert_file = persist / "ops_sync" / "edge.crt"

    async def scenario() -> None:
        agent, transport = make_agent(ops, persist, buffer, new_bundle(ops, "edge-a"))
        await agent.start()
        first_cert = cert_file.read_text()
        ops.clock.advance(4.3 * DAY)  # past 0.6 of the 7-day life: renewal is due
        await wait_until(lambda: "/v1/edge/renew" in transport.paths)
        await wait_until(lambda: cert_file.read_text() != first_cert)
        assert agent.status()["credentials"] == "valid"

        # Offline for more than 7 days: stop calling, keep serving and buffering.
        async def offline(request: httpx.Request, forward: Any) -> httpx.Response:
            raise httpx.ConnectError("no route to the ops center")

        transport.fault = offline
        buffer.log(result_table(25, T0))
        await asyncio.to_thread(buffer.flush)  # stored in SQLite
        ops.clock.advance(7 * DAY + 60)
        calls = len(transport.paths)
        assert agent.status()["credentials"] == "expired"
        assert agent.status()["health"] == "credentials expired"
        # An agent that kept trying would call at least every backoff_cap: ten times in this
        # window. This one makes at most the failing call of a round begun before the jump.
        await asyncio.sleep(10 * FAST["backoff_cap"])
        assert len(transport.paths) - calls <= 1, transport.paths[calls:]
        await agent.stop()
        assert buffer.stats()["unsynced_rows"] == 25

        # The operator re-adds the edge; the appliance restarts with the new bundle.
        ops.center.remove_edge("edge-a")
        rejoined, transport = make_agent(ops, persist, buffer, new_bundle(ops, "edge-a"))
        await rejoined.start()
        assert transport.paths[0] == "/v1/edge/join"
        await wait_until(lambda: buffer.stats()["unsynced_rows"] == 0)
        await rejoined.stop()

    asyncio.run(scenario())
    assert stored_rows(ops, "edge-a") == list(range(1, 26))


def test_heartbeat_reports_health_and_drop_counts(
    ops: Ops, buffer: LogBuffer, tmp_path: Path
) -> None:
    async def scenario() -> None:
        agent, transport = make_agent(ops, tmp_path / "persist", buffer, new_bundle(ops, "edge-a"))
        await agent.start()
        await wait_until(lambda: ops.center.list_edges()[0]["health"] is not None)
        await agent.stop()

    asyncio.run(scenario())
    (edge,) = ops.center.list_edges()
    assert edge["health"]["health"]["pipelines"][0]["status"] == "Running"
    assert edge["health"]["buffer"]["epoch"] == buffer.epoch
    assert edge["health"]["agent"]["credentials"] == "valid"
    assert set(edge["dropped"]) == set(buffer.stats()["dropped"])


def test_every_call_has_a_finite_timeout_and_backoff_is_capped(
    ops: Ops, buffer: LogBuffer, tmp_path: Path
) -> None:
    async def scenario() -> list[float]:
        agent, transport = make_agent(ops, tmp_path / "persist", buffer, new_bundle(ops, "edge-a"))
        stamps: list[float] = []

        async def failing(request: httpx.Request, forward: Any) -> httpx.Response:
            stamps.append(asyncio.get_running_loop().time())
            raise httpx.ConnectTimeout("timed out")

        transport.fault = failing
        await agent.start()
        await asyncio.sleep(1.0)
        await agent.stop()
        for timeout in transport.timeouts:
            assert all(
                0 < float(timeout[phase]) < 120 for phase in ("connect", "read", "write", "pool")
            )
        return [b - a for a, b in zip(stamps[1:], stamps[2:], strict=False)]

    gaps = asyncio.run(scenario())
    assert len(gaps) >= 5 and max(gaps) < 0.5  # retried quickly, never a long stall
    delays = [[backoff(n, 1.0, 60.0) for _ in range(50)] for n in range(1, 12)]
    assert all(0.5 <= d <= 1.0 for d in delays[0])
    assert all(4.0 <= d <= 8.0 for d in delays[3])
    assert all(30.0 <= d <= 60.0 for d in delays[-1])  # capped
    assert len({round(d, 6) for d in delays[-1]}) > 1  # jittered


def test_batches_over_the_body_limit_shrink_until_they_fit(
    ops: Ops, buffer: LogBuffer, tmp_path: Path
) -> None:
    """Wide rows (images) can make a batch bigger than the ops center takes: the agent sends
    fewer rows at a time instead of retrying the same batch forever."""
    persist = tmp_path / "persist"

    async def scenario() -> None:
        for i in range(4):
            buffer.log(result_table(50, T0 + 100 * i))
            await asyncio.to_thread(buffer.flush)  # stored in SQLite
        agent, transport = make_agent(
            ops, persist, buffer, new_bundle(ops, "edge-a"), batch_rows=200
        )
        sizes: list[int] = []

        async def limit_rows(request: httpx.Request, forward: Any) -> httpx.Response:
            if request.url.path == "/v1/edge/logs":
                first = int(request.headers["x-sync-first-seq"])
                rows = int(request.headers["x-sync-last-seq"]) - first + 1
                sizes.append(rows)
                if rows > 60:  # as if the body were over the limit
                    body = {
                        "error": "the body is over the limit",
                        "code": 413,
                        "status": "error",
                        "source": "platform",
                        "reason": "PayloadTooLarge",
                    }
                    return httpx.Response(413, json=body)
            return await forward()

        transport.fault = limit_rows
        await agent.start()
        await wait_until(lambda: buffer.stats()["unsynced_rows"] == 0, timeout=20)
        await agent.stop()
        assert sizes[0] == 200 and max(sizes[1:]) <= 100 and min(sizes) <= 60

    asyncio.run(scenario())
    assert stored_rows(ops, "edge-a") == list(range(1, 201))


def _codings(transport: Recording) -> list[str | None]:
    """The Content-Encoding of each batch the agent sent, in order (set by `record`)."""
    return transport.codings  # type: ignore[attr-defined, no-any-return]


def recording_codings(transport: Recording, then: Fault | None = None) -> None:
    transport.codings = []  # type: ignore[attr-defined]

    async def record(request: httpx.Request, forward: Any) -> httpx.Response:
        if request.url.path == "/v1/edge/logs":
            _codings(transport).append(request.headers.get("content-encoding"))
        return await (then(request, forward) if then is not None else forward())

    transport.fault = record


@pytest.mark.parametrize("server", ["current", "older"])
def test_batches_go_as_one_zstd_frame_only_to_an_ops_center_that_reads_it(
    ops: Ops, buffer: LogBuffer, tmp_path: Path, server: str
) -> None:
    """Our ops center's replies say `Accept-Encoding: zstd`, so every batch goes as one zstd
    frame; an older one says nothing (stripped here), so batches keep the compressed-buffers
    body every ops center reads. Both store every row once."""
    persist = tmp_path / "persist"

    async def older(request: httpx.Request, forward: Any) -> httpx.Response:
        response = await forward()
        response.headers.pop("accept-encoding", None)
        return response

    async def scenario() -> None:
        for i in range(3):
            buffer.log(result_table(40, T0 + 100 * i))
            await asyncio.to_thread(buffer.flush)
        agent, transport = make_agent(
            ops, persist, buffer, new_bundle(ops, "edge-a"), batch_rows=40
        )
        recording_codings(transport, older if server == "older" else None)
        await agent.start()
        await wait_until(lambda: buffer.stats()["unsynced_rows"] == 0)
        await agent.stop()
        expected = "zstd" if server == "current" else None
        assert _codings(transport) == [expected] * 3

    asyncio.run(scenario())
    assert stored_rows(ops, "edge-a") == list(range(1, 121))


async def synced_one_by_one(
    ops: Ops, buffer: LogBuffer, persist: Path, fault: Fault, batches: list[int]
) -> tuple[SyncAgent, Recording]:
    """An agent of edge-a (one heartbeat, as it starts) whose calls go through `fault`, given
    batches of `batches` rows one at a time, each shipped to the end; then stopped."""
    agent, transport = make_agent(
        ops, persist, buffer, new_bundle(ops, "edge-a"), heartbeat_interval=3600
    )
    recording_codings(transport, fault)
    for i, rows in enumerate(batches):
        buffer.log(result_table(rows, T0 + 1000 * i))
        await asyncio.to_thread(buffer.flush)
        if i == 0:
            await agent.start()
        await wait_until(lambda: buffer.stats()["unsynced_rows"] == 0)
    await agent.stop()
    return agent, transport


REFUSED_CODING = {
    "older": (400, "BadRequest", "the batch is not a valid Arrow IPC stream: Expected to read"),
    "415": (415, "UnsupportedCoding", "batch Content-Encoding 'zstd' is not read here"),
}


@pytest.mark.parametrize("refusal", sorted(REFUSED_CODING))
def test_a_framed_batch_refused_as_unreadable_is_sent_again_as_every_ops_center_reads_it(
    ops: Ops, buffer: LogBuffer, tmp_path: Path, refusal: str
) -> None:
    """An ops center downgraded between its reply and the next batch reads the zstd frame as
    Arrow IPC and answers 400: the agent sends that batch again at once, without the coding,
    and keeps to that body while the replies no longer say zstd."""
    persist = tmp_path / "persist"

    async def downgraded(request: httpx.Request, forward: Any) -> httpx.Response:
        if request.url.path != "/v1/edge/logs":
            return await forward()  # the heartbeat's reply still came from the newer one
        if request.headers.get("content-encoding"):
            status, reason, message = REFUSED_CODING[refusal]
            return httpx.Response(status, json={"error": message, "reason": reason})
        response = await forward()
        response.headers.pop("accept-encoding", None)
        return response

    async def scenario() -> None:
        agent, transport = await synced_one_by_one(ops, buffer, persist, downgraded, [30, 30])
        assert transport.paths.count("/v1/edge/heartbeat") == 1
        assert _codings(transport) == ["zstd", None, None]
        assert agent.status()["last_error"] is None

    asyncio.run(scenario())
    assert stored_rows(ops, "edge-a") == list(range(1, 61))


@pytest.mark.parametrize(
    ("status", "reason", "message"),
    [
        (400, "BadRequest", "the batch's metadata.pipeline_version 'x' is not a published version"),
        (408, "RequestTimeout", "the request body did not arrive within 30 s"),
    ],
)
def test_a_framed_batch_refused_for_another_reason_is_not_sent_twice(
    ops: Ops, buffer: LogBuffer, tmp_path: Path, status: int, reason: str, message: str
) -> None:
    """Only a refusal of the coding itself makes the agent send the other body: any other 400
    or a 408 is retried as the same framed batch, after the usual backoff, and not acked."""
    persist = tmp_path / "persist"

    async def refuse(request: httpx.Request, forward: Any) -> httpx.Response:
        if request.url.path == "/v1/edge/logs":
            return httpx.Response(status, json={"error": message, "reason": reason})
        return await forward()

    async def scenario() -> None:
        buffer.log(result_table(10, T0))
        await asyncio.to_thread(buffer.flush)
        agent, transport = make_agent(ops, persist, buffer, new_bundle(ops, "edge-a"))
        recording_codings(transport, refuse)
        await agent.start()
        await wait_until(lambda: len(_codings(transport)) >= 3)
        await agent.stop()
        assert set(_codings(transport)) == {"zstd"}
        assert message[:20] in (agent.status()["last_error"] or "")
        assert buffer.stats()["unsynced_rows"] == 10

    asyncio.run(scenario())


def test_one_row_over_the_decoded_limit_is_sent_again_with_compressed_buffers(
    ops: Ops, buffer: LogBuffer, tmp_path: Path
) -> None:
    """A framed one-row batch whose decoded stream is over the ops center's limit cannot be
    cut smaller; the agent sends it as compressed buffers, which may fit (as before)."""
    persist = tmp_path / "persist"

    async def too_large_framed(request: httpx.Request, forward: Any) -> httpx.Response:
        if request.url.path == "/v1/edge/logs" and request.headers.get("content-encoding"):
            body = {"error": "the batch decodes to 70000000 bytes", "reason": "PayloadTooLarge"}
            return httpx.Response(413, json=body)
        return await forward()

    async def scenario() -> None:
        _, transport = await synced_one_by_one(ops, buffer, persist, too_large_framed, [1])
        assert _codings(transport) == ["zstd", None]

    asyncio.run(scenario())
    assert stored_rows(ops, "edge-a") == [1]
