"""Three `ops-sync serve` replicas on one PostgreSQL and one Delta table in moto's S3 server,
behind a TCP load balancer: edges running the real agent ship through it while a replica is
SIGKILLed mid-ingest and compaction runs in the background; a batch resent to another
replica stores nothing twice; every acknowledged row is in the table once (DuckDB counts)."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from typing import Any

import httpx

from edge.logbuffer import LogBuffer
from ops_sync import protocol
from ops_sync.agent import SyncAgent
from ops_sync.identity import CertificateAuthority, build_ssl_context
from tests.fleet_support import Balancer
from tests.test_ops_support import ADMIN, PIPELINE_URL, OpsServer, result_table, table_rows

T0 = 1_790_000_000_000


def test_three_replicas_store_every_acknowledged_row_once(
    tmp_path: Path, postgres: Any, moto_s3: Any
) -> None:
    ca = CertificateAuthority.load_or_create(
        tmp_path / "ca.crt", tmp_path / "ca.key", "ops-sync.local", time.time()
    )
    logs_url = f"s3://{moto_s3.bucket}/replicas"
    flags = [
        "--metadata",
        postgres.fresh_database("replicas"),
        "--logs",
        logs_url,
        "--ca-cert",
        str(tmp_path / "ca.crt"),
        "--ca-key",
        str(tmp_path / "ca.key"),
        "--upkeep-interval",
        "1",
    ]
    replicas = [
        OpsServer(tmp_path / f"replica-{i}", extra=flags, env=moto_s3.env()) for i in range(3)
    ]
    for replica in replicas:
        replica.data.mkdir()
        replica.start()
    balancer = Balancer([r.port for r in replicas])
    client = httpx.Client(
        base_url=replicas[0].url,
        verify=build_ssl_context("client", ca_pem=ca.pem),
        headers={"authorization": f"Bearer {ADMIN}"},
        timeout=30,
    )
    buffers: list[LogBuffer] = []
    try:
        bundles = []
        for i in range(3):
            reply = client.post(
                "/v1/edges", json={"name": f"edge-{i}", "pipeline_url": PIPELINE_URL}
            )
            assert reply.status_code == 201, reply.text
            values = protocol.decode(reply.json()["docker_run_variables"]["EDGE_BUNDLE"])
            values["OPSCENTER_HOST"] = f"127.0.0.1:{balancer.port}"  # edges reach the balancer
            bundles.append(values)

        async def fleet() -> None:
            agents = []
            for i, values in enumerate(bundles):
                persist = tmp_path / f"edge-{i}"
                buffer = LogBuffer(persist / "logbuffer.db")
                buffer.start()
                buffers.append(buffer)
                agent = SyncAgent(
                    values,
                    persist,
                    buffer,
                    dict,
                    ship_interval=0.05,
                    backoff_base=0.1,
                    backoff_cap=0.5,
                    batch_rows=200,
                )
                await agent.start()
                agents.append(agent)
            for step in range(30):
                for i, buffer in enumerate(buffers):
                    buffer.log(result_table(40, T0 + 100_000 * i + 1000 * step))
                    await asyncio.to_thread(buffer.flush)  # stored in SQLite
                if step == 12:
                    replicas[1].stop(signal.SIGKILL)  # mid-ingest, between commits and acks
                await asyncio.sleep(0.1)
            deadline = time.monotonic() + 90
            while any(b.stats()["unsynced_rows"] for b in buffers):
                assert time.monotonic() < deadline, [b.stats() for b in buffers]
                await asyncio.sleep(0.2)
            for agent in agents:
                await agent.stop()

        asyncio.run(fleet())
        # a batch sent to one replica and resent to another: stored once
        resend = _resend_twice(ca, replicas[0], replicas[2], tmp_path)
        assert resend == [(25, 0), (0, 25)]
        rows = table_rows(f"{logs_url}/ccfraud", storage=moto_s3.env())
        assert len(rows) == len(set(rows)) == 3 * 30 * 40 + 25
        for i in range(3):
            assert [s for p, _, s in rows if p == f"edge-{i}"] == list(range(1, 1201))
        ready = httpx.get(
            f"{replicas[2].url}/readyz", verify=build_ssl_context("client", ca_pem=ca.pem)
        )
        assert ready.json() == {"status": "ready", "metadata": "ok", "logs": "ok"}
        metrics = client.get(f"{replicas[2].url}/metrics").text
        assert (
            "ops_rows_ingested_total" in metrics and 'ops_edge_last_seen_seconds{edge="' in metrics
        )
        assert "compacted_files=" in "".join(r.log() for r in replicas)  # upkeep ran
    finally:
        for buffer in buffers:
            buffer.close()
        balancer.close()
        client.close()
        for replica in replicas:
            replica.stop()


def _resend_twice(ca: CertificateAuthority, first: OpsServer, second: OpsServer, tmp: Path) -> list:
    """Join one more edge, send the same batch to `first` then to `second`."""
    from ops_sync.identity import key_pem, make_csr, new_key

    verify = build_ssl_context("client", ca_pem=ca.pem)
    admin = httpx.Client(verify=verify, headers={"authorization": f"Bearer {ADMIN}"}, timeout=30)
    reply = admin.post(
        f"{first.url}/v1/edges", json={"name": "resender", "pipeline_url": PIPELINE_URL}
    )
    token = protocol.decode(reply.json()["docker_run_variables"]["EDGE_BUNDLE"])["JOIN_TOKEN"]
    key = new_key()
    joined = httpx.post(
        f"{first.url}/v1/edge/join",
        json={"token": token, "csr": make_csr(key, "resender").decode()},
        verify=verify,
        timeout=30,
    ).json()
    (tmp / "r.crt").write_text(joined["certificate"])
    (tmp / "r.key").write_bytes(key_pem(key))
    context = build_ssl_context(
        "client", ca_pem=ca.pem, cert_file=tmp / "r.crt", key_file=tmp / "r.key"
    )
    body = protocol.encode_batch(result_table(25, T0))
    headers = protocol.BatchRange("resend-epoch", 1, 25).headers()
    out = []
    for server in (first, second):
        got = httpx.post(
            f"{server.url}/v1/edge/logs", content=body, headers=headers, verify=context, timeout=30
        )
        assert got.status_code == 200, got.text
        out.append((got.json()["stored"], got.json()["duplicates"]))
    admin.close()
    return out
