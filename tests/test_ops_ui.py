"""The dashboard's sessions, CSRF, heartbeat history and feeds, in process (the browser tests
are tests/test_ops_ui_browser.py): what a signed-in or signed-out client sees, on SQLite and
PostgreSQL metadata."""

from __future__ import annotations

import asyncio
import hashlib
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.routing import Mount, Route

from ops_sync import heartbeats, openapi, protocol
from ops_sync.server import create_app
from ops_sync.ui.session import SESSION_COOKIE, SESSION_TTL
from tests.test_ops_support import ADMIN, PIPELINE_URL, Ops, cert_transport, result_table

CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def signed_in(client: httpx.AsyncClient, token: str = ADMIN) -> httpx.Response:
    form = await client.get("/ui/signin")
    csrf = CSRF.search(form.text)
    assert csrf is not None
    return await client.post("/ui/signin", data={"csrf": csrf.group(1), "token": token})


def browser(ops: Ops) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=ops.app), base_url="https://ops")


def test_sessions_store_only_a_hash_expire_and_end_at_sign_out(db_url: str, tmp_path: Path) -> None:
    ops = Ops(tmp_path / "ops", metadata_url=db_url)

    async def scenario() -> None:
        async with browser(ops) as client:
            reply = await signed_in(client)
            assert reply.status_code == 303 and reply.headers["location"] == "/ui/"
            cookie = reply.headers["set-cookie"]
            for flag in ("HttpOnly", "Secure", "SameSite=strict", "Path=/"):
                assert flag in cookie
            session = client.cookies[SESSION_COOKIE]
            (row,) = ops.center.store.db.reader().all("SELECT * FROM ui_sessions")
            assert row["id_sha256"] == hashlib.sha256(session.encode()).hexdigest()
            assert session not in str(row)
            page = await client.get("/ui/")
            assert page.status_code == 200 and ADMIN not in page.text
            assert "default-src 'self'" in page.headers["content-security-policy"]
            csrf = CSRF.search(page.text)
            assert csrf is not None
            out = await client.post("/ui/signout", data={"csrf": csrf.group(1)})
            assert out.status_code == 303
            client.cookies.set(SESSION_COOKIE, session)  # a copied cookie after sign-out
            assert (await client.get("/ui/")).status_code == 303
            assert (await client.get("/ui/api/fleet")).status_code == 401

            await signed_in(client)
            ops.clock.advance(SESSION_TTL + 1)
            after = await client.get("/ui/api/fleet")
            assert after.status_code == 401 and after.json()["reason"] == "SignInRequired"

    try:
        run(scenario())
    finally:
        ops.center.close()


def test_a_wrong_token_or_a_missing_csrf_token_is_refused(tmp_path: Path) -> None:
    ops = Ops(tmp_path / "ops")
    ops.add_edge("edge-a")

    async def scenario() -> None:
        async with browser(ops) as client:
            wrong = await signed_in(client, "not-it")
            assert wrong.status_code == 401 and "not-it" not in wrong.text
            assert SESSION_COOKIE not in client.cookies
            no_csrf = await client.post("/ui/signin", data={"token": ADMIN})
            assert no_csrf.status_code == 403 and SESSION_COOKIE not in client.cookies
            await signed_in(client)
            refused = await client.post("/ui/edges/edge-a/remove", data={"csrf": "x" * 64})
            assert refused.status_code == 403 and "CSRF" in refused.text
            bare = await client.post("/ui/edges/new", data={"name": "b", "pipeline_url": "x"})
            assert bare.status_code == 403
            assert [e["name"] for e in ops.center.list_edges()] == ["edge-a"]
            json_body = await client.post("/ui/edges/new", json={"name": "b"})
            assert json_body.status_code == 415

    try:
        run(scenario())
    finally:
        ops.center.close()


def test_add_edge_shows_the_bundle_once_and_bad_input_names_the_field(tmp_path: Path) -> None:
    ops = Ops(tmp_path / "ops")
    ops.add_edge("edge-a")

    async def scenario() -> None:
        async with browser(ops) as client:
            await signed_in(client)
            form = await client.get("/ui/edges/new")
            csrf = CSRF.search(form.text)
            assert csrf is not None
            fields = {"csrf": csrf.group(1), "pipeline_url": PIPELINE_URL}
            added = await client.post("/ui/edges/new", data={**fields, "name": "edge-b"})
            assert added.status_code == 201 and added.headers["cache-control"] == "no-store"
            (bundle,) = re.findall(r'<pre id="bundle"[^>]*><code>([^<]+)</code>', added.text)
            assert protocol.decode(bundle)["EDGE_NAME"] == "edge-b"
            assert bundle not in (await client.get("/ui/edges/new")).text
            assert bundle not in (await client.get("/ui/api/fleet")).text
            bad = await client.post("/ui/edges/new", data={**fields, "name": "no spaces"})
            assert bad.status_code == 400 and "edge name" in bad.text
            taken = await client.post("/ui/edges/new", data={**fields, "name": "edge-a"})
            assert taken.status_code == 409 and "exists" in taken.text

    try:
        run(scenario())
    finally:
        ops.center.close()


def test_heartbeats_feed_a_bounded_history_and_the_series(tmp_path: Path) -> None:
    ops = Ops(tmp_path / "ops")
    token = protocol.decode(ops.add_edge("edge-a")["docker_run_variables"]["EDGE_BUNDLE"])
    joined = ops.join(token["JOIN_TOKEN"])
    now_ms = int(ops.clock.now * 1000)

    async def scenario() -> dict[str, Any]:
        async with httpx.AsyncClient(
            transport=cert_transport(ops.app, joined.cert), base_url="https://ops"
        ) as edge:
            for minutes_ago in (3000, 60, 1):  # 50 h ago: beyond the 24 h kept
                ops.clock.now -= minutes_ago * 60
                oldest = int(ops.clock.now * 1000) - 4000
                buffer = {"rows": 10, "unsynced_rows": 4, "oldest_unsynced": oldest}
                await edge.post("/v1/edge/heartbeat", json={"buffer": buffer})
                ops.clock.now += minutes_ago * 60
            await edge.post(
                "/v1/edge/logs",
                content=protocol.encode_batch(result_table(30, now_ms - 90_000)),
                headers=protocol.BatchRange("e", 1, 30).headers(),
            )
        async with browser(ops) as client:
            await signed_in(client)
            bad = await client.get("/ui/api/edges/edge-a/series?minutes=0")
            assert bad.status_code == 400 and "minutes" in bad.json()["error"]
            missing = await client.get("/ui/api/edges/nobody/series")
            assert missing.status_code == 404
            day = await client.get("/ui/edges/edge-a?minutes=1440")  # the page's range control
            assert day.status_code == 200 and "<h2>Last 24 hours</h2>" in day.text
            assert (
                'series?minutes=1440"' in day.text and '<option value="1440" selected>' in day.text
            )
            hour = await client.get("/ui/edges/edge-a")
            assert "<h2>Last hour</h2>" in hour.text and 'series?minutes=60"' in hour.text
            too_long = await client.get("/ui/edges/edge-a?minutes=2000")
            assert too_long.status_code == 400 and "1 to 1440" in too_long.text
            return dict((await client.get("/ui/api/edges/edge-a/series?minutes=120")).json())

    try:
        series = run(scenario())
        kept = ops.center.store.db.reader().all("SELECT at FROM edge_heartbeats")
        assert len(kept) == 2  # the 50-hour-old one was deleted by a later heartbeat
    finally:
        ops.center.close()
    assert series["heartbeats"]["sync_lag_s"] == [pytest.approx(4.0, abs=0.01)] * 2
    assert series["heartbeats"]["unsynced_rows"] == [4, 4]
    assert sum(series["logs"]["inferences"]) == 30
    assert set(series["logs"]["p50_ms"]) == {0.003}  # result_table: steps of 1000 + 2000 ns
    assert set(series["logs"]["anomaly_rate"]) == {0.0}


def test_heartbeat_facts_without_a_buffer_report_are_unknown_not_zero() -> None:
    assert heartbeats.facts({}, 100.0) == {
        "buffer_rows": None,
        "unsynced_rows": None,
        "sync_lag": None,
    }
    facts = heartbeats.facts({"buffer": {"unsynced_rows": 0, "oldest_unsynced": 1}}, 100.0)
    assert facts["sync_lag"] == 0.0


def test_hostile_heartbeat_numbers_are_stored_as_unknown(db_url: str, tmp_path: Path) -> None:
    """Counts past 2**62 or below 0 and times past the year 3000 in a heartbeat are answered
    200 and kept as unknown (BIGINT columns on PostgreSQL), and the fleet page still shows."""
    ops = Ops(tmp_path / "ops", metadata_url=db_url)
    token = protocol.decode(ops.add_edge("edge-a")["docker_run_variables"]["EDGE_BUNDLE"])
    joined = ops.join(token["JOIN_TOKEN"])
    hostile = [
        {"rows": 2**70, "unsynced_rows": 1e300, "oldest_unsynced": 1e300},
        {"rows": -1, "unsynced_rows": 3, "oldest_unsynced": -(2**70)},
    ]

    async def scenario() -> list[int]:
        codes = []
        async with httpx.AsyncClient(
            transport=cert_transport(ops.app, joined.cert), base_url="https://ops"
        ) as edge:
            for buffer in hostile:
                ops.clock.now += 30
                reply = await edge.post("/v1/edge/heartbeat", json={"buffer": buffer})
                codes.append(reply.status_code)
        async with browser(ops) as client:
            await signed_in(client)
            codes.append((await client.get("/ui/")).status_code)
            codes.append((await client.get("/ui/api/edges/edge-a/series")).status_code)
        return codes

    try:
        assert run(scenario()) == [200, 200, 200, 200]
        kept = ops.center.store.db.reader().all(
            "SELECT buffer_rows, unsynced_rows, sync_lag FROM edge_heartbeats ORDER BY at"
        )
    finally:
        ops.center.close()
    assert [(r["buffer_rows"], r["unsynced_rows"], r["sync_lag"]) for r in kept] == [
        (None, None, None),
        (None, 3, None),
    ]


def test_every_route_is_in_the_openapi_document_or_excluded_with_a_reason(
    tmp_path: Path,
) -> None:
    ops = Ops(tmp_path / "ops")
    try:
        app = create_app(ops.center)
    finally:
        ops.center.close()
    document = openapi.document()
    missing = []
    for route in app.routes:
        path = getattr(route, "path", "")
        excluded = [p for p in openapi.UNDOCUMENTED if path == p or path.startswith(p + "/")]
        if isinstance(route, Mount | Route) and not excluded and path not in document["paths"]:
            missing.append(path)
    assert missing == []
    assert any(isinstance(r, Mount) and r.path == "/ui" for r in app.routes)
    assert all(len(reason) > 40 for reason in openapi.UNDOCUMENTED.values())


def test_fleet_rows_show_rollout_fields_when_present_and_fall_back_when_not() -> None:
    from ops_sync.ui.data import fleet_row

    edge = {
        "name": "e",
        "publish_id": 1,
        "pipeline_name": "p",
        "pipeline_version": "v1",
        "tags": ["a", "b"],
        "last_seen": None,
        "credentials": "not joined",
        "dropped": {"full": 2, "bad": 3},
    }
    before = fleet_row(edge, None, 0.0)["cells"]
    assert (before["desired"], before["running"], before["last_seen"]) == ("-", "v1", "never")
    assert (before["tags"], before["drops"], before["sync_lag"]) == ("a, b", "5", "-")
    rollout = {
        "desired": {"pipeline_url": "u", "pipeline_version": "v2", "digest": "d", "set_at": "t"},
        "running": {"pipeline_url": "u", "pipeline_version": "v1", "digest": "c"},
        "rollout": {"state": "pending", "reason": None, "attempts": 1, "updated_at": "t"},
    }
    after = fleet_row({**edge, **rollout}, {"unsynced_rows": 7, "sync_lag": 130.0}, 0.0)["cells"]
    assert (after["desired"], after["running"]) == ("v2 (pending)", "v1")
    assert (after["buffer"], after["sync_lag"]) == ("7 rows", "2 min")


def test_assay_pages_run_with_csrf_and_show_results(tmp_path: Path) -> None:
    """The assay pages over the real assays service and generated drift: a run needs the CSRF
    token, and its scores (the independent PSI) are shown and fed to the chart."""
    from tests.test_assays import (
        B0,
        BASELINE,
        DAY_MS,
        DEFINITION,
        DRIFTED,
        NORMAL,
        drifting,
        independent_psi,
        iso,
    )
    from tests.test_ops_support import Clock

    ops = drifting(Ops(tmp_path / "ops", clock=Clock((B0 + 4 * DAY_MS) / 1000)))
    ops.center.assays.create({**DEFINITION, "name": "drift"})

    async def scenario() -> None:
        async with browser(ops) as client:
            await signed_in(client)
            listed = await client.get("/ui/assays")
            assert listed.status_code == 200 and 'href="/ui/assays/drift"' in listed.text
            page = await client.get("/ui/assays/drift")
            assert "No results yet" in page.text
            csrf = CSRF.search(page.text)
            assert csrf is not None
            span = {"start": iso(B0 + DAY_MS), "end": iso(B0 + 3 * DAY_MS)}
            assert (await client.post("/ui/assays/drift/run", data=span)).status_code == 403
            assert ops.center.assays.results("drift", None, None, 10) == []
            ran = await client.post("/ui/assays/drift/run", data={**span, "csrf": csrf.group(1)})
            assert ran.status_code == 303 and ran.headers["location"] == "/ui/assays/drift?ran=2"
            shown = await client.get(ran.headers["location"])
            assert "The assay ran over 2 windows." in shown.text
            assert 'id="assay-scores"' in shown.text
            newest, oldest = (await client.get("/ui/api/assays/drift/results")).json()["results"]
            assert oldest["score"] == pytest.approx(independent_psi(BASELINE, DRIFTED), abs=1e-6)
            assert newest["score"] == pytest.approx(independent_psi(BASELINE, NORMAL), abs=1e-6)
            assert oldest["alert"] and not newest["alert"]
            assert (await client.get("/ui/assays/other")).status_code == 404

    try:
        run(scenario())
    finally:
        ops.center.close()


def test_edge_series_give_the_anomaly_rate_and_p99_of_synced_rows(tmp_path: Path) -> None:
    """Two minutes of synced rows, some with anomalies and latencies that differ: the series
    hold each minute's anomaly share and its 99th percentile latency (numpy's, computed here
    from the rows' step times)."""
    import numpy as np
    import pyarrow as pa

    ops = Ops(tmp_path / "ops")
    token = protocol.decode(ops.add_edge("edge-a")["docker_run_variables"]["EDGE_BUNDLE"])
    joined = ops.join(token["JOIN_TOKEN"])
    t0 = (int(ops.clock.now * 1000) // 60_000 - 3) * 60_000  # a whole minute, 3 minutes ago
    n = 100  # 50 rows in each of two minutes
    times = np.concatenate([t0 + np.arange(50) * 1000, t0 + 60_000 + np.arange(50) * 1000])
    anomalies = np.zeros(n, np.uint32)
    anomalies[[3, 7, 20, 41, 49]] = [1, 2, 1, 1, 3]  # 5 of the first minute's 50
    anomalies[[60, 99]] = 1  # 2 of the second's
    steps = [[int(1_000_000 * (1 + i % 50) ** 1.5), 250_000 * (i % 7)] for i in range(n)]
    table = result_table(n, t0)
    for name, column in (
        ("time", pa.array(times, pa.int64()).cast(pa.timestamp("ms", tz="UTC"))),
        ("anomaly.count", pa.array(anomalies)),
        ("metadata.elapsed", pa.array(steps, pa.list_(pa.int64()))),
    ):
        table = table.set_column(table.schema.get_field_index(name), name, column)

    async def scenario() -> dict[str, Any]:
        async with httpx.AsyncClient(
            transport=cert_transport(ops.app, joined.cert), base_url="https://ops"
        ) as edge:
            reply = await edge.post(
                "/v1/edge/logs",
                content=protocol.encode_batch(table),
                headers=protocol.BatchRange("e", 1, n).headers(),
            )
            assert reply.status_code == 200, reply.text
        async with browser(ops) as client:
            await signed_in(client)
            return dict((await client.get("/ui/api/edges/edge-a/series?minutes=10")).json())

    try:
        logs = run(scenario())["logs"]
    finally:
        ops.center.close()
    assert logs["time"] == [t0 // 1000, t0 // 1000 + 60]
    assert logs["inferences"] == [50, 50]
    assert logs["anomaly_rate"] == [pytest.approx(5 / 50), pytest.approx(2 / 50)]
    totals = np.array([sum(s) for s in steps]) / 1e6  # ms per row
    for minute, rows in enumerate((totals[:50], totals[50:])):
        assert logs["p99_ms"][minute] == pytest.approx(np.percentile(rows, 99), abs=1e-3)
        assert logs["p50_ms"][minute] == pytest.approx(np.percentile(rows, 50), abs=1e-3)
        assert logs["p99_ms"][minute] > 2 * logs["p50_ms"][minute]  # not the same series


def test_sign_out_needs_its_csrf_token(tmp_path: Path) -> None:
    ops = Ops(tmp_path / "ops")

    async def scenario() -> None:
        async with browser(ops) as client:
            await signed_in(client)
            for data in ({"token": ADMIN}, {"csrf": "x" * 64}):  # none, or a forged one
                refused = await client.post("/ui/signout", data=data)
                assert refused.status_code == 403 and "CSRF" in refused.text
                assert SESSION_COOKIE in client.cookies
                assert (await client.get("/ui/")).status_code == 200  # still signed in
            assert len(ops.center.store.db.reader().all("SELECT * FROM ui_sessions")) == 1

    try:
        run(scenario())
    finally:
        ops.center.close()


def test_the_fleet_shows_each_edges_publish(tmp_path: Path) -> None:
    ops = Ops(tmp_path / "ops")
    other = "127.0.0.1:5000/edge/pipelines/other:11111111-94d8-4fca-aecc-c75257fd16c6"
    ops.add_edge("edge-a")
    ops.add_edge("edge-b", other)
    publishes = {p["pipeline_url"]: p["id"] for p in ops.center.store.publishes()}
    assert publishes[PIPELINE_URL] != publishes[other]

    async def scenario() -> tuple[list[dict[str, Any]], str]:
        async with browser(ops) as client:
            await signed_in(client)
            feed = (await client.get("/ui/api/fleet")).json()["edges"]
            return feed, (await client.get("/ui/")).text

    try:
        feed, html = run(scenario())
    finally:
        ops.center.close()
    cells = {e["name"]: e["cells"]["publish"] for e in feed}
    assert cells == {
        "edge-a": f"#{publishes[PIPELINE_URL]} ccfraud",
        "edge-b": f"#{publishes[other]} other",
    }
    assert f"#{publishes[other]} other" in html  # the page's first render, before any poll
