"""The assay maths, pure (numpy only): bin edges from a baseline, counts per bin, aggregates,
and the distance between a baseline's and a window's aggregates. No I/O, no clock.

Bins, as the seed's: `num_bins` bins between the edges plus a left outlier bin (values below
the first edge) and a right outlier bin (values above the last edge), `num_bins + 2` in all.
The first bin is closed on both sides, `[e0, e1]`; the others are `(e[i-1], e[i]]`.

- `quantile` (default): `numpy.quantile` of the baseline at 0, 1/n, ..., 1 (linear
  interpolation, numpy's default), so e0 is the baseline's minimum and the last its maximum.
- `equal`: `n` equally wide bins from the baseline's minimum to its maximum.
- `provided`: the caller's edges: `num_bins + 1` of them, or `num_bins` upper edges, the
  lowest edge then being the baseline's minimum (the seed's rule).

Aggregates: `density` (each bin's share of the rows) or `cumulative` (the running sum of the
densities). Metrics, per bin then overall, with `d = window - baseline` per bin:

- `psi`: `(w - b) * ln(w / b)` per bin, summed. **Empty bins, as the seed computes them:** a
  density of 0 is taken as 0.005 (`EMPTY_BIN`), so a bin empty on both sides scores 0 and a
  bin empty on one side scores a finite amount. (The seed's second window, all rows in the
  right outlier bin of a 501-row baseline, scores 8.868614 exactly so.)
- `maxdiff`: `|d|` per bin, the largest.
- `sumdiff`: `|d|` per bin, half their sum (the seed's 0.074186 for bins differing by
  0.1484 in total).

With `cumulative` aggregation the seed scores each bin as `|d|` of the cumulative
aggregates, whatever the metric, and `psi` then sums them (its 0.176988); we do the same.
Bin weights (`num_bins + 2`, default all 1) multiply the per-bin scores before they are
combined.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

BIN_MODES = ("quantile", "equal", "provided")
AGGREGATIONS = ("density", "cumulative")
METRICS = ("psi", "maxdiff", "sumdiff")
EMPTY_BIN = 0.005  # the density the seed's PSI gives an empty bin


def bin_edges(
    baseline: np.ndarray, num_bins: int, mode: str, provided: list[float] | None = None
) -> np.ndarray:
    """The `num_bins + 1` edges of the bins between the outlier bins (see the module doc)."""
    values = np.asarray(baseline, dtype=np.float64)
    if mode == "provided":
        edges = np.asarray(provided or [], dtype=np.float64)
        if len(edges) == num_bins:
            edges = np.concatenate([[values.min()], edges])
        if len(edges) != num_bins + 1:
            raise ValueError(f"provided edges: give {num_bins + 1} (or {num_bins} upper edges)")
        return edges
    if values.size == 0:
        raise ValueError("the baseline has no values")
    if mode == "quantile":
        return np.quantile(values, np.linspace(0.0, 1.0, num_bins + 1))
    if mode == "equal":
        return np.linspace(values.min(), values.max(), num_bins + 1)
    raise ValueError(f"bin mode {mode!r} is not one of {', '.join(BIN_MODES)}")


def bin_counts(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Rows per bin: left outlier, the `len(edges) - 1` bins, right outlier."""
    values = np.asarray(values, dtype=np.float64)
    index = np.searchsorted(edges, values, side="left")
    index[values == edges[0]] = 1  # the first bin holds its lower edge
    return np.bincount(index, minlength=len(edges) + 1).astype(np.int64)


def aggregate(counts: np.ndarray, aggregation: str) -> np.ndarray:
    """Densities (or their running sum) of `counts`; all zeros when there are no rows."""
    total = int(counts.sum())
    density = counts / total if total else np.zeros(len(counts))
    if aggregation == "cumulative":
        return np.cumsum(density)
    if aggregation == "density":
        return density
    raise ValueError(f"aggregation {aggregation!r} is not one of {', '.join(AGGREGATIONS)}")


def bin_scores(
    baseline: np.ndarray, window: np.ndarray, metric: str, aggregation: str
) -> np.ndarray:
    """Each bin's contribution (see the module doc for the seed's rules)."""
    if metric not in METRICS:
        raise ValueError(f"metric {metric!r} is not one of {', '.join(METRICS)}")
    b = np.asarray(baseline, dtype=np.float64)
    w = np.asarray(window, dtype=np.float64)
    if metric != "psi" or aggregation == "cumulative":
        return np.abs(w - b)
    b = np.where(b == 0, EMPTY_BIN, b)
    w = np.where(w == 0, EMPTY_BIN, w)
    return (w - b) * np.log(w / b)


def combine(scores: np.ndarray, metric: str, weights: np.ndarray | None = None) -> float:
    """The window's score from its per-bin scores."""
    weighted = scores if weights is None else scores * weights
    if metric == "maxdiff":
        return float(weighted.max()) if len(weighted) else 0.0
    if metric == "sumdiff":
        return float(weighted.sum() / 2)
    return float(weighted.sum())


def stats(values: np.ndarray) -> dict[str, Any]:
    """count, min, max, mean, median, std (sample, n - 1, as pandas) of `values`; None where
    there are too few."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return {"count": 0, "min": None, "max": None, "mean": None, "median": None, "std": None}
    return {
        "count": int(v.size),
        "min": float(v.min()),
        "max": float(v.max()),
        "mean": float(v.mean()),
        "median": float(np.median(v)),
        "std": float(v.std(ddof=1)) if v.size > 1 else None,
    }


def bin_labels(num_bins: int, mode: str) -> list[str]:
    """The seed's edge names: left_outlier, q_20 ... q_100 (quantile), right_outlier; other
    modes name their bins b_1 ... b_n."""
    if mode == "quantile":
        inner = [f"q_{100 * i / num_bins:g}" for i in range(1, num_bins + 1)]
    else:
        inner = [f"b_{i}" for i in range(1, num_bins + 1)]
    return ["left_outlier", *inner, "right_outlier"]


@dataclass(frozen=True)
class Summary:
    """A baseline reduced to what windows are compared with."""

    edges: list[float]
    counts: list[int]
    aggregate: list[float]
    stats: dict[str, Any]


def summarize(baseline: np.ndarray, num_bins: int, mode: str, aggregation: str,
              provided: list[float] | None = None) -> Summary:  # fmt: skip
    edges = bin_edges(baseline, num_bins, mode, provided)
    counts = bin_counts(baseline, edges)
    return Summary(
        [float(e) for e in edges],
        [int(c) for c in counts],
        [float(a) for a in aggregate(counts, aggregation)],
        stats(baseline),
    )
