"""The log buffer's SQLite file: its tables, versioned migrations, and opening it safely.

    _migrations(version, name, applied_at)   which migrations this file has had
    meta(key, value)            epoch, created_at, last_seq (high-water mark), acked_through
    schemas(id, fingerprint, ipc)            each Arrow schema once
    batches(first_seq, last_seq, n_rows, min_time, max_time, bytes, schema_id, codec, trimmed,
            body)                            one stored row (`edge.logbuffer.codec`)
    drops(reason, count)        persistent drop counters

Opening (`open_file`): a file that SQLite calls corrupt (open failure, `PRAGMA quick_check`) or
that is not a log buffer is renamed aside (`<name>.corrupt-<UTC time>`, never deleted), logged,
and a new file with a new epoch begins. The connection uses WAL with `synchronous=NORMAL` (the
journal is the durable record; the writer fsyncs the WAL itself, `edge.logbuffer.writer`) and
no automatic checkpoints. One process writes a file at a time (`<file>.lock`, an flock): a
second writer would hand out the same sequence numbers.
"""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.ipc as ipc

from edge import migrations
from edge.errors import LogBufferError, NotALogBuffer

log = logging.getLogger(__name__)

_CORRUPT_CODES = {sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB}

MIGRATIONS: list[tuple[int, str, str]] = [
    (
        1,
        "batches",
        """
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
        CREATE TABLE schemas (
            id INTEGER PRIMARY KEY,
            fingerprint TEXT NOT NULL UNIQUE,
            ipc BLOB NOT NULL
        );
        CREATE TABLE batches (
            first_seq INTEGER PRIMARY KEY,
            last_seq INTEGER NOT NULL,
            n_rows INTEGER NOT NULL,
            min_time INTEGER,
            max_time INTEGER,
            bytes INTEGER NOT NULL,
            schema_id INTEGER NOT NULL REFERENCES schemas (id),
            codec TEXT NOT NULL,
            trimmed INTEGER NOT NULL DEFAULT 0,
            body BLOB NOT NULL
        );
        CREATE INDEX batches_by_time ON batches (max_time, min_time);
        CREATE INDEX batches_by_trim ON batches (trimmed, first_seq);
        CREATE TABLE drops (reason TEXT PRIMARY KEY, count INTEGER NOT NULL) WITHOUT ROWID
        """,
    ),
    # No change of tables: from here a row's body may hold several record batch messages
    # (small tables as journaled) and codec "file" rows name a journal file; an older image
    # would read only the first message, so it must refuse the file instead.
    (2, "journaled batches", ""),
    # No change of tables: codec "file" rows name a file in `<file>.tables/` (it was the
    # journal's folder; `Store.adopt_legacy_tables` links version 2's over), and journal segments
    # hold reference records for them, which an older image would read as a torn tail.
    (3, "table files in their own folder", ""),
    # No change of tables: rows the cap trimmed are of codec "stream" (a whole IPC stream,
    # one-value columns kept packed), which an older image would refuse as unknown.
    (4, "trimmed rows as packed streams", ""),
]
SCHEMA_VERSION = MIGRATIONS[-1][0]

# Buffer rows holding a seq above :acked, found by primary-key range (no scan of synced rows).
UNSYNCED = (
    "first_seq >= COALESCE((SELECT MAX(first_seq) FROM batches WHERE first_seq <= :acked), 0)"
    " AND last_seq > :acked"
)


def open_file(path: Path, journal_size_limit: int, set_aside: list[str]) -> sqlite3.Connection:
    """The writer's connection to `path`, migrated; a corrupt file or one that is not a log
    buffer is renamed aside first (its new name appended to `set_aside`)."""
    if path.exists():
        conn: sqlite3.Connection | None = None
        try:
            conn = _connect(path, journal_size_limit)
            problem = quick_check(conn)
            if problem is None:
                migrate(conn)
                if read_meta(conn).get("epoch"):
                    return conn
                problem = "no epoch in meta"
        except NotALogBuffer as exc:
            problem = str(exc)
        except sqlite3.DatabaseError as exc:
            if getattr(exc, "sqlite_errorcode", 0) & 0xFF not in _CORRUPT_CODES:
                if conn is not None:
                    conn.close()
                raise LogBufferError(f"log buffer {path}: cannot open: {exc}") from exc
            problem = str(exc)
        except LogBufferError:
            if conn is not None:
                conn.close()
            raise
        if conn is not None:
            conn.close()
        set_aside.append(_set_aside(path, problem))
    try:
        conn = _connect(path, journal_size_limit)
        migrate(conn)
    except sqlite3.Error as exc:
        raise LogBufferError(f"log buffer {path}: cannot create: {exc}") from exc
    return conn


def migrate(conn: sqlite3.Connection) -> None:
    """Apply the migrations this file lacks, each in its own transaction."""
    tables = {
        name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
    }
    if tables and "_migrations" not in tables:
        raise NotALogBuffer(f"not a log buffer (tables {sorted(tables)})")
    conn.execute(migrations.CREATE_TABLE)
    applied = {v for (v,) in conn.execute("SELECT version FROM _migrations")}
    if applied and max(applied) > SCHEMA_VERSION:
        raise LogBufferError(
            f"log buffer schema version {max(applied)} is newer than this appliance knows "
            f"({SCHEMA_VERSION}); run a newer image or move the file aside"
        )
    for migration in migrations.pending(MIGRATIONS, applied):
        conn.execute("BEGIN IMMEDIATE")
        try:
            migrations.apply(conn.execute, migration)
            if migration[0] == 1:
                conn.executemany(
                    "INSERT INTO meta (key, value) VALUES (?, ?)",
                    [
                        ("epoch", str(uuid.uuid4())),
                        ("created_at", datetime.now(UTC).isoformat()),
                        ("last_seq", "0"),
                        ("acked_through", "0"),
                    ],
                )
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise


def quick_check(conn: sqlite3.Connection) -> str | None:
    """None when SQLite's quick_check finds nothing wrong, else its first complaint."""
    row = conn.execute("PRAGMA quick_check(1)").fetchone()
    return None if row and row[0] == "ok" else str(row[0] if row else "no answer")


def read_meta(conn: sqlite3.Connection) -> dict[str, str]:
    return dict(conn.execute("SELECT key, value FROM meta").fetchall())


def set_meta(conn: sqlite3.Connection, key: str, value: int | str) -> None:
    conn.execute("UPDATE meta SET value = ? WHERE key = ?", (str(value), key))


def rows_between(conn: sqlite3.Connection, after: int, through: int) -> int:
    """How many stored rows have a seq in (after, through]."""
    total = 0
    for first, last in conn.execute(
        f"SELECT first_seq, last_seq FROM batches WHERE {UNSYNCED} AND first_seq <= :through",
        {"acked": after, "through": through},
    ):
        total += min(last, through) - max(first, after + 1) + 1
    return total


def stored_schema(conn: sqlite3.Connection, schema_id: int) -> pa.Schema:
    """A schema from the `schemas` table (one the caller has not cached)."""
    row = conn.execute("SELECT ipc FROM schemas WHERE id = ?", (schema_id,)).fetchone()
    if row is None:
        raise LogBufferError(f"log buffer row refers to unknown schema {schema_id}")
    return ipc.read_schema(pa.py_buffer(row[0]))


def lock_file(path: Path) -> int:
    """Take `<path>.lock` (an flock, dropped when the descriptor closes)."""
    lock_path = Path(f"{path}.lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise LogBufferError(
            f"log buffer {path} is in use by another process (lock {lock_path}); "
            "run one appliance per persist directory"
        ) from None
    return fd


def earlier_set_aside(path: Path) -> list[str]:
    """Files set aside at earlier starts, oldest first."""
    earlier = path.parent.glob(f"{path.name}.corrupt-*")
    return sorted(str(p) for p in earlier if not p.name.endswith(("-wal", "-shm")))


def wal(path: Path) -> Path:
    return Path(f"{path}-wal")


def size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _connect(path: Path, journal_size_limit: int) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=0.2)
    try:
        conn.execute("PRAGMA auto_vacuum=INCREMENTAL")  # takes effect only in a new file
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode != "wal":
            raise LogBufferError(f"log buffer {path}: cannot use WAL (journal {mode})")
        conn.execute("PRAGMA synchronous=NORMAL")  # durability: the journal
        conn.execute("PRAGMA wal_autocheckpoint=0")  # only ours, after a journal sync
        conn.execute(f"PRAGMA journal_size_limit={int(journal_size_limit)}")
    except BaseException:
        conn.close()
        raise
    return conn


def _set_aside(path: Path, problem: str) -> str:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while target.exists():
        target = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
        n += 1
    path.replace(target)
    for suffix in ("-wal", "-shm"):
        side = Path(f"{path}{suffix}")
        if side.exists():
            side.replace(Path(f"{target}{suffix}"))
    log.error(
        "log buffer file unusable, set aside path=%s problem=%r set_aside=%s; "
        "starting a new buffer with a new epoch",
        path,
        problem,
        target,
    )
    return str(target)
