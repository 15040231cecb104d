"""The store: the large tables' folder and its sweep, opening files of older versions."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from edge.errors import LogBufferError
from edge.logbuffer import LogBuffer, records
from edge.logbuffer.schema import SCHEMA_VERSION
from tests.logbuffer_support import (
    crash,
    eventually,
    journal_files,
    parked_writer,
    result_table,
    stored,
    stored_seqs,
    table_files,
)


def large(time_offset: int = 0) -> object:
    return result_table(rows=2_000, big=64, time_ms=1_700_000_000_000 + time_offset)


def name(epoch: str, seq: int) -> str:
    return records.table_file_name(epoch, seq)


def test_garbage_is_a_table_file_no_row_names_and_no_replay_could_store(tmp_path: Path) -> None:
    db = tmp_path / "logbuffer.db"
    with LogBuffer(db) as buffer:
        epoch = buffer.epoch
        stored(buffer, large())  # seqs 1..2000, named by their row
        release = parked_writer(buffer)
        buffer.log(large(1))  # 2001..4000: journaled, not stored yet
        tables = Path(f"{db}.tables")
        (tables / name(epoch, 5)).write_bytes(b"")  # within last_seq, named by no row
        (tables / name("0ld-epoch", 9999)).write_bytes(b"")  # another epoch's, named by none
        (tables / "notes.txt").write_bytes(b"")  # not a table file: not ours to delete
        assert sorted(buffer._store.garbage()) == sorted([name(epoch, 5), name("0ld-epoch", 9999)])
        release.set()
        buffer.flush()
        assert eventually(lambda: table_files(db) == {name(epoch, 1), name(epoch, 2001)})
        assert (tables / "notes.txt").exists()


def test_a_file_goes_only_after_the_wal_that_forgets_its_row_is_synced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "logbuffer.db"
    events: list[object] = []
    with LogBuffer(db) as buffer:
        stored(buffer, large())
        store = buffer._store
        sync_wal, delete_files = store.sync_wal, store.delete_files

        def synced() -> None:
            events.append("wal fsync")
            sync_wal()

        def deleted(names: list[str]) -> None:
            events.append(("delete", list(names)))
            delete_files(names)

        monkeypatch.setattr(store, "sync_wal", synced)
        monkeypatch.setattr(store, "delete_files", deleted)
        buffer.ack(buffer.epoch, 2000)  # delivered: the row goes, and then its file
        assert eventually(lambda: not table_files(db))
    first = next(i for i, e in enumerate(events) if isinstance(e, tuple) and e[1])
    assert events[first] == ("delete", [name(buffer.epoch, 1)])
    assert events[first - 1] == "wal fsync"  # the deletion of the row was on disk first


def to_version_2(db: Path) -> None:
    """Turn a stopped buffer's files into the layout of schema version 2: large tables in the
    journal's folder, named by rows or standing as records of their own, no reference
    records in the segments."""
    with sqlite3.connect(db) as conn:
        conn.execute("DELETE FROM _migrations WHERE version = 3")
    journal = Path(f"{db}.journal")
    for path in Path(f"{db}.tables").glob("*.table"):
        path.replace(journal / path.name)
    for segment in journal.glob("*.journal"):
        parts: list[bytes] = []
        for seq, _, table in records.read_records(segment, live=False):
            if table is not None:  # a reference record: version 2 had none
                record, _ = records.record(seq, records.stream(table))
                parts += [bytes(p) for p in record]
        segment.write_bytes(b"".join(parts))


def test_a_file_of_schema_version_2_opens(tmp_path: Path) -> None:
    db = tmp_path / "logbuffer.db"
    buffer = LogBuffer(db)
    buffer.start()
    epoch = buffer.epoch
    stored(buffer, large())  # 1..2000 in a file a row names
    stored(buffer, result_table(3))  # 2001..2003 in SQLite
    parked_writer(buffer)
    buffer.log(large(1))  # 2004..4003: journaled only, in a file of its own
    buffer.log(result_table(2))  # 4004..4005: journaled only
    crash(buffer)
    to_version_2(db)
    assert len(list(Path(f"{db}.journal").glob("*.table"))) == 2
    with LogBuffer(db) as reopened:
        assert reopened.epoch == epoch
        assert stored_seqs(reopened) == list(range(1, 4006))  # stored and replayed, once
        (batch,) = reopened.pending(10**6)
        assert batch.table.slice(0, 2000).equals(large())
        assert batch.table.slice(2003, 2000).equals(large(1))
        assert reopened.stats()["replayed"] == 2002
        assert reopened.log(result_table(1)).first == 4006
    assert not list(Path(f"{db}.journal").glob("*.table"))
    assert table_files(db) == {name(epoch, 1), name(epoch, 2004)}
    with sqlite3.connect(db) as conn:
        versions = [v for (v,) in conn.execute("SELECT version FROM _migrations")]
        assert max(versions) == SCHEMA_VERSION  # migrated to the newest
    with LogBuffer(db) as again:  # and a second start reads the same rows, once
        assert stored_seqs(again) == list(range(1, 4007))
        assert again.stats()["replayed"] == 0
    assert len(journal_files(db)) <= 1


def test_a_sqlite_file_of_something_else_is_set_aside(tmp_path: Path) -> None:
    db = tmp_path / "logbuffer.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE notes (text TEXT)")
    with LogBuffer(db) as buffer:
        (aside,) = buffer.stats()["set_aside"]
        with sqlite3.connect(aside) as conn:  # kept as it was
            assert conn.execute("SELECT name FROM sqlite_master").fetchall() == [("notes",)]
        assert stored(buffer, result_table(1)).first == 1


def test_a_file_of_a_newer_version_is_refused_not_set_aside(tmp_path: Path) -> None:
    db = tmp_path / "logbuffer.db"
    with LogBuffer(db):
        pass
    with sqlite3.connect(db) as conn:
        conn.execute("INSERT INTO _migrations VALUES (99, 'future', 'later')")
    with pytest.raises(LogBufferError, match="newer than this appliance knows"):
        LogBuffer(db).start()
    assert db.exists() and not list(tmp_path.glob("*.corrupt-*"))
    with pytest.raises(LogBufferError, match="newer"):  # the lock went with the failed start
        LogBuffer(db).start()
