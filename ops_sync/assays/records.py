"""Assays and their results in the metadata database (tables from migration 7, `ops_sync.store`).

    assays         one row per assay: its definition and baseline summary (JSON), whether
                   it is active, and `next_window`, the index of the next scheduled window
    assay_results  one row per (assay, window start, window end): the result JSON; running a
                   window again (interactively, or on schedule) replaces it

Scheduled windows are claimed by compare-and-set on `next_window` inside the transaction that
stores the result, so two replicas never both record one window (the `assays` lease in
`Assays.run_due` already keeps one replica running them).
"""

from __future__ import annotations

import json
from typing import Any

from ops_sync.errors import Conflict, NotFound
from ops_sync.metadb import Database, UniqueViolation

_UPSERT = (
    "INSERT INTO assay_results VALUES (?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (assay_id, window_start, window_end) DO UPDATE SET"
    " analyzed_at = excluded.analyzed_at, alert = excluded.alert,"
    " warning = excluded.warning, result = excluded.result"
)


class AssayRecords:
    def __init__(self, db: Database) -> None:
        self.db = db

    def insert(
        self, name: str, pipeline: str, definition: dict[str, Any], baseline: dict[str, Any],
        now: float,
    ) -> dict[str, Any]:  # fmt: skip
        taken = Conflict(f"an assay named {name!r} exists; assay names are unique")
        try:
            with self.db.tx() as db:
                if db.one("SELECT 1 AS x FROM assays WHERE name = ?", (name,)):
                    raise taken
                db.execute(
                    "INSERT INTO assays (name, pipeline, definition, baseline, active,"
                    " created_at, updated_at, next_window) VALUES (?, ?, ?, ?, 1, ?, ?, 0)",
                    (name, pipeline, json.dumps(definition), json.dumps(baseline), now, now),
                )
        except UniqueViolation:  # another replica created it at the same moment
            raise taken from None
        return self.get(name)

    def get(self, name: str) -> dict[str, Any]:
        row = self.db.reader().one("SELECT * FROM assays WHERE name = ?", (name,))
        if row is None:
            raise NotFound(f"no assay is named {name!r}")
        return _assay(row)

    def all(self) -> list[dict[str, Any]]:
        rows = self.db.reader().all("SELECT * FROM assays ORDER BY id")
        return [_assay(row) for row in rows]

    def set_active(self, name: str, active: bool, now: float) -> None:
        with self.db.tx() as db:
            done = db.execute(
                "UPDATE assays SET active = ?, updated_at = ? WHERE name = ?",
                (int(active), now, name),
            )
            if done.rowcount == 0:
                raise NotFound(f"no assay is named {name!r}")

    def delete(self, name: str) -> None:
        with self.db.tx() as db:
            row = db.one("SELECT id FROM assays WHERE name = ? {for_update}", (name,))
            if row is None:
                raise NotFound(f"no assay is named {name!r}")
            db.execute("DELETE FROM assay_results WHERE assay_id = ?", (row["id"],))
            db.execute("DELETE FROM assays WHERE id = ?", (row["id"],))

    def store(self, assay_id: int, results: list[dict[str, Any]], now: float,
              claim: int | None = None) -> bool:  # fmt: skip
        """Store results; with `claim`, only if the assay's next window is still `claim`
        (then it becomes `claim + 1`). False when another replica took the window first."""
        with self.db.tx() as db:
            if claim is not None:
                moved = db.execute(
                    "UPDATE assays SET next_window = ?, last_run = ? WHERE id = ?"
                    " AND next_window = ?",
                    (claim + 1, now, assay_id, claim),
                )
                if moved.rowcount == 0:
                    return False
            else:
                db.execute("UPDATE assays SET last_run = ? WHERE id = ?", (now, assay_id))
            for r in results:
                db.execute(
                    _UPSERT,
                    (
                        assay_id, r["_start"], r["_end"], now, int(r["alert"]),
                        int(r["warning"]), json.dumps({k: v for k, v in r.items() if k[0] != "_"}),
                    ),
                )  # fmt: skip
        return True

    def results(
        self, assay_id: int, start_ms: int | None, end_ms: int | None, limit: int
    ) -> list[dict[str, Any]]:
        """Results whose window starts in [start_ms, end_ms), newest window first."""
        where, args = "assay_id = ?", [assay_id]
        if start_ms is not None:
            where, args = where + " AND window_start >= ?", [*args, start_ms]
        if end_ms is not None:
            where, args = where + " AND window_start < ?", [*args, end_ms]
        rows = self.db.reader().all(
            f"SELECT result FROM assay_results WHERE {where}"
            " ORDER BY window_start DESC, window_end DESC LIMIT ?",
            [*args, limit],
        )
        return [json.loads(row["result"]) for row in rows]

    def counts(self, assay_id: int) -> dict[str, Any]:
        """The seed's list status: how many windows were ok, warnings, alerts; the newest."""
        db = self.db.reader()
        row = db.one(
            "SELECT count(*) AS n, sum(alert) AS alerts, sum(warning) AS warnings"
            " FROM assay_results WHERE assay_id = ?",
            (assay_id,),
        )
        newest = db.one(
            "SELECT alert, warning FROM assay_results WHERE assay_id = ?"
            " ORDER BY window_start DESC, window_end DESC LIMIT 1",
            (assay_id,),
        )
        n, alerts, warnings = (int((row or {}).get(k) or 0) for k in ("n", "alerts", "warnings"))
        return {
            "num_ok": n - alerts - warnings,
            "num_warnings": warnings,
            "num_alerts": alerts,
            "alert": bool(newest and newest["alert"]),
            "warning": bool(newest and newest["warning"]),
        }


def _assay(row: dict[str, Any]) -> dict[str, Any]:
    record = dict(row)
    record["definition"] = json.loads(record["definition"])
    record["baseline"] = json.loads(record["baseline"])
    record["active"] = bool(record["active"])
    record["next_window"] = int(record["next_window"])
    return record
