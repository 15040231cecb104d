"""What the log buffer gives up when its stored rows pass `max_bytes`: pure decisions.

The policy, in order, one step at a time until the rows fit (the store applies each step in
the transaction that went over, `edge.logbuffer.store`):

1. Synced rows kept for on-device reads go first (they were delivered, nothing is lost).
2. Then the oldest unsynced tables lose input columns (`in.*`), largest first, only as many as
   the excess needs; then output columns (`out.*`, `out_<model>.*`) the same way. `time`,
   `anomaly.*` and `metadata.*` are kept, and each dropped name is appended to the row's
   `metadata.dropped` (`edge.result.drop_columns`). `batches.trimmed` records how far a row
   went: 0 inputs left, 1 outputs left, 2 none.
3. Only then whole oldest tables go.

Each step adds to a counter (`input_values` and `output_values` count (row, column) values
dropped, `rows` whole rows), so nothing is lost without a counter saying so. After an ack,
`synced_to_delete` keeps the newest `keep_synced_bytes` of synced rows for `query`.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from edge.result import is_input, is_output

DROP_REASONS = ("input_values", "output_values", "rows")
TRIM_INPUTS, TRIM_OUTPUTS, TRIMMED = 0, 1, 2  # batches.trimmed


@dataclass(frozen=True)
class Row:
    """What the policy needs to know of a stored row."""

    first_seq: int
    last_seq: int
    bytes: int


@dataclass(frozen=True)
class Oldest:
    """The rows the next step may act on."""

    row: Row | None  # the oldest row
    with_inputs: Row | None  # the oldest row that may still hold input columns
    with_outputs: Row | None  # the oldest row that may still hold output columns


class Action(enum.Enum):
    EVICT_SYNCED = "evict synced"  # delete a row that was all delivered
    TRIM = "trim"  # drop columns of one kind (`level`)
    DROP = "drop"  # delete the oldest row, delivered or not


@dataclass(frozen=True)
class Step:
    action: Action
    row: Row
    level: int = TRIM_INPUTS


def next_step(oldest: Oldest, acked_through: int) -> Step | None:
    """The next thing to give up (None: there are no rows)."""
    if oldest.row is None:
        return None
    if oldest.row.last_seq <= acked_through:  # synced rows are always the oldest
        return Step(Action.EVICT_SYNCED, oldest.row)
    if oldest.with_inputs is not None:
        return Step(Action.TRIM, oldest.with_inputs, TRIM_INPUTS)
    if oldest.with_outputs is not None:
        return Step(Action.TRIM, oldest.with_outputs, TRIM_OUTPUTS)
    return Step(Action.DROP, oldest.row)


def trimmable(level: int) -> Callable[[str], bool]:
    """Which columns a trim of `level` may drop."""
    return is_input if level == TRIM_INPUTS else is_output


def reason(level: int) -> str:
    """The drop counter a trim of `level` adds to."""
    return "input_values" if level == TRIM_INPUTS else "output_values"


def columns_to_drop(
    columns: Sequence[tuple[str, int]],
    level: int,
    stored_bytes: int,
    memory_bytes: int,
    excess: int,
) -> tuple[list[str], bool]:
    """The columns of one row to drop at `level`: the largest first, until they save
    `excess` stored bytes (a column's stored size is estimated as its share of the row's
    `memory_bytes`). `columns`: (name, bytes in memory) of every column. Also says whether
    the row has none of that kind left afterwards."""
    wanted = trimmable(level)
    candidates = sorted(
        ((nbytes, name) for name, nbytes in columns if wanted(name)),
        key=lambda pair: (-pair[0], pair[1]),
    )
    ratio = stored_bytes / max(memory_bytes, 1)  # stored bytes per in-memory byte
    chosen: list[str] = []
    saved = 0.0
    for nbytes, name in candidates:
        chosen.append(name)
        saved += nbytes * ratio
        if saved >= excess:
            break
    return chosen, len(chosen) == len(candidates)


def synced_to_delete(synced: Sequence[tuple[int, int]], keep_bytes: int) -> list[int]:
    """Of the synced rows, (first seq, bytes) oldest first, those to delete so that at most
    `keep_bytes` of them stay (the newest)."""
    total = sum(size for _, size in synced)
    delete: list[int] = []
    for first_seq, size in synced:
        if total <= keep_bytes:
            break
        delete.append(first_seq)
        total -= size
    return delete


def unsynced_in(row: Row, n_rows: int, acked_through: int) -> int:
    """How many of a row's `n_rows` rows were not delivered yet."""
    return min(n_rows, max(0, row.last_seq - acked_through))
