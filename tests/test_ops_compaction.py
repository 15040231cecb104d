"""Compaction of the ops center's log table: size-tiered (a pass does not rewrite what the
last pass wrote unless as much is new), and never a row twice when two compactors race or
retention deletes what a compaction read."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from deltalake import DeltaTable

from ops_sync import compaction
from ops_sync.logstore import LogStore
from tests.test_ops_logstore import batch, edge_record, stored_seqs
from tests.test_ops_support import Ops, result_table


@pytest.fixture()
def ops(tmp_path: Path) -> Ops:
    return Ops(tmp_path)


def active_files(logs: LogStore, column: str = "num_records") -> dict[str, int]:
    """path -> rows (or `column`) of the table's files."""
    if not Path(logs.table_url("ccfraud")).exists():
        return {}
    actions = pa.table(DeltaTable(logs.table_url("ccfraud")).get_add_actions(flatten=True))
    paths = actions.column("path").to_pylist()
    return dict(zip(paths, actions.column(column).to_pylist(), strict=True))


def test_a_pass_rewrites_its_last_output_only_beside_as_many_new_rows(ops: Ops) -> None:
    """An edge uploads 8 files (of 1 to 40 rows) between passes, 40 passes: each pass merges
    every upload (few files left), and the rows compaction rewrites stay within a few times
    the rows uploaded, where merging everything small each pass rewrites the whole day each
    time (20x here)."""
    edge, logs = edge_record(ops), ops.center.logs
    uploaded = read = 0
    seq = 1
    sizes = [3, 40, 7, 25, 1, 12, 30, 5]  # an agent's uploads vary with its backlog
    for n in range(40):
        before = active_files(logs)
        for size in sizes[n % 8 :] + sizes[: n % 8]:
            logs.ingest(edge, "ep", seq, seq + size - 1, batch(seq, seq + size - 1), 0.0)
            seq += size
        new = active_files(logs)
        uploaded += sum(rows for path, rows in new.items() if path not in before)
        assert logs.compact(min_files=8) >= 8
        after = active_files(logs)
        read += sum(rows for path, rows in new.items() if path not in after)
    assert stored_seqs(ops) == list(range(1, seq))
    assert len(after) <= 8  # the day so far in a handful of files
    assert read <= 6 * uploaded, (read, uploaded)
    # each file's time range in the Delta log is its rows' (the logs API prunes by it)
    reader = logs._reader(logs.table_url("ccfraud"))
    files = reader.files()
    assert files is not None
    for path, low, high in zip(
        *(files.column(c).to_pylist() for c in ("path", "min_time", "max_time")), strict=True
    ):
        (part,) = reader.read(files.filter(pc.equal(files.column("path"), path)))
        times = part.column("time").cast(pa.int64())
        assert (low, high) == (pc.min(times).as_py() // 1000, pc.max(times).as_py() // 1000)
    newest = logs.read("ccfraud", "edge-a", None, None, 3)[0].column("_seq").to_pylist()
    assert newest == [seq - 1, seq - 2, seq - 3]


def test_files_of_different_columns_merge_into_the_tables_columns(ops: Ops) -> None:
    edge, logs = edge_record(ops), ops.center.logs
    for first in range(1, 40, 10):
        logs.ingest(edge, "ep", first, first + 9, batch(first, first + 9), 0.0)
    wider = result_table(10, 1_790_000_000_000 + 41).append_column(
        "out.extra", pa.array([[1.5]] * 10, pa.list_(pa.float32()))
    )
    logs.ingest(edge, "ep", 41, 50, wider, 0.0)
    assert logs.compact(min_files=2) == 5
    assert len(active_files(logs)) == 1
    rows = DeltaTable(logs.table_url("ccfraud")).to_pyarrow_table()
    assert sorted(rows.column("_seq").to_pylist()) == list(range(1, 51))
    extra = rows.filter(pc.greater(rows.column("_seq"), 40)).column("out.extra").to_pylist()
    assert extra == [[1.5]] * 10
    assert rows.filter(pc.less_equal(rows.column("_seq"), 40)).column("out.extra").null_count == 40


def test_more_small_files_than_one_target_holds_make_several_in_one_pass(ops: Ops) -> None:
    edge, logs = edge_record(ops), ops.center.logs
    for first in range(1, 100, 10):
        logs.ingest(edge, "ep", first, first + 9, batch(first, first + 9), 0.0)
    sizes = active_files(logs, "size_bytes").values()
    assert max(sizes) < 1.1 * min(sizes)  # ten files of ten rows: five fit in the target
    assert logs.compact(target_bytes=5 * max(sizes), min_files=2) == 10
    assert sorted(active_files(logs).values()) == [50, 50]
    assert stored_seqs(ops) == list(range(1, 101))


def race(monkeypatch: pytest.MonkeyPatch, before_first_rewrite: Any) -> None:
    """Run `before_first_rewrite()` once, when a compaction has planned and is about to write."""
    real, done = compaction._rewrite, threading.Event()

    def rewrite(*args: Any) -> Any:
        if not done.is_set():
            done.set()
            before_first_rewrite()
        return real(*args)

    monkeypatch.setattr(compaction, "_rewrite", rewrite)


def test_two_compactors_racing_store_every_row_once(
    ops: Ops, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two replicas compact the same files at once (a lease ran out, say): delta-rs accepts
    two commits removing the same files; the compaction's application id refuses the second."""
    edge, logs = edge_record(ops), ops.center.logs
    for first in range(1, 100, 10):
        logs.ingest(edge, "ep", first, first + 9, batch(first, first + 9), 0.0)
    url = logs.table_url("ccfraud")
    other: list[int] = []
    race(monkeypatch, lambda: other.append(compaction.compact(url, {}, 16 << 20, 2)))
    removed = compaction.compact(url, {}, 16 << 20, 2)
    assert sorted([removed, *other]) == [0, 10]
    assert stored_seqs(ops) == list(range(1, 101))
    assert len(active_files(logs)) == 1
    # the loser's file is deleted, not left for vacuum
    on_disk = {str(p.relative_to(url)) for p in Path(url).rglob("*.zstd.parquet")}
    assert on_disk == set(active_files(logs))


def test_retention_during_a_compaction_wins(ops: Ops, monkeypatch: pytest.MonkeyPatch) -> None:
    """Retention deletes a day while a compaction is merging its files: the compaction is
    refused, so the deleted rows do not come back in its file."""
    edge, logs = edge_record(ops), ops.center.logs
    old = 1_790_000_000_000 - 40 * 86_400_000
    for first in range(1, 40, 10):
        logs.ingest(edge, "ep", first, first + 9, result_table(10, old + first), 0.0)
    logs.ingest(edge, "ep", 41, 50, batch(41, 50), 0.0)
    race(monkeypatch, lambda: logs.expire(30, 1_790_000_000, grace_hours=1))
    assert logs.compact(min_files=2) == 0
    assert stored_seqs(ops) == list(range(41, 51))
    url = logs.table_url("ccfraud")
    on_disk = {str(p.relative_to(url)) for p in Path(url).rglob("*.zstd.parquet")}
    assert on_disk == set()  # the refused compaction's file is deleted


def test_a_pass_of_several_commits_stores_every_row_once(
    ops: Ops, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One merge per commit: each commit is checked against the snapshot after the last, and
    a day deleted by retention between two commits stays deleted."""
    monkeypatch.setattr(compaction, "MERGES_PER_COMMIT", 1)
    edges = [edge_record(ops, f"edge-{i}") for i in range(3)]
    logs = ops.center.logs
    old = 1_790_000_000_000 - 40 * 86_400_000
    for first in range(1, 40, 10):
        logs.ingest(edges[0], "old", first, first + 9, result_table(10, old + first), 0.0)
        for edge in edges:
            logs.ingest(edge, "ep", first + 40, first + 49, batch(first + 40, first + 49), 0.0)
    real_plan, real_update = compaction.plan, DeltaTable.update_incremental

    def old_day_last(*args: Any) -> list[compaction.Merge]:
        return sorted(real_plan(*args), key=lambda m: m.partition["date"] == "2026-08-12")

    expired: list[int] = []

    def update(self: DeltaTable) -> None:
        if not expired:  # right after the first commit: retention deletes the old day
            expired.append(logs.expire(30, 1_790_000_000, grace_hours=1))
        real_update(self)

    monkeypatch.setattr(compaction, "plan", old_day_last)
    monkeypatch.setattr(DeltaTable, "update_incremental", update)
    assert logs.compact(min_files=2) == 12  # today's three merges; the old day's left out
    assert expired and len(active_files(logs)) == 3
    for edge in edges:
        assert stored_seqs(ops, edge["name"]) == list(range(41, 81))


def test_a_compacted_file_joins_a_merge_up_to_twice_the_rows_taken() -> None:
    def file(name: str, rows: int) -> dict[str, Any]:
        return {"path": name, "rows": rows, "bytes": 1_000}

    uploads = [file("a.snappy.parquet", 30), file("b.snappy.parquet", 70)]
    at = compaction._runs([*uploads, file("c.zstd.parquet", 200)], 16 << 20)
    assert [len(run) for run in at] == [3]
    past = compaction._runs([*uploads, file("c.zstd.parquet", 201)], 16 << 20)
    assert [len(run) for run in past] == [2]
    split = compaction._runs([*uploads, file("c.snappy.parquet", 5)], 2_500)
    assert [len(run) for run in split] == [2, 1]
