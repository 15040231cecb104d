"""The appliance's Prometheus metrics (`GET /metrics`)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "edge_inference_requests",
            "Inference requests",
            ["pipeline", "code"],
            registry=self.registry,
        )
        self.rows = Counter(
            "edge_inference_rows", "Rows inferred", ["pipeline"], registry=self.registry
        )
        self.latency = Histogram(
            "edge_inference_seconds",
            "Inference request time",
            ["pipeline"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5),
            registry=self.registry,
        )
        self.buffer = Gauge(
            "edge_log_buffer", "Log buffer figures", ["figure"], registry=self.registry
        )
        self.dropped = Gauge(
            "edge_log_buffer_dropped",
            "Log rows/columns dropped by reason",
            ["reason"],
            registry=self.registry,
        )
        self._children: dict[tuple[str, ...], Any] = {}

    def observe(self, pipeline: str, code: int, seconds: float) -> None:
        self._child(self.requests, "requests", pipeline, str(code)).inc()
        self._child(self.latency, "latency", pipeline).observe(seconds)

    def count_rows(self, pipeline: str, rows: int) -> None:
        self._child(self.rows, "rows", pipeline).inc(rows)

    def buffer_stats(self, stats: dict[str, Any]) -> None:
        for figure in ("rows", "bytes"):
            if isinstance(stats.get(figure), int | float):
                self.buffer.labels(figure).set(stats[figure])
        for reason, count in (stats.get("dropped") or {}).items():
            self.dropped.labels(reason).set(count)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def _child(self, metric: Any, *key: str) -> Any:
        """`labels()` costs about 10 us a call: keep each labelled child."""
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*key[1:])
        return child
