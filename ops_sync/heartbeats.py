"""A bounded history of each edge's heartbeats (buffer depth, sync lag), for the dashboard.

`record` keeps one row per heartbeat and deletes the edge's rows older than `HISTORY`
seconds in the same transaction, so the table stays bounded (an edge heartbeats every 30 s:
about 2,880 rows a day each). The sync lag is how long the oldest row not yet synced has
waited: the ops center's clock minus that row's time, 0 when nothing is waiting.
"""

from __future__ import annotations

from typing import Any

from ops_sync.metadb import Database, Tx

HISTORY = 24 * 3600.0
MAX_POINTS = 5000  # a series read is capped whatever the range


MAX_COUNT = 2**62  # row counts at or past this (or below 0) are not believed
LATEST_MS = 32_503_680_000_000  # epoch ms of the year 3000: a later (or negative) time is not


def _number(value: Any, limit: float) -> float | None:
    """`value` when it is a number in [0, limit), else None (unknown)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < limit:
        return None
    return float(value)


def facts(report: dict[str, Any], now: float) -> dict[str, float | None]:
    """Buffer rows, unsynced rows and sync lag (seconds) from a heartbeat's report."""
    buffer = report.get("buffer")
    buffer = buffer if isinstance(buffer, dict) else {}
    rows = _number(buffer.get("rows"), MAX_COUNT)
    unsynced = _number(buffer.get("unsynced_rows"), MAX_COUNT)
    # epoch ms of the oldest unsynced row
    oldest = _number(buffer.get("oldest_unsynced"), LATEST_MS)
    lag: float | None = None
    if unsynced is not None and unsynced > 0:
        lag = max(0.0, now - oldest / 1000.0) if oldest is not None else None
    elif unsynced is not None:
        lag = 0.0
    return {"buffer_rows": rows, "unsynced_rows": unsynced, "sync_lag": lag}


def record(tx: Tx, edge_id: str, report: dict[str, Any], now: float) -> None:
    """Keep the heartbeat's facts, in the heartbeat's transaction (`Store.heartbeat`)."""
    values = facts(report, now)
    tx.execute(
        "INSERT INTO edge_heartbeats (edge_id, at, buffer_rows, unsynced_rows, sync_lag)"
        " VALUES (?, ?, ?, ?, ?) ON CONFLICT (edge_id, at) DO NOTHING",
        (edge_id, now, values["buffer_rows"], values["unsynced_rows"], values["sync_lag"]),
    )
    tx.execute("DELETE FROM edge_heartbeats WHERE edge_id = ? AND at < ?", (edge_id, now - HISTORY))


def series(db: Database, edge_id: str, since: float) -> list[dict[str, Any]]:
    """The edge's heartbeats since `since`, oldest first (at most `MAX_POINTS`, the newest)."""
    rows = db.reader().all(
        "SELECT at, buffer_rows, unsynced_rows, sync_lag FROM edge_heartbeats"
        " WHERE edge_id = ? AND at >= ? ORDER BY at DESC LIMIT ?",
        (edge_id, since, MAX_POINTS),
    )
    return rows[::-1]


def latest(db: Database) -> dict[str, dict[str, Any]]:
    """Each edge's newest heartbeat facts, by edge id."""
    rows = db.reader().all(
        "SELECT h.edge_id, h.at, h.buffer_rows, h.unsynced_rows, h.sync_lag"
        " FROM edge_heartbeats h JOIN (SELECT edge_id, max(at) AS at FROM edge_heartbeats"
        " GROUP BY edge_id) m ON m.edge_id = h.edge_id AND m.at = h.at"
    )
    return {row["edge_id"]: row for row in rows}
