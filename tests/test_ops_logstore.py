"""Parquet log store: exactly once under resends, overlaps, reorders and crashes; readable by
pyarrow.dataset and DuckDB; time-ordered reads."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds
import pytest

from ops_sync.errors import BadRequest, StoreError
from ops_sync.logstore import LogStore
from tests.test_ops_support import Ops, result_table

T0 = 1_790_000_000_000  # ms


@pytest.fixture()
def ops(tmp_path: Path) -> Ops:
    return Ops(tmp_path)


def edge_record(ops: Ops, name: str = "edge-a") -> dict[str, Any]:
    ops.add_edge(name)
    return next(e for e in ops.center.store.edges() if e["name"] == name)


def batch(first: int, last: int) -> pa.Table:
    """Rows first..last of one epoch; row with sequence s has time T0 + s."""
    return result_table(last - first + 1, T0 + first)


def stored_seqs(ops: Ops, partition: str = "edge-a") -> list[int]:
    if not list(ops.center.logs.root.rglob("*.parquet")):
        return []
    table = ds.dataset(ops.center.logs.root, partitioning="hive").to_table(
        filter=ds.field("partition") == partition
    )
    return sorted(table.column("_seq").to_pylist())


def test_resent_overlapping_reordered_and_partial_batches_store_each_row_once(ops: Ops) -> None:
    edge, logs = edge_record(ops), ops.center.logs
    now = ops.clock()
    assert logs.ingest(edge, "e1", 1, 100, batch(1, 100), now).stored == 100
    assert logs.ingest(edge, "e1", 1, 100, batch(1, 100), now).duplicates == 100  # resent
    assert logs.ingest(edge, "e1", 301, 400, batch(301, 400), now).stored == 100  # ahead
    got = logs.ingest(edge, "e1", 51, 350, batch(51, 350), now)  # overlaps both sides
    assert (got.stored, got.duplicates) == (200, 100)
    assert logs.ingest(edge, "e1", 401, 401, batch(401, 401), now).stored == 1
    assert stored_seqs(ops) == list(range(1, 402))
    assert ops.center.store.synced_overlaps("edge-a", "e1", 0, 10**9) == [(1, 401)]


def test_a_new_epoch_is_never_mistaken_for_duplicates(ops: Ops) -> None:
    edge, logs = edge_record(ops), ops.center.logs
    logs.ingest(edge, "old-epoch", 1, 10, batch(1, 10), ops.clock())
    assert logs.ingest(edge, "new-epoch", 1, 10, batch(1, 10), ops.clock()).stored == 10
    assert len(stored_seqs(ops)) == 20


def test_a_batch_whose_rows_do_not_match_its_range_is_refused(ops: Ops) -> None:
    edge = edge_record(ops)
    with pytest.raises(BadRequest, match="holds 5 rows"):
        ops.center.logs.ingest(edge, "e1", 1, 10, batch(1, 5), ops.clock())


def test_partition_comes_from_the_edge_record_and_drops_are_never_null(ops: Ops) -> None:
    edge = edge_record(ops)
    table = result_table(4, T0, partition="someone-else")
    table = table.set_column(
        table.schema.get_field_index("metadata.dropped"),
        "metadata.dropped",
        pa.array([None, ["in.tensor"], None, []], pa.list_(pa.string())),
    )
    ops.center.logs.ingest(edge, "e1", 1, 4, table, ops.clock())
    got, _, _ = ops.center.logs.read("ccfraud", None, None, None, 10)
    assert set(got.column("metadata.partition").to_pylist()) == {"edge-a"}
    assert got.column("metadata.dropped").null_count == 0
    assert sorted(map(len, got.column("metadata.dropped").to_pylist())) == [0, 0, 0, 1]


def test_duckdb_and_pyarrow_read_the_files_with_hive_partitions(ops: Ops) -> None:
    a, b = edge_record(ops, "edge-a"), edge_record(ops, "edge-b")
    ops.center.logs.ingest(a, "ea", 1, 30, batch(1, 30), ops.clock())
    ops.center.logs.ingest(b, "eb", 1, 20, batch(1, 20), ops.clock())
    root = ops.center.logs.root
    rows = duckdb.sql(
        f"SELECT partition, count(*), count(DISTINCT _seq) FROM read_parquet('{root}/**/*.parquet',"
        " hive_partitioning=true) GROUP BY partition ORDER BY partition"
    ).fetchall()
    assert rows == [("edge-a", 30, 30), ("edge-b", 20, 20)]
    dataset = ds.dataset(root, partitioning="hive")
    assert {"pipeline", "partition", "date", "time", "in.tensor"} <= set(dataset.schema.names)
    assert dataset.count_rows() == 50


def test_reads_are_newest_first_or_chronological_with_a_range(ops: Ops) -> None:
    edge, logs = edge_record(ops), ops.center.logs
    for first in range(1, 1000, 100):  # ten files, times T0+1 .. T0+1000
        logs.ingest(edge, "e1", first, first + 99, batch(first, first + 99), ops.clock())
    newest, more, _ = logs.read("ccfraud", None, None, None, 150)
    assert more and newest.column("_seq").to_pylist() == list(range(1000, 850, -1))
    window, more, _ = logs.read("ccfraud", None, T0 + 250, T0 + 260, 100)
    assert not more and window.column("_seq").to_pylist() == list(range(250, 261))
    first_page, more, _ = logs.read("ccfraud", None, T0, T0 + 10_000, 5)
    assert more and first_page.column("_seq").to_pylist() == [1, 2, 3, 4, 5]
    everything, more, _ = logs.read("ccfraud", None, None, None, 5000)
    assert not more and everything.num_rows == 1000


def test_a_crash_before_commit_leaves_nothing_and_after_commit_loses_nothing(ops: Ops) -> None:
    edge, logs, store = edge_record(ops), ops.center.logs, ops.center.store

    def crash(*args: Any, **kwargs: Any) -> None:
        raise StoreError("power cut")

    real = store.commit_batch
    store.commit_batch = crash  # type: ignore[method-assign]
    with pytest.raises(StoreError):
        logs.ingest(edge, "e1", 1, 10, batch(1, 10), ops.clock())
    store.commit_batch = real  # type: ignore[method-assign]
    assert stored_seqs(ops) == [] and not list(logs.tmp.iterdir())
    assert logs.ingest(edge, "e1", 1, 10, batch(1, 10), ops.clock()).stored == 10

    # Committed but not yet renamed into the dataset (a crash between the two): a restart
    # finishes the rename; an uncommitted leftover is deleted.
    final = Path(store.log_files("ccfraud")[0]["path"])
    os.replace(final, logs.tmp / final.name)
    (logs.tmp / "orphan.parquet").write_bytes(b"junk")
    reopened = LogStore(logs.root, logs.tmp, store)
    assert final.exists() and not list(reopened.tmp.iterdir())
    assert stored_seqs(ops) == list(range(1, 11))
