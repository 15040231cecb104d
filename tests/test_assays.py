"""Assays over the ops center's synced logs, with generated logs whose drift is known.

The edge uploads a day of N(0, 1) as the baseline, then a day shifted by 0.5 (drift), a day of
N(0, 1) again, and a day with no rows. PSI is computed independently here (the textbook
formula over the same quantile bins, with the seed's empty-bin density of 0.005)."""

from __future__ import annotations

import datetime as dt
import io
import json
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pyarrow as pa
import pytest

from ops_sync import cli
from ops_sync import client as client_module
from ops_sync.assays import metrics
from ops_sync.client import AdminClient
from ops_sync.identity import build_ssl_context
from tests.conftest import wait_for
from tests.test_ops_records import _SyncASGI
from tests.test_ops_server import admin, joined_edge, run, upload
from tests.test_ops_support import ADMIN, Clock, Ops, OpsServer, result_table

DAY_MS = 24 * 3600 * 1000
B0 = 1_790_000_000_000  # the baseline day starts here (2026-09-21)
ROWS = 2000
SHIFT = 0.5


def iso(millis: int) -> str:
    return dt.datetime.fromtimestamp(millis / 1000, dt.UTC).isoformat().replace("+00:00", "Z")


def logged(
    values: np.ndarray, start_ms: int, partition: str = "device", span_ms: int = DAY_MS
) -> pa.Table:
    """Result-table rows whose out.dense_1[0] is `values`, spread over the day (span_ms) from
    start_ms."""
    table = result_table(len(values), start_ms, partition=partition)
    times = start_ms + np.linspace(0, span_ms - 1, len(values)).astype(np.int64)
    column = pa.array([[float(v)] for v in values], pa.list_(pa.float32()))
    table = table.set_column(table.schema.get_field_index("out.dense_1"), "out.dense_1", column)
    time = pa.array(times, pa.int64()).cast(pa.timestamp("ms", tz="UTC"))
    return table.set_column(table.schema.get_field_index("time"), "time", time)


def normal(seed: int, shift: float = 0.0) -> np.ndarray:
    """float32 draws, as the logs store them."""
    return (np.random.default_rng(seed).normal(shift, 1.0, ROWS)).astype(np.float32)


BASELINE, DRIFTED, NORMAL = normal(1), normal(2, SHIFT), normal(3)


def independent_psi(baseline: np.ndarray, window: np.ndarray, bins: int = 5) -> float:
    """Textbook PSI over quantile bins plus two outlier bins; an empty bin's density is 0.005
    (the seed's rule: its 8.868614 for a window wholly in the right outlier bin)."""
    return float(np.sum(independent_psi_terms(baseline, window, bins)))


def independent_psi_terms(baseline: np.ndarray, window: np.ndarray, bins: int = 5) -> np.ndarray:
    """The PSI's term of each bin (left outlier, the `bins` bins, right outlier)."""
    b64, w64 = baseline.astype(np.float64), window.astype(np.float64)
    edges = np.quantile(b64, np.linspace(0, 1, bins + 1))

    def densities(x: np.ndarray) -> np.ndarray:
        counts = [np.sum(x < edges[0]), np.sum((x >= edges[0]) & (x <= edges[1]))]
        counts += [np.sum((x > edges[i - 1]) & (x <= edges[i])) for i in range(2, bins + 1)]
        counts.append(np.sum(x > edges[-1]))
        share = np.array(counts, dtype=np.float64) / len(x)
        return np.where(share == 0, 0.005, share)

    b, w = densities(b64), densities(w64)
    return np.asarray((w - b) * np.log(w / b))


DEFINITION = {
    "name": "dense drift",
    "pipeline": "ccfraud",
    "column": "out.dense_1",
    "index": 0,
    "baseline": {"start": iso(B0), "end": iso(B0 + DAY_MS)},
    "window": {"width": "24h", "interval": "24h", "start": iso(B0 + DAY_MS)},
}


@pytest.fixture()
def drift(tmp_path: Path) -> Ops:
    return drifting(Ops(tmp_path / "ops", clock=Clock((B0 + 4 * DAY_MS) / 1000)))


def drifting(ops: Ops) -> Ops:
    cert = joined_edge(ops, "edge-a")
    for i, values in enumerate((BASELINE, DRIFTED, NORMAL)):
        assert upload(ops, cert, 1 + i * ROWS, logged(values, B0 + i * DAY_MS)).is_success
    return ops


def call(ops: Ops, method: str, path: str, **kw: Any) -> Any:
    return run(admin(ops, method, path, **kw))


# -- the maths, against the seed's printed examples -------------------------------------------
SEED_BASELINE = np.array([0, 102, 98, 102, 99, 100, 0])  # its 501-row baseline's bins
SEED_WINDOW = np.array([0, 136, 224, 197, 219, 224, 0])  # its first window (1000 rows)


@pytest.mark.parametrize(
    ("metric", "aggregation", "score"),
    [
        ("psi", "density", 0.0363497101644573),
        ("maxdiff", "density", 0.06759281437125747),
        ("sumdiff", "density", 0.07418562874251496),
        ("psi", "cumulative", 0.17698802395209584),
        ("maxdiff", "cumulative", 0.06759281437125747),
    ],
)
def test_scores_are_the_seeds_for_its_bins(metric: str, aggregation: str, score: float) -> None:
    b = metrics.aggregate(SEED_BASELINE, aggregation)
    w = metrics.aggregate(SEED_WINDOW, aggregation)
    assert metrics.combine(metrics.bin_scores(b, w, metric, aggregation), metric) == (
        pytest.approx(score, abs=1e-12)
    )


def test_a_window_wholly_past_the_baseline_scores_the_seeds_alert() -> None:
    """The seed's second window (every row in the right outlier bin) scored 8.868614."""
    b = metrics.aggregate(SEED_BASELINE, "density")
    w = metrics.aggregate(np.array([0, 0, 0, 0, 0, 0, 1000]), "density")
    assert metrics.combine(metrics.bin_scores(b, w, "psi", "density"), "psi") == pytest.approx(
        8.868614, abs=1e-6
    )


# -- through the admin API ---------------------------------------------------------------------
def test_quantile_edges_match_numpys(drift: Ops) -> None:
    created = call(drift, "POST", "/v1/assays", json=DEFINITION)
    assert created.status_code == 201, created.text
    expected = np.quantile(BASELINE.astype(np.float64), [0, 0.2, 0.4, 0.6, 0.8, 1.0])
    assert np.allclose(created.json()["baseline"]["edges"], expected, rtol=0, atol=1e-12)
    bins = call(drift, "GET", "/v1/assays/dense drift/baseline").json()
    assert [b["b_edge_names"] for b in bins["baseline_bins"]] == [
        "left_outlier", "q_20", "q_40", "q_60", "q_80", "q_100", "right_outlier",
    ]  # fmt: skip
    assert bins["baseline_stats"]["count"] == ROWS
    assert bins["baseline_stats"]["median"] == pytest.approx(float(np.median(BASELINE)))
    arrow = call(drift, "GET", "/v1/assays/dense drift/baseline", headers={"accept": ARROW})
    table = pa.ipc.open_file(io.BytesIO(arrow.content)).read_all()
    assert table.column("b_edges").to_pylist()[:6] == pytest.approx(list(expected))


ARROW = "application/vnd.apache.arrow.file"


def test_a_shifted_normal_scores_the_independent_psi(drift: Ops) -> None:
    assert call(drift, "POST", "/v1/assays", json=DEFINITION).status_code == 201
    body = {"start": iso(B0 + DAY_MS), "end": iso(B0 + 4 * DAY_MS)}
    reply = call(drift, "POST", "/v1/assays/dense drift/run", json=body)
    assert reply.status_code == 200, reply.text
    drifted, back, empty = reply.json()["results"]
    assert drifted["score"] == pytest.approx(independent_psi(BASELINE, DRIFTED), abs=1e-6)
    assert back["score"] == pytest.approx(independent_psi(BASELINE, NORMAL), abs=1e-6)
    assert drifted["alert"] and drifted["score"] > 0.1 and drifted["status"] == "ok"
    assert not back["alert"] and back["score"] < 0.1
    assert drifted["window_rows"] == back["window_rows"] == ROWS
    assert drifted["baseline_rows"] == ROWS and len(drifted["window_aggregate"]) == 7
    assert sum(drifted["window_aggregate"]) == pytest.approx(1.0)
    # the window with no rows is reported as such, not as a score of 0
    assert empty["status"] == "no rows" and empty["score"] is None
    assert empty["window_rows"] == 0 and not empty["alert"]
    assert empty["window_start"] == iso(B0 + 3 * DAY_MS)
    # stored: results shows them newest first, and as Arrow
    stored = call(drift, "GET", "/v1/assays/dense drift/results").json()["results"]
    assert [r["status"] for r in stored] == ["no rows", "ok", "ok"]
    assert stored[2]["score"] == drifted["score"]
    arrow = call(drift, "GET", "/v1/assays/dense drift/results", headers={"accept": ARROW})
    table = pa.ipc.open_file(io.BytesIO(arrow.content)).read_all()
    assert table.column("score").to_pylist() == [None, back["score"], drifted["score"]]
    assert table.column("alert").to_pylist() == [False, False, True]


def test_an_alert_is_raised_then_cleared_on_schedule(drift: Ops) -> None:
    """Scheduled windows run once their end has passed: day 1 alerts, day 2 clears it."""
    drift.clock.now = (B0 + DAY_MS) / 1000
    assert call(drift, "POST", "/v1/assays", json=DEFINITION).status_code == 201
    assays = drift.center.assays
    assert assays.run_due("replica-a") == 0  # the first window has not ended
    drift.clock.now = (B0 + 2 * DAY_MS) / 1000 + 1
    assert assays.run_due("replica-a") == 1
    listed = call(drift, "GET", "/v1/assays").json()["assays"][0]
    assert listed["status"]["alert"] is True and listed["status"]["num_alerts"] == 1
    assert listed["next_run"] == iso(B0 + 3 * DAY_MS)
    assert assays.run_due("replica-b") == 0  # replica-a holds the lease
    drift.clock.now = (B0 + 3 * DAY_MS) / 1000 + 1
    assert assays.run_due("replica-a") == 1
    listed = call(drift, "GET", "/v1/assays/dense drift").json()
    assert listed["status"]["alert"] is False and listed["status"]["num_ok"] == 1
    results = call(drift, "GET", "/v1/assays/dense drift/results").json()["results"]
    assert [r["alert"] for r in results] == [False, True]
    assert [r["window_start"] for r in results] == [iso(B0 + 2 * DAY_MS), iso(B0 + DAY_MS)]
    # paused: nothing runs; resumed: the missed window runs
    assert call(drift, "POST", "/v1/assays/dense drift/pause").json()["active"] is False
    drift.clock.now = (B0 + 4 * DAY_MS) / 1000 + 1
    assert assays.run_due("replica-a") == 0
    assert call(drift, "POST", "/v1/assays/dense drift/resume").json()["active"] is True
    assert assays.run_due("replica-a") == 1


def test_definitions_are_checked_and_names_unique(drift: Ops) -> None:
    assert call(drift, "POST", "/v1/assays", json=DEFINITION).status_code == 201
    again = call(drift, "POST", "/v1/assays", json=DEFINITION)
    assert again.status_code == 409 and "dense drift" in again.json()["error"]
    bad = {
        "metric": "kl",
        "threshold": -1,
        "num_bins": 0,
        "column": "dense_1",
        "bin_mode": "provided",
        "baseline": {"start": iso(B0 + DAY_MS), "end": iso(B0)},
        "window": {"width": "soon"},
        "bin_weights": [1, 2],
    }
    for field, value in bad.items():
        reply = call(drift, "POST", "/v1/assays", json={**DEFINITION, "name": "x", field: value})
        assert reply.status_code == 400, (field, reply.text)
        assert field in reply.json()["error"], (field, reply.json())
    empty = {**DEFINITION, "name": "y", "baseline": {"start": iso(B0 - DAY_MS), "end": iso(B0)}}
    reply = call(drift, "POST", "/v1/assays", json=empty)
    assert reply.status_code == 400 and "no rows" in reply.json()["error"]
    missing = call(drift, "POST", "/v1/assays", json={**DEFINITION, "pipeline": "nope"})
    assert missing.status_code == 404
    assert call(drift, "GET", "/v1/assays/nope").status_code == 404
    assert call(drift, "GET", "/v1/assays", token=None).status_code == 401
    assert call(drift, "POST", "/v1/assays/dense drift/run", token="wrong").status_code == 401
    short = {"start": iso(B0 + DAY_MS), "end": iso(B0 + DAY_MS + 1000)}
    reply = call(drift, "POST", "/v1/assays/dense drift/run", json=short)
    assert reply.status_code == 400 and "shorter than one window" in reply.json()["error"]
    assert call(drift, "GET", "/v1/assays/dense drift/results?limit=x").status_code == 400
    assert call(drift, "DELETE", "/v1/assays/dense drift").status_code == 204
    assert call(drift, "GET", "/v1/assays/dense drift").status_code == 404
    assert call(drift, "GET", "/v1/assays").json() == {"assays": []}


def test_values_baselines_equal_and_provided_bins_and_seed_iopath(drift: Ops) -> None:
    values = [float(v) for v in BASELINE[:500]]
    for mode, extra in (("equal", {}), ("provided", {"edges": [-1.0, 0.0, 1.0, 2.0, 3.0]})):
        body = {
            "name": f"by {mode}",
            "pipeline": "ccfraud",
            "iopath": "output dense_1 0",
            "baseline": {"values": values},
            "bin_mode": mode,
            "metric": "maxdiff",
            "aggregation": "cumulative",
            **extra,
        }
        created = call(drift, "POST", "/v1/assays", json=body)
        assert created.status_code == 201, created.text
        edges = created.json()["baseline"]["edges"]
        if mode == "equal":
            expected = np.linspace(min(values), max(values), 6)
        else:  # five upper edges: the lowest is the baseline's minimum
            expected = np.array([min(values), -1.0, 0.0, 1.0, 2.0, 3.0])
        assert np.allclose(edges, expected)
        window = {"start": iso(B0 + DAY_MS), "end": iso(B0 + 2 * DAY_MS)}
        (result,) = call(drift, "POST", f"/v1/assays/by {mode}/run", json=window).json()["results"]
        b = metrics.aggregate(metrics.bin_counts(np.array(values), np.array(edges)), "cumulative")
        w = metrics.aggregate(metrics.bin_counts(DRIFTED, np.array(edges)), "cumulative")
        assert result["score"] == pytest.approx(float(np.max(np.abs(w - b))), abs=1e-9)


def test_an_assay_of_one_edge_reads_that_edges_rows_only(drift: Ops) -> None:
    other = joined_edge(drift, "edge-b")
    assert upload(drift, other, 1, logged(normal(9, 5.0), B0 + DAY_MS, "edge-b")).is_success
    for name, partition in (("all edges", None), ("edge a", "edge-a")):
        body = {**DEFINITION, "name": name, "partition": partition}
        assert call(drift, "POST", "/v1/assays", json=body).status_code == 201
    window = {"start": iso(B0 + DAY_MS), "end": iso(B0 + 2 * DAY_MS)}
    (every,) = call(drift, "POST", "/v1/assays/all edges/run", json=window).json()["results"]
    (one,) = call(drift, "POST", "/v1/assays/edge a/run", json=window).json()["results"]
    assert every["window_rows"] == 2 * ROWS and one["window_rows"] == ROWS
    assert one["score"] == pytest.approx(independent_psi(BASELINE, DRIFTED), abs=1e-6)


def test_assays_on_sqlite_and_postgresql(tmp_path: Path, db_url: str) -> None:
    ops = drifting(Ops(tmp_path / "ops", metadata_url=db_url, clock=Clock(B0 / 1000)))
    assert ops.center.store.schema_version() >= 7
    assert call(ops, "POST", "/v1/assays", json=DEFINITION).status_code == 201
    ops.clock.now = (B0 + 3 * DAY_MS) / 1000
    assert ops.center.assays.run_due("replica-a") == 2
    results = call(ops, "GET", "/v1/assays/dense drift/results?limit=1").json()["results"]
    assert len(results) == 1 and results[0]["window_start"] == iso(B0 + 2 * DAY_MS)
    assert call(ops, "DELETE", "/v1/assays/dense drift").status_code == 204


def test_ops_sync_assay_commands(
    drift: Ops, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    def local(url: str, token: str, ca: Any = None, **kw: Any) -> AdminClient:
        return AdminClient(url, token, ca, transport=_SyncASGI(drift))

    monkeypatch.setattr(client_module, "AdminClient", local)
    where = ["--opscenter", "https://ops", "--admin-token", ADMIN]
    definition = tmp_path / "assay.json"
    definition.write_text(json.dumps(DEFINITION))

    def ops_sync(*argv: str) -> Any:
        assert cli.main(["assay", *argv, *where, "--json"]) == 0
        return json.loads(capsys.readouterr().out)

    assert ops_sync("create", str(definition))["name"] == "dense drift"
    assert [a["name"] for a in ops_sync("list")] == ["dense drift"]
    span = ["--start", iso(B0 + DAY_MS), "--end", iso(B0 + 3 * DAY_MS)]
    ran = ops_sync("run", "dense drift", *span)
    assert [r["alert"] for r in ran] == [True, False]
    assert [r["alert"] for r in ops_sync("results", "dense drift", "--limit", "1")] == [False]
    assert ops_sync("pause", "dense drift")["active"] is False
    assert ops_sync("delete", "dense drift") == {"name": "dense drift", "deleted": True}
    assert cli.main(["assay", "results", "dense drift", *where]) == 1
    assert "no assay is named 'dense drift'" in capsys.readouterr().err


# -- the rules the definition documents: warning, weights, defaults, windows -------------------
DRIFTED_PSI = independent_psi(BASELINE, DRIFTED)  # ~0.19
NORMAL_PSI = independent_psi(BASELINE, NORMAL)  # ~0.014
DAY_1_3 = {"start": iso(B0 + DAY_MS), "end": iso(B0 + 3 * DAY_MS)}


def test_a_score_between_the_warning_and_alert_thresholds_warns_and_does_not_alert(
    drift: Ops,
) -> None:
    """README: a window over `warning_threshold` but not over `threshold` warns; one under
    both is neither."""
    assert NORMAL_PSI < 0.1 < DRIFTED_PSI < 0.5
    body = {**DEFINITION, "threshold": 0.5, "warning_threshold": 0.1}
    assert call(drift, "POST", "/v1/assays", json=body).status_code == 201
    drifted, back = call(drift, "POST", "/v1/assays/dense drift/run", json=DAY_1_3).json()[
        "results"
    ]
    assert drifted["score"] == pytest.approx(DRIFTED_PSI, abs=1e-6)
    assert (drifted["warning"], drifted["alert"], drifted["assessment"]) == (True, False, "Warning")
    assert (back["warning"], back["alert"], back["assessment"]) == (False, False, "Ok")
    status = call(drift, "GET", "/v1/assays/dense drift").json()["status"]
    assert (status["num_warnings"], status["num_alerts"], status["num_ok"]) == (1, 0, 1)
    # over both thresholds: an alert, not a warning
    body = {**DEFINITION, "name": "strict", "threshold": 0.15, "warning_threshold": 0.01}
    assert call(drift, "POST", "/v1/assays", json=body).status_code == 201
    drifted, back = call(drift, "POST", "/v1/assays/strict/run", json=DAY_1_3).json()["results"]
    assert (drifted["alert"], drifted["warning"]) == (True, False)
    assert (back["alert"], back["warning"]) == (False, True)  # 0.014 is over 0.01


def test_custom_bin_weights_multiply_each_bins_score(drift: Ops) -> None:
    """The seed's rule: each bin's PSI term times its weight, summed."""
    weights = [0.0, 1.0, 2.0, 0.5, 3.0, 1.5, 4.0]
    body = {**DEFINITION, "bin_weights": weights}
    created = call(drift, "POST", "/v1/assays", json=body)
    assert created.status_code == 201 and created.json()["bin_weights"] == weights
    drifted, back = call(drift, "POST", "/v1/assays/dense drift/run", json=DAY_1_3).json()[
        "results"
    ]
    for result, window in ((drifted, DRIFTED), (back, NORMAL)):
        terms = independent_psi_terms(BASELINE, window)
        expected = float(np.dot(terms, weights))
        assert abs(expected - float(np.sum(terms))) > 0.01  # the weights matter here
        assert result["score"] == pytest.approx(expected, abs=1e-6)
        assert result["weighted"] is True


def test_a_definition_left_to_its_defaults_gets_the_seeds(drift: Ops) -> None:
    """Threshold 0.1, PSI, 5 bins, quantile, density, equal weights, windows 24 h every 24 h,
    the first starting where the baseline ends."""
    body = {k: DEFINITION[k] for k in ("name", "pipeline", "column", "baseline")}
    drift.clock.now = (B0 + 2 * DAY_MS) / 1000 + 1
    created = call(drift, "POST", "/v1/assays", json=body)
    assert created.status_code == 201, created.text
    view = created.json()
    assert (view["threshold"], view["warning_threshold"]) == (0.1, None)
    assert (view["metric"], view["num_bins"], view["bin_mode"]) == ("psi", 5, "quantile")
    assert (view["aggregation"], view["bin_weights"], view["index"]) == ("density", None, 0)
    assert view["window"] == {"width": 86400, "interval": 86400, "start": iso(B0 + DAY_MS)}
    assert view["next_run"] == iso(B0 + 2 * DAY_MS)
    assert drift.center.assays.run_due("replica-a") == 1
    (result,) = call(drift, "GET", "/v1/assays/dense drift/results").json()["results"]
    assert (result["window_start"], result["window_end"]) == (
        iso(B0 + DAY_MS),
        iso(B0 + 2 * DAY_MS),
    )
    assert result["score"] == pytest.approx(DRIFTED_PSI, abs=1e-6)  # equal weights
    assert result["alert"] is True and result["threshold"] == 0.1


def test_an_interval_shorter_than_the_width_gives_overlapping_windows(drift: Ops) -> None:
    """Window k covers [start + k * interval, start + k * interval + width): 24 h windows
    every 12 h, the middle one holding the drifted day's second half and the next day's
    first."""
    body = {**DEFINITION, "window": {"width": "24h", "interval": "12h", "start": iso(B0 + DAY_MS)}}
    assert call(drift, "POST", "/v1/assays", json=body).status_code == 201
    results = call(drift, "POST", "/v1/assays/dense drift/run", json=DAY_1_3).json()["results"]
    half = DAY_MS // 2
    starts = [B0 + DAY_MS, B0 + DAY_MS + half, B0 + 2 * DAY_MS]
    assert [(r["window_start"], r["window_end"]) for r in results] == [
        (iso(s), iso(s + DAY_MS)) for s in starts
    ]
    times = np.linspace(0, DAY_MS - 1, ROWS).astype(np.int64)  # as `logged` spreads them
    middle = np.concatenate([DRIFTED[times >= half], NORMAL[times < half]])
    expected = [DRIFTED, middle, NORMAL]
    for result, window in zip(results, expected, strict=True):
        assert result["window_rows"] == len(window)
        assert result["score"] == pytest.approx(independent_psi(BASELINE, window), abs=1e-6)
    # scheduled: the same rule, window by window
    body = {**body, "name": "scheduled"}
    assert call(drift, "POST", "/v1/assays", json=body).status_code == 201
    assert call(drift, "POST", "/v1/assays/dense drift/pause").status_code == 200
    assert drift.center.assays.run_due("replica-a") == 5  # ends 2, 2.5, 3, 3.5, 4 days in
    stored = call(drift, "GET", "/v1/assays/scheduled/results").json()["results"]
    assert [r["window_start"] for r in reversed(stored)] == [
        iso(B0 + DAY_MS + k * half) for k in range(5)
    ]


def test_a_window_reads_only_its_edges_files_of_its_range_and_only_its_column(
    drift: Ops, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pushdown in `LogStore.scan`, seen at the Delta table reader: a run over day 1 of edge-a
    opens neither day 0's nor day 2's files, nor edge-b's file of day 1, and reads `time` and
    the assay's column only."""
    from ops_sync.deltatable import TableReader

    other = joined_edge(drift, "edge-b")
    assert upload(drift, other, 1, logged(normal(9, 5.0), B0 + DAY_MS, "edge-b")).is_success
    body = {**DEFINITION, "partition": "edge-a"}
    assert call(drift, "POST", "/v1/assays", json=body).status_code == 201
    opened: list[dict[str, Any]] = []
    read = TableReader.read

    def spy(self: TableReader, files: pa.Table, columns: list[str] | None = None) -> Any:
        parts = read(self, files, columns)
        for row, part in zip(files.to_pylist(), parts, strict=True):
            opened.append({**row, "columns": columns, "read": part.column_names})
        return parts

    monkeypatch.setattr(TableReader, "read", spy)
    window = {"start": iso(B0 + DAY_MS), "end": iso(B0 + 2 * DAY_MS)}
    (result,) = call(drift, "POST", "/v1/assays/dense drift/run", json=window).json()["results"]
    assert result["window_rows"] == ROWS
    assert opened, "the run read no file"
    assert {f["partition"] for f in opened} == {"edge-a"}
    for f in opened:  # each file's rows lie in the window
        assert B0 + DAY_MS <= f["min_time"] and f["max_time"] < B0 + 2 * DAY_MS, f
        assert f["columns"] == ["time", "out.dense_1"]
        assert sorted(f["read"]) == ["out.dense_1", "time"]
    assert sum(f["rows"] for f in opened) == ROWS


def test_ops_sync_serve_runs_scheduled_windows_by_itself(tmp_path: Path) -> None:
    """A real `ops-sync serve --assay-interval 0.2`: an assay created over the admin API gets
    the results of its due windows without anyone calling run (the scheduler thread)."""
    hour = 3600 * 1000
    t0 = (int(time.time() * 1000) // 60_000 - 4 * 60 - 1) * 60_000  # 4 h 1 min ago or so
    ops = Ops(tmp_path / "ops", clock=Clock(time.time()))
    try:  # the logs synced before the server starts: baseline, drifted, normal hours
        cert = joined_edge(ops, "edge-a")
        for i, values in enumerate((BASELINE, DRIFTED, NORMAL)):
            table = logged(values, t0 + i * hour, span_ms=hour)
            assert upload(ops, cert, 1 + i * ROWS, table).is_success
    finally:
        ops.center.close()
    server = OpsServer(tmp_path / "ops", extra=["--assay-interval", "0.2"])
    server.start()
    try:
        trust = build_ssl_context("client", ca_pem=server.ca.read_bytes())

        def admin_api(method: str, path: str, **kw: Any) -> Any:
            headers = {"authorization": f"Bearer {ADMIN}"}
            return httpx.request(
                method, server.url + path, headers=headers, verify=trust, timeout=30, **kw
            )

        body = {
            **DEFINITION,
            "baseline": {"start": iso(t0), "end": iso(t0 + hour)},
            "window": {"width": "1h"},  # from the baseline's end, every hour
        }
        created = admin_api("POST", "/v1/assays", json=body)
        assert created.status_code == 201, created.text

        def results() -> list[dict[str, Any]]:
            reply = admin_api("GET", "/v1/assays/dense drift/results")
            return list(reply.json()["results"])

        wait_for(lambda: len(results()) == 3, 30, "3 scheduled windows")  # ended 2, 3, 4 h in
        empty, back, drifted = results()
        assert [r["window_start"] for r in (drifted, back, empty)] == [
            iso(t0 + k * hour) for k in (1, 2, 3)
        ]
        assert drifted["score"] == pytest.approx(DRIFTED_PSI, abs=1e-6) and drifted["alert"]
        assert back["score"] == pytest.approx(NORMAL_PSI, abs=1e-6) and not back["alert"]
        assert empty["status"] == "no rows"
        assert [r["index"] for r in (drifted, back, empty)] == [0, 1, 2]  # scheduled, not run
        listed = admin_api("GET", "/v1/assays/dense drift").json()
        assert listed["next_run"] == iso(t0 + 5 * hour)
    finally:
        server.stop()
