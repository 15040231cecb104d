"""The log buffer through its facade: ranges, epochs, the cap, crashes, backpressure."""

from __future__ import annotations

import asyncio
import sqlite3
import textwrap
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from edge.errors import LogBufferDiskFull, LogBufferError, LogBufferFull
from edge.logbuffer import Batch, LogBuffer, SeqRange
from tests.logbuffer_support import (
    T0,
    TIME,
    eventually,
    kill_after_lines,
    parked_writer,
    result_table,
    stored,
    stored_seqs,
    table_files,
)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "persist" / "logbuffer.db"


@pytest.fixture
def buf(db: Path) -> Iterator[LogBuffer]:
    with LogBuffer(db) as buffer:
        yield buffer


def test_flushed_rows_are_committed_and_pending_returns_them(buf: LogBuffer, db: Path) -> None:
    first = stored(buf, result_table(3))
    second = stored(buf, result_table(2))
    assert first == SeqRange(buf.epoch, 1, 3)
    assert second == SeqRange(buf.epoch, 4, 5)
    # Committed: another connection sees the rows right away.
    with sqlite3.connect(db) as other:
        assert other.execute("SELECT SUM(n_rows) FROM batches").fetchone()[0] == 5
    (batch,) = buf.pending(100)
    assert (batch.epoch, batch.first_seq, batch.last_seq) == (buf.epoch, 1, 5)
    assert batch.table.column("in.tensor").to_pylist()[0] == [1.0, 2.0, 3.0]
    assert batch.table.schema.field("time").type == TIME
    stats = buf.stats()
    assert stats["rows"] == stats["unsynced_rows"] == 5
    assert stats["oldest_unsynced"] == T0 and stats["oldest_unsynced_seq"] == 1
    assert stats["dropped"] == {"input_values": 0, "output_values": 0, "rows": 0}


def test_pending_limits_rows_and_ack_deletes_by_seq(buf: LogBuffer) -> None:
    for _ in range(4):
        stored(buf, result_table(5))  # seqs 1..20
    (head,) = buf.pending(7)  # slices the second table
    assert (head.first_seq, head.last_seq, head.table.num_rows) == (1, 7, 7)
    buf.ack(buf.epoch, 7)
    (rest,) = buf.pending(100)
    assert (rest.first_seq, rest.last_seq) == (8, 20)
    assert buf.stats()["rows"] == buf.stats()["unsynced_rows"] == 13
    buf.ack(buf.epoch, 7)  # acking again is harmless
    buf.ack("another-epoch", 20)  # another epoch's rows are not here: no effect
    assert stored_seqs(buf) == list(range(8, 21))
    with pytest.raises(ValueError, match="last committed seq"):
        buf.ack(buf.epoch, 21)
    buf.ack(buf.epoch, 20)
    assert buf.pending(100) == []
    stats = buf.stats()
    assert (stats["rows"], stats["bytes"], stats["acked_through"]) == (0, 0, 20)
    assert stats["oldest_unsynced"] is None


def test_pending_splits_batches_where_schemas_conflict(buf: LogBuffer) -> None:
    stored(buf, result_table(2))
    other = result_table(1).set_column(1, "in.tensor", pa.array(["text"]))
    stored(buf, other)
    stored(buf, result_table(2, version="v2"))
    batches = buf.pending(100)
    assert [(b.first_seq, b.last_seq) for b in batches] == [(1, 2), (3, 3), (4, 5)]


def test_epoch_survives_restart_and_seqs_never_repeat(db: Path) -> None:
    with LogBuffer(db) as buffer:
        epoch = buffer.epoch
        stored(buffer, result_table(4))
        buffer.ack(epoch, 4)  # everything acked and deleted
        assert buffer.stats()["rows"] == 0
    with LogBuffer(db) as buffer:
        assert buffer.epoch == epoch
        assert stored(buffer, result_table(1)) == SeqRange(epoch, 5, 5)
    db.unlink()
    for side in ("-wal", "-shm"):
        Path(f"{db}{side}").unlink(missing_ok=True)
    with LogBuffer(db) as buffer:
        assert buffer.epoch != epoch
        assert stored(buffer, result_table(1)).first == 1


def test_one_writer_per_file(buf: LogBuffer, db: Path) -> None:
    with pytest.raises(LogBufferError, match="in use by another process"):
        LogBuffer(db).start()
    buf.close()
    with LogBuffer(db) as again:  # the lock goes with the writer
        assert again.epoch == buf.epoch


def test_schema_is_versioned_with_migrations(buf: LogBuffer, db: Path) -> None:
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT version, name FROM _migrations").fetchall()
        assert rows == [
            (1, "batches"),
            (2, "journaled batches"),
            (3, "table files in their own folder"),
            (4, "trimmed rows as packed streams"),
        ]
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_query_newest_first_or_chronological_in_range(buf: LogBuffer) -> None:
    for i in range(5):  # rows at T0 + 0, 1000, ..., 4000 ms; 2 rows each, tagged by elapsed
        table = result_table(2, time_ms=T0 + 1000 * i)
        table = table.set_column(
            table.column_names.index("metadata.elapsed"),
            "metadata.elapsed",
            pa.array([[i, 0], [i, 1]], pa.list_(pa.int64())),
        )
        stored(buf, table)
    newest, more = buf.query(limit=3)
    assert newest.column("metadata.elapsed").to_pylist() == [[4, 1], [4, 0], [3, 1]]
    assert more
    everything, more = buf.query(limit=10)
    assert everything.num_rows == 10 and not more
    start = datetime.fromtimestamp((T0 + 1000) / 1000, UTC)
    end = datetime.fromtimestamp((T0 + 3000) / 1000, UTC)
    window, more = buf.query(limit=100, start=start, end=end)
    assert [e[0] for e in window.column("metadata.elapsed").to_pylist()] == [1, 1, 2, 2, 3, 3]
    assert not more
    window, more = buf.query(limit=6, start=T0 + 1000, end=T0 + 3000)
    assert window.num_rows == 6 and not more
    window, more = buf.query(limit=5, start=start.replace(tzinfo=None), end=end)
    assert window.num_rows == 5 and more
    with pytest.raises(ValueError, match="together"):
        buf.query(start=start)
    empty, more = LogBuffer.query(buf, limit=0)
    assert empty.num_rows == 0 and more


def test_query_mixes_pipeline_versions(buf: LogBuffer) -> None:
    stored(buf, result_table(1, version="v1"))
    newer = result_table(1, version="v2").append_column("out.extra", pa.array([1.5]))
    stored(buf, newer)
    table, _ = buf.query()
    assert table.column("metadata.pipeline_version").to_pylist() == ["v2", "v1"]
    assert table.column("out.extra").to_pylist() == [1.5, None]


def test_cap_drops_inputs_largest_first_then_outputs_then_rows(db: Path) -> None:
    big = result_table(1, big=2000)  # in.image: 16 kB raw, in.tensor: tiny
    with LogBuffer(db, max_bytes=60_000) as buffer:
        for i in range(3):
            stored(buffer, result_table(1, time_ms=T0 + i, big=2000))
        assert buffer.stats()["dropped"]["input_values"] == 0
        i = 3
        while buffer.stats()["dropped"]["input_values"] == 0:
            stored(buffer, result_table(1, time_ms=T0 + i, big=2000))
            i += 1
        stats = buffer.stats()
        assert stats["bytes"] <= 60_000
        assert stats["dropped"] == {"input_values": 1, "output_values": 0, "rows": 0}
        oldest = buffer.pending(1)[0].table
        assert "in.image" not in oldest.column_names
        assert "in.tensor" in oldest.column_names  # the largest input went first
        assert oldest.column("metadata.dropped").to_pylist() == [["in.image"]]
        assert oldest.column("time").to_pylist()[0].timestamp() * 1000 == T0
        newest, _ = buffer.query(limit=1)
        assert "in.image" in newest.column_names  # newest rows keep everything while they can
        # Outputs go next, then whole rows; time, anomaly and metadata stay.
        for j in range(1000):
            table = result_table(20, time_ms=T0 + i + j, big=20, out_width=200)
            last = stored(buffer, table)
            if buffer.stats()["dropped"]["rows"]:
                break
        stats = buffer.stats()
        dropped = stats["dropped"]
        assert stats["bytes"] <= 60_000
        assert dropped["output_values"] >= 1 and dropped["rows"] >= 1
        seqs = stored_seqs(buffer)
        assert seqs == list(range(seqs[0], last.last + 1))  # whole rows dropped are the oldest
        assert dropped["rows"] == seqs[0] - 1  # and every one is counted
        # Every row keeps its skeleton (time, anomaly, metadata) before any row goes whole.
        for row in pa.concat_tables([b.table for b in buffer.pending(1000)]).to_pylist():
            assert row["metadata.dropped"] == ["in.image", "in.tensor", "out.dense_1"]
            assert row.get("out.dense_1") is None and row["time"] is not None
            assert row["anomaly.count"] == 0 and row["metadata.pipeline_version"] == "v1"
    assert big.num_rows == 1
    with LogBuffer(db, max_bytes=60_000) as buffer:  # the counters persist
        assert buffer.stats()["dropped"] == dropped


def test_synced_rows_kept_for_query_go_first_under_the_cap(db: Path) -> None:
    with LogBuffer(db, max_bytes=80_000, keep_synced_bytes=80_000) as buffer:
        for i in range(3):
            stored(buffer, result_table(1, time_ms=T0 + i, big=2000))
        buffer.ack(buffer.epoch, 3)
        assert buffer.pending(10) == []
        assert buffer.query()[0].num_rows == 3  # still readable on the device
        assert buffer.stats()["unsynced_rows"] == 0
        for i in range(3, 8):
            stored(buffer, result_table(1, time_ms=T0 + i, big=2000))
        stats = buffer.stats()
        assert stats["dropped"] == {"input_values": 0, "output_values": 0, "rows": 0}
        assert stats["rows"] < 8 and stats["unsynced_rows"] == 5
        assert stored_seqs(buffer) == [4, 5, 6, 7, 8]


def test_corrupt_file_is_set_aside_and_a_new_epoch_begins(db: Path) -> None:
    db.parent.mkdir(parents=True)
    db.write_bytes(b"this is not a database, it is a crash artefact " * 100)
    with LogBuffer(db) as buffer:
        (aside,) = buffer.stats()["set_aside"]
        assert Path(aside).read_bytes().startswith(b"this is not a database")
        assert stored(buffer, result_table(1)).first == 1
        first_epoch = buffer.epoch
    with LogBuffer(db) as buffer:  # a healthy file stays; the old report remains visible
        assert buffer.epoch == first_epoch
        assert buffer.stats()["set_aside"] == [aside]


def test_damaged_pages_are_detected_and_set_aside(db: Path) -> None:
    with LogBuffer(db) as buffer:
        for _ in range(20):
            stored(buffer, result_table(50, big=100))
        old_epoch = buffer.epoch
    size = db.stat().st_size
    with db.open("r+b") as handle:  # scribble over every page but the header page
        handle.seek(4096)
        handle.write(np.random.default_rng(1).bytes(size - 4096))
    with LogBuffer(db) as buffer:
        assert buffer.epoch != old_epoch
        assert len(buffer.stats()["set_aside"]) == 1
        assert stored(buffer, result_table(1)).first == 1


def test_disk_full_is_a_clear_error_and_recovers(buf: LogBuffer, db: Path) -> None:
    stored(buf, result_table(1))

    def limit_pages(extra: int | None) -> None:
        conn = buf._store.conn
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count = {pages + extra if extra is not None else 2**30}")

    # SQLite cannot grow its file: as if the disk were full
    buf._writer.call(lambda: limit_pages(0))
    logged = buf.log(result_table(500, big=20))  # answered: journaled though SQLite cannot take it
    with pytest.raises(LogBufferDiskFull, match="disk full"):
        buf.flush()
    assert isinstance(LogBufferDiskFull("x"), LogBufferError)
    assert "disk full" in buf.stats()["last_error"]
    assert buf.log(result_table(3)) == SeqRange(buf.epoch, 502, 504)  # still answered
    with pytest.raises(LogBufferDiskFull):
        buf.flush()
    assert buf.stats()["last_seq"] == 1
    buf._writer.call(lambda: limit_pages(None))  # space freed: the journal's rows are stored
    assert eventually(lambda: buf.stats()["last_seq"] >= 504)
    assert buf.stats()["last_error"] is None
    assert logged == SeqRange(buf.epoch, 2, 501)
    assert stored(buf, result_table(1)) == SeqRange(buf.epoch, 505, 505)
    assert stored_seqs(buf) == list(range(1, 506))  # nothing accepted was lost


def test_backpressure_refuses_at_once_when_the_queue_is_full(db: Path) -> None:
    with LogBuffer(db, max_queue=3) as buffer:
        release = parked_writer(buffer)
        waiting = [buffer.log(result_table(1)) for _ in range(3)]
        with pytest.raises(LogBufferFull, match="queue is full"):
            buffer.log(result_table(1))
        release.set()
        buffer.flush()
        assert [r.first for r in waiting] == [1, 2, 3]
        assert stored(buffer, result_table(1)).first == 4  # the refused table took no number
        assert buffer.stats()["rejected"] == 1
        assert stored_seqs(buffer) == [1, 2, 3, 4]
    with pytest.raises(LogBufferError, match="not running"):
        buffer.log(result_table(1))


def test_concurrent_logs_group_commit_without_duplicate_seqs(buf: LogBuffer) -> None:
    async def one_turn() -> list[SeqRange]:
        return await asyncio.gather(*(buf.submit(result_table(1 + i % 3)) for i in range(50)))

    def from_thread() -> list[SeqRange]:
        return [buf.log(result_table(1 + i % 3)) for i in range(60)]

    results: list[list[SeqRange]] = [[] for _ in range(5)]
    workers = [
        threading.Thread(target=lambda k=k: results[k].extend(from_thread())) for k in range(5)
    ]
    for worker in workers:
        worker.start()
    ranges = asyncio.run(one_turn())
    for worker in workers:
        worker.join()
    buf.flush()
    every = [s for r in ranges + sum(results, []) for s in range(r.first, r.last + 1)]
    rows = sum(1 + i % 3 for i in range(50)) + 5 * sum(1 + i % 3 for i in range(60))
    assert len(every) == len(set(every)) == rows
    assert sorted(every) == stored_seqs(buf)
    stats = buf.stats()
    assert stats["appends"] == 301  # the submits of one turn were journaled as one table
    assert stats["commits"] < 301  # several tables shared a commit


def test_wal_stays_bounded_under_a_concurrent_reader(db: Path) -> None:
    with LogBuffer(db, wal_checkpoint_bytes=256 << 10, journal_size_limit=256 << 10) as buffer:
        stop = threading.Event()

        def read() -> None:
            while not stop.is_set():
                buffer.query(limit=20)

        reader = threading.Thread(target=read)
        reader.start()
        biggest = 0
        try:
            for i in range(150):
                stored(buffer, result_table(20, time_ms=T0 + i, big=200))
                biggest = max(biggest, buffer.stats()["wal_bytes"])
        finally:
            stop.set()
            reader.join()
        assert buffer.stats()["checkpoints"] > 0
        assert biggest < 4 << 20  # about 6 MB of rows went through
    wal = Path(f"{db}-wal")
    assert not wal.exists() or wal.stat().st_size == 0  # close() truncates it


CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    import pyarrow as pa
    from edge.logbuffer import LogBuffer

    async def main() -> None:
        buffer = LogBuffer(Path(sys.argv[1]))
        buffer.start()
        table = pa.table({"time": pa.array([0, 1, 2], pa.timestamp("ms", tz="UTC")),
                          "in.x": [1.0, 2.0, 3.0]})

        async def worker() -> None:
            while True:
                r = await buffer.submit(table)
                await asyncio.to_thread(buffer.flush)  # committed to SQLite
                print(r.epoch, r.first, r.last, flush=True)

        await asyncio.gather(*(worker() for _ in range(8)))

    asyncio.run(main())
    """
)


def test_sigkill_keeps_every_committed_range(db: Path, tmp_path: Path) -> None:
    complete = kill_after_lines(CHILD, db, 400)
    assert len(complete) >= 400
    epochs = {fields[0].decode() for fields in complete}
    printed = {s for _, first, last in complete for s in range(int(first), int(last) + 1)}
    with LogBuffer(db) as buffer:
        assert epochs == {buffer.epoch}
        seqs = stored_seqs(buffer)
        assert len(seqs) == len(set(seqs))
        assert printed <= set(seqs)
        assert seqs == list(range(1, len(seqs) + 1))
        after = stored(buffer, result_table(1))
        assert after.first == seqs[-1] + 1


def test_empty_table_stores_nothing(buf: LogBuffer) -> None:
    empty = stored(buf, result_table(1).slice(0, 0))
    assert empty.count == 0 and buf.stats()["rows"] == 0 and buf.stats()["last_seq"] == 0


def test_batch_shape(buf: LogBuffer) -> None:
    stored(buf, result_table(2))
    (batch,) = buf.pending(10)
    assert isinstance(batch, Batch) and batch.table.num_rows == 2


def test_each_range_maps_to_its_own_rows(buf: LogBuffer) -> None:
    """Small appends share a stored row; every SeqRange still points at its own rows."""

    def tagged(tag: int, rows: int) -> pa.Table:
        table = result_table(rows, version=f"v{tag % 2}")
        if tag % 3 == 0:  # a second schema in the same commit group
            table = table.append_column("out.extra", pa.array([tag] * rows, pa.int64()))
        index = table.column_names.index("metadata.elapsed")
        tags = pa.array([[tag, k] for k in range(rows)], pa.list_(pa.int64()))
        return table.set_column(index, "metadata.elapsed", tags)

    async def one_turn() -> list[SeqRange]:
        return await asyncio.gather(*(buf.submit(tagged(i, 1 + i % 4)) for i in range(200)))

    ranges = asyncio.run(one_turn())
    buf.flush()
    by_seq: dict[int, list[int]] = {}
    for batch in buf.pending(10**6):
        for offset, tag in enumerate(batch.table.column("metadata.elapsed").to_pylist()):
            by_seq[batch.first_seq + offset] = tag
    for i, seq_range in enumerate(ranges):
        assert seq_range.count == 1 + i % 4
        assert [by_seq[s] for s in range(seq_range.first, seq_range.last + 1)] == [
            [i, k] for k in range(seq_range.count)
        ]
    assert buf.stats()["batches"] < 200  # small tables were stored together


def test_a_table_that_cannot_be_stored_fails_alone(
    buf: LogBuffer, monkeypatch: pytest.MonkeyPatch
) -> None:
    encode = buf._store.encoder.journaled

    def picky(schema: pa.Schema, rows: int, bounds: tuple, messages: list) -> object:
        if any(b"poison" in bytes(m) for m in messages):
            raise pa.ArrowInvalid("cannot serialize")
        return encode(schema, rows, bounds, messages)

    monkeypatch.setattr(buf._store.encoder, "journaled", picky)
    poisoned = result_table(1)
    index = poisoned.column_names.index("metadata.partition")
    poisoned = poisoned.set_column(index, "metadata.partition", pa.array(["poison"]))
    assert poisoned.schema.equals(result_table(1).schema)  # so it shares a stored row

    release = parked_writer(buf)  # all eight in one transaction
    ranges = [buf.log(poisoned if i == 3 else result_table(1)) for i in range(8)]
    release.set()
    buf.flush()  # every number was given: the bad table's rows are counted, not waited for
    assert [r.first for r in ranges] == [1, 2, 3, 4, 5, 6, 7, 8]
    assert buf.stats()["failed"] == 1
    assert stored_seqs(buf) == [1, 2, 3, 5, 6, 7, 8]
    # numbers are given when a table is journaled: the bad table's number is never reused
    assert stored(buf, result_table(1)).first == 9


def test_the_writer_survives_its_own_errors(
    buf: LogBuffer, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(idle: bool) -> None:
        raise RuntimeError("bug")

    monkeypatch.setattr(buf._writer, "_maintain", broken)
    assert stored(buf, result_table(1)).first == 1
    monkeypatch.undo()
    assert stored(buf, result_table(1)).first == 2


def test_large_tables_stay_in_their_own_files_and_read_back(buf: LogBuffer, db: Path) -> None:
    big = result_table(rows=2_000, big=64)
    small = result_table(rows=2, time_ms=T0 + 1)
    stored(buf, big)
    stored(buf, small)
    with sqlite3.connect(db) as conn:
        codecs = [c for (c,) in conn.execute("SELECT codec FROM batches ORDER BY first_seq")]
    assert codecs == ["file", "zstd"]  # the large table stays in its journal file
    (batch,) = buf.pending(10_000)
    assert batch.table.num_rows == 2_002
    assert batch.table.slice(0, 2_000).column("in.image").equals(big.column("in.image"))
    assert len(table_files(db)) == 1
    buf.close()
    with LogBuffer(db) as reopened:  # a restart keeps the file its row refers to
        (batch,) = reopened.pending(10_000)
        assert batch.table.slice(0, 2_000).equals(big)
        reopened.ack(reopened.epoch, batch.last_seq)  # delivered: the row and its file go
        assert reopened.stats()["rows"] == 0
        # deleted once the deletion is durable in SQLite (the next WAL fsync, <= 0.1 s)
        assert eventually(lambda: not table_files(db))


def test_the_cap_counts_and_trims_tables_in_their_own_files(db: Path) -> None:
    with LogBuffer(db, max_bytes=3 << 20) as buffer:
        for i in range(6):  # about 1 MB each: past the cap, the oldest lose their inputs
            stored(buffer, result_table(rows=2_000, big=64, time_ms=T0 + i))
        stats = buffer.stats()
        assert stats["bytes"] <= 3 << 20
        assert stats["dropped"]["input_values"] > 0
        assert stats["rows"] == 12_000  # nothing needed whole rows dropped
        with sqlite3.connect(db) as conn:
            refs = {
                b.decode() for (b,) in conn.execute("SELECT body FROM batches WHERE codec = 'file'")
            }
        # trimmed tables moved into SQLite; their files go after the next WAL fsync
        assert eventually(lambda: table_files(db) == refs)


def test_trimming_small_rows_frees_bytes_so_only_the_oldest_lose_inputs(db: Path) -> None:
    """One-row requests, as a device logs them: a trim must shrink the row it rewrites (a
    packed stream's own schema and dictionary messages would make a small row bigger, and
    the cap would then strip every row in one transaction)."""
    with LogBuffer(db, max_bytes=40_000) as buffer:
        i = 0
        while buffer.stats()["dropped"]["input_values"] == 0:
            stored(buffer, result_table(1, time_ms=T0 + i, big=30))
            i += 1
        stats = buffer.stats()
        assert stats["bytes"] <= 40_000 and i > 20
        assert stats["dropped"]["output_values"] == stats["dropped"]["rows"] == 0
        rows = pa.concat_tables(b.table for b in buffer.pending(10_000)).to_pylist()
        trimmed = [j for j, row in enumerate(rows) if row["metadata.dropped"]]
        assert trimmed == list(range(len(trimmed))) and len(trimmed) <= 2  # the oldest only
        with sqlite3.connect(db) as conn:
            sizes = [b for (b,) in conn.execute("SELECT bytes FROM batches ORDER BY first_seq")]
        assert max(sizes[: len(trimmed)]) < min(sizes[len(trimmed) :])  # smaller than whole


def test_a_trimmed_table_reads_back_whole_but_its_inputs_and_is_stored_small(db: Path) -> None:
    originals = [result_table(rows=2_000, big=64, time_ms=T0 + i) for i in range(6)]
    with LogBuffer(db, max_bytes=3 << 20) as buffer:
        for table in originals:
            stored(buffer, table)
        with sqlite3.connect(db) as conn:
            trimmed = conn.execute(
                "SELECT first_seq, bytes, min_time, max_time FROM batches"
                " WHERE codec = 'stream' ORDER BY first_seq"
            ).fetchall()
        assert trimmed and trimmed[0][0] == 1  # the oldest went first
        for first_seq, size, low, high in trimmed:
            i = (first_seq - 1) // 2_000
            assert (low, high) == (T0 + i, T0 + i)  # its time range is still known
            # left: time, outputs, anomaly, metadata; one-value columns stored once
            assert size < 40_000
            read, more = buffer.query(start=T0 + i, end=T0 + i, limit=2_000)
            assert read.num_rows == 2_000 and not more
            dropped = read.column("metadata.dropped")[0].as_py()
            assert dropped[0] == "in.image" and set(dropped) <= {"in.image", "in.tensor"}
            assert read.column("metadata.dropped").to_pylist() == [dropped] * 2_000
            expected = originals[i].drop_columns(dropped)
            assert read.column_names == expected.column_names
            for name in expected.column_names:
                if name != "metadata.dropped":
                    assert read.column(name).equals(expected.column(name)), name
        assert buffer.pending(20_000)[0].table.num_rows == 12_000  # and they sync as rows
    with LogBuffer(db, max_bytes=3 << 20) as again:  # a restart reads them alike
        assert again.query(start=T0, end=T0, limit=2_000)[0].num_rows == 2_000
