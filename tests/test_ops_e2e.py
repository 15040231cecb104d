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

import httpx
import pytest

from edge.logbuffer import LogBuffer
from ops_sync import protocol as bundle
from ops_sync.agent import SyncAgent
from ops_sync.identity import (
    CertificateAuthority,
    build_ssl_context,
    cert_pem,
    key_pem,
    make_csr,
    new_key,
)
from ops_sync.protocol import BatchRange, encode_batch
from tests.test_ops_support import (
    ADMIN,
    DAY,
    PIPELINE_URL,
    REPO,
    OpsServer,
    result_table,
    table_rows,
)

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


def distinct_rows(server: OpsServer, pipeline: str = "ccfraud") -> tuple[int, int]:
    rows = table_rows(f"{server.data}/tables/{pipeline}")
    return len(rows), len(set(rows))


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


def test_fifty_concurrent_redemptions_over_tls_give_one_certificate(server: OpsServer) -> None:
    token = add_edge(server, "edge-race")["JOIN_TOKEN"]
    trust = build_ssl_context("client", ca_pem=server.ca.read_bytes())
    csrs = [make_csr(new_key(), f"device-{i}").decode() for i in range(50)]

    async def race() -> list[httpx.Response]:
        async with httpx.AsyncClient(verify=trust, timeout=60) as client:
            return await asyncio.gather(
                *(
                    client.post(f"{server.url}/v1/edge/join", json={"token": token, "csr": csr})
                    for csr in csrs
                )
            )

    replies = asyncio.run(race())
    assert sorted(r.status_code for r in replies) == [200] + [403] * 49
    assert {r.json()["reason"] for r in replies if r.status_code == 403} == {"TokenUsed"}


def test_admin_commands_without_the_ca_say_how_to_fix_it(server: OpsServer) -> None:
    env = {**os.environ, "OPS_URL": server.url, "OPS_ADMIN_TOKEN": ADMIN}
    env.pop("OPS_CA", None)
    done = subprocess.run(
        [sys.executable, "-m", "ops_sync", "list-edges"], env=env, capture_output=True, text=True
    )
    assert done.returncode == 1 and "--ca or OPS_CA" in done.stderr


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
    headers = BatchRange("e", 1, 7).headers()
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
            buffer.log(result_table(250, T0 + 1000 * i))
            await asyncio.to_thread(buffer.flush)  # stored in SQLite
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


# -- two real appliances ------------------------------------------------------------------------
JSON_RECORDS = {"Content-Type": "application/json; format=pandas-records"}


def infer(edge: Any, features: Any) -> list[tuple[tuple[float, ...], int]]:
    body = json.dumps([{"tensor": row} for row in features.tolist()])
    reply = httpx.post(f"{edge.url}/pipelines/breast-cancer", content=body, headers=JSON_RECORDS)
    assert reply.status_code == 200, reply.text
    return [(_key(r["in"]["tensor"]), r["out"]["label"]) for r in reply.json()]


def _key(tensor: list[float]) -> tuple[float, ...]:
    return tuple(round(float(x), 4) for x in tensor)


def ops_rows(server: OpsServer, partition: str) -> list[tuple[tuple[float, ...], int]]:
    done = cli(
        server, "logs", "breast-cancer", "--partition", partition, "--limit", "5000", "--json"
    )
    assert done.returncode == 0, done.stderr
    return [(_key(r["in"]["tensor"]), r["out"]["label"]) for r in json.loads(done.stdout)]


def wait_for(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.25)


def sync_status(edge: Any) -> dict[str, Any]:
    report: dict[str, Any] = httpx.get(f"{edge.url}/health", timeout=5).json()
    return dict(report["sync"])


def restart(server: OpsServer, offset_days: float) -> None:
    server.stop()
    server.clock_offset = offset_days * DAY
    server.start()


def test_two_appliances_ship_their_logs_through_outages_restarts_and_refusals(
    server: OpsServer,
    registry: Any,
    example: Path,
    start_edge: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import numpy as np

    from tests.conftest import publish

    monkeypatch.setenv("OPS_ADMIN_TOKEN", ADMIN)
    monkeypatch.setenv("OPS_CA", str(server.ca))
    published = publish(example / "pipeline.yaml", registry, extra=("--opscenter", server.url))
    url = published["pipeline_url"]
    publishes = json.loads(cli(server, "publishes", "--json").stdout)
    assert [p["pipeline_url"] for p in publishes] == [url]

    def mint(name: str) -> str:
        done = cli(server, "add-edge", name, "--publish", url, "--json")
        assert done.returncode == 0, done.stderr
        return str(json.loads(done.stdout)["docker_run_variables"]["EDGE_BUNDLE"])

    bundles = {name: mint(name) for name in ("edge-1", "edge-2")}
    edges = {
        name: start_edge(url, registry, persist=tmp_path / name, env={"EDGE_BUNDLE": text})
        for name, text in bundles.items()
    }
    features = np.load(example / "data/10k-rows.npy")
    sent: dict[str, list[Any]] = {"edge-1": [], "edge-2": []}
    sent["edge-1"] += infer(edges["edge-1"], features[0:40])
    sent["edge-2"] += infer(edges["edge-2"], features[40:65])
    for name, edge in edges.items():
        wait_for(lambda e=edge: "Node attestation was successful" in e.output(), 30, "join")
        assert bundle.decode(bundles[name])["JOIN_TOKEN"] not in edge.output()
        wait_for(lambda n=name: sorted(ops_rows(server, n)) == sorted(sent[n]), 30, name)

    # The ops center goes away; the appliances keep answering and buffering. It comes back
    # three (simulated) days later: within the 7 days, so everything arrives, once.
    server.stop()
    sent["edge-1"] += infer(edges["edge-1"], features[100:130])
    sent["edge-2"] += infer(edges["edge-2"], features[130:150])
    wait_for(lambda: sync_status(edges["edge-1"])["last_error"], 30, "the sync to see it gone")
    restart(server, offset_days=3)
    for name in edges:
        wait_for(lambda n=name: sorted(ops_rows(server, n)) == sorted(sent[n]), 60, name)

    # An appliance killed mid-sync and restarted: no second join, nothing lost or doubled.
    sent["edge-1"] += infer(edges["edge-1"], features[200:260])
    edges["edge-1"].stop(signal.SIGKILL)
    edges["edge-1"].start()
    assert "Node attestation was successful" not in edges["edge-1"].output()
    sent["edge-1"] += infer(edges["edge-1"], features[300:310])
    wait_for(lambda: sorted(ops_rows(server, "edge-1")) == sorted(sent["edge-1"]), 60, "edge-1")
    total = len(sent["edge-1"]) + len(sent["edge-2"])
    assert distinct_rows(server, "breast-cancer") == (total, total)

    # Refusals, each with its own words. A bundle used twice:
    reused = start_edge(
        url,
        registry,
        persist=tmp_path / "reused",
        env={"EDGE_BUNDLE": bundles["edge-1"]},
        wait_ready=False,
    )
    assert reused.wait_exit(60) == 2
    assert "already redeemed" in reused.output() and "Traceback" not in reused.output()
    assert bundle.decode(bundles["edge-1"])["JOIN_TOKEN"] not in reused.output()
    # A removed edge:
    assert cli(server, "remove-edge", "edge-2").returncode == 0
    infer(edges["edge-2"], features[400:402])
    wait_for(lambda: sync_status(edges["edge-2"])["credentials"] == "revoked", 30, "revoked")
    assert sync_status(edges["edge-2"])["health"] == "edge removed"
    # A token minted now and tried five (simulated) days later:
    late_bundle = mint("edge-3")
    # A silent edge: eight days after its last contact the ops center refuses it, while the
    # appliance keeps serving and says why.
    restart(server, offset_days=8)
    late = start_edge(
        url,
        registry,
        persist=tmp_path / "late",
        env={"EDGE_BUNDLE": late_bundle},
        wait_ready=False,
    )
    assert late.wait_exit(60) == 2
    assert "expired" in late.output() and "24 h" in late.output()
    assert bundle.decode(late_bundle)["JOIN_TOKEN"] not in late.output()
    infer(edges["edge-1"], features[500:505])
    wait_for(lambda: sync_status(edges["edge-1"])["health"] == "credentials expired", 30, "expiry")
    assert infer(edges["edge-1"], features[505:506])  # still serving
