"""An assay's definition: what the admin API accepts (`parse`), how it is stored (`to_json`,
`from_json`) and shown (`view`). Every refusal is a `BadRequest` naming the field.

The body, with the seed's defaults (`wallaroo.assay_config`):

    name            unique; letters, digits, space, '.', '_', '-' (up to 128)
    pipeline        the pipeline whose synced logs are watched
    column, index   an `in.*` or `out.*` column and the element of its tensor (default 0);
                    or the seed's `iopath`: "output variable 0" / "input tensor 3"
    model_name      informational, as the seed's
    baseline        {"start": ISO, "end": ISO} (synced logs in that range) or {"values": [...]}
    window          {"width": "24h", "interval": "24h", "start": ISO}; durations as "90s",
                    "5m", "24h", "7d", "1w", seconds, or {"minutes": 5}; interval defaults to
                    width, start to the baseline's end (a values baseline: the creation time)
    partition       one edge's rows (`metadata.partition`), or all edges' (default)
    metric          psi (default), maxdiff, sumdiff
    threshold       alert when the score is over it (default 0.1)
    warning_threshold  warn when the score is over it but not over `threshold` (default none)
    num_bins        5 (plus the two outlier bins), up to 1000
    bin_mode        quantile (default), equal, provided (with `edges`)
    bin_weights     num_bins + 2 weights (default: all 1)
    aggregation     density (default), cumulative
"""

from __future__ import annotations

import datetime as dt
import math
import re
from dataclasses import asdict, dataclass, fields
from typing import Any

from edge.httpio import Fields
from edge.logquery import parse_time
from ops_sync.assays.metrics import AGGREGATIONS, BIN_MODES, METRICS
from ops_sync.errors import BadRequest

NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9 ._-]{0,126}[A-Za-z0-9._-])?")
PIPELINE = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
COLUMN = re.compile(r"(in|out)\.[^\s]{1,255}")
IOPATH = re.compile(r"(input|output) (\S{1,255}) (\d{1,6})")
EDGE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
MAX_BINS = 1000
MAX_VALUES = 1_000_000
MAX_INDEX = 1 << 20
DAY_MS = 24 * 3600 * 1000
MAX_SPAN_MS = 366 * DAY_MS * 100  # a century: past it, a duration is surely a mistake
UNITS = {"s": 1000, "m": 60_000, "h": 3_600_000, "d": DAY_MS, "w": 7 * DAY_MS}
WORDS = {"seconds": "s", "minutes": "m", "hours": "h", "days": "d", "weeks": "w"}
WHAT = "assay"


@dataclass(frozen=True)
class Definition:
    name: str
    pipeline: str
    column: str
    index: int
    model_name: str | None
    baseline_start: int | None  # epoch ms, with baseline_end; or baseline_values
    baseline_end: int | None
    baseline_values: list[float] | None
    width: int  # ms
    interval: int  # ms
    start: int  # epoch ms of the first window
    partition: str | None
    metric: str
    threshold: float
    warning_threshold: float | None
    num_bins: int
    bin_mode: str
    edges: list[float] | None
    bin_weights: list[float] | None
    aggregation: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_json(data: dict[str, Any]) -> Definition:
        values: dict[str, Any] = {f.name: data.get(f.name) for f in fields(Definition)}
        return Definition(**values)

    def window_at(self, k: int) -> tuple[int, int]:
        """The k-th scheduled window, [start, end) in epoch ms."""
        begin = self.start + k * self.interval
        return begin, begin + self.width


def parse(body: dict[str, Any], now_ms: int) -> Definition:
    """A definition from the API's JSON body (see the module doc)."""
    f = Fields(body, WHAT, BadRequest)
    name = f.text("name", max_len=128, pattern=NAME, hint=" (letters, digits, ' ._-')")
    pipeline = f.text("pipeline", max_len=63, pattern=PIPELINE, hint=" (a pipeline name)")
    column, index = _column(f)
    baseline = _object(body, "baseline", required=True)
    start_b = end_b = None
    values = None
    if "values" in baseline:
        if "start" in baseline or "end" in baseline:
            raise BadRequest(f"{WHAT}: baseline takes values, or start and end, not both")
        values = _numbers(baseline.get("values"), "baseline.values", MAX_VALUES)
        if not values:
            raise BadRequest(f"{WHAT}: baseline.values must hold at least one number")
    else:
        start_b = _time(baseline.get("start"), "baseline.start")
        end_b = _time(baseline.get("end"), "baseline.end")
        if start_b is None or end_b is None:
            raise BadRequest(f"{WHAT}: baseline needs start and end (ISO 8601), or values")
        if start_b >= end_b:
            raise BadRequest(f"{WHAT}: baseline.start must be before baseline.end")
    window = _object(body, "window", required=False)
    width = _duration(window.get("width", "24h"), "window.width")
    interval = _duration(window.get("interval", window.get("width", "24h")), "window.interval")
    first = _time(window.get("start"), "window.start")
    if first is None:
        first = end_b if end_b is not None else now_ms
    metric = _choice(body, "metric", METRICS, "psi")
    threshold = _number(body.get("threshold", 0.1), "threshold")
    warning = body.get("warning_threshold")
    warning = None if warning is None else _number(warning, "warning_threshold")
    if warning is not None and warning > threshold:
        raise BadRequest(f"{WHAT}: warning_threshold must not be over threshold")
    num_bins = f.integer("num_bins", 1, MAX_BINS) or 5
    bin_mode = _choice(body, "bin_mode", BIN_MODES, "quantile")
    edges = None
    if bin_mode == "provided":
        if body.get("edges") is None:
            raise BadRequest(f"{WHAT}: bin_mode 'provided' needs edges ({num_bins + 1} numbers)")
        edges = _numbers(body.get("edges"), "edges", MAX_BINS + 1)
        if len(edges) not in (num_bins, num_bins + 1):
            raise BadRequest(
                f"{WHAT}: edges must hold num_bins + 1 ({num_bins + 1}) edges, or num_bins "
                f"({num_bins}) upper edges"
            )
        if any(b <= a for a, b in zip(edges, edges[1:], strict=False)):
            raise BadRequest(f"{WHAT}: edges must increase")
    elif body.get("edges") is not None:
        raise BadRequest(f"{WHAT}: edges go with bin_mode 'provided'")
    weights = body.get("bin_weights")
    if weights is not None:
        weights = _numbers(weights, "bin_weights", MAX_BINS + 2)
        if len(weights) != num_bins + 2 or any(w < 0 for w in weights):
            raise BadRequest(
                f"{WHAT}: bin_weights must be {num_bins + 2} weights (num_bins and the two "
                "outlier bins), none negative"
            )
    partition = f.text("partition", required=False, max_len=63, pattern=EDGE)
    assert name is not None and pipeline is not None
    return Definition(
        name=name,
        pipeline=pipeline,
        column=column,
        index=index,
        model_name=f.text("model_name", required=False, max_len=256),
        baseline_start=start_b,
        baseline_end=end_b,
        baseline_values=values,
        width=width,
        interval=interval,
        start=first,
        partition=partition,
        metric=metric,
        threshold=threshold,
        warning_threshold=warning,
        num_bins=num_bins,
        bin_mode=bin_mode,
        edges=edges,
        bin_weights=weights,
        aggregation=_choice(body, "aggregation", AGGREGATIONS, "density"),
    )


def _column(f: Fields) -> tuple[str, int]:
    iopath = f.text("iopath", required=False, max_len=300)
    if iopath is not None:
        if f.body.get("column") is not None:
            raise BadRequest(f"{WHAT}: give column (and index) or iopath, not both")
        match = IOPATH.fullmatch(iopath)
        if match is None:
            raise BadRequest(f"{WHAT}: iopath {iopath[:80]!r} is not like 'output variable 0'")
        prefix = "in." if match.group(1) == "input" else "out."
        return prefix + match.group(2), int(match.group(3))
    column = f.text("column", max_len=260, pattern=COLUMN, hint=" (an in.* or out.* column)")
    assert column is not None
    return column, f.integer("index", 0, MAX_INDEX) or 0


def _object(body: dict[str, Any], key: str, *, required: bool) -> dict[str, Any]:
    value = body.get(key)
    if value is None and not required:
        return {}
    if not isinstance(value, dict):
        raise BadRequest(f"{WHAT}: {key} must be a JSON object")
    return value


def _time(value: Any, what: str) -> int | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > 64:
        raise BadRequest(f"{WHAT}: {what} must be an ISO 8601 date-time")
    millis = parse_time(value, f"{WHAT}: {what}")
    if abs(millis) > MAX_SPAN_MS:
        raise BadRequest(f"{WHAT}: {what} is out of range")
    return millis


def _duration(value: Any, what: str) -> int:
    """A duration in ms: "90s", "5m", "24h", "7d", "1w", seconds, or {"minutes": 5, ...}."""
    millis: float
    if isinstance(value, dict):
        if not value or not set(value) <= set(WORDS):
            raise BadRequest(f"{WHAT}: {what} keys are {', '.join(WORDS)}")
        millis = sum(_number(v, what) * UNITS[WORDS[k]] for k, v in value.items())
    elif isinstance(value, str):
        match = re.fullmatch(r"\s*(\d{1,9}(?:\.\d{1,6})?)\s*([smhdw])\s*", value)
        if match is None:
            raise BadRequest(f"{WHAT}: {what} {value[:40]!r} is not like '90s', '5m', '24h', '7d'")
        millis = float(match.group(1)) * UNITS[match.group(2)]
    else:
        millis = _number(value, what) * 1000
    if not 1000 <= millis <= MAX_SPAN_MS:
        raise BadRequest(f"{WHAT}: {what} must be from 1 second to a century")
    return int(millis)


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise BadRequest(f"{WHAT}: {what} must be a finite number")
    if value < 0 or abs(value) > 1e300:
        raise BadRequest(f"{WHAT}: {what} must not be negative (or astronomically large)")
    return float(value)


def _numbers(value: Any, what: str, limit: int) -> list[float]:
    if not isinstance(value, list) or len(value) > limit:
        raise BadRequest(f"{WHAT}: {what} must be a list of at most {limit} numbers")
    out = []
    for item in value:
        if isinstance(item, bool) or not isinstance(item, int | float):
            raise BadRequest(f"{WHAT}: {what} must hold numbers only")
        if not math.isfinite(item) or abs(item) > 1e300:
            raise BadRequest(f"{WHAT}: {what} must hold finite numbers")
        out.append(float(item))
    return out


def _choice(body: dict[str, Any], key: str, options: tuple[str, ...], default: str) -> str:
    value = body.get(key, default)
    if not isinstance(value, str) or value.lower() not in options:
        raise BadRequest(f"{WHAT}: {key} must be one of {', '.join(options)}")
    return value.lower()


def iso(millis: int | None) -> str | None:
    if millis is None:
        return None
    return dt.datetime.fromtimestamp(millis / 1000, dt.UTC).isoformat().replace("+00:00", "Z")
