"""The dashboard in a real browser: Debian's headless Chromium (selenium + chromium-driver)
against a real `ops-sync serve` with two real `edge serve` appliances that joined with their
bundles and synced. Each page's screenshot goes to build/ui-screenshots/ (EDGE_UI_SCREENSHOTS).

The tests run in file order on one browser: a wrong token first, then signed in."""

from __future__ import annotations

import io
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pyarrow as pa
import pytest

from ops_sync import protocol
from ops_sync.identity import build_ssl_context
from tests.conftest import Edge, free_port, publish, wait_for
from tests.test_ops_support import ADMIN, OpsServer
from tests.ui_support import Page, browser

JSON_RECORDS = {"Content-Type": "application/json; format=pandas-records"}
SENT = {"edge-1": 40, "edge-2": 25}


@dataclass
class Fleet:
    server: OpsServer
    pipeline_url: str
    edges: dict[str, Edge]

    def admin(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        trust = build_ssl_context("client", ca_pem=self.server.ca.read_bytes())
        headers = {"authorization": f"Bearer {ADMIN}"}
        return httpx.request(
            method, self.server.url + path, headers=headers, verify=trust, timeout=30, **kwargs
        )

    def synced(self, name: str) -> int:
        reply = self.admin(
            "GET", "/v1/pipelines/breast-cancer/logs", params={"partition": name, "limit": 1000}
        )
        return len(reply.json()) if reply.status_code == 200 else 0


def _infer(edge: Edge, features: np.ndarray) -> None:
    body = json.dumps([{"tensor": row} for row in features.tolist()])
    reply = httpx.post(f"{edge.url}/pipelines/breast-cancer", content=body, headers=JSON_RECORDS)
    assert reply.status_code == 200, reply.text


@pytest.fixture(scope="module")
def fleet(
    registry: Any, example: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Fleet]:
    root = tmp_path_factory.mktemp("ui")
    server = OpsServer(root / "ops")
    server.start()
    started: list[Edge] = []
    try:
        with pytest.MonkeyPatch.context() as env:
            env.setenv("OPS_ADMIN_TOKEN", ADMIN)
            env.setenv("OPS_CA", str(server.ca))
            url = publish(example / "pipeline.yaml", registry, extra=("--opscenter", server.url))[
                "pipeline_url"
            ]
        fleet = Fleet(server, url, {})
        features = np.load(example / "data/10k-rows.npy")
        answered = 0.0  # when the last edge's last inference was answered (monotonic)
        for i, name in enumerate(SENT):
            added = fleet.admin("POST", "/v1/edges", json={"name": name, "pipeline_url": url})
            assert added.status_code == 201, added.text
            environment = {
                k: v
                for k, v in os.environ.items()
                if not k.startswith("OCI_") and k not in ("EDGE_BUNDLE", "OPS_ADMIN_TOKEN")
            }
            environment.update(
                PIPELINE_URL=url,
                CONFIG_CPUS="1",
                SYNC_HEARTBEAT_INTERVAL="2",  # a sync lag point every 2 s
                OCI_REGISTRY=registry.host,
                OCI_USERNAME=registry.username,
                OCI_PASSWORD=registry.password,
                EDGE_BUNDLE=added.json()["docker_run_variables"]["EDGE_BUNDLE"],
            )
            edge = Edge(free_port(), root / name, environment)
            started.append(edge)
            fleet.edges[name] = edge.start()
            rows = features[100 * i : 100 * i + SENT[name]]
            # a second at least after the last edge's rows, so their times never share one
            # (the log viewer's From/To test tells the edges apart by time)
            time.sleep(max(0.0, 1.0 - (time.monotonic() - answered)))
            for chunk in range(0, len(rows), 5):  # requests of 5: latencies that differ
                _infer(edge, rows[chunk : chunk + 5])
            answered = time.monotonic()
        for name, count in SENT.items():
            wait_for(lambda n=name, c=count: fleet.synced(n) == c, 60, f"{name}'s logs")
        yield fleet
    finally:
        for edge in started:
            edge.stop()
        server.stop()


@pytest.fixture(scope="module")
def page(fleet: Fleet, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Page]:
    downloads = tmp_path_factory.mktemp("downloads")
    driver = browser(downloads)
    driver.downloads = downloads  # where the download tests look
    try:
        yield Page(driver, fleet.server.url)
    finally:
        driver.quit()


def sign_in(page: Page, token: str) -> None:
    page.open("/ui/")
    page.wait(lambda: page.css("#token"), "the sign-in form")
    page.css("#token").send_keys(token)
    page.css("form.card button[type=submit]").click()


def test_a_wrong_admin_token_is_refused(page: Page, fleet: Fleet) -> None:
    page.open("/ui/")
    assert page.driver.current_url.endswith("/ui/signin")  # no session: sent to sign in
    page.shot("signin")
    sign_in(page, "not-the-admin-token")
    alert = page.wait(lambda: page.css("[role=alert]"), "the refusal")
    assert "not the admin token" in alert.text
    assert "not-the-admin-token" not in page.driver.page_source
    assert not [c for c in page.driver.get_cookies() if c["name"] == "__Host-ops-session"]
    page.shot("signin-refused")
    page.open("/ui/api/fleet")  # the JSON feed without a session
    assert "sign in first" in page.css("body").text


def test_sign_in_shows_both_edges_with_last_seen_and_live_updates(page: Page, fleet: Fleet) -> None:
    sign_in(page, ADMIN)
    page.wait(lambda: page.driver.current_url.endswith("/ui/"), "the fleet page")
    (cookie,) = [c for c in page.driver.get_cookies() if c["name"] == "__Host-ops-session"]
    assert cookie["httpOnly"] and cookie["secure"] and cookie["sameSite"] == "Strict"
    assert ADMIN not in page.driver.page_source and ADMIN not in page.driver.current_url
    assert page.js("return document.cookie") == ""  # HttpOnly: no script reads it
    rows = page.wait(lambda: page.rows("#fleet"), "the fleet rows")
    assert sorted(r["name"] for r in rows) == ["edge-1", "edge-2"]
    for row in rows:
        seen = row["last_seen"]
        assert seen != "never" and "UTC" in seen and "ago" in seen
        assert row["credentials"] == "valid"
        assert row["running"] != "-"
    health = "#fleet tr[data-name=edge-1] td[data-col=health]"
    page.wait(lambda: page.css(health).text == "Running", "a heartbeat once loaded")
    # live: the table is refreshed from /ui/api/fleet without a reload
    marker = page.js("window.__noReload = 1; return 1")
    page.wait(lambda: int(page.css("#fleet").get_attribute("data-updates") or 0) >= 2, "2 polls")
    assert page.js("return window.__noReload") == marker
    page.css("#fleet-filter").send_keys("edge-2")
    page.wait(lambda: [r["name"] for r in page.rows("#fleet")] == ["edge-2"], "the filter")
    page.css("#fleet-filter").clear()
    page.js("document.getElementById('fleet-filter').dispatchEvent(new Event('input'))")
    page.click("button[data-sort=name]")  # name is the default key: now descending
    page.wait(
        lambda: [r["name"] for r in page.rows("#fleet")] == ["edge-2", "edge-1"],
        "the sort",
    )
    assert page.css("th[aria-sort=descending] button").get_attribute("data-sort") == "name"
    page.shot("fleet")


def test_an_edge_page_draws_its_charts_with_data_points(page: Page, fleet: Fleet) -> None:
    page.open("/ui/")
    page.click("#fleet tbody a[href='/ui/edges/edge-1']")  # the rows are redrawn every poll
    page.wait(lambda: page.driver.current_url.endswith("/ui/edges/edge-1"), "the edge page")
    plot = page.css(".plot[data-chart=inferences]")
    page.wait(lambda: int(plot.get_attribute("data-points")) > 0, "the inferences chart")
    assert page.all(".plot[data-chart=inferences] canvas")
    total = page.js(
        "return document.querySelector('.plot[data-chart=inferences]')._plot.data[1]"
        ".reduce((a, b) => a + (b || 0), 0)"
    )
    assert total == SENT["edge-1"]  # every synced inference is counted, in the last hour
    latency = page.css(".plot[data-chart=latency]")
    assert int(latency.get_attribute("data-points")) > 0
    labels, data = page.js(
        "const p = document.querySelector('.plot[data-chart=latency]')._plot;"
        " return [p.series.map(s => s.label), p.data]"
    )
    assert labels[1:] == ["p50 ms", "p99 ms"]
    expected = _percentiles(fleet, "edge-1")
    drawn = {int(t): (p50, p99) for t, p50, p99 in zip(*data, strict=True)}
    assert sorted(drawn) == sorted(expected)
    assert any(p99 > p50 for p50, p99 in expected.values())  # p99 is not p50 again
    for minute, (p50, p99) in expected.items():  # each minute's p50 and p99, from the rows
        assert drawn[minute] == (pytest.approx(p50, abs=1e-3), pytest.approx(p99, abs=1e-3))
    assert int(page.css(".plot[data-chart=lag]").get_attribute("data-points")) >= 2
    assert len(page.all("#recent-logs tbody tr")) == 20
    page.shot("edge")
    from selenium.webdriver.support.ui import Select

    Select(page.css("#f-minutes")).select_by_value("1440")  # the charts' range
    page.css("form.filters button").click()
    page.wait(lambda: page.driver.current_url.endswith("?minutes=1440"), "the 24-hour page")
    note = page.css("#series-note")
    page.wait(lambda: "in the last 1440 minutes" in note.text, "the 24-hour series")
    assert "<h2>Last 24 hours</h2>" in page.driver.page_source


def _synced(fleet: Fleet) -> list[dict[str, Any]]:
    """Every synced row's time and metadata, from the admin API."""
    params = {"limit": 1000, "dataset": ["time", "metadata"]}
    reply = fleet.admin("GET", "/v1/pipelines/breast-cancer/logs", params=params)
    assert reply.status_code == 200, reply.text
    return list(reply.json())


def _percentiles(fleet: Fleet, edge: str) -> dict[int, tuple[float, float]]:
    """Minute (epoch s) -> (p50, p99) latency in ms of the edge's synced rows, by numpy."""
    minutes: dict[int, list[float]] = {}
    for row in _synced(fleet):
        if row["metadata"]["partition"] == edge:
            spent = sum(row["metadata"]["elapsed"]) / 1e6
            minutes.setdefault(int(row["time"]) // 60_000 * 60, []).append(spent)
    return {
        t: (round(float(np.percentile(v, 50)), 3), round(float(np.percentile(v, 99)), 3))
        for t, v in minutes.items()
    }


def test_logs_are_filtered_by_edge_and_download_as_ndjson_and_arrow(
    page: Page, fleet: Fleet
) -> None:
    page.open("/ui/logs")
    from selenium.webdriver.support.ui import Select

    Select(page.css("#f-edge")).select_by_value("edge-2")
    limit = page.css("#f-limit")
    limit.clear()
    limit.send_keys("1000")
    page.css("#f-dataset").send_keys("time,out,metadata")
    page.css("form.filters button").click()
    rows = page.wait(lambda: page.all("#logs tbody tr"), "the log rows")
    assert len(rows) == SENT["edge-2"]
    heads = [th.text for th in page.all("#logs thead th")]
    assert not [h for h in heads if h.startswith("in.")]  # datasets: no inputs
    column = heads.index("metadata.partition")
    assert {r.find_elements("css selector", "td")[column].text for r in rows} == {"edge-2"}
    page.shot("logs")
    downloads: Path = page.driver.downloads
    page.css("#download-ndjson").click()
    ndjson = page.wait(lambda: _downloaded(downloads, ".ndjson"), "the NDJSON download")
    lines = [json.loads(line) for line in ndjson.read_text().splitlines()]
    assert len(lines) == SENT["edge-2"]
    assert {line["metadata.partition"] for line in lines} == {"edge-2"}
    page.css("#download-arrow").click()
    arrow = page.wait(lambda: _downloaded(downloads, ".arrow"), "the Arrow download")
    table = pa.ipc.open_file(io.BytesIO(arrow.read_bytes())).read_all()
    assert table.num_rows == SENT["edge-2"]


def test_the_log_viewers_time_range_and_limit_cut_the_rows_shown(page: Page, fleet: Fleet) -> None:
    """edge-2 answered its 25 inferences at least a second after edge-1 its 40 (the fixture
    waits): a From/To range around edge-2's rows shows those only, over all edges; a limit of
    7 shows 7."""
    from selenium.webdriver.support.ui import Select

    times: dict[str, list[int]] = {name: [] for name in SENT}
    for row in _synced(fleet):
        times[row["metadata"]["partition"]].append(int(row["time"]))
    first, second = times["edge-1"], times["edge-2"]
    assert max(first) // 1000 < min(second) // 1000, "the edges' rows share a second"
    span = (min(second) // 1000, max(second) // 1000 + 1)

    def shown(start: int | None, end: int | None, limit: str) -> list[str]:
        page.open("/ui/logs")
        Select(page.css("#f-edge")).select_by_value("")  # all edges
        for name, at in (("start", start), ("end", end)):
            value = "" if at is None else _iso(at)
            page.js("arguments[0].value = arguments[1]", page.css(f"#f-{name}"), value)
        page.css("#f-limit").clear()
        page.css("#f-limit").send_keys(limit)
        page.css("#f-dataset").clear()
        page.css("#f-dataset").send_keys("time,metadata")
        page.css("form.filters button").click()
        page.wait(lambda: "pipeline=" in page.driver.current_url, "the filtered page")
        heads = [th.text for th in page.all("#logs thead th")]
        column = heads.index("metadata.partition")
        return list(
            page.js(
                "return [...document.querySelectorAll('#logs tbody tr')]"
                ".map(r => r.querySelectorAll('td')[arguments[0]].innerText)",
                column,
            )
        )

    assert sorted(set(shown(None, None, "1000"))) == ["edge-1", "edge-2"]
    in_range = shown(*span, "1000")
    assert len(in_range) == SENT["edge-2"] and set(in_range) == {"edge-2"}
    page.shot("logs-time-range")
    assert len(shown(None, None, "7")) == 7  # of 65 rows
    assert len(shown(*span, "7")) == 7


def _downloaded(folder: Path, suffix: str) -> Path | None:
    done = [p for p in folder.iterdir() if p.suffix == suffix]
    return done[0] if done and not list(folder.glob("*.crdownload")) else None


def test_add_an_edge_shows_its_bundle_once_then_remove_it_with_a_confirmation(
    page: Page, fleet: Fleet
) -> None:
    page.open("/ui/edges/new")
    page.css("#f-name").send_keys("edge-3")
    page.css("#f-tags").send_keys("lab, north")
    page.css("form.card button[type=submit]").click()
    bundle = page.wait(lambda: page.css("#bundle"), "the bundle").text.strip()
    values = protocol.decode(bundle)
    assert values["EDGE_NAME"] == "edge-3" and values["PIPELINE_URL"] == fleet.pipeline_url
    snippets = [p.text for p in page.all("pre[id^=snippet-]")]
    assert len(snippets) == 3
    assert snippets[0].startswith("docker run") and bundle in snippets[0]
    assert "docker compose" in snippets[1] and bundle in snippets[1]
    assert "helm install" in snippets[2] and f'edgeBundle: "{bundle}"' in snippets[2]
    page.css("button[data-copy=bundle]").click()
    page.wait(lambda: page.css("button[data-copy=bundle]").text == "Copied", "the copy")
    page.shot("edge-added")
    page.driver.refresh()  # a reload is a new GET: the form again, never the bundle
    assert bundle not in page.driver.page_source
    page.open("/ui/")
    page.wait(lambda: len(page.all("#fleet tbody tr")) == 3, "edge-3 in the fleet")
    page.click("tr[data-name=edge-3] a[href$='/remove']")
    page.wait(lambda: "Remove edge edge-3?" in page.css("h1").text, "the confirmation")
    assert [e["name"] for e in fleet.admin("GET", "/v1/edges").json()["edges"]] == [
        "edge-1",
        "edge-2",
        "edge-3",
    ]  # not yet: asking is not removing
    page.shot("edge-remove-confirm")
    page.css("button.danger").click()
    page.wait(lambda: "Edge edge-3 removed." in page.css("[role=status]").text, "the notice")
    page.wait(lambda: len(page.all("#fleet tbody tr")) == 2, "edge-3 gone")
    names = [e["name"] for e in fleet.admin("GET", "/v1/edges").json()["edges"]]
    assert names == ["edge-1", "edge-2"]


def test_a_post_without_its_csrf_token_is_refused(page: Page, fleet: Fleet) -> None:
    page.open("/ui/")
    script = (
        "const done = arguments[arguments.length - 1];"
        "fetch(arguments[0], {method: 'POST', credentials: 'same-origin',"
        " headers: {'content-type': 'application/x-www-form-urlencoded'}, body: arguments[1]})"
        ".then(r => r.text().then(t => done([r.status, t])));"
    )
    body = f"name=edge-x&pipeline_url={fleet.pipeline_url}"
    status, text = page.driver.execute_async_script(script, "/ui/edges/new", body)
    assert status == 403 and "CSRF token is missing or wrong" in text
    status, _ = page.driver.execute_async_script(script, "/ui/edges/edge-1/remove", "csrf=forged")
    assert status == 403
    names = [e["name"] for e in fleet.admin("GET", "/v1/edges").json()["edges"]]
    assert names == ["edge-1", "edge-2"]


def test_an_assay_runs_from_its_page_and_draws_its_scores(page: Page, fleet: Fleet) -> None:
    """An assay of the synced probabilities against a baseline of given values, run from its
    page over two hour-long windows: the first scores the synced rows, the second has none."""
    now = time.time()
    start = int(now // 60 * 60 - 1800)  # the synced rows lie in the first window
    definition = {
        "name": "probability-drift",
        "pipeline": "breast-cancer",
        "column": "out.probabilities",
        "index": 1,
        "baseline": {"values": [i / 100 for i in range(101)]},
        "window": {"width": "1h", "interval": "1h", "start": _iso(start)},
        "threshold": 0.25,
    }
    created = fleet.admin("POST", "/v1/assays", json=definition)
    assert created.status_code == 201, created.text
    page.open("/ui/assays")
    page.click("#assays a[href='/ui/assays/probability-drift']")
    page.wait(lambda: page.driver.current_url.endswith("/probability-drift"), "the assay page")
    assert "No results yet" in page.css("main").text
    for name, at in (("start", start), ("end", start + 7200)):  # datetime-local, in UTC
        page.js("arguments[0].value = arguments[1]", page.css(f"input[name={name}]"), _iso(at))
    page.click("form[action$='/run'] button[type=submit]")
    page.wait(lambda: "ran over 2 windows" in page.css("main").text, "the run's notice")
    scores = page.css("#assay-scores")
    page.wait(lambda: int(scores.get_attribute("data-points")) > 0, "the scores chart")
    assert page.all("#assay-scores canvas") and page.all("#assay-bins canvas")
    drawn = page.js("return document.querySelector('#assay-scores')._plot.data[1]")
    assert len(drawn) == 2 and drawn[0] > 0  # the newest window has no rows and no score
    rows = [r.text for r in page.all("#assay-results tbody tr")]
    assert len(rows) == 2 and "no rows" in rows[0] and "ok" in rows[1]
    (stored,) = [
        r
        for r in fleet.admin("GET", "/v1/assays/probability-drift/results").json()["results"]
        if r["status"] == "ok"
    ]
    assert stored["window_rows"] == sum(SENT.values()) and stored["score"] == drawn[0]
    # the threshold line is at the assay's threshold, at every window
    assert page.js("return document.querySelector('#assay-scores')._plot.data[2]") == [0.25] * 2
    # the bins: the latest window with rows against the baseline, bin by bin
    bins = page.js("return document.querySelector('#assay-bins')._plot.data")
    assert bins[0] == list(range(7))
    assert bins[1] == pytest.approx(stored["baseline_aggregate"], abs=1e-12)
    assert bins[2] == pytest.approx(stored["window_aggregate"], abs=1e-12)
    assert sum(bins[2]) == pytest.approx(1.0) and bins[1] != pytest.approx(bins[2])
    page.shot("assay")


def _iso(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))


PAGES = {"signin": "/ui/signin", "fleet": "/ui/", "edge": "/ui/edges/edge-1"}
PAGES |= {"logs": "/ui/logs?pipeline=breast-cancer"}
PAGES |= {"add": "/ui/edges/new", "remove": "/ui/edges/edge-2/remove", "assays": "/ui/assays"}
PAGES |= {"assay": "/ui/assays/probability-drift"}


@pytest.mark.parametrize("size", ["desktop", "phone"])
def test_every_page_fits_is_labelled_readable_and_loads_nothing_from_elsewhere(
    page: Page, fleet: Fleet, size: str
) -> None:
    page.size(size)
    added = f"edge-fits-{size}"
    try:
        for name, path in [*PAGES.items(), ("added", "/ui/edges/new")]:
            page.open(path)
            page.wait(lambda: page.js("return document.readyState") == "complete", "load")
            if name == "added":  # the page a new edge's bundle is shown on, once
                page.css("#f-name").send_keys(added)
                page.css("form.card button[type=submit]").click()
                page.wait(lambda: page.css("#bundle"), "the bundle")
            if name == "edge":
                page.wait(lambda: int(page.css(".plot").get_attribute("data-points")) > 0, "chart")
            time.sleep(0.2)  # the first poll's layout
            assert page.overflow() <= 0, f"{name} at {size} scrolls sideways"
            assert page.unlabelled() == [], name
            assert page.low_contrast() == [], name  # WCAG AA: 4.5:1 for text
            sources = page.js(
                "return performance.getEntriesByType('resource').map(e => e.name)"
                ".concat(Array.from(document.scripts).map(s => s.src).filter(Boolean))"
            )
            assert [s for s in sources if not s.startswith(fleet.server.url)] == [], name
            page.shot(f"{name}-{size}")
        # keyboard: the first Tab reaches the skip link, and focus is drawn
        page.open("/ui/")
        page.css("body").send_keys("\ue004")  # Tab
        focused = page.js("return document.activeElement.textContent")
        assert focused == "Skip to content"
        outline = page.js("return getComputedStyle(document.activeElement).outlineStyle")
        assert outline == "solid"
    finally:
        page.size("desktop")
        fleet.admin("DELETE", f"/v1/edges/{added}")
