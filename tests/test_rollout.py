"""Rollout in the ops center (on SQLite and PostgreSQL) and in the sync agent, in process:
the desired version per edge, the stable percent of a tag, the 4xx refusals, the state the
edges' heartbeats make of it, the agent handing the desired URL to the appliance, what
`ops-sync list-edges` / `rollout` print, and the edge's rollout worker backing off."""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from edge.appliance import Backoff
from edge.logbuffer import LogBuffer
from edge.rollout import Rollout
from ops_sync import cli
from ops_sync import client as client_module
from ops_sync import protocol as bundle
from ops_sync.agent import SyncAgent
from ops_sync.client import AdminClient
from ops_sync.rollout import choose
from tests.test_ops_records import _SyncASGI
from tests.test_ops_support import ADMIN, PIPELINE_URL, Ops, cert_transport

V2 = PIPELINE_URL.rsplit(":", 1)[0] + ":v2"
DIGEST = "sha256:" + "ab" * 32


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def admin(ops: Ops, method: str, path: str, **kw: Any) -> httpx.Response:
    async with ops.admin_client() as client:
        return await client.request(method, path, **kw)


async def heartbeat(ops: Ops, cert: str, health: dict[str, Any]) -> dict[str, Any]:
    async with ops.edge_client(cert) as client:
        reply = await client.post("/v1/edge/heartbeat", json={"health": health})
        assert reply.status_code == 200, reply.text
        body: dict[str, Any] = reply.json()
        return body


def edges(ops: Ops) -> dict[str, dict[str, Any]]:
    reply = run(admin(ops, "GET", "/v1/edges"))
    return {e["name"]: e for e in reply.json()["edges"]}


@pytest.fixture()
def ops(tmp_path: Path, db_url: str) -> Ops:
    return Ops(tmp_path / "ops", metadata_url=db_url)


def documented_pick(edge_id: str, percent: int) -> bool:
    """README's rule, written out here: the first 8 bytes of sha256(edge id), as a number,
    modulo 100, below the percent."""
    return int(hashlib.sha256(edge_id.encode()).hexdigest()[:16], 16) % 100 < percent


@pytest.fixture()
def ops_sync(ops: Ops, monkeypatch: pytest.MonkeyPatch, capsys: Any) -> Any:
    """Run `ops-sync ARGS` against `ops` (the CLI's own parsing and printing); its stdout."""

    def local(url: str, token: str, ca: Any = None, **kw: Any) -> AdminClient:
        return AdminClient(url, token, ca, transport=_SyncASGI(ops))

    monkeypatch.setattr(client_module, "AdminClient", local)

    def run_cli(*argv: str) -> str:
        capsys.readouterr()
        status = cli.main([*argv, "--opscenter", "https://ops", "--admin-token", ADMIN])
        out, err = capsys.readouterr()
        assert status == 0, err
        return out

    return run_cli


def table(text: str) -> dict[str, dict[str, str]]:
    """A tab-separated table the CLI printed, as {NAME: {COLUMN: cell}}."""
    header, *lines = text.splitlines()
    columns = header.split("\t")
    rows = [line.split("\t") for line in lines]
    assert all(len(row) == len(columns) for row in rows), text
    return {row[columns.index("NAME")]: dict(zip(columns, row, strict=True)) for row in rows}


def enrol(ops: Ops, name: str, tags: list[str]) -> str:
    """Add and join an edge; its certificate."""
    added = ops.center.add_edge(name, PIPELINE_URL, tags)
    token = bundle.decode(added["docker_run_variables"]["EDGE_BUNDLE"])["JOIN_TOKEN"]
    return ops.join(token).cert


def test_rollout_sets_desired_and_heartbeats_make_it_pending_failed_current(ops: Ops) -> None:
    cert = enrol(ops, "edge-a", ["canary"])
    enrol(ops, "edge-b", ["other"])
    run(admin(ops, "POST", "/v1/publishes", json={"pipeline_url": V2, "manifest_digest": DIGEST}))
    before = edges(ops)["edge-a"]
    assert before["desired"] is None and before["rollout"]["state"] == "none"
    assert run(heartbeat(ops, cert, {}))["desired"] is None

    reply = run(admin(ops, "POST", "/v1/rollouts", json={"pipeline_url": V2, "tag": "canary"}))
    assert reply.status_code == 200, reply.text
    assert reply.json()["edges"] == ["edge-a"] and reply.json()["digest"] == DIGEST
    seen = edges(ops)
    assert seen["edge-b"]["desired"] is None  # not in the tag
    desired = seen["edge-a"]["desired"]
    assert (desired["pipeline_url"], desired["pipeline_version"], desired["digest"]) == (
        V2,
        "v2",
        DIGEST,
    )
    assert seen["edge-a"]["rollout"]["state"] == "pending"

    running_v1 = {"pipeline_url": PIPELINE_URL, "pipeline_version": "v1", "digest": None}
    failed = {"pipeline_url": V2, "state": "failed", "reason": "model will not load"}
    told = run(heartbeat(ops, cert, {"running": running_v1, "rollout": {**failed, "attempts": 3}}))
    assert told["desired"]["pipeline_url"] == V2  # the edge learns it from the reply
    edge = edges(ops)["edge-a"]
    assert edge["running"] == running_v1
    assert edge["rollout"]["state"] == "failed"
    assert (edge["rollout"]["reason"], edge["rollout"]["attempts"]) == ("model will not load", 3)

    running_v2 = {"pipeline_url": V2, "pipeline_version": "v2", "digest": DIGEST}
    run(heartbeat(ops, cert, {"running": running_v2, "rollout": {"pipeline_url": V2}}))
    assert edges(ops)["edge-a"]["rollout"]["state"] == "current"

    # garbage in a heartbeat is not shown as facts
    run(heartbeat(ops, cert, {"running": {"pipeline_url": 7}, "rollout": "x"}))
    edge = edges(ops)["edge-a"]
    assert edge["running"] is None and edge["rollout"]["state"] == "pending"
    for when in (1e300, 2.0**62, -5, "soon"):  # a hostile updated_at is not a time
        rollout = {"pipeline_url": V2, "state": "failed", "updated_at": when}
        assert run(heartbeat(ops, cert, {"rollout": rollout})) is not None
        listed = run(admin(ops, "GET", "/v1/edges"))
        assert listed.status_code == 200, listed.text
        (shown,) = [e for e in listed.json()["edges"] if e["name"] == "edge-a"]
        assert shown["rollout"]["updated_at"] == desired["set_at"]


def test_rollout_refusals_name_what_is_wrong(ops: Ops) -> None:
    enrol(ops, "edge-a", ["canary"])
    other = PIPELINE_URL.replace("/ccfraud:", "/churn:")
    run(admin(ops, "POST", "/v1/publishes", json={"pipeline_url": other}))
    cases = [
        ({"pipeline_url": V2, "edge": "edge-a"}, 404, "no publish is registered"),
        ({"pipeline_url": other, "tag": "canary"}, 400, "edge(s) edge-a serve another pipeline"),
        ({"pipeline_url": PIPELINE_URL}, 400, "exactly one of edge"),
        ({"pipeline_url": PIPELINE_URL, "edge": "edge-a", "tag": "canary"}, 400, "exactly one"),
        ({"pipeline_url": PIPELINE_URL, "edge": "edge-a", "percent": 50}, 400, "give tag"),
        ({"pipeline_url": PIPELINE_URL, "tag": "canary", "percent": 0}, 400, "percent"),
        ({"pipeline_url": PIPELINE_URL, "tag": "canary", "percent": 101}, 400, "percent"),
        ({"pipeline_url": PIPELINE_URL, "edge": "nobody"}, 404, "'nobody'"),
        ({"pipeline_url": PIPELINE_URL, "tag": "nope"}, 404, "'nope'"),
        ({"pipeline_url": "a b", "tag": "canary"}, 400, "pipeline_url"),
    ]
    for body, status, words in cases:
        reply = run(admin(ops, "POST", "/v1/rollouts", json=body))
        assert reply.status_code == status, (body, reply.text)
        assert words in reply.json()["error"], (body, reply.json())
    anonymous = run(admin(ops, "POST", "/v1/rollouts", json={}, headers={"authorization": ""}))
    assert anonymous.status_code == 401
    assert edges(ops)["edge-a"]["desired"] is None  # nothing was set by a refusal


def test_percent_is_a_stable_subset_that_only_grows(ops: Ops) -> None:
    for i in range(30):
        ops.center.add_edge(f"edge-{i}", PIPELINE_URL, ["fleet"])
    ids = {e["name"]: e["id"] for e in ops.center.list_edges()}
    picked = {}
    for percent in (20, 50, 100):
        body = {"pipeline_url": PIPELINE_URL, "tag": "fleet", "percent": percent}
        reply = run(admin(ops, "POST", "/v1/rollouts", json=body))
        picked[percent] = set(reply.json()["edges"])
        assert picked[percent] == {n for n, i in ids.items() if documented_pick(i, percent)}
    assert picked[20] < picked[50] < picked[100] == set(ids)
    again = {"pipeline_url": PIPELINE_URL, "tag": "fleet", "percent": 20}
    assert set(run(admin(ops, "POST", "/v1/rollouts", json=again)).json()["edges"]) == picked[20]


def test_list_edges_and_rollout_status_print_desired_running_and_state(
    ops: Ops, ops_sync: Any
) -> None:
    failing, done = enrol(ops, "edge-a", ["canary"]), enrol(ops, "edge-b", ["canary"])
    enrol(ops, "edge-c", ["other"])
    run(admin(ops, "POST", "/v1/publishes", json={"pipeline_url": V2, "manifest_digest": DIGEST}))
    said = ops_sync("rollout", V2, "--tag", "canary")
    assert said.strip() == f"Rollout of v2 ({V2}) to edge-a, edge-b"
    v1 = {"pipeline_url": PIPELINE_URL, "pipeline_version": "v1", "digest": None}
    attempt = {"pipeline_url": V2, "state": "failed", "reason": "model will\n\tnot load"}
    run(heartbeat(ops, failing, {"running": v1, "rollout": {**attempt, "attempts": 2}}))
    v2 = {"pipeline_url": V2, "pipeline_version": "v2", "digest": DIGEST}
    run(heartbeat(ops, done, {"running": v2, "rollout": {"pipeline_url": V2}}))
    expected = {
        "edge-a": ("v2", "v1", "failed (attempt 2): model will not load"),
        "edge-b": ("v2", "v2", "current"),
        "edge-c": ("-", "-", "none"),  # no rollout asked, never heard from
    }

    listed = table(ops_sync("list-edges"))
    shown = {n: (r["DESIRED"], r["RUNNING"], r["ROLLOUT"]) for n, r in listed.items()}
    assert shown == expected
    assert listed["edge-c"]["TAGS"] == "other"

    status = table(ops_sync("rollout", "--status"))
    assert list(next(iter(status.values()))) == ["NAME", "TAGS", "DESIRED", "RUNNING", "ROLLOUT"]
    shown = {n: (r["DESIRED"], r["RUNNING"], r["ROLLOUT"]) for n, r in status.items()}
    assert shown == expected
    assert status["edge-a"]["TAGS"] == "canary"


def test_rollout_percent_through_the_cli_picks_the_documented_stable_subset(
    ops: Ops, ops_sync: Any
) -> None:
    for i in range(30):
        ops.center.add_edge(f"edge-{i}", PIPELINE_URL, ["fleet"])
    ops.center.add_edge("elsewhere", PIPELINE_URL, ["other"])
    run(admin(ops, "POST", "/v1/publishes", json={"pipeline_url": V2}))
    ids = {e["name"]: e["id"] for e in ops.center.list_edges() if "fleet" in e["tags"]}
    expected = {name for name, edge_id in ids.items() if documented_pick(edge_id, 50)}
    assert 0 < len(expected) < 30  # a real subset (the ids are random: 2 in 10**9 it is not)

    argv = ("rollout", V2, "--tag", "fleet", "--percent", "50")
    first = json.loads(ops_sync(*argv, "--json"))
    assert (first["pipeline_version"], set(first["edges"])) == ("v2", expected)
    said = ops_sync(*argv).strip()  # the same again, as text
    prefix = f"Rollout of v2 ({V2}) to "
    assert said.startswith(prefix) and set(said[len(prefix) :].split(", ")) == expected
    body = {"pipeline_url": V2, "tag": "fleet", "percent": 50}
    api = run(admin(ops, "POST", "/v1/rollouts", json=body)).json()
    assert set(api["edges"]) == expected  # the API picks what the CLI picked

    desired = {
        e["name"] for e in json.loads(ops_sync("list-edges", "--json")) if e["desired"] is not None
    }
    assert desired == expected  # only those were told to move


def test_percent_takes_the_points_below_n_and_not_n_itself() -> None:
    """At the edge of the rule: ids whose point (`documented_pick`: sha256, first 8 bytes,
    modulo 100) is N-1, N and N+1; a tag's N% takes only the first. The ids are found here."""
    point: dict[int, str] = {}
    for i in range(5000):
        edge_id = f"00000000-0000-4000-8000-{i:012d}"
        point.setdefault(int(hashlib.sha256(edge_id.encode()).hexdigest()[:16], 16) % 100, edge_id)
    for n in (1, 37, 99):
        near = [p for p in (n - 1, n, n + 1) if p < 100]
        edges = [{"name": f"at-{p}", "id": point[p], "tags": ["fleet"]} for p in near]
        assert [e["name"] for e in choose(edges, None, "fleet", n)] == [f"at-{n - 1}"]
        assert choose(edges, None, "fleet", None) == edges  # a tag without percent: all


class Switch:
    """The appliance's side of `PipelineSwitch`, recorded."""

    def __init__(self) -> None:
        self.asked: list[str] = []
        self.state: dict[str, Any] = {"state": "none"}

    def switch_to(self, url: str) -> None:
        self.asked.append(url)
        self.state = {"pipeline_url": url, "state": "failed", "reason": "no", "updated_at": 1.0}

    def rollout_status(self) -> dict[str, Any]:
        return dict(self.state)


def test_the_agent_hands_the_desired_url_over_and_reports_at_once(
    tmp_path: Path, db_url: str
) -> None:
    ops = Ops(tmp_path / "ops", metadata_url=db_url)
    added = ops.center.add_edge("edge-a", PIPELINE_URL, ["canary"])
    values = bundle.decode(added["docker_run_variables"]["EDGE_BUNDLE"])
    persist = tmp_path / "persist"
    buffer = LogBuffer(persist / "logbuffer.db")
    buffer.start()
    switch = Switch()
    cert_file = persist / "ops_sync" / "edge.crt"
    transport = cert_transport(
        ops.app, lambda: cert_file.read_text() if cert_file.exists() else None
    )

    async def scenario() -> None:
        agent = SyncAgent(
            values,
            persist,
            buffer,
            lambda: {"rollout": switch.rollout_status()},
            transport=transport,
            ship_interval=0.02,
            heartbeat_interval=3600,  # only the rollout's change makes the second heartbeat
            switch=switch,
        )
        await agent.start()
        ops.center.register_publish({"pipeline_url": V2})
        ops.center.rollout({"pipeline_url": V2, "edge": "edge-a"})
        # the first heartbeat went before the rollout: nudge one by a change of state
        switch.state = {"state": "pending", "updated_at": 0.5}
        deadline = asyncio.get_running_loop().time() + 10
        while ops.center.list_edges()[0]["rollout"]["state"] != "failed":
            assert asyncio.get_running_loop().time() < deadline, ops.center.list_edges()
            await asyncio.sleep(0.02)
        await agent.stop()

    try:
        run(scenario())
    finally:
        buffer.close()
    assert switch.asked[0] == V2
    assert edges(ops)["edge-a"]["rollout"]["reason"] == "no"


def test_a_failing_rollout_retries_after_growing_waits() -> None:
    """The edge's rollout worker, with the appliance's own `Backoff` and a load that always
    fails: each failed attempt's status says when it retries (`next_retry`), the waits double
    (each in [half, all] of its step, so each is at least the one before) up to the cap, and
    the next attempt does wait that long."""
    stopping = threading.Event()
    seen: list[tuple[float, dict[str, Any]]] = []  # (when a load began, the status then)

    def load(url: str) -> Any:
        seen.append((time.time(), worker.status()))
        if len(seen) == 7:
            stopping.set()
        raise RuntimeError("registry unreachable")

    worker = Rollout(
        load,
        install=lambda pipeline: pytest.fail("nothing loads"),
        serving_url=lambda: PIPELINE_URL,
        may_start=lambda url: True,
        backoff=lambda: Backoff(first=0.05, cap=0.4),
        stopping=stopping,
        redact=lambda text: text,
    )
    worker.switch_to(V2)
    worker.join(timeout=10)
    assert stopping.is_set() and len(seen) == 7, seen

    failed = [status for _, status in seen[1:]]  # each load after the first follows a failure
    assert [s["attempts"] for s in failed] == [1, 2, 3, 4, 5, 6]
    assert {(s["state"], s["reason"], s["pipeline_url"]) for s in failed} == {
        ("failed", "registry unreachable", V2)
    }
    waits = [s["next_retry"] - s["updated_at"] for s in failed]
    steps = [0.05, 0.1, 0.2, 0.4, 0.4, 0.4]  # doubling from `first`, then the cap
    for wait, step in zip(waits, steps, strict=True):
        assert step / 2 - 0.01 <= wait <= step, (waits, steps)
    assert waits[0] <= waits[1] <= waits[2] <= waits[3], waits
    assert waits[3] > 2 * waits[0], waits
    for began, status in seen[1:]:
        assert began >= status["next_retry"], (began, status)  # it did wait
