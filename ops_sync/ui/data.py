"""What the dashboard shows, as plain dicts: the fleet's rows and one edge's series.

- `fleet`: one row per enrolled edge, each cell already formatted (`cells`) plus the value it
  sorts by (`sort`); the page and its live updates (`/ui/api/fleet`) render the same rows.
  Desired and running versions come from the rollout fields when the ops center has them
  (`desired`, `running`, `rollout`) and fall back to the publish's version and "-".
- `series`: inferences per minute, anomaly rate and p50/p99 latency from the edge's synced
  logs over the last `minutes` (`LogStore.scan`: only the edge's files of that range, and only
  `time`, `anomaly.count` and `metadata.elapsed` from them; past `MAX_ROWS` rows the newest are
  kept), and buffer depth and sync lag from its heartbeat history (`ops_sync.heartbeats`).
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ops_sync import heartbeats
from ops_sync.center import OpsCenter

MAX_ROWS = 200_000  # rows of three narrow columns a chart read keeps (the newest)
ELAPSED = "metadata.elapsed"  # nanoseconds per step, a list per row
ANOMALY = "anomaly.count"
COLUMNS = [
    ("name", "Name"),
    ("tags", "Tags"),
    ("publish", "Publish"),
    ("desired", "Desired"),
    ("running", "Running"),
    ("last_seen", "Last seen"),
    ("health", "Health"),
    ("credentials", "Credentials"),
    ("buffer", "Buffer depth"),
    ("drops", "Drops"),
    ("sync_lag", "Sync lag"),
]


def when(iso: str | None, now: float) -> tuple[str, float]:
    """An ISO time as 'YYYY-MM-DD HH:MM:SS UTC (N s ago)', and its epoch seconds (0: never)."""
    if not iso:
        return "never", 0.0
    at = dt.datetime.fromisoformat(iso)
    ago = max(0.0, now - at.timestamp())
    return f"{at:%Y-%m-%d %H:%M:%S} UTC ({duration(ago)} ago)", at.timestamp()


def duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 86400:.0f} d"


def _version(record: Any) -> str | None:
    return str(record.get("pipeline_version")) if isinstance(record, dict) else None


def health_text(report: Any) -> str:
    """The appliance's status and the sync agent's health from the last heartbeat."""
    if not isinstance(report, dict):
        return "-"
    appliance = report.get("health")
    status = appliance.get("status") if isinstance(appliance, dict) else None
    agent = report.get("agent")
    sync = agent.get("health") if isinstance(agent, dict) else None
    parts = [str(status)] if status else []
    if sync and sync != "ok":
        parts.append(str(sync))
    return ", ".join(parts) or "-"


def fleet_row(edge: dict[str, Any], beat: dict[str, Any] | None, now: float) -> dict[str, Any]:
    desired = _version(edge.get("desired")) or "-"
    rollout = edge.get("rollout")
    state = rollout.get("state") if isinstance(rollout, dict) else None
    if state and state not in ("none", "current") and desired != "-":
        desired = f"{desired} ({state})"
    running = _version(edge.get("running")) or str(edge.get("pipeline_version") or "-")
    seen, seen_at = when(edge.get("last_seen"), now)
    drops = sum(int(v) for v in (edge.get("dropped") or {}).values())
    depth = (beat or {}).get("unsynced_rows")
    lag = (beat or {}).get("sync_lag")
    tags = [str(t) for t in edge.get("tags") or []]
    cells = {
        "name": edge["name"],
        "tags": ", ".join(tags) or "-",
        "publish": f"#{edge['publish_id']} {edge['pipeline_name']}",
        "desired": desired,
        "running": running,
        "last_seen": seen,
        "health": health_text(edge.get("health")),
        "credentials": str(edge.get("credentials")),
        "buffer": "-" if depth is None else f"{int(depth)} rows",
        "drops": str(drops),
        "sync_lag": "-" if lag is None else duration(float(lag)),
    }
    sort = {**cells, "last_seen": seen_at, "drops": drops, "buffer": depth or 0, "sync_lag": lag}
    return {"name": edge["name"], "cells": cells, "sort": sort}


def fleet(center: OpsCenter) -> list[dict[str, Any]]:
    beats = heartbeats.latest(center.store.db)
    now = center.clock()
    return [fleet_row(e, beats.get(e["id"]), now) for e in center.list_edges()]


def find_edge(center: OpsCenter, name: str) -> dict[str, Any]:
    from ops_sync.errors import NotFound

    for edge in center.list_edges():
        if edge["name"] == name:
            return edge
    raise NotFound(f"no enrolled edge is named {name!r}")


def _latency_ms(table: pa.Table) -> np.ndarray:
    """Each row's total latency in milliseconds (the sum of its steps' nanoseconds)."""
    if ELAPSED not in table.column_names or table.num_rows == 0:
        return np.full(table.num_rows, np.nan)
    column = table.column(ELAPSED).combine_chunks()
    values = pc.list_flatten(column).to_numpy(zero_copy_only=False).astype(np.float64)
    parents = pc.list_parent_indices(column).to_numpy(zero_copy_only=False)
    totals = np.bincount(parents, weights=values, minlength=table.num_rows)
    return np.asarray(totals / 1e6)


def _anomalies(table: pa.Table) -> np.ndarray:
    if ANOMALY not in table.column_names:
        return np.zeros(table.num_rows, dtype=bool)
    counts = table.column(ANOMALY).to_numpy(zero_copy_only=False)
    return np.asarray(np.nan_to_num(counts.astype(np.float64)) > 0)


def log_series(table: pa.Table) -> dict[str, list[Any]]:
    """Per minute: time (epoch s), inferences, anomaly rate, p50 and p99 latency (ms)."""
    millis = table.column("time").cast(pa.int64()).to_numpy(zero_copy_only=False)
    minutes = millis // 60_000
    latency, anomalous = _latency_ms(table), _anomalies(table)
    out: dict[str, list[Any]] = {k: [] for k in ("time", "inferences", "anomaly_rate")}
    out |= {"p50_ms": [], "p99_ms": []}
    for minute in np.unique(minutes):
        mask = minutes == minute
        spent = latency[mask]
        spent = spent[~np.isnan(spent)]
        out["time"].append(int(minute) * 60)
        out["inferences"].append(int(mask.sum()))
        out["anomaly_rate"].append(round(float(anomalous[mask].mean()), 6))
        out["p50_ms"].append(round(float(np.percentile(spent, 50)), 3) if spent.size else None)
        out["p99_ms"].append(round(float(np.percentile(spent, 99)), 3) if spent.size else None)
    return out


def _window(
    center: OpsCenter, edge: dict[str, Any], start_ms: int, end_ms: int
) -> tuple[pa.Table, bool]:
    """`time`, `anomaly.count` and `metadata.elapsed` of the edge's rows in the range, and
    whether older rows were left out to keep `MAX_ROWS`."""
    parts: list[pa.Table] = []
    rows, truncated = 0, False
    scan = center.logs.scan(edge["pipeline_name"], edge["name"], start_ms, end_ms + 1, _CHARTED)
    for part in scan:
        parts.append(part)
        rows += part.num_rows
        if rows > 2 * MAX_ROWS:  # bounded memory: keep the newest as the scan goes
            parts, rows, truncated = [_newest(_joined(parts), MAX_ROWS)], MAX_ROWS, True
    if not parts:
        return pa.table({"time": pa.array([], pa.timestamp("ms", tz="UTC"))}), False
    table = _joined(parts)
    if table.num_rows > MAX_ROWS:
        table, truncated = _newest(table, MAX_ROWS), True
    return table, truncated


_CHARTED = [ANOMALY, ELAPSED]


def _joined(parts: list[pa.Table]) -> pa.Table:
    return pa.concat_tables(parts, promote_options="permissive")


def _newest(table: pa.Table, rows: int) -> pa.Table:
    order = pc.sort_indices(table, sort_keys=[("time", "descending")])
    return table.take(order[:rows])


def series(center: OpsCenter, edge: dict[str, Any], minutes: int) -> dict[str, Any]:
    now = center.clock()
    end_ms = int(now * 1000) + 60_000  # a minute of clock skew between edge and center
    start_ms = end_ms - minutes * 60_000 - 60_000
    table, more = _window(center, edge, start_ms, end_ms)
    beats = heartbeats.series(center.store.db, edge["id"], now - minutes * 60)
    return {
        "minutes": minutes,
        "from": round(now - minutes * 60, 3),
        "to": round(now, 3),
        "rows": table.num_rows,
        "truncated": more,
        "logs": log_series(table),
        "heartbeats": {
            "time": [round(float(b["at"]), 3) for b in beats],
            "sync_lag_s": [b["sync_lag"] for b in beats],
            "unsynced_rows": [b["unsynced_rows"] for b in beats],
        },
    }


def recent_logs(center: OpsCenter, edge: dict[str, Any], limit: int = 20) -> list[dict[str, str]]:
    """The edge's newest rows: time, latency, anomaly count and outputs, as display text."""
    table, _, _ = center.logs.read(edge["pipeline_name"], edge["name"], None, None, limit)
    if table.num_rows == 0:
        return []
    millis = table.column("time").cast(pa.int64()).to_pylist()
    latency = _latency_ms(table)
    anomaly = table.column(ANOMALY).to_pylist() if ANOMALY in table.column_names else None
    outputs = [c for c in table.column_names if c.startswith("out.")]
    rows = []
    for i in range(table.num_rows):
        at = dt.datetime.fromtimestamp(millis[i] / 1000, dt.UTC)
        out = {c.removeprefix("out."): table.column(c)[i].as_py() for c in outputs}
        rows.append(
            {
                "time": f"{at:%Y-%m-%d %H:%M:%S}.{at.microsecond // 1000:03d} UTC",
                "latency": "-" if np.isnan(latency[i]) else f"{latency[i]:.3f} ms",
                "anomaly": "-" if anomaly is None else str(anomaly[i]),
                "out": clip(json.dumps(out, default=str)),
            }
        )
    return rows


def clip(text: str, limit: int = 160) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
