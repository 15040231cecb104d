"""The SQLite inference log buffer: commit before answer, epochs, the cap, crashes, backpressure."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from edge.errors import LogBufferError
from edge.logbuffer import (
    Batch,
    LogBuffer,
    LogBufferDiskFull,
    LogBufferFull,
    SeqRange,
)

TIME = pa.timestamp("ms", tz="UTC")
T0 = 1_700_000_000_000


def result_table(
    rows: int = 1,
    time_ms: int = T0,
    big: int = 0,
    version: str = "v1",
    out_width: int = 1,
) -> pa.Table:
    """A result table shaped like the pipeline's (docs/CONTRACTS.md)."""
    rng = np.random.default_rng(rows + time_ms + big)
    columns: dict[str, pa.Array] = {
        "time": pa.array([time_ms] * rows, TIME),
        "in.tensor": pa.array([[1.0, 2.0, 3.0]] * rows, pa.list_(pa.float64())),
    }
    if big:
        columns["in.image"] = pa.array(list(rng.random((rows, big))), pa.list_(pa.float64()))
    columns["out.dense_1"] = pa.array(list(rng.random((rows, out_width))), pa.list_(pa.float32()))
    columns["anomaly.count"] = pa.array([0] * rows, pa.uint32())
    columns["metadata.last_model"] = pa.array(['{"model_name":"m","model_sha":"abc"}'] * rows)
    columns["metadata.pipeline_version"] = pa.array([version] * rows)
    columns["metadata.elapsed"] = pa.array([[10, 20]] * rows, pa.list_(pa.int64()))
    columns["metadata.dropped"] = pa.array([[]] * rows, pa.list_(pa.string()))
    columns["metadata.partition"] = pa.array(["edge-1"] * rows)
    return pa.table(columns)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "persist" / "logbuffer.db"


@pytest.fixture
def buf(db: Path) -> Iterator[LogBuffer]:
    with LogBuffer(db) as buffer:
        yield buffer


def eventually(check: Callable[[], bool], seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def stored_seqs(buffer: LogBuffer) -> list[int]:
    seqs: list[int] = []
    for batch in buffer.pending(10**9):
        assert batch.table.num_rows == batch.last_seq - batch.first_seq + 1
        seqs.extend(range(batch.first_seq, batch.last_seq + 1))
    return seqs


def test_append_returns_committed_range_and_pending_returns_rows(buf: LogBuffer, db: Path) -> None:
    first = asyncio.run(buf.append(result_table(3)))
    second = buf.append_nowait(result_table(2)).result(timeout=10)
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
        buf.append_nowait(result_table(5)).result(timeout=10)  # seqs 1..20
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
    buf.append_nowait(result_table(2)).result(timeout=10)
    other = result_table(1).set_column(1, "in.tensor", pa.array(["text"]))
    buf.append_nowait(other).result(timeout=10)
    buf.append_nowait(result_table(2, version="v2")).result(timeout=10)
    batches = buf.pending(100)
    assert [(b.first_seq, b.last_seq) for b in batches] == [(1, 2), (3, 3), (4, 5)]


def test_epoch_survives_restart_and_seqs_never_repeat(db: Path) -> None:
    with LogBuffer(db) as buffer:
        epoch = buffer.epoch
        buffer.append_nowait(result_table(4)).result(timeout=10)
        buffer.ack(epoch, 4)  # everything acked and deleted
        assert buffer.stats()["rows"] == 0
    with LogBuffer(db) as buffer:
        assert buffer.epoch == epoch
        assert buffer.append_nowait(result_table(1)).result(timeout=10) == SeqRange(epoch, 5, 5)
    db.unlink()
    for side in ("-wal", "-shm"):
        Path(f"{db}{side}").unlink(missing_ok=True)
    with LogBuffer(db) as buffer:
        assert buffer.epoch != epoch
        assert buffer.append_nowait(result_table(1)).result(timeout=10).first == 1


def test_one_writer_per_file(buf: LogBuffer, db: Path) -> None:
    with pytest.raises(LogBufferError, match="in use by another process"):
        LogBuffer(db).start()
    buf.close()
    with LogBuffer(db) as again:  # the lock goes with the writer
        assert again.epoch == buf.epoch


def test_schema_is_versioned_with_migrations(buf: LogBuffer, db: Path) -> None:
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT version, name FROM _migrations").fetchall()
        assert rows == [(1, "batches"), (2, "journaled batches")]
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_query_newest_first_or_chronological_in_range(buf: LogBuffer) -> None:
    for i in range(5):  # rows at T0 + 0, 1000, ..., 4000 ms; 2 rows each, tagged by elapsed
        table = result_table(2, time_ms=T0 + 1000 * i)
        table = table.set_column(
            table.column_names.index("metadata.elapsed"),
            "metadata.elapsed",
            pa.array([[i, 0], [i, 1]], pa.list_(pa.int64())),
        )
        buf.append_nowait(table).result(timeout=10)
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
    buf.append_nowait(result_table(1, version="v1")).result(timeout=10)
    newer = result_table(1, version="v2").append_column("out.extra", pa.array([1.5]))
    buf.append_nowait(newer).result(timeout=10)
    table, _ = buf.query()
    assert table.column("metadata.pipeline_version").to_pylist() == ["v2", "v1"]
    assert table.column("out.extra").to_pylist() == [1.5, None]


def test_cap_drops_inputs_largest_first_then_outputs_then_rows(db: Path) -> None:
    big = result_table(1, big=2000)  # in.image: 16 kB raw, in.tensor: tiny
    with LogBuffer(db, max_bytes=60_000) as buffer:
        for i in range(3):
            buffer.append_nowait(result_table(1, time_ms=T0 + i, big=2000)).result(timeout=10)
        assert buffer.stats()["dropped"]["input_values"] == 0
        i = 3
        while buffer.stats()["dropped"]["input_values"] == 0:
            buffer.append_nowait(result_table(1, time_ms=T0 + i, big=2000)).result(timeout=10)
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
            last = buffer.append_nowait(table).result(timeout=10)
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
            buffer.append_nowait(result_table(1, time_ms=T0 + i, big=2000)).result(timeout=10)
        buffer.ack(buffer.epoch, 3)
        assert buffer.pending(10) == []
        assert buffer.query()[0].num_rows == 3  # still readable on the device
        assert buffer.stats()["unsynced_rows"] == 0
        for i in range(3, 8):
            buffer.append_nowait(result_table(1, time_ms=T0 + i, big=2000)).result(timeout=10)
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
        assert buffer.append_nowait(result_table(1)).result(timeout=10).first == 1
        first_epoch = buffer.epoch
    with LogBuffer(db) as buffer:  # a healthy file stays; the old report remains visible
        assert buffer.epoch == first_epoch
        assert buffer.stats()["set_aside"] == [aside]


def test_damaged_pages_are_detected_and_set_aside(db: Path) -> None:
    with LogBuffer(db) as buffer:
        for _ in range(20):
            buffer.append_nowait(result_table(50, big=100)).result(timeout=10)
        old_epoch = buffer.epoch
    size = db.stat().st_size
    with db.open("r+b") as handle:  # scribble over every page but the header page
        handle.seek(4096)
        handle.write(np.random.default_rng(1).bytes(size - 4096))
    with LogBuffer(db) as buffer:
        assert buffer.epoch != old_epoch
        assert len(buffer.stats()["set_aside"]) == 1
        assert buffer.append_nowait(result_table(1)).result(timeout=10).first == 1


def test_disk_full_is_a_clear_error_and_recovers(buf: LogBuffer, db: Path) -> None:
    buf.append_nowait(result_table(1)).result(timeout=10)

    def limit_pages(extra: int | None) -> None:
        conn = buf._writer()
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count = {pages + extra if extra is not None else 2**30}")

    buf._call(lambda: limit_pages(0))  # SQLite cannot grow its file: as if the disk were full
    with pytest.raises(LogBufferDiskFull, match="disk full"):
        asyncio.run(buf.append(result_table(500, big=20)))
    assert isinstance(LogBufferDiskFull("x"), LogBufferError)
    assert "disk full" in buf.stats()["last_error"]
    logged = buf.log(result_table(3))  # answered: journaled though SQLite cannot take it
    assert logged == SeqRange(buf.epoch, 502, 504)
    buf._call(lambda: limit_pages(None))  # space freed: the journal's rows are stored
    deadline = time.monotonic() + 10
    while buf.stats()["last_seq"] < 504 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert buf.stats()["last_error"] is None
    assert asyncio.run(buf.append(result_table(1))) == SeqRange(buf.epoch, 505, 505)
    assert stored_seqs(buf) == list(range(1, 506))  # nothing accepted was lost


def test_backpressure_rejects_when_the_queue_stays_full(db: Path) -> None:
    with LogBuffer(db, max_queue=3, enqueue_timeout=0.2) as buffer:
        gate = threading.Event()
        blocked = threading.Thread(target=buffer._call, args=(gate.wait,))
        blocked.start()  # the writer now waits on `gate`
        while buffer.stats()["queue"]:
            time.sleep(0.01)
        waiting = [buffer.append_nowait(result_table(1)) for _ in range(3)]
        with pytest.raises(LogBufferFull, match="queue is full"):
            buffer.append_nowait(result_table(1))
        started = time.monotonic()
        with pytest.raises(LogBufferFull, match="stayed full"):
            asyncio.run(buffer.append(result_table(1)))
        assert time.monotonic() - started >= 0.2

        async def append_once_room_frees() -> SeqRange:
            task = asyncio.ensure_future(buffer.append(result_table(1)))
            await asyncio.sleep(0.05)
            gate.set()
            return await task

        buffer.enqueue_timeout = 5.0
        late = asyncio.run(append_once_room_frees())
        blocked.join()
        assert [f.result(timeout=10).first for f in waiting] == [1, 2, 3]
        assert late.first == 4
        assert buffer.stats()["rejected"] == 2
    with pytest.raises(LogBufferError, match="not running"):
        buffer.append_nowait(result_table(1))


def test_concurrent_appends_group_commit_without_duplicate_seqs(buf: LogBuffer) -> None:
    async def many() -> list[SeqRange]:
        return await asyncio.gather(*(buf.append(result_table(1 + i % 3)) for i in range(300)))

    def from_thread() -> list[SeqRange]:
        return [buf.append_nowait(result_table(2)).result(timeout=10) for _ in range(50)]

    threads_result: list[SeqRange] = []
    worker = threading.Thread(target=lambda: threads_result.extend(from_thread()))
    worker.start()
    ranges = asyncio.run(many())
    worker.join()
    every = [s for r in ranges + threads_result for s in range(r.first, r.last + 1)]
    assert len(every) == len(set(every)) == sum(1 + i % 3 for i in range(300)) + 100
    assert sorted(every) == stored_seqs(buf)
    stats = buf.stats()
    assert stats["appends"] == 350
    assert stats["commits"] < 350  # several appends shared a commit


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
                buffer.append_nowait(result_table(20, time_ms=T0 + i, big=200)).result(timeout=10)
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
                r = await buffer.append(table)
                print(r.epoch, r.first, r.last, flush=True)

        await asyncio.gather(*(worker() for _ in range(8)))

    asyncio.run(main())
    """
)


def kill_after_lines(source: str, db: Path, lines: int) -> list[list[bytes]]:
    """Run `source` (a script taking the buffer path) until it printed `lines` lines, SIGKILL
    it, and return every whole line it printed, split into fields."""
    script = db.parent / "child.py"
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(source)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    process = subprocess.Popen(
        [sys.executable, str(script), str(db)], stdout=subprocess.PIPE, env=env
    )
    assert process.stdout is not None
    printed: list[bytes] = []
    deadline = time.monotonic() + 30
    while len(printed) < lines and time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        printed.append(line)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    printed += process.stdout.read().splitlines(keepends=True)
    return [line.split() for line in printed if line.endswith(b"\n")]


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
        after = buffer.append_nowait(result_table(1)).result(timeout=10)
        assert after.first == seqs[-1] + 1


def test_empty_table_stores_nothing(buf: LogBuffer) -> None:
    empty = buf.append_nowait(result_table(1).slice(0, 0)).result(timeout=1)
    assert empty.count == 0 and buf.stats()["rows"] == 0


def test_batch_shape(buf: LogBuffer) -> None:
    buf.append_nowait(result_table(2)).result(timeout=10)
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

    async def many() -> list[SeqRange]:
        return await asyncio.gather(*(buf.append(tagged(i, 1 + i % 4)) for i in range(200)))

    ranges = asyncio.run(many())
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
    encode = buf._encode_journaled

    def picky(run: list) -> object:
        if any("poison" in a.table.column("metadata.partition").to_pylist() for a in run):
            raise pa.ArrowInvalid("cannot serialize")
        return encode(run)

    monkeypatch.setattr(buf, "_encode_journaled", picky)
    poisoned = result_table(1)
    index = poisoned.column_names.index("metadata.partition")
    poisoned = poisoned.set_column(index, "metadata.partition", pa.array(["poison"]))
    assert poisoned.schema.equals(result_table(1).schema)  # so it shares a stored row

    async def mixed() -> list[SeqRange | BaseException]:
        appends = [buf.append(poisoned if i == 3 else result_table(1)) for i in range(8)]
        return await asyncio.gather(*appends, return_exceptions=True)

    results = asyncio.run(mixed())
    assert isinstance(results[3], LogBufferError) and "cannot store" in str(results[3])
    good = [r for i, r in enumerate(results) if i != 3]
    # numbers are given when a table is journaled: the bad table's number is never reused
    assert sorted(r.first for r in good if isinstance(r, SeqRange)) == [1, 2, 3, 5, 6, 7, 8]
    assert stored_seqs(buf) == [1, 2, 3, 5, 6, 7, 8]


def test_the_writer_survives_its_own_errors(
    buf: LogBuffer, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(idle: bool) -> None:
        raise RuntimeError("bug")

    monkeypatch.setattr(buf, "_maintain", broken)
    assert buf.append_nowait(result_table(1)).result(timeout=10).first == 1
    monkeypatch.undo()
    assert buf.append_nowait(result_table(1)).result(timeout=10).first == 2


def test_large_tables_stay_in_their_own_files_and_read_back(buf: LogBuffer, db: Path) -> None:
    big = result_table(rows=2_000, big=64)
    small = result_table(rows=2, time_ms=T0 + 1)
    buf.append_nowait(big).result(timeout=30)
    buf.append_nowait(small).result(timeout=30)
    with sqlite3.connect(db) as conn:
        codecs = [c for (c,) in conn.execute("SELECT codec FROM batches ORDER BY first_seq")]
    assert codecs == ["file", "zstd"]  # the large table stays in its journal file
    (batch,) = buf.pending(10_000)
    assert batch.table.num_rows == 2_002
    assert batch.table.slice(0, 2_000).column("in.image").equals(big.column("in.image"))
    files = sorted(p.name for p in Path(f"{db}.journal").glob("*.table"))
    assert len(files) == 1
    buf.close()
    with LogBuffer(db) as reopened:  # a restart keeps the file its row refers to
        (batch,) = reopened.pending(10_000)
        assert batch.table.slice(0, 2_000).equals(big)
        reopened.ack(reopened.epoch, batch.last_seq)  # delivered: the row and its file go
        assert reopened.stats()["rows"] == 0
        # deleted once the deletion is durable in SQLite (the next WAL fsync, <= 0.1 s)
        assert eventually(lambda: not list(Path(f"{db}.journal").glob("*.table")))


def test_the_cap_counts_and_trims_tables_in_their_own_files(db: Path) -> None:
    with LogBuffer(db, max_bytes=3 << 20) as buffer:
        for i in range(6):  # about 1 MB each: past the cap, the oldest lose their inputs
            buffer.append_nowait(result_table(rows=2_000, big=64, time_ms=T0 + i)).result(30)
        stats = buffer.stats()
        assert stats["bytes"] <= 3 << 20
        assert stats["dropped"]["input_values"] > 0
        assert stats["rows"] == 12_000  # nothing needed whole rows dropped
        with sqlite3.connect(db) as conn:
            refs = {
                b.decode() for (b,) in conn.execute("SELECT body FROM batches WHERE codec = 'file'")
            }
        # trimmed tables moved into SQLite; their files go after the next WAL fsync
        assert eventually(lambda: {p.name for p in Path(f"{db}.journal").glob("*.table")} == refs)


def test_dropped_column_names_are_appended_to_each_rows_list() -> None:
    from edge.logbuffer import _drop_columns

    lists = pa.list_(pa.string())
    alike = pa.table({"in.x": [1, 2, 3], "metadata.dropped": pa.array([["in.y"]] * 3, lists)})
    assert (
        _drop_columns(alike, ["in.x"]).column("metadata.dropped").to_pylist()
        == [["in.y", "in.x"]] * 3
    )
    mixed = pa.table({"in.x": [1, 2, 3], "metadata.dropped": pa.array([[], None, ["in.y"]], lists)})
    assert _drop_columns(mixed, ["in.x"]).column("metadata.dropped").to_pylist() == [
        ["in.x"],
        ["in.x"],
        ["in.y", "in.x"],
    ]
    same_length = pa.table({"in.x": [1, 2], "metadata.dropped": pa.array([["a"], ["b"]], lists)})
    assert _drop_columns(same_length, ["in.x"]).column("metadata.dropped").to_pylist() == [
        ["a", "in.x"],
        ["b", "in.x"],
    ]
    none_yet = _drop_columns(pa.table({"in.x": [1, 2], "time": [5, 6]}), ["in.x"])
    assert none_yet.column("metadata.dropped").to_pylist() == [["in.x"], ["in.x"]]
