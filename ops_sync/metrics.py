"""The ops center's Prometheus metrics (one registry per `OpsCenter`, served at `/metrics`).

Per replica: rows and batches ingested, duplicate rows dropped, commit latency and size,
compaction; per edge: last seen (any call) and lag (now minus the newest stored row's time).
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.rows = Counter("ops_rows_ingested", "log rows stored", registry=r)
        self.batches = Counter("ops_batches_ingested", "log batches answered", registry=r)
        self.duplicates = Counter("ops_duplicate_rows", "resent rows dropped", registry=r)
        self.commit_seconds = Histogram(
            "ops_commit_seconds",
            "Delta commit latency (write and commit)",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10),
            registry=r,
        )
        self.commit_batches = Histogram(
            "ops_commit_batches",
            "uploads per commit",
            buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000),
            registry=r,
        )
        self.compacted_files = Counter("ops_compacted_files", "small files compacted", registry=r)
        self.last_seen = Gauge(
            "ops_edge_last_seen_seconds",
            "unix time of the edge's last upload",
            ["edge"],
            registry=r,
        )
        self.lag = Gauge(
            "ops_edge_lag_seconds",
            "seconds between the edge's newest stored row and its upload",
            ["edge"],
            registry=r,
        )

    def ingested(
        self, edge: str, stored: int, duplicates: int, newest_ms: int | None = None
    ) -> None:
        now = time.time()
        self.batches.inc()
        self.rows.inc(stored)
        self.duplicates.inc(duplicates)
        self.last_seen.labels(edge).set(now)
        if newest_ms is not None:
            self.lag.labels(edge).set(max(0.0, now - newest_ms / 1000))

    def committed(self, seconds: float, batches: int, rows: int) -> None:
        self.commit_seconds.observe(seconds)
        self.commit_batches.observe(batches)

    def compacted(self, files: int) -> None:
        self.compacted_files.inc(files)

    def render(self) -> Any:
        return generate_latest(self.registry)
