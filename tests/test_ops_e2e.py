"""End to end with real processes on loopback: `ops-sync serve` with TLS, the CLI, the sync
agent over real mutual TLS, a killed ops center, a clock jump of days, and two real `edge
serve` appliances with their own bundles."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import duckdb
import httpx
import pytest

from edge.logbuffer import LogBuffer
from ops_sync import bundle
from ops_sync.agent import SyncAgent, encode_batch
from ops_sync.identity import (
    CertificateAuthority,
    build_ssl_context,
    cert_pem,
    key_pem,
    make_csr,
    new_key,
)
from tests.test_ops_support import ADMIN, DAY, PIPELINE_URL, REPO, OpsServer, result_table

T0 = 1_790_000_000_000


@pytest.fixture()
def server(tmp_path: Path) -> Any:
    ops = OpsServer(tmp_path / "ops")
    ops.start()
    yield ops
    ops.stop()


def cli(server: OpsServer, *args: str, token: str = ADMIN) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OPS_URL": server.url, "OPS_ADMIN_TOKEN": token, "OPS_CA": str(server.ca)}
    return subprocess.run(
        [sys.executable, "-m", "ops_sync", *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


def add_edge(server: OpsServer, name: str, url: str = PIPELINE_URL) -> dict[str, str]:
    done = cli(server, "add-edge", name, "--publish", url, "--tag", "e2e", "--json")
    assert done.returncode == 0, done.stderr
    return bundle.decode(json.loads(done.stdout)["docker_run_variables"]["EDGE_BUNDLE"])


def distinct_rows(server: OpsServer) -> tuple[int, int]:
    files = f"{server.data}/logs/**/*.parquet"
    sql = f"SELECT count(*), count(DISTINCT (_epoch, _seq)) FROM read_parquet('{files}')"
    ((count, distinct),) = duckdb.sql(sql).fetchall()
    return int(count), int(distinct)


async def wait_until(check: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        await asyncio.sleep(0.05)


def test_serve_writes_its_ca_and_keeps_keys_private(server: OpsServer) -> None:
    assert server.ca.read_bytes().startswith(b"-----BEGIN CERTIFICATE-----")
    for key in ("ca.key", "server.key"):
        assert stat.S_IMODE((server.data / key).stat().st_mode) == 0o600


def test_cli_add_list_remove_and_refusals(server: OpsServer) -> None:
    values = add_edge(server, "edge-a")
    assert values["OPSCENTER_HOST"] == f"127.0.0.1:{server.port}"
    assert bundle.ca_pem(values) == server.ca.read_bytes()
    edges = json.loads(cli(server, "list-edges", "--json").stdout)
    assert [(e["name"], e["tags"], e["credentials"]) for e in edges] == [
        ("edge-a", ["e2e"], "not joined")
    ]
    again = cli(server, "add-edge", "edge-a", "--publish", PIPELINE_URL)
    assert again.returncode == 1 and "exists" in again.stderr
    assert cli(server, "remove-edge", "edge-a").returncode == 0
    assert json.loads(cli(server, "list-edges", "--json").stdout) == []
    wrong = cli(server, "list-edges", token="not-the-token")
    assert wrong.returncode == 1 and "admin token" in wrong.stderr
    assert "not-the-token" not in wrong.stderr + wrong.stdout
    publishes = json.loads(cli(server, "publishes", "--json").stdout)
    assert publishes[0]["pipeline_url"] == PIPELINE_URL
    for text in (server.log(), json.dumps(publishes)):
        assert values["JOIN_TOKEN"] not in text and ADMIN not in text


def test_identity_comes_from_the_tls_peer_certificate(server: OpsServer, tmp_path: Path) -> None:
    """The uvicorn protocol subclass hands the verified peer certificate to the app."""
    trust = build_ssl_context("client", ca_pem=server.ca.read_bytes())
    certs = {}
    for name in ("edge-a", "edge-b"):
        key = new_key()
        reply = httpx.post(
            f"{server.url}/v1/edge/join",
            json={
                "token": add_edge(server, name)["JOIN_TOKEN"],
                "csr": make_csr(key, name).decode(),
            },
            verify=trust,
            timeout=10,
        )
        assert reply.status_code == 200, reply.text
        (tmp_path / f"{name}.crt").write_text(reply.json()["certificate"])
        (tmp_path / f"{name}.key").write_bytes(key_pem(key))
        certs[name] = build_ssl_context(
            "client",
            ca_pem=server.ca.read_bytes(),
            cert_file=tmp_path / f"{name}.crt",
            key_file=tmp_path / f"{name}.key",
        )
    table = result_table(7, T0, partition="edge-b")  # edge-a claims to be edge-b
    headers = {"x-sync-epoch": "e", "x-sync-first-seq": "1", "x-sync-last-seq": "7"}
    reply = httpx.post(
        f"{server.url}/v1/edge/logs",
        content=encode_batch(table),
        headers=headers,
        verify=certs["edge-a"],
        timeout=10,
    )
    assert reply.json()["stored"] == 7
    logs = cli(server, "logs", "ccfraud", "--json", "--dataset", "time", "--dataset", "metadata")
    assert {r["metadata"]["partition"] for r in json.loads(logs.stdout)} == {"edge-a"}

    no_cert = httpx.post(f"{server.url}/v1/edge/heartbeat", json={}, verify=trust, timeout=10)
    assert no_cert.status_code == 401 and no_cert.json()["reason"] == "CertificateRequired"

    foreign_ca = CertificateAuthority.load_or_create(
        tmp_path / "x.crt", tmp_path / "x.key", "ops-sync.local", time.time()
    )
    key = new_key()
    (tmp_path / "f.crt").write_bytes(
        cert_pem(
            foreign_ca.issue_edge(
                make_csr(key, "f"), "0" * 8 + "-0000-0000-0000-" + "0" * 12, time.time()
            )
        )
    )
    (tmp_path / "f.key").write_bytes(key_pem(key))
    forged = build_ssl_context(
        "client",
        ca_pem=server.ca.read_bytes(),
        cert_file=tmp_path / "f.crt",
        key_file=tmp_path / "f.key",
    )
    with pytest.raises(httpx.HTTPError):  # refused in the TLS handshake
        httpx.post(f"{server.url}/v1/edge/heartbeat", json={}, verify=forged, timeout=10)


def test_agent_over_mtls_survives_an_ops_center_kill_without_loss_or_duplicates(
    server: OpsServer, tmp_path: Path
) -> None:
    values = add_edge(server, "edge-a")
    persist = tmp_path / "persist"
    buffer = LogBuffer(persist / "logbuffer.db")
    buffer.start()

    async def scenario() -> None:
        agent = SyncAgent(
            values,
            persist,
            buffer,
            dict,
            ship_interval=0.05,
            heartbeat_interval=0.5,
            backoff_base=0.1,
            backoff_cap=0.5,
            batch_rows=500,
        )
        await agent.start()
        assert agent.status()["joined"]
        for i in range(20):
            await buffer.append(result_table(250, T0 + 1000 * i))
            if i == 8:
                server.stop(signal.SIGKILL)  # mid-sync
            if i == 14:
                server.start()
            await asyncio.sleep(0.05)
        await wait_until(lambda: buffer.stats()["unsynced_rows"] == 0, 60)
        await agent.stop()

    try:
        asyncio.run(scenario())
    finally:
        buffer.close()
    assert distinct_rows(server) == (5000, 5000)
    logs = cli(server, "logs", "ccfraud", "--partition", "edge-a", "--limit", "10", "--json")
    assert len(json.loads(logs.stdout)) == 10
    assert "There are more logs available" in logs.stderr


def test_a_clock_jump_of_eight_days_refuses_the_silent_edge(
    server: OpsServer, tmp_path: Path
) -> None:
    values = add_edge(server, "edge-a")
    persist = tmp_path / "persist"
    buffer = LogBuffer(persist / "logbuffer.db")
    buffer.start()

    async def scenario() -> dict[str, Any]:
        agent = SyncAgent(values, persist, buffer, dict, ship_interval=0.05, heartbeat_interval=0.2)
        await agent.start()
        await agent.stop()
        server.stop()
        server.clock_offset = 8 * DAY
        server.start()
        again = SyncAgent(values, persist, buffer, dict, ship_interval=0.05, heartbeat_interval=0.2)
        await again.start()
        await wait_until(lambda: again.status()["last_error"] is not None)
        await again.stop()
        return again.status()

    try:
        status = asyncio.run(scenario())
    finally:
        buffer.close()
    assert status["credentials"] == "expired" and status["health"] == "credentials expired"
    assert "CredentialsExpired" in status["last_error"]
    (edge,) = json.loads(cli(server, "list-edges", "--json").stdout)
    assert edge["credentials"] == "expired"
