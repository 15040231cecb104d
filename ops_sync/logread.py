"""Which parts of a log table a read opens: the first `need` rows in its order, and no more.

A read wants the first `need` rows, newest first (or oldest first within a time range; ties by
buffer epoch and sequence), of those its row filter keeps. A *part* is a whole file (its row
count and time range come from the Delta log, so choosing costs no I/O) or, for a file of more
than `SPLIT_ROWS` rows (a compacted one), one of its Parquet row groups (their time ranges come
from the file's footer, read only when the file comes up). Parts come off a heap in order of
their newest time (their oldest, within a range); a large file that comes up is put back as its
row groups. Reading stops once `need` rows are kept and the next part cannot hold a row that
ranks before the `need`-th of them, so the newest 100 rows of an edge open one file, or the
last row group of a compacted one.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable

import numpy as np
import pyarrow as pa

SPLIT_ROWS = 32_768  # a file with more rows is read by row group
Load = Callable[[str, int | None], pa.Table]  # (path, row group or None: the whole file)
RowGroups = Callable[[str], list[tuple[int, int, int, int]] | None]  # (index, rows, min, max)


def read_in_order(
    files: pa.Table,
    need: int,
    start_ms: int | None,
    end_ms: int | None,
    load: Load,
    row_groups: RowGroups,
) -> list[pa.Table]:
    """The parts of `files` (path, rows, min_time, max_time) that can hold the first `need`
    rows `load` returns (it applies the range and the row filter), loaded in order."""
    window = (start_ms, end_ms) if start_ms is not None and end_ms is not None else None
    order = itertools.count()
    heap: list[tuple[int, int, str, int | None, int]] = []

    def push(path: str, group: int | None, rows: int, low: int, high: int) -> None:
        if window is not None and (high < window[0] or low > window[1]):
            return
        heapq.heappush(heap, (-high if window is None else low, next(order), path, group, rows))

    columns = [files.column(c).to_pylist() for c in ("path", "rows", "min_time", "max_time")]
    for path, rows, low, high in zip(*columns, strict=True):
        push(path, None, rows, low, high)
    kept: list[pa.Table] = []
    # the first `need` times kept so far, negated when newest first (so: the smallest)
    best = np.empty(0, np.int64)
    sign = 1 if window is not None else -1
    while heap:
        _, _, path, group, rows = heapq.heappop(heap)
        if group is None and rows > SPLIT_ROWS:
            groups = row_groups(path)
            if groups is not None and len(groups) > 1:
                for index, group_rows, low, high in groups:
                    push(path, index, group_rows, low, high)
                continue
        part = load(path, group)
        kept.append(part)
        best = np.concatenate([best, sign * part.column("time").cast(pa.int64()).to_numpy()])
        if len(best) > need:
            best = np.partition(best, need - 1)[:need]
        # stop when the next part starts after the `need`-th row kept
        if len(best) == need and heap and heap[0][0] > best.max():
            break
    return kept
