"""Rollout in the ops center (on SQLite and PostgreSQL) and in the sync agent, in process:
the desired version per edge, the stable percent of a tag, the 4xx refusals, the state the
edges' heartbeats make of it, and the agent handing the desired URL to the appliance."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest

from edge.logbuffer import LogBuffer
from ops_sync import protocol as bundle
from ops_sync.agent import SyncAgent
from ops_sync.rollout import in_percent
from tests.test_ops_support import PIPELINE_URL, Ops, cert_transport

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
        assert picked[percent] == {n for n, i in ids.items() if in_percent(i, percent)}
    assert picked[20] < picked[50] < picked[100] == set(ids)
    again = {"pipeline_url": PIPELINE_URL, "tag": "fleet", "percent": 20}
    assert set(run(admin(ops, "POST", "/v1/rollouts", json=again)).json()["edges"]) == picked[20]


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
