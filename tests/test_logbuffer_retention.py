"""The cap's policy as pure functions: no threads, no SQLite."""

from __future__ import annotations

import pyarrow as pa

from edge.logbuffer.retention import (
    TRIM_INPUTS,
    TRIM_OUTPUTS,
    Action,
    Oldest,
    Row,
    Step,
    columns_to_drop,
    next_step,
    reason,
    synced_to_delete,
    unsynced_in,
)
from edge.result import drop_columns

A = Row(1, 10, 1000)
B = Row(11, 20, 1000)
C = Row(21, 30, 1000)


def test_synced_rows_go_first() -> None:
    assert next_step(Oldest(A, B, C), acked_through=10) == Step(Action.EVICT_SYNCED, A)
    # a row acked in part is not delivered: it is trimmed like the rest
    assert next_step(Oldest(A, A, None), acked_through=5) == Step(Action.TRIM, A, TRIM_INPUTS)


def test_inputs_then_outputs_then_whole_rows() -> None:
    assert next_step(Oldest(A, B, A), acked_through=0) == Step(Action.TRIM, B, TRIM_INPUTS)
    assert next_step(Oldest(A, None, B), acked_through=0) == Step(Action.TRIM, B, TRIM_OUTPUTS)
    assert next_step(Oldest(A, None, None), acked_through=0) == Step(Action.DROP, A)
    assert next_step(Oldest(None, None, None), acked_through=0) is None


def test_the_largest_columns_of_the_kind_go_first_and_only_as_many_as_needed() -> None:
    columns = [
        ("time", 80),
        ("in.small", 100),
        ("in.image", 9000),
        ("in.mid", 900),
        ("out.y", 5000),
        ("metadata.dropped", 50),
    ]
    # stored at half its size in memory: dropping in.image saves ~4500 stored bytes
    assert columns_to_drop(columns, TRIM_INPUTS, 7000, 14000, excess=4000) == (["in.image"], False)
    chosen, done = columns_to_drop(columns, TRIM_INPUTS, 7000, 14000, excess=4800)
    assert (chosen, done) == (["in.image", "in.mid"], False)
    chosen, done = columns_to_drop(columns, TRIM_INPUTS, 7000, 14000, excess=10**6)
    assert (chosen, done) == (["in.image", "in.mid", "in.small"], True)
    assert columns_to_drop(columns, TRIM_OUTPUTS, 7000, 14000, excess=1) == (["out.y"], True)


def test_ties_go_by_name_and_a_row_without_the_kind_is_done() -> None:
    columns = [("in.b", 10), ("in.a", 10), ("out_shadow.y", 10)]
    assert columns_to_drop(columns, TRIM_INPUTS, 30, 30, excess=5) == (["in.a"], False)
    assert columns_to_drop(columns, TRIM_OUTPUTS, 30, 30, excess=5) == (["out_shadow.y"], True)
    assert columns_to_drop([("time", 8)], TRIM_OUTPUTS, 8, 8, excess=5) == ([], True)
    assert (reason(TRIM_INPUTS), reason(TRIM_OUTPUTS)) == ("input_values", "output_values")


def test_acked_rows_beyond_what_is_kept_for_reads_are_deleted_oldest_first() -> None:
    synced = [(1, 100), (11, 100), (21, 100)]
    assert synced_to_delete(synced, keep_bytes=0) == [1, 11, 21]
    assert synced_to_delete(synced, keep_bytes=150) == [1, 11]
    assert synced_to_delete(synced, keep_bytes=300) == []


def test_a_dropped_rows_undelivered_part_is_counted() -> None:
    assert unsynced_in(B, 10, acked_through=0) == 10
    assert unsynced_in(B, 10, acked_through=15) == 5
    assert unsynced_in(B, 10, acked_through=20) == 0


def test_dropped_column_names_are_appended_to_each_rows_list() -> None:
    lists = pa.list_(pa.string())
    alike = pa.table({"in.x": [1, 2, 3], "metadata.dropped": pa.array([["in.y"]] * 3, lists)})
    assert (
        drop_columns(alike, ["in.x"]).column("metadata.dropped").to_pylist()
        == [["in.y", "in.x"]] * 3
    )
    mixed = pa.table({"in.x": [1, 2, 3], "metadata.dropped": pa.array([[], None, ["in.y"]], lists)})
    assert drop_columns(mixed, ["in.x"]).column("metadata.dropped").to_pylist() == [
        ["in.x"],
        ["in.x"],
        ["in.y", "in.x"],
    ]
    same_length = pa.table({"in.x": [1, 2], "metadata.dropped": pa.array([["a"], ["b"]], lists)})
    assert drop_columns(same_length, ["in.x"]).column("metadata.dropped").to_pylist() == [
        ["a", "in.x"],
        ["b", "in.x"],
    ]
    none_yet = drop_columns(pa.table({"in.x": [1, 2], "time": [5, 6]}), ["in.x"])
    assert none_yet.column("metadata.dropped").to_pylist() == [["in.x"], ["in.x"]]
