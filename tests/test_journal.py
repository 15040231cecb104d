"""The log buffer's journal: answered rows survive a crash before SQLite has them."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import textwrap
import threading
import time
from pathlib import Path

import pyarrow as pa
import pytest

from edge.logbuffer import LogBuffer, SeqRange, _Call
from tests.test_logbuffer import kill_after_lines

TIME = pa.timestamp("ms", tz="UTC")


def table(rows: int, start: int = 0) -> pa.Table:
    return pa.table(
        {
            "time": pa.array([1_700_000_000_000 + start + i for i in range(rows)], TIME),
            "in.x": pa.array([float(start + i) for i in range(rows)]),
        }
    )


def stored(buffer: LogBuffer) -> dict[int, float]:
    """seq -> in.x of every row SQLite holds."""
    rows: dict[int, float] = {}
    for batch in buffer.pending(10**9):
        for offset, x in enumerate(batch.table.column("in.x").to_pylist()):
            rows[batch.first_seq + offset] = x
    return rows


def parked_writer(buffer: LogBuffer) -> None:
    """Keep the writer thread waiting for good: SQLite gets nothing more."""
    inside, never = threading.Event(), threading.Event()

    def stuck() -> None:
        inside.set()
        never.wait()

    buffer._queue.put(_Call(stuck, concurrent.futures.Future()))
    assert inside.wait(10)


def crash(buffer: LogBuffer) -> None:
    """Let go of the buffer's files as a killed process would: no commit, no clean close."""
    buffer._thread = None
    buffer._journal.close()
    assert buffer._wconn is not None and buffer._rconn is not None
    buffer._wconn.close()
    buffer._rconn.close()
    buffer._release_file_lock()


def journal_files(db: Path) -> list[Path]:
    return sorted(Path(f"{db}.journal").glob("*.journal"))


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
        rows = stored(buffer)
        for epoch, first, last, i in answered:
            assert epoch.decode() == buffer.epoch
            for seq in range(int(first), int(last) + 1):
                assert rows[seq] == float(i)  # the very row, under its own number
        assert sorted(rows) == list(range(1, len(rows) + 1))  # no duplicates, no gaps
        assert buffer.stats()["replayed"] == len(rows)
        assert len(list(Path(f"{db}.journal").glob("*.table"))) >= 5  # kept as the rows' store
        after = buffer.log(table(1))
        assert after.first == max(rows) + 1  # numbers never repeat
    assert len(journal_files(db)) <= 1  # replayed segments are gone
    with LogBuffer(db) as again:  # and a second start reads the same rows, once
        assert stored(again) == {**rows, after.first: 0.0}


def test_a_torn_tail_is_ignored_and_whole_records_replayed(tmp_path: Path) -> None:
    db = tmp_path / "logbuffer.db"
    buffer = LogBuffer(db, linger=60.0, fsync_interval=60.0)
    buffer.start()
    parked_writer(buffer)
    for i in range(5):
        buffer.log(table(2, start=10 * i))
    (segment,) = journal_files(db)
    whole = segment.read_bytes()
    # a crash while the machine lost power: the writer thread never ran, the tail is torn
    crash(buffer)
    segment.write_bytes(whole[:-7])
    with LogBuffer(db) as reopened:
        rows = stored(reopened)
        assert list(rows) == list(range(1, 9))  # four whole tables; the torn fifth is gone
        assert rows[8] == 31.0
        assert reopened.log(table(1)).first == 9


def test_journal_segments_are_deleted_once_sqlite_holds_them(tmp_path: Path) -> None:
    db = tmp_path / "logbuffer.db"
    with LogBuffer(db, journal_segment_bytes=4096, fsync_interval=0.01) as buffer:
        for i in range(400):
            buffer.log(table(3, start=i))
        deadline = time.monotonic() + 10
        while len(journal_files(db)) > 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(journal_files(db)) <= 2
        buffer.query(limit=1)  # waits for what was logged to reach SQLite
        assert len(stored(buffer)) == 1200
    assert sum(p.stat().st_size for p in journal_files(db)) == 0  # a clean close keeps none


def test_submit_waits_for_the_journal_fsync_when_asked(tmp_path: Path) -> None:
    db = tmp_path / "logbuffer.db"
    with LogBuffer(db, fsync_interval=0) as buffer:

        async def many() -> list[SeqRange]:
            return await asyncio.gather(*(buffer.submit(table(2, start=i)) for i in range(50)))

        ranges = asyncio.run(many())
        assert not buffer._journal.unsynced
        assert sorted(r.first for r in ranges) == list(range(1, 101, 2))
        assert len(buffer.query(limit=1000)[0]) == 100  # query sees every logged row


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


def test_a_failed_write_is_cut_back_and_the_next_record_follows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edge import journal as journal_module

    folder = tmp_path / "journal"
    log = journal_module.Journal(folder)
    log.begin("epoch", 1, keep=set())
    with log.lock:
        log.write(1, log.encode(table(2)))
    whole = journal_module._write_all

    def disk_full(fd: int, parts: list, size: int) -> None:
        os.write(fd, b"half a record")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(journal_module, "_write_all", disk_full)
    with pytest.raises(OSError), log.lock:
        log.write(3, log.encode(table(1, start=5)))
    monkeypatch.setattr(journal_module, "_write_all", whole)
    with log.lock:
        log.write(3, log.encode(table(1, start=7)))
    log.close()
    reread = journal_module.Journal(folder)
    records = [r for _, records in reread.read(live=False) for r in records]
    assert [(r.first_seq, r.table.num_rows) for r in records] == [(1, 2), (3, 1)]
    assert records[1].table.column("in.x").to_pylist() == [7.0]


def test_dictionary_columns_are_journaled_replayed_and_read_back_plain(tmp_path: Path) -> None:
    db = tmp_path / "logbuffer.db"

    def categorical(rows: int) -> pa.Table:
        return table(rows).append_column(
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


def test_the_submits_of_one_loop_turn_are_journaled_as_one_record(tmp_path: Path) -> None:
    db = tmp_path / "logbuffer.db"
    buffer = LogBuffer(db)
    buffer.start()
    parked_writer(buffer)
    other = table(2, start=10).append_column("in.y", pa.array([1, 2]))  # another schema

    async def one_turn() -> list[SeqRange]:
        tables = [table(1, start=0), table(1, start=1), other, table(1, start=2)]
        return await asyncio.gather(*(buffer.submit(t) for t in tables))

    ranges = asyncio.run(one_turn())
    # each caller gets its own numbers, in submit order
    assert [(r.first, r.last) for r in ranges] == [(1, 1), (2, 2), (3, 4), (5, 5)]
    records = [r for _, records in buffer._journal.read(live=True) for r in records]
    # a run of one schema is one record: one encode and one write for many requests
    assert [(r.first_seq, r.table.num_rows) for r in records] == [(1, 2), (3, 2), (5, 1)]
    crash(buffer)
    with LogBuffer(db) as reopened:
        assert stored(reopened) == {1: 0.0, 2: 1.0, 3: 10.0, 4: 11.0, 5: 2.0}


def test_a_full_queue_fails_every_submit_of_the_turn_and_journals_none(tmp_path: Path) -> None:
    from edge.logbuffer import LogBufferFull

    db = tmp_path / "logbuffer.db"
    buffer = LogBuffer(db, max_queue=1)
    buffer.start()
    parked_writer(buffer)

    async def turn(start: int) -> list[SeqRange | BaseException]:
        tables = [table(1, start=start + i) for i in range(3)]
        return await asyncio.gather(*(buffer.submit(t) for t in tables), return_exceptions=True)

    assert all(isinstance(r, SeqRange) for r in asyncio.run(turn(0)))  # an empty queue admits
    refused = asyncio.run(turn(100))
    assert all(isinstance(r, LogBufferFull) for r in refused)
    assert buffer.stats()["rejected"] == 3  # requests refused
    crash(buffer)
    with LogBuffer(db) as reopened:
        assert stored(reopened) == {1: 0.0, 2: 1.0, 3: 2.0}  # nothing of the refused turn


def test_per_request_constants_are_packed_and_read_back_as_they_were() -> None:
    from edge.journal import pack_constants, plain

    def with_partition(values: pa.Array) -> pa.Table:
        rows = len(values)
        return table(rows).append_column("metadata.partition", values)

    constant = pa.array(["edge-a"] * 1000)
    for _ in range(3):  # the same arrays again and again (the pipeline's cached constants)
        packed = pack_constants(with_partition(constant.slice(0, 500)))
        assert pa.types.is_dictionary(packed.schema.field("metadata.partition").type)
        assert plain(packed).column("metadata.partition").to_pylist() == ["edge-a"] * 500
    other = pack_constants(with_partition(pa.array(["edge-b"] * 500)))  # new buffers
    assert plain(other).column("metadata.partition").to_pylist() == ["edge-b"] * 500
    longer = pack_constants(with_partition(constant))  # same buffer, another length
    assert plain(longer).column("metadata.partition").to_pylist() == ["edge-a"] * 1000
    mixed = pack_constants(with_partition(pa.array(["x", "y"] * 250)))  # not one value
    assert mixed.schema.field("metadata.partition").type == pa.string()
    lists = pa.array([[7, 8]] * 300, pa.list_(pa.int64()))  # metadata.elapsed: a list
    result = table(300).append_column("metadata.elapsed", lists)
    packed = pack_constants(result)
    assert pa.types.is_dictionary(packed.schema.field("time").type) is False  # times differ
    assert pa.types.is_dictionary(packed.schema.field("metadata.elapsed").type)
    assert plain(packed).equals(result)
    assert "in.x" in packed.column_names and packed.column("in.x").type == pa.float64()


def test_a_small_current_segment_is_kept_across_fsyncs(tmp_path: Path) -> None:
    db = tmp_path / "logbuffer.db"
    with LogBuffer(db, fsync_interval=0.01) as buffer:
        buffer.log(table(3))
        buffer.query(limit=1)  # stored in SQLite
        before = journal_files(db)
        time.sleep(0.3)  # many fsync intervals
        buffer.log(table(3, start=3))
        buffer.query(limit=1)
        time.sleep(0.1)
        # no new file per interval: the rows it holds are stored, but it is small
        assert journal_files(db) == before
        assert len(stored(buffer)) == 6


def test_a_large_tables_time_range_is_kept_when_logged_and_when_replayed(tmp_path: Path) -> None:
    from datetime import UTC, datetime

    db = tmp_path / "logbuffer.db"
    when = pa.array([1_700_000_000_000] * 40_000, TIME)  # one time per request: packed
    large = table(40_000).set_column(0, "time", when)
    start = datetime.fromtimestamp(1_699_999_999, UTC)
    end = datetime.fromtimestamp(1_700_000_001, UTC)
    with LogBuffer(db) as buffer:
        buffer.append_nowait(large).result(timeout=10)
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


def test_tables_of_a_turn_that_cannot_be_joined_are_journaled_one_by_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import edge.logbuffer as logbuffer_module

    def unjoinable(tables: list[pa.Table]) -> pa.Table:
        raise pa.ArrowInvalid("cannot concatenate")

    monkeypatch.setattr(logbuffer_module, "_joined", unjoinable)
    with LogBuffer(tmp_path / "logbuffer.db") as buffer:

        async def one_turn() -> list[SeqRange]:
            return await asyncio.gather(*(buffer.submit(table(1, start=i)) for i in range(3)))

        ranges = asyncio.run(one_turn())
        assert [(r.first, r.last) for r in ranges] == [(1, 1), (2, 2), (3, 3)]
        buffer.query(limit=1)
        assert stored(buffer) == {1: 0.0, 2: 1.0, 3: 2.0}
