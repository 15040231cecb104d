"""The log buffer's journal: answered rows survive a crash before SQLite has them."""

from __future__ import annotations

import asyncio
import os
import textwrap
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pytest

from edge import codecs
from edge.errors import LogBufferDiskFull
from edge.logbuffer import LogBuffer, SeqRange, records
from edge.logbuffer.journal import Journal, Written
from tests.logbuffer_support import (
    T0,
    TIME,
    crash,
    eventually,
    journal_files,
    kill_after_lines,
    parked_writer,
    small_table,
    stored,
    stored_x,
    table_files,
)

CHILD = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    import pyarrow as pa
    from edge.logbuffer import LogBuffer

    # the writer lingers 60 s: SQLite gets nothing, every answered row is only in the journal
    buffer = LogBuffer(Path(sys.argv[1]), linger=60.0, fsync_interval=60.0)
    buffer.start()
    i = 0
    while True:
        rows = 40_000 if i % 50 == 7 else 1 + i % 3  # now and then a table of its own file
        t = pa.table({"time": pa.array([i] * rows, pa.timestamp("ms", tz="UTC")),
                      "in.x": pa.array([float(i)] * rows)})
        r = buffer.log(t)
        print(r.epoch, r.first, r.last, i, flush=True)
        i += 1
    """
)


def test_sigkill_before_sqlite_keeps_every_logged_row(tmp_path: Path) -> None:
    db = tmp_path / "logbuffer.db"
    answered = kill_after_lines(CHILD, db, 300)
    assert len(answered) >= 300
    with LogBuffer(db) as buffer:
        rows = stored_x(buffer)
        for epoch, first, last, i in answered:
            assert epoch.decode() == buffer.epoch
            for seq in range(int(first), int(last) + 1):
                assert rows[seq] == float(i)  # the very row, under its own number
        assert sorted(rows) == list(range(1, len(rows) + 1))  # no duplicates, no gaps
        assert buffer.stats()["replayed"] == len(rows)
        assert len(table_files(db)) >= 5  # kept as the rows' store
        after = buffer.log(small_table(1))
        assert after.first == max(rows) + 1  # numbers never repeat
    assert len(journal_files(db)) <= 1  # replayed segments are gone
    with LogBuffer(db) as again:  # and a second start reads the same rows, once
        assert stored_x(again) == {**rows, after.first: 0.0}


def test_a_torn_tail_is_ignored_and_whole_records_replayed(tmp_path: Path) -> None:
    db = tmp_path / "logbuffer.db"
    buffer = LogBuffer(db, linger=60.0, fsync_interval=60.0)
    buffer.start()
    parked_writer(buffer)
    for i in range(5):
        buffer.log(small_table(2, start=10 * i))
    (segment,) = journal_files(db)
    whole = segment.read_bytes()
    # a crash while the machine lost power: the writer thread never ran, the tail is torn
    crash(buffer)
    segment.write_bytes(whole[:-7])
    with LogBuffer(db) as reopened:
        rows = stored_x(reopened)
        assert list(rows) == list(range(1, 9))  # four whole tables; the torn fifth is gone
        assert rows[8] == 31.0
        assert reopened.log(small_table(1)).first == 9


def test_journal_segments_are_deleted_once_sqlite_holds_them(tmp_path: Path) -> None:
    db = tmp_path / "logbuffer.db"
    with LogBuffer(db, journal_segment_bytes=4096, fsync_interval=0.01) as buffer:
        for i in range(400):
            buffer.log(small_table(3, start=i))
        assert eventually(lambda: len(journal_files(db)) <= 2)
        buffer.query(limit=1)  # waits for what was logged to reach SQLite
        assert len(stored_x(buffer)) == 1200
    assert sum(p.stat().st_size for p in journal_files(db)) == 0  # a clean close keeps none


def test_submit_waits_for_the_journal_fsync_when_asked(tmp_path: Path) -> None:
    db = tmp_path / "logbuffer.db"
    with LogBuffer(db, fsync_interval=0) as buffer:

        async def many() -> list[SeqRange]:
            return await asyncio.gather(
                *(buffer.submit(small_table(2, start=i)) for i in range(50))
            )

        ranges = asyncio.run(many())
        assert not buffer._journal.unsynced
        assert sorted(r.first for r in ranges) == list(range(1, 101, 2))
        assert len(buffer.query(limit=1000)[0]) == 100  # query sees every logged row
        buffer.log_answered(small_table(2, start=200))  # from a worker thread: the same
        assert not buffer._journal.unsynced


def test_fsync_interval_setting() -> None:
    from edge.config import load_settings
    from edge.errors import ConfigError

    assert load_settings(environ={}).log_fsync_interval == 0.1
    assert load_settings(environ={"LOG_FSYNC_INTERVAL": "0"}).log_fsync_interval == 0.0
    flagged = load_settings({"log_fsync_interval": 0.5}, environ={"LOG_FSYNC_INTERVAL": "0"})
    assert flagged.log_fsync_interval == 0.5
    for bad in ("soon", "-1", "3600"):
        with pytest.raises(ConfigError, match="LOG_FSYNC_INTERVAL"):
            load_settings(environ={"LOG_FSYNC_INTERVAL": bad})


def opened(tmp_path: Path, **kw: int) -> tuple[Journal, list[Written]]:
    """A journal of epoch "e" from seq 1, and the list its appends are handed to."""
    journal = Journal(tmp_path / "journal", tmp_path / "tables", **kw)
    journal.begin("e", 1)
    return journal, []


def test_a_failed_write_is_cut_back_takes_no_number_and_the_next_record_follows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal, sink = opened(tmp_path)
    journal.append(journal.encode(small_table(2)), lambda: True, sink.append)
    whole = records.write_all

    def disk_full(fd: int, parts: list, size: int) -> None:
        os.write(fd, b"half a record")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(records, "write_all", disk_full)
    with pytest.raises(LogBufferDiskFull, match="disk full"):
        journal.append(journal.encode(small_table(1, start=5)), lambda: True, sink.append)
    monkeypatch.setattr(records, "write_all", whole)
    written = journal.append(journal.encode(small_table(1, start=7)), lambda: True, sink.append)
    assert written is not None and written.seqs == SeqRange("e", 3, 3)
    assert [w.seqs.first for w in sink] == [1, 3]  # nothing was handed on for the failure
    journal.close()
    reread = Journal(tmp_path / "journal", tmp_path / "tables").read(live=False)
    assert [(r.first_seq, r.rows) for r in reread] == [(1, 2), (3, 1)]
    assert reread[1].table().column("in.x").to_pylist() == [7.0]


def test_a_refused_table_is_not_written_and_takes_no_number(tmp_path: Path) -> None:
    journal, sink = opened(tmp_path)
    assert journal.append(journal.encode(small_table(2)), lambda: False, sink.append) is None
    assert journal.append(small_table(2), lambda: False, sink.append) is None
    assert sink == [] and journal.last_seq == 0
    assert journal.read(live=True) == [] and not list((tmp_path / "tables").iterdir())


def test_a_large_table_is_written_once_to_its_own_file_and_referenced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal, sink = opened(tmp_path)
    journal.append(journal.encode(small_table(2)), lambda: True, sink.append)
    large = small_table(1000, start=2)
    written = journal.append(large, lambda: True, sink.append)
    assert written is not None and written.seqs == SeqRange("e", 3, 1002)
    assert written.file == "e-0000000000000003.table"
    assert written.file_bytes == (tmp_path / "tables" / written.file).stat().st_size
    small, referenced = journal.read(live=True)
    assert small.inline is not None and small.path is None
    assert referenced.path == tmp_path / "tables" / written.file and referenced.inline is None
    assert referenced.table().equals(large)
    segment_bytes = sum(p.stat().st_size for p in (tmp_path / "journal").iterdir())
    assert segment_bytes < 4096  # the segment holds only a reference to the large table

    def disk_full(fd: int, parts: list, size: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(records, "write_all", disk_full)
    with pytest.raises(LogBufferDiskFull):
        journal.append(small_table(1000), lambda: True, sink.append)
    monkeypatch.undo()
    assert {p.name for p in (tmp_path / "tables").glob("*.table")} == {written.file}  # none half
    assert journal.last_seq == 1002
    (tmp_path / "tables" / written.file).unlink()  # as if a power loss took it
    with pytest.raises(OSError):
        journal.read(live=True)[1].table()


def test_large_tables_are_written_over_files_made_ahead_and_cut_to_their_size(
    tmp_path: Path,
) -> None:
    """A large table's file is one made ahead (renamed: the same inode), zero-filled for the
    size of the table before it; each reads back as logged, at exactly its record's size,
    whether smaller or larger than those zeros. A crash's leftover spare is deleted at
    start, and `close` leaves none."""
    tables = tmp_path / "tables"
    tables.mkdir()
    (tables / "1234-1.spare").write_bytes(b"\0" * 100)  # left by a killed process
    journal, sink = opened(tmp_path)
    assert not list(tables.glob("*.spare"))

    def spares() -> dict[int, int]:  # inode -> bytes of zeros
        return {p.stat().st_ino: p.stat().st_size for p in tables.glob("*.spare")}

    logged = []
    for rows in (4000, 1500, 9000, 2000):
        # two made whole (a file being zero-filled is on disk already)
        assert eventually(lambda: len(journal._spares._ready) == 2) or not logged
        ready = spares()
        table = small_table(rows, start=10_000 * len(logged))
        written = journal.append(table, lambda: True, sink.append)
        assert written is not None and written.file is not None
        path = tables / written.file
        assert path.stat().st_size == written.file_bytes
        if logged:  # the first table came before any spare
            assert path.stat().st_ino in ready
            assert ready[path.stat().st_ino] >= logged[-1][1]  # zeros for the last size
        logged.append((written.file, written.file_bytes, table))
    for (name, size, table), record in zip(logged, journal.read(live=True), strict=True):
        assert record.path == tables / name and record.table().equals(table)
        assert (tables / name).stat().st_size == size
    journal.close()
    assert not list(tables.glob("*.spare"))


def test_a_spare_that_cannot_be_renamed_does_not_fail_the_table(tmp_path: Path) -> None:
    """A ready spare deleted under the journal (its rename fails): the table's file is made
    as without one, and the table reads back."""
    journal, sink = opened(tmp_path)
    journal.append(small_table(3000), lambda: True, sink.append)
    assert eventually(lambda: len(journal._spares._ready) == 2)
    for spare in (tmp_path / "tables").glob("*.spare"):
        spare.unlink()
    table = small_table(3000, start=3000)
    written = journal.append(table, lambda: True, sink.append)
    assert written is not None and written.file is not None
    assert journal.read(live=True)[1].table().equals(table)
    journal.close()


def test_a_large_arrow_requests_input_is_journaled_from_the_bodys_own_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 14: the input columns a client sent as Arrow are written to the table's file
    from the request body's buffer (no copy), and the file holds the very bytes of the
    table's IPC stream."""
    rows = 5000
    tensor = pa.FixedSizeListArray.from_arrays(pa.array([0.5, 1.5, 2.5] * rows * 10), 30)
    sent = pa.table({"tensor": tensor.cast(pa.list_(pa.float32(), 30))})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, sent.schema) as writer:
        writer.write_table(sent)
    body = sink.getvalue().to_pybytes()
    request = codecs.decode_arrow(body)
    times = pa.array([1_700_000_000_000] * rows, TIME)
    logged = pa.table({"time": times, "in.tensor": request.column("tensor")})
    writes: list[list[bytes | pa.Buffer]] = []
    write_all = records.write_all

    def kept(fd: int, parts: list[bytes | pa.Buffer], size: int) -> None:
        writes.append(list(parts))
        write_all(fd, parts, size)

    monkeypatch.setattr(records, "write_all", kept)
    journal, queued = opened(tmp_path)
    written = journal.append(logged, lambda: True, queued.append)
    assert written is not None and written.file is not None
    start = pa.py_buffer(body).address
    from_body = [
        p for p in writes[0] if isinstance(p, pa.Buffer) and start <= p.address < start + len(body)
    ]
    assert [len(p) for p in from_body] == [rows * 30 * 4]  # the tensor, by reference
    expected, _ = records.record(written.seqs.first, records.stream(logged))
    on_disk = (tmp_path / "tables" / written.file).read_bytes()
    assert on_disk == b"".join(bytes(p) for p in expected)
    assert journal.read(live=True)[0].table().equals(logged)


def test_the_writers_queue_holds_large_tables_by_their_files_not_their_memory(
    tmp_path: Path,
) -> None:
    """A large result's per-request strings take megabytes in memory and almost nothing in
    its file: the queue counts the file (more such tables wait before a 503) and keeps no
    table in memory; each is stored and read back whole, time range included."""
    rows = 6000
    model = "a-model-name-of-some-length:" + "f" * 64

    def result(i: int) -> pa.Table:
        return pa.table(
            {
                "time": pa.array([T0 + i] * rows, TIME),
                "in.x": pa.array([float(i)] * rows),
                "metadata.last_model": pa.array([model] * rows),
            }
        )

    assert 8 * result(0).get_total_buffer_size() > 5 << 20  # past the queue's 4 MiB
    db = tmp_path / "logbuffer.db"
    with LogBuffer(db, max_queue_bytes=4 << 20) as buffer:
        release = parked_writer(buffer)
        try:
            logged = [buffer.log(result(i)) for i in range(8)]  # none refused
            assert all(item.table is None for item in buffer._inbox._items)
        finally:
            release.set()
        buffer.flush()
        back, _ = buffer.query(limit=100_000, start=T0, end=T0 + 7)
    assert [r.count for r in logged] == [rows] * 8
    assert back.num_rows == 8 * rows
    assert back.column("metadata.last_model").unique().to_pylist() == [model]


def test_a_small_current_segment_is_kept_until_the_end(tmp_path: Path) -> None:
    journal, sink = opened(tmp_path, segment_bytes=16 << 10)
    journal.append(journal.encode(small_table(3)), lambda: True, sink.append)
    assert not journal.releasable(3)  # its rows are stored, but it is small
    assert journal.release(3) == 0
    assert not journal.releasable(2, final=True)  # at the end too, not before SQLite has all
    assert journal.release(3, final=True) == 1
    for i in range(8):  # past an eighth of a segment (a record is some 400 bytes)
        journal.append(journal.encode(small_table(3, start=i)), lambda: True, sink.append)
    assert journal.files == 1  # no new segment yet
    assert journal.releasable(journal.last_seq)
    assert not journal.releasable(journal.last_seq - 1)


def test_the_writer_keeps_a_small_current_segment_across_fsyncs(tmp_path: Path) -> None:
    db = tmp_path / "logbuffer.db"
    with LogBuffer(db) as buffer:
        stored(buffer, small_table(3))
        writer = buffer._writer

        def fsync_now() -> None:
            writer._last_fsync = 0.0
            writer._keep_durable()

        before = journal_files(db)
        for _ in range(5):  # as many fsync intervals
            writer.call(fsync_now)
        stored(buffer, small_table(3, start=3))
        writer.call(fsync_now)
        # no new file per interval: the rows it holds are stored, but it is small
        assert journal_files(db) == before
        assert len(stored_x(buffer)) == 6


def test_dictionary_columns_are_journaled_replayed_and_read_back_plain(tmp_path: Path) -> None:
    db = tmp_path / "logbuffer.db"

    def categorical(rows: int) -> pa.Table:
        return small_table(rows).append_column(
            "in.kind", pa.array(["a", "b"] * (rows // 2)).dictionary_encode()
        )

    buffer = LogBuffer(db)
    buffer.start()
    parked_writer(buffer)
    buffer.log(categorical(2))
    buffer.log(categorical(40_000))  # a file of its own
    crash(buffer)
    with LogBuffer(db) as reopened:
        (batch,) = reopened.pending(10**9)
        assert batch.table.num_rows == 40_002
        assert batch.table.schema.field("in.kind").type == pa.string()
        assert batch.table.column("in.kind").to_pylist()[:4] == ["a", "b", "a", "b"]


def test_a_large_tables_time_range_is_kept_when_logged_and_when_replayed(tmp_path: Path) -> None:
    db = tmp_path / "logbuffer.db"
    when = pa.array([1_700_000_000_000] * 40_000, TIME)  # one time per request: packed
    large = small_table(40_000).set_column(0, "time", when)
    start = datetime.fromtimestamp(1_699_999_999, UTC)
    end = datetime.fromtimestamp(1_700_000_001, UTC)
    with LogBuffer(db) as buffer:
        stored(buffer, large)
        window, _ = buffer.query(limit=10**6, start=start, end=end)
        assert window.num_rows == 40_000
    buffer = LogBuffer(db.with_name("replayed.db"))
    buffer.start()
    parked_writer(buffer)
    buffer.log(large)
    crash(buffer)
    with LogBuffer(db.with_name("replayed.db")) as reopened:
        window, _ = reopened.query(limit=10**6, start=start, end=end)
        assert window.num_rows == 40_000
        assert window.column("time").type == TIME
