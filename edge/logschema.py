"""The log buffer file's schema: versioned migrations and the small helpers over its tables.

`edge.logbuffer` writes the file and `edge.logquery` reads it; both rely on the layout here:

    _migrations(version, name, applied_at)   which migrations this file has had
    meta(key, value)            epoch, created_at, last_seq (high-water mark), acked_through
    schemas(id, fingerprint, ipc)            each Arrow schema once
    batches(first_seq, last_seq, n_rows, min_time, max_time, bytes, schema_id, codec, trimmed,
            body)                            one stored table (Arrow IPC messages) per row
    drops(reason, count)        persistent drop counters
"""

from __future__ import annotations

import sqlite3
import uuid
from datetime import UTC, datetime

from edge.errors import LogBufferError
from edge.logquery import UNSYNCED

CORRUPT_CODES = {11, 26}  # SQLITE_CORRUPT, SQLITE_NOTADB

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
]
SCHEMA_VERSION = MIGRATIONS[-1][0]


def migrate(conn: sqlite3.Connection) -> None:
    """Apply the migrations this file lacks, each in its own transaction."""
    tables = {
        name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
    }
    if tables and "_migrations" not in tables:
        raise sqlite3.DatabaseError(f"not a log buffer (tables {sorted(tables)})")
    conn.execute(
        "CREATE TABLE IF NOT EXISTS _migrations"
        " (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
    )
    applied = {v for (v,) in conn.execute("SELECT version FROM _migrations")}
    if applied and max(applied) > SCHEMA_VERSION:
        raise LogBufferError(
            f"log buffer schema version {max(applied)} is newer than this appliance knows "
            f"({SCHEMA_VERSION}); run a newer image or move the file aside"
        )
    for version, name, sql in MIGRATIONS:
        if version in applied:
            continue
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in sql.split(";"):
                if statement.strip():
                    conn.execute(statement)
            now = datetime.now(UTC).isoformat()
            if version == 1:
                conn.executemany(
                    "INSERT INTO meta (key, value) VALUES (?, ?)",
                    [
                        ("epoch", str(uuid.uuid4())),
                        ("created_at", now),
                        ("last_seq", "0"),
                        ("acked_through", "0"),
                    ],
                )
            conn.execute(
                "INSERT INTO _migrations (version, name, applied_at) VALUES (?, ?, ?)",
                (version, name, now),
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


def is_corrupt(exc: sqlite3.DatabaseError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None and code & 0xFF in CORRUPT_CODES:
        return True
    text = str(exc)
    return "malformed" in text or "not a database" in text or "not a log buffer" in text


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
