"""Delta log store: exactly once under resends, overlaps and racing replicas; a failed commit
stores nothing; compaction during ingest; retention; readable by DuckDB, polars and pandas;
on moto's S3 server with PostgreSQL metadata too."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from deltalake import DeltaTable

from ops_sync.deltatable import TableReader
from ops_sync.errors import BadRequest, StoreError
from ops_sync.logstore import LogStore
from tests.test_ops_support import Ops, result_table, table_rows

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
    url = ops.center.logs.table_url("ccfraud")
    return [s for _, _, s in table_rows(url, f"partition = '{partition}'", _options(ops))]


def _options(ops: Ops) -> dict[str, str] | None:
    return ops.center.logs.options or None


def test_resent_and_overlapping_batches_store_each_row_once(ops: Ops) -> None:
    edge, logs = edge_record(ops), ops.center.logs
    now = ops.clock()
    assert logs.ingest(edge, "e1", 1, 100, batch(1, 100), now).stored == 100
    assert logs.ingest(edge, "e1", 1, 100, batch(1, 100), now).duplicates == 100  # resent
    got = logs.ingest(edge, "e1", 51, 150, batch(51, 150), now)  # a larger resend
    assert (got.stored, got.duplicates) == (50, 50)
    assert logs.ingest(edge, "e1", 301, 400, batch(301, 400), now).stored == 100  # a gap
    # below the high-water mark: the agent acks by it, so these rows are duplicates
    assert logs.ingest(edge, "e1", 151, 300, batch(151, 300), now).duplicates == 150
    assert stored_seqs(ops) == [*range(1, 151), *range(301, 401)]
    table = DeltaTable(logs.table_url("ccfraud"))
    assert table.transaction_version("edge-a/e1") == 400  # the mark, in the table itself


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
    assert got.schema.field("anomaly.count").type == pa.uint32()  # stored as int64, read back
    assert got.schema.field("time").type == pa.timestamp("ms", tz="UTC")


def test_duckdb_polars_and_pandas_read_the_table(ops: Ops) -> None:
    a, b = edge_record(ops, "edge-a"), edge_record(ops, "edge-b")
    ops.center.logs.ingest(a, "ea", 1, 30, batch(1, 30), ops.clock())
    ops.center.logs.ingest(b, "eb", 1, 20, batch(1, 20), ops.clock())
    url = ops.center.logs.tables("ccfraud")[0]
    dataset = DeltaTable(url).to_pyarrow_dataset()  # noqa: F841 (DuckDB reads it by name)
    rows = duckdb.sql(
        "SELECT partition, count(*), count(DISTINCT _seq) FROM dataset"
        " GROUP BY partition ORDER BY partition"
    ).fetchall()
    assert rows == [("edge-a", 30, 30), ("edge-b", 20, 20)]
    frame = pl.read_delta(url).filter(pl.col("partition") == "edge-b")
    assert frame.height == 20 and {"pipeline", "date", "in.tensor"} <= set(frame.columns)
    assert len(DeltaTable(url).to_pandas(filters=[("partition", "=", "edge-a")])) == 30


def test_reads_are_newest_first_or_chronological_with_a_range(ops: Ops) -> None:
    edge, logs = edge_record(ops), ops.center.logs
    for first in range(1, 1000, 100):  # ten commits, times T0+1 .. T0+1000
        logs.ingest(edge, "e1", first, first + 99, batch(first, first + 99), ops.clock())
    newest, more, _ = logs.read("ccfraud", None, None, None, 150)
    assert more and newest.column("_seq").to_pylist() == list(range(1000, 850, -1))
    window, more, _ = logs.read("ccfraud", None, T0 + 250, T0 + 260, 100)
    assert not more and window.column("_seq").to_pylist() == list(range(250, 261))
    first_page, more, _ = logs.read("ccfraud", None, T0, T0 + 10_000, 5)
    assert more and first_page.column("_seq").to_pylist() == [1, 2, 3, 4, 5]
    everything, more, _ = logs.read("ccfraud", "edge-a", None, None, 5000)
    assert not more and everything.num_rows == 1000
    assert logs.read("ccfraud", "nobody", None, None, 10)[0].num_rows == 0


def test_a_filtered_read_reads_files_in_order_until_it_has_enough(
    ops: Ops, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a row filter (the default per-version read, the anomaly filter) the newest or
    first rows are those of a full scan, and only the files that can hold them are read."""
    edge, logs = edge_record(ops), ops.center.logs
    rows = []  # (time, epoch, seq) of every stored row; epoch e2 overlaps e1 in time
    for first in range(1, 2000, 50):
        for epoch, shift in (("e1", 0), ("e2", 25)):
            table = result_table(50, T0 + first + shift)
            logs.ingest(edge, epoch, first, first + 49, table, ops.clock())
            rows += [(T0 + s + shift, epoch, s) for s in range(first, first + 50)]
    read_files = []
    original = TableReader.read

    def counted(self: TableReader, files: pa.Table, columns: Any = None) -> list[pa.Table]:
        read_files.extend(files.column("path").to_pylist())
        return original(self, files, columns)

    monkeypatch.setattr(TableReader, "read", counted)

    def every_third(table: pa.Table) -> pa.Table:
        return table.filter(pa.array(table.column("_seq").to_numpy() % 3 == 0))

    def got(start: int | None, end: int | None, limit: int, where: Any) -> list[tuple]:
        table, _, _ = logs.read("ccfraud", "edge-a", start, end, limit, where)
        times = table.column("time").cast(pa.int64()).to_pylist()
        return list(
            zip(
                times,
                table.column("_epoch").to_pylist(),
                table.column("_seq").to_pylist(),
                strict=True,
            )
        )

    kept = [r for r in rows if r[2] % 3 == 0]
    for limit in (1, 10, 100, 5000):
        read_files.clear()
        assert got(None, None, limit, every_third) == sorted(kept, reverse=True)[:limit]
        if limit <= 10:
            assert len(read_files) <= 7, read_files  # of 80 files
    window = [r for r in kept if T0 + 500 <= r[0] <= T0 + 900]
    assert got(T0 + 500, T0 + 900, 20, every_third) == sorted(window)[:20]
    only = [r for r in rows if r[1] == "e1" and r[2] == 7]  # one row, in the oldest file

    def lone(table: pa.Table) -> pa.Table:
        seq, epoch = table.column("_seq"), table.column("_epoch")
        return table.filter(pc.and_(pc.equal(seq, 7), pc.equal(epoch, "e1")))

    assert got(None, None, 10, lone) == only


def test_a_compacted_file_is_read_by_row_group(ops: Ops, monkeypatch: pytest.MonkeyPatch) -> None:
    """After compaction an edge's rows are one large file of many row groups: the newest rows,
    the first rows of a range, and a filtered read open only the row groups that hold them."""
    edge, logs = edge_record(ops), ops.center.logs
    for first in range(1, 60_000, 6_000):
        logs.ingest(edge, "e1", first, first + 5_999, batch(first, first + 5_999), ops.clock())
    assert logs.compact(min_files=2) == 10
    (path,) = logs._reader(logs.table_url("ccfraud")).files().column("path").to_pylist()
    opened: list[int] = []
    original = TableReader.read_part

    def counted(self: TableReader, path: str, index: int | None) -> pa.Table:
        assert index is not None  # a compacted file is read by row group
        opened.append(index)
        return original(self, path, index)

    monkeypatch.setattr(TableReader, "read_part", counted)
    groups = logs._reader(logs.table_url("ccfraud")).row_groups(path)
    assert groups is not None and len(groups) == 4  # 60,000 rows in groups of 16,384

    def seqs(start: int | None, end: int | None, limit: int, where: Any = None) -> list[int]:
        opened.clear()
        return (
            logs.read("ccfraud", "edge-a", start, end, limit, where)[0].column("_seq").to_pylist()
        )

    def holding(low: int, high: int) -> set[int]:
        """The row groups whose time range meets [low, high]: the ones a read may open."""
        return {i for i, _, first, last in groups if first <= high and last >= low}

    # which row groups hold the rows asked for is read from the footer: only those (the
    # newest first) are opened, not all four
    newest = seqs(None, None, 100)
    assert newest == list(range(60_000, 59_900, -1))
    assert set(opened) <= holding(T0 + 59_901, T0 + 60_000)
    assert opened == [3]  # compaction writes rows in time order: the newest are in the last
    assert seqs(T0 + 20_000, T0 + 30_000, 10) == list(range(20_000, 20_010))
    assert set(opened) <= holding(T0 + 20_000, T0 + 30_000)
    assert opened == [1]
    odd = seqs(None, None, 5, lambda t: t.filter(pa.array(t.column("_seq").to_numpy() % 2 == 1)))
    assert odd == [59_999, 59_997, 59_995, 59_993, 59_991]
    assert set(opened) <= holding(T0 + 59_991, T0 + 60_000)
    assert len(seqs(None, None, 60_000)) == 60_000 and len(opened) == 4


def test_a_failed_commit_stores_nothing_and_the_resend_stores_once(
    ops: Ops, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ops_sync.deltatable as delta

    edge, logs = edge_record(ops), ops.center.logs
    logs.ingest(edge, "e1", 1, 10, batch(1, 10), ops.clock())
    real = delta.write_deltalake

    def power_cut(*args: Any, **kwargs: Any) -> None:
        raise OSError("the object store went away mid-commit")

    monkeypatch.setattr(delta, "write_deltalake", power_cut)
    with pytest.raises(StoreError, match="went away"):
        logs.ingest(edge, "e1", 11, 20, batch(11, 20), ops.clock())
    monkeypatch.setattr(delta, "write_deltalake", real)
    assert stored_seqs(ops) == list(range(1, 11))
    assert logs.ingest(edge, "e1", 11, 20, batch(11, 20), ops.clock()).stored == 10
    assert stored_seqs(ops) == list(range(1, 21))


def test_two_replicas_racing_the_same_batches_store_each_row_once(tmp_path: Path) -> None:
    """Two log stores (as two replicas: own handles, own commit threads) on one table and
    one metadata database, each sent every batch of three edges at the same moment."""
    first = Ops(tmp_path / "a")
    edges = [edge_record(first, f"edge-{i}") for i in range(3)]
    second = LogStore(first.center.logs.url, first.center.store, commit_interval=0.0)
    barrier = threading.Barrier(6)
    outcomes: list[int] = []

    def send(store: LogStore, edge: dict[str, Any]) -> None:
        barrier.wait()
        for start in range(1, 200, 20):
            got = store.ingest(edge, "ep", start, start + 19, batch(start, start + 19), 0.0)
            outcomes.append(got.stored)

    threads = [
        threading.Thread(target=send, args=(store, edge))
        for store in (first.center.logs, second)
        for edge in edges
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    second.close()
    assert sum(outcomes) == 3 * 200 and len(outcomes) == 60
    for edge in edges:
        assert stored_seqs(first, edge["name"]) == list(range(1, 201))


def test_replicas_taking_turns_know_their_own_and_each_others_marks(tmp_path: Path) -> None:
    """A replica's commit right after its base needs no read of it for its marks; a commit
    of the other replica's in between is read. Resends of either stay duplicates."""
    first = Ops(tmp_path / "a")
    edge = edge_record(first)
    a = first.center.logs
    b = LogStore(a.url, first.center.store, commit_interval=0.0)
    try:
        assert a.ingest(edge, "ep", 1, 20, batch(1, 20), 0.0).stored == 20
        assert a.ingest(edge, "ep", 1, 20, batch(1, 20), 0.0).stored == 0  # its own mark
        assert b.ingest(edge, "ep", 1, 40, batch(1, 40), 0.0).stored == 20  # a's, read
        assert a.ingest(edge, "ep", 21, 40, batch(21, 40), 0.0).stored == 0  # b's, read
        assert a.ingest(edge, "ep", 41, 60, batch(41, 60), 0.0).stored == 20
        assert b.ingest(edge, "ep", 1, 60, batch(1, 60), 0.0).stored == 0
    finally:
        b.close()
    assert stored_seqs(first) == list(range(1, 61))


def test_compaction_during_ingest_keeps_every_row_once_and_reads_working(ops: Ops) -> None:
    edges = [edge_record(ops, f"edge-{i}") for i in range(2)]
    logs, stop = ops.center.logs, threading.Event()
    removed: list[int] = []

    def compact() -> None:
        while not stop.is_set():
            removed.append(logs.compact(min_files=2))

    for edge in edges:
        logs.ingest(edge, "ep", 1, 5, batch(1, 5), 0.0)
    compactor = threading.Thread(target=compact)
    compactor.start()
    for start in range(6, 400, 5):
        for edge in edges:
            assert logs.ingest(edge, "ep", start, start + 4, batch(start, start + 4), 0.0).stored
        assert logs.read("ccfraud", "edge-0", None, None, 3)[0].num_rows == 3
    stop.set()
    compactor.join(60)
    assert sum(removed) > 0
    files = DeltaTable(logs.table_url("ccfraud")).file_uris()
    assert len(files) < 2 * 79  # far fewer than one per upload
    for edge in edges:
        assert stored_seqs(ops, edge["name"]) == list(range(1, 401))
    assert logs.ingest(edges[0], "ep", 391, 400, batch(391, 400), 0.0).duplicates == 10


def test_retention_deletes_old_days_and_vacuum_removes_their_files(ops: Ops) -> None:
    edge, logs = edge_record(ops), ops.center.logs
    day = 86_400_000
    logs.ingest(edge, "ep", 1, 3, result_table(3, T0 - 40 * day), 0.0)
    logs.ingest(edge, "ep", 4, 6, result_table(3, T0), 0.0)
    logs.expire(30, T0 / 1000, grace_hours=0)  # the old day's rows go from the table
    assert stored_seqs(ops) == [4, 5, 6]
    time.sleep(1.1)  # vacuum deletes files removed strictly before its horizon
    assert logs.expire(30, T0 / 1000, grace_hours=0) == 1
    assert len(list(Path(logs.table_url("ccfraud")).rglob("*.parquet"))) == 1


def test_on_s3_with_postgresql_metadata(
    tmp_path: Path, postgres: Any, moto_s3: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in moto_s3.env().items():
        monkeypatch.setenv(key, value)
    url = postgres.fresh_database("logstore_s3")
    ops = Ops(tmp_path, metadata_url=url, logs_url=f"s3://{moto_s3.bucket}/ops/logs")
    edge = edge_record(ops)
    assert ops.center.logs.ingest(edge, "e1", 1, 50, batch(1, 50), 0.0).stored == 50
    assert ops.center.logs.ingest(edge, "e1", 1, 50, batch(1, 50), 0.0).duplicates == 50
    newest, _, _ = ops.center.logs.read("ccfraud", "edge-a", None, None, 5)
    assert newest.column("_seq").to_pylist() == [50, 49, 48, 47, 46]
    assert stored_seqs(ops) == list(range(1, 51))
    assert ops.center.readiness() == {"metadata": "ok", "logs": "ok"}
    ops.center.close()
