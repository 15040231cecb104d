"""`Assays`: create, list, run, pause and delete assays over the ops center's synced logs.

The server calls this object; it raises `ops_sync.errors` and never knows a status code. The
maths is `ops_sync.assays.metrics`, the definition `ops_sync.assays.definition`, the rows
`ops_sync.assays.records`. Logs are read through `LogStore.scan`: per window, only the files
of the range (and of the edge, when the assay names one), only the assay's column, so a window
holds one float per row it covers, never whole rows.

Windows are half-open, [start, end). Scheduled window k covers [start + k * interval,
start + k * interval + width) and runs once the clock passes its end, on the replica that
holds the `assays` lease; rows an edge syncs after that are not in the stored result, and an
interactive run over the range recomputes (and replaces) it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ops_sync.assays import metrics as m
from ops_sync.assays.definition import Definition, iso, parse
from ops_sync.assays.records import AssayRecords
from ops_sync.errors import BadRequest, NotFound, SyncError
from ops_sync.logstore import LogStore
from ops_sync.store import Store

log = logging.getLogger("ops_sync.assays")
MAX_WINDOWS = 10_000  # per interactive run
MAX_RESULTS = 10_000
DUE_PER_ROUND = 100  # scheduled windows per assay per round (the rest next round)
LEASE = "assays"
LEASE_SECONDS = 300.0


class Assays:
    def __init__(self, store: Store, logs: LogStore, clock: Callable[[], float]) -> None:
        self.store, self.logs, self.clock = store, logs, clock
        self.records = AssayRecords(store.db)

    # -- definitions -----------------------------------------------------------------------
    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        """Check the definition, summarize its baseline, store it (the name is unique)."""
        now = self.clock()
        definition = parse(body, int(now * 1000))
        self._check_pipeline(definition.pipeline)
        if definition.baseline_values is not None:
            values = np.asarray(definition.baseline_values, dtype=np.float64)
        else:
            assert definition.baseline_start is not None and definition.baseline_end is not None
            values = self._values(definition, definition.baseline_start, definition.baseline_end)
            if values.size == 0:
                raise BadRequest(
                    f"assay: the baseline ({iso(definition.baseline_start)} to "
                    f"{iso(definition.baseline_end)}) has no rows of {_what(definition)} in "
                    f"pipeline {definition.pipeline!r}'s synced logs"
                )
        try:
            summary = m.summarize(
                values, definition.num_bins, definition.bin_mode, definition.aggregation,
                definition.edges,
            )  # fmt: skip
        except ValueError as exc:
            raise BadRequest(f"assay: {exc}") from None
        baseline = {
            "edges": summary.edges,
            "counts": summary.counts,
            "aggregate": summary.aggregate,
            "stats": summary.stats,
        }
        record = self.records.insert(
            definition.name, definition.pipeline, definition.to_json(), baseline, now
        )
        return self._view(record)

    def all(self) -> list[dict[str, Any]]:
        return [self._view(r) for r in self.records.all()]

    def get(self, name: str) -> dict[str, Any]:
        return self._view(self.records.get(name))

    def set_active(self, name: str, active: bool) -> dict[str, Any]:
        self.records.set_active(name, active, self.clock())
        return self.get(name)

    def delete(self, name: str) -> None:
        self.records.delete(name)

    def baseline(self, name: str) -> dict[str, Any]:
        """The seed's `baseline_stats()` and `baseline_bins()` of an assay."""
        record = self.records.get(name)
        definition = Definition.from_json(record["definition"])
        base = record["baseline"]
        labels = m.bin_labels(definition.num_bins, definition.bin_mode)
        edges = [*base["edges"], None]  # the right outlier bin ends at infinity
        aggregation = definition.aggregation.capitalize()
        return {
            "baseline_stats": {
                **base["stats"],
                "start": iso(definition.baseline_start),
                "end": iso(definition.baseline_end),
            },
            "baseline_bins": [
                {
                    "b_edges": edge,
                    "b_edge_names": label,
                    "b_aggregated_values": value,
                    "b_aggregation": aggregation,
                }
                for edge, label, value in zip(edges, labels, base["aggregate"], strict=True)
            ],
        }

    # -- runs ------------------------------------------------------------------------------
    def run(self, name: str, body: dict[str, Any]) -> list[dict[str, Any]]:
        """The seed's `interactive_run`: windows from `start` (default: the assay's window
        start) every interval while they end by `end` (default: now); stored, so `results`
        shows them. Oldest window first."""
        from edge.logquery import parse_time

        record = self.records.get(name)
        definition = Definition.from_json(record["definition"])
        now_ms = int(self.clock() * 1000)
        start = _when(body.get("start"), "start", parse_time)
        end = _when(body.get("end"), "end", parse_time)
        start = definition.start if start is None else start
        end = now_ms if end is None else end
        if end - start < definition.width:
            raise BadRequest(
                f"run: start..end ({iso(start)} to {iso(end)}) is shorter than one window "
                f"({definition.width // 1000} s)"
            )
        count = (end - start - definition.width) // definition.interval + 1
        if count > MAX_WINDOWS:
            raise BadRequest(f"run: the range holds {count} windows; at most {MAX_WINDOWS}")
        windows = [
            (start + k * definition.interval, start + k * definition.interval + definition.width)
            for k in range(count)
        ]
        results = [self._analyze(record, definition, a, b, None) for a, b in windows]
        self.records.store(record["id"], results, self.clock())
        return [_public(r) for r in results]

    def results(
        self, name: str, start_ms: int | None, end_ms: int | None, limit: int
    ) -> list[dict[str, Any]]:
        record = self.records.get(name)
        return self.records.results(record["id"], start_ms, end_ms, min(limit, MAX_RESULTS))

    def run_due(self, owner: str) -> int:
        """Scheduled windows whose end has passed, for every active assay, by the replica
        holding the `assays` lease; windows stored."""
        now = self.clock()
        if not self.store.take_lease(LEASE, owner, now, LEASE_SECONDS):
            return 0
        done = 0
        for record in self.records.all():
            if not record["active"]:
                continue
            try:
                done += self._run_scheduled(record, now)
            except SyncError as exc:  # one assay's trouble (its column's type) stops only it
                log.warning("assay %r: scheduled run failed: %s", record["name"], exc)
        return done

    def _run_scheduled(self, record: dict[str, Any], now: float) -> int:
        definition = Definition.from_json(record["definition"])
        k = done = record["next_window"]
        for _ in range(DUE_PER_ROUND):
            begin, end = definition.window_at(k)
            if end > now * 1000:
                break
            result = self._analyze(record, definition, begin, end, k)
            if not self.records.store(record["id"], [result], self.clock(), claim=k):
                break  # another replica ran this window
            k += 1
        return k - done

    def _analyze(
        self, record: dict[str, Any], definition: Definition, start: int, end: int,
        index: int | None,
    ) -> dict[str, Any]:  # fmt: skip
        started = time.perf_counter()
        base = record["baseline"]
        edges = np.asarray(base["edges"], dtype=np.float64)
        values = self._values(definition, start, end)
        counts = m.bin_counts(values, edges)
        window = m.aggregate(counts, definition.aggregation)
        weights = None
        if definition.bin_weights is not None:
            weights = np.asarray(definition.bin_weights, dtype=np.float64)
        baseline = np.asarray(base["aggregate"], dtype=np.float64)
        score: float | None = None
        scores: list[float] = []
        if values.size:
            per_bin = m.bin_scores(baseline, window, definition.metric, definition.aggregation)
            score = m.combine(per_bin, definition.metric, weights)
            scores = [float(s) for s in per_bin]
        alert = score is not None and score > definition.threshold
        warning = (
            score is not None
            and not alert
            and definition.warning_threshold is not None
            and score > definition.warning_threshold
        )
        return {
            "_start": start,
            "_end": end,
            "assay": definition.name,
            "window_start": iso(start),
            "window_end": iso(end),
            "index": index,
            "analyzed_at": iso(int(self.clock() * 1000)),
            "elapsed_millis": round((time.perf_counter() - started) * 1000, 3),
            "status": "ok" if values.size else "no rows",
            "score": score,
            "scores": scores,
            "alert": alert,
            "warning": warning,
            "assessment": None if score is None else _assessment(alert, warning),
            "threshold": definition.threshold,
            "warning_threshold": definition.warning_threshold,
            "metric": definition.metric,
            "aggregation": definition.aggregation,
            "bin_mode": definition.bin_mode,
            "weighted": definition.bin_weights is not None,
            "bin_edges": base["edges"],
            "bin_labels": m.bin_labels(definition.num_bins, definition.bin_mode),
            "baseline_aggregate": base["aggregate"],
            "window_aggregate": [float(v) for v in window],
            "window_counts": [int(c) for c in counts],
            "baseline_rows": base["stats"]["count"],
            "window_rows": int(values.size),
            "baseline_stats": base["stats"],
            "window_stats": m.stats(values),
        }

    def _values(self, definition: Definition, start: int, end: int) -> np.ndarray:
        """The assay's element of its column, as float64, for the rows in [start, end)."""
        parts = [
            _element(part.column(definition.column), definition.index)
            for part in self.logs.scan(
                definition.pipeline, definition.partition, start, end, [definition.column]
            )
        ]
        if not parts:
            return np.zeros(0)
        values = np.concatenate(parts)
        return values[np.isfinite(values)]

    def _check_pipeline(self, pipeline: str) -> None:
        if not any(p["pipeline_name"] == pipeline for p in self.store.publishes()):
            raise NotFound(f"no publish of pipeline {pipeline!r} is registered")

    def _view(self, record: dict[str, Any]) -> dict[str, Any]:
        """An assay as the API lists it."""
        d = Definition.from_json(record["definition"])
        _, next_end = d.window_at(record["next_window"])
        baseline: dict[str, Any] = {"rows": record["baseline"]["stats"]["count"]}
        if d.baseline_values is not None:
            baseline["values"] = len(d.baseline_values)
        else:
            baseline |= {"start": iso(d.baseline_start), "end": iso(d.baseline_end)}
        status = self.records.counts(record["id"])
        return {
            "id": record["id"],
            "name": d.name,
            "pipeline": d.pipeline,
            "pipeline_name": d.pipeline,
            "model_name": d.model_name,
            "column": d.column,
            "index": d.index,
            "iopath": f"{'input' if d.column.startswith('in.') else 'output'} "
            f"{d.column.split('.', 1)[1]} {d.index}",
            "metric": d.metric,
            "threshold": d.threshold,
            "alert_threshold": d.threshold,
            "warning_threshold": d.warning_threshold,
            "active": record["active"],
            "baseline": {
                **baseline,
                "edges": record["baseline"]["edges"],
                "aggregate": record["baseline"]["aggregate"],
                "stats": record["baseline"]["stats"],
            },
            "window": {
                "width": d.width // 1000,
                "interval": d.interval // 1000,
                "start": iso(d.start),
            },  # fmt: skip
            "partition": d.partition,
            "num_bins": d.num_bins,
            "bin_mode": d.bin_mode,
            "edges": d.edges,
            "bin_weights": d.bin_weights,
            "aggregation": d.aggregation,
            "bin_labels": m.bin_labels(d.num_bins, d.bin_mode),
            "created_at": iso(int(record["created_at"] * 1000)),
            "last_run": iso(int(record["last_run"] * 1000)) if record["last_run"] else None,
            "next_run": iso(next_end) if record["active"] else None,
            "status": {
                "run_at": iso(int(record["last_run"] * 1000)) if record["last_run"] else None,
                **status,
            },  # fmt: skip
        }


def _element(column: pa.ChunkedArray, index: int) -> np.ndarray:
    """Element `index` of each row's tensor (a list column), or the value of a numeric
    column (index 0); rows without that element, or null, are left out."""
    array = column.combine_chunks()
    kind = array.type
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
        array = array.filter(pc.greater(pc.fill_null(pc.list_value_length(array), 0), index))
        array = pc.list_element(array, index)
    elif index != 0:
        return np.zeros(0)
    if not (pa.types.is_integer(array.type) or pa.types.is_floating(array.type)):
        raise BadRequest(f"assay: the column's values are {array.type}, not numbers")
    return np.asarray(array.drop_null().cast(pa.float64()).to_numpy(zero_copy_only=False))


def _when(value: Any, what: str, parse_time: Callable[[str, str], int]) -> int | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > 64:
        raise BadRequest(f"run: {what} must be an ISO 8601 date-time")
    return parse_time(value, f"run: {what}")


def _assessment(alert: bool, warning: bool) -> str:
    return "Alert" if alert else "Warning" if warning else "Ok"


def _what(definition: Definition) -> str:
    return f"{definition.column}[{definition.index}]"


def _public(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if not k.startswith("_")}


_LIST = pa.list_(pa.float64())
RESULT_SCHEMA = pa.schema(
    [
        ("assay", pa.string()),
        ("window_start", pa.timestamp("ms", tz="UTC")),
        ("window_end", pa.timestamp("ms", tz="UTC")),
        ("analyzed_at", pa.timestamp("ms", tz="UTC")),
        ("status", pa.string()),
        ("score", pa.float64()),
        ("alert", pa.bool_()),
        ("warning", pa.bool_()),
        ("assessment", pa.string()),
        ("threshold", pa.float64()),
        ("warning_threshold", pa.float64()),
        ("metric", pa.string()),
        ("aggregation", pa.string()),
        ("bin_mode", pa.string()),
        ("baseline_rows", pa.int64()),
        ("window_rows", pa.int64()),
        ("bin_labels", pa.list_(pa.string())),
        ("bin_edges", _LIST),
        ("baseline_aggregate", _LIST),
        ("window_aggregate", _LIST),
        ("scores", _LIST),
        *[(f"window_{k}", pa.float64()) for k in ("min", "max", "mean", "median", "std")],
    ]
)


def results_table(results: list[dict[str, Any]]) -> pa.Table:
    """Results as one row per window (the seed's `to_dataframe`, plus the bins)."""
    import datetime as dt

    def when(text: str | None) -> dt.datetime | None:
        return dt.datetime.fromisoformat(text.replace("Z", "+00:00")) if text else None

    rows = []
    for r in results:
        row = {k: r.get(k) for k in RESULT_SCHEMA.names}
        for key in ("window_start", "window_end", "analyzed_at"):
            row[key] = when(r.get(key))
        for k in ("min", "max", "mean", "median", "std"):
            row[f"window_{k}"] = (r.get("window_stats") or {}).get(k)
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=RESULT_SCHEMA)


def bins_table(baseline: dict[str, Any]) -> pa.Table:
    """The seed's `baseline_bins()` frame (the last edge, infinity, as null)."""
    bins = baseline["baseline_bins"]
    return pa.table(
        {
            "b_edges": pa.array([b["b_edges"] for b in bins], pa.float64()),
            "b_edge_names": pa.array([b["b_edge_names"] for b in bins], pa.string()),
            "b_aggregated_values": pa.array([b["b_aggregated_values"] for b in bins], pa.float64()),
            "b_aggregation": pa.array([b["b_aggregation"] for b in bins], pa.string()),
        }
    )
