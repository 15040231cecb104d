"""Rollout end to end: the real registry, a real `ops-sync serve`, two real `edge serve`
appliances with their own bundles, and clients streaming requests during the swap.

v2 goes to one tag while requests stream (no request fails; the rows carry v1, then v2); a
broken v3 (a model that will not load) is refused and v2 serves on; a rollback to v1; a device
that was off during a rollout catches up when it returns, and a restart with the registry down
serves the rolled-out version from the cache."""

from __future__ import annotations

import collections
import json
import shutil
import threading
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.conftest import publish
from tests.test_ops_e2e import JSON_RECORDS, _key, cli, wait_for
from tests.test_ops_support import ADMIN, OpsServer

FAST = {"SYNC_HEARTBEAT_INTERVAL": "0.5", "PULL_RETRY_MAX": "2"}


@pytest.fixture()
def server(tmp_path: Path) -> Any:
    ops = OpsServer(tmp_path / "ops")
    ops.start()
    yield ops
    ops.stop()


def edge_view(server: OpsServer, name: str) -> dict[str, Any]:
    done = cli(server, "list-edges", "--json")
    assert done.returncode == 0, done.stderr
    (edge,) = [e for e in json.loads(done.stdout) if e["name"] == name]
    return dict(edge)


def running_version(edge: Any) -> str | None:
    try:
        report = httpx.get(f"{edge.url}/health", timeout=5).json()
    except httpx.TransportError:
        return None
    return (report.get("running") or {}).get("pipeline_version")


class Stream:
    """Clients posting one row at a time, each answer kept as (row, model version, status)."""

    def __init__(self, edge: Any, features: np.ndarray, clients: int = 4) -> None:
        self.edge, self.features = edge, features
        self.answers: list[tuple[tuple[float, ...], str | None, int]] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._client, args=(i,)) for i in range(clients)]

    def __enter__(self) -> Stream:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(30)

    def _client(self, offset: int) -> None:
        with httpx.Client(timeout=30) as client:
            i = offset
            while not self.stop.is_set():
                row = self.features[i % len(self.features)]
                body = json.dumps([{"tensor": row.tolist()}])
                try:
                    reply = client.post(
                        f"{self.edge.url}/pipelines/breast-cancer",
                        content=body,
                        headers=JSON_RECORDS,
                    )
                    version = reply.json()[0]["model_version"] if reply.status_code == 200 else None
                    self.answers.append((_key(row), version, reply.status_code))
                except httpx.HTTPError as exc:
                    self.answers.append((_key(row), repr(exc), 0))
                i += len(self.threads)


def logged(server: OpsServer, partition: str, version: str) -> list[tuple[float, ...]]:
    done = cli(
        server,
        "logs",
        "breast-cancer",
        "--partition",
        partition,
        "--pipeline-version",
        version,
        "--limit",
        "100000",
        "--json",
    )
    assert done.returncode == 0, done.stderr
    return [_key(r["in"]["tensor"]) for r in json.loads(done.stdout)]


def test_rollout_swap_refusal_rollback_and_catch_up(
    server: OpsServer,
    registry: Any,
    example: Path,
    start_edge: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPS_ADMIN_TOKEN", ADMIN)
    monkeypatch.setenv("OPS_CA", str(server.ca))
    extra = ("--opscenter", server.url)
    v1 = publish(example / "pipeline.yaml", registry, extra=extra)
    v2 = publish(example / "pipeline.yaml", registry, extra=extra)
    broken = tmp_path / "broken"
    shutil.copytree(example, broken)
    (broken / "models/breast-cancer.onnx").write_bytes(b"not an onnx model" * 64)
    v3 = publish(broken / "pipeline.yaml", registry, extra=extra)
    model_of = {}  # a response's model_version -> the pipeline version that answered
    registered = json.loads(cli(server, "publishes", "--json").stdout)
    assert [p["manifest_digest"] for p in registered] == [
        v["manifest_digest"] for v in (v1, v2, v3)
    ]
    edges: dict[str, Any] = {}
    for name, tag in (("edge-1", "canary"), ("edge-2", "fleet")):
        done = cli(
            server, "add-edge", name, "--publish", v1["pipeline_url"], "--tag", tag, "--json"
        )
        assert done.returncode == 0, done.stderr
        text = json.loads(done.stdout)["docker_run_variables"]["EDGE_BUNDLE"]
        env = {"EDGE_BUNDLE": text, **FAST}
        edges[name] = start_edge(v1["pipeline_url"], registry, persist=tmp_path / name, env=env)
    features = np.load(example / "data/10k-rows.npy")
    for name in edges:
        wait_for(
            lambda n=name: edge_view(server, n)["running"] is not None, 30, f"{name} heartbeat"
        )
        assert edge_view(server, name)["rollout"]["state"] == "none"

    # v2 to the canary tag while four clients stream requests: none fails.
    with Stream(edges["edge-1"], features[:2000]) as stream:
        wait_for(lambda: len(stream.answers) > 50, 30, "requests on v1")
        done = cli(server, "rollout", v2["pipeline_url"], "--tag", "canary")
        assert done.returncode == 0 and "edge-1" in done.stdout, done.stderr
        wait_for(lambda: running_version(edges["edge-1"]) == v2["pipeline_version"], 60, "v2")
        count = len(stream.answers)
        wait_for(lambda: len(stream.answers) > count + 50, 30, "requests on v2")
    assert [a for a in stream.answers if a[2] != 200] == []
    versions = [a[1] for a in stream.answers]
    assert len(set(versions)) == 2 and versions[0] != versions[-1]
    model_of[versions[0]], model_of[versions[-1]] = v1["pipeline_version"], v2["pipeline_version"]
    assert "Rolled out: pipeline breast-cancer" in edges["edge-1"].output()
    assert running_version(edges["edge-2"]) == v1["pipeline_version"]  # not in the tag
    wait_for(lambda: edge_view(server, "edge-1")["rollout"]["state"] == "current", 30, "current")
    view = edge_view(server, "edge-1")
    assert view["desired"]["pipeline_version"] == view["running"]["pipeline_version"]
    assert view["running"]["digest"] == v2["manifest_digest"] == view["desired"]["digest"]
    # each row at the ops center carries the version that answered it
    answered = collections.Counter((row, model_of[version]) for row, version, _ in stream.answers)
    stored: collections.Counter[tuple[tuple[float, ...], str]] = collections.Counter()
    for published in (v1, v2):
        version = published["pipeline_version"]
        wait_for(
            lambda v=version: (
                len(logged(server, "edge-1", v))
                == sum(n for (_, w), n in answered.items() if w == v)
            ),
            60,
            f"rows of {version} at the ops center",
        )
        stored.update((row, version) for row in logged(server, "edge-1", version))
    assert stored == answered

    # A broken v3 (its model will not load): refused, v2 serves on, the reason is shown.
    assert cli(server, "rollout", v3["pipeline_url"], "--edge", "edge-1").returncode == 0
    wait_for(lambda: edge_view(server, "edge-1")["rollout"]["state"] == "failed", 60, "failed")
    rollout = edge_view(server, "edge-1")["rollout"]
    assert "not a loadable ONNX model" in rollout["reason"] and rollout["attempts"] >= 1
    assert running_version(edges["edge-1"]) == v2["pipeline_version"]
    reply = httpx.post(
        f"{edges['edge-1'].url}/pipelines/breast-cancer",
        content=json.dumps([{"tensor": features[0].tolist()}]),
        headers=JSON_RECORDS,
    )
    assert reply.status_code == 200
    wait_for(lambda: edge_view(server, "edge-1")["rollout"]["attempts"] >= 2, 60, "a retry")
    status = cli(server, "rollout", "--status")
    assert "failed (attempt" in status.stdout and "not a loadable ONNX model" in status.stdout

    # Rollback: a rollout of v1.
    assert cli(server, "rollout", v1["pipeline_url"], "--edge", "edge-1").returncode == 0
    wait_for(lambda: running_version(edges["edge-1"]) == v1["pipeline_version"], 60, "rollback")
    wait_for(lambda: edge_view(server, "edge-1")["rollout"]["state"] == "current", 30, "current")

    # A device off during the rollout catches up when it returns.
    edges["edge-2"].stop()
    assert cli(server, "rollout", v2["pipeline_url"], "--tag", "fleet").returncode == 0
    assert edge_view(server, "edge-2")["rollout"]["state"] == "pending"
    edges["edge-2"].start()
    wait_for(lambda: running_version(edges["edge-2"]) == v2["pipeline_version"], 60, "catch up")
    wait_for(lambda: edge_view(server, "edge-2")["rollout"]["state"] == "current", 30, "current")

    # A restart with the registry down serves the rolled-out version from the cache.
    edges["edge-2"].stop()
    registry.stop()
    try:
        edges["edge-2"].start()
        assert running_version(edges["edge-2"]) == v2["pipeline_version"]
        assert "Serving the last rolled-out pipeline" in edges["edge-2"].output()
        assert "serving the cached copy" in edges["edge-2"].output()
    finally:
        registry.start()
    for edge in edges.values():
        assert registry.password not in edge.output() and ADMIN not in edge.output()
