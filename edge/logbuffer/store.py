"""The log buffer's store: the SQLite file's rows and state, and the folder of large tables.

Only the writer thread calls it (`edge.logbuffer.writer`). Each write is one transaction
(`transact`) on a copy of the `State`; the copy replaces the state only on commit, so a failed
commit leaves nothing half-counted. Inside a transaction (`Transaction`): rows in, out and
rewritten, the high-water mark, acks, and the cap, whose decisions come from
`edge.logbuffer.retention` and are applied in the transaction that went over it.

Large tables. The journal writes a large table once, as a file in `<file>.tables/` named by its
journal record (`<epoch>-<first seq>.table`), and the row stores that name (codec "file"). No
list of files travels between transactions; the state holds the names the committed rows
refer to, and a file goes by a sweep (`garbage`, then `delete_files`):

- A file is garbage when no committed row names it and no journal record a replay could still
  store names it: the replay stores only records past `last_seq` (same epoch), so a file of
  this epoch numbered past `last_seq` is still on its way and is kept. Another epoch's records
  (a file set aside) are replayed only at start, before the first sweep, and the journal
  deletes them once stored: such a file is garbage as soon as no row names it.
- A row must never name a file that is gone after a power loss: the rows that named a garbage
  file may come back if SQLite's last transactions are lost. So the writer fsyncs the WAL
  between `garbage` and `delete_files`, with no commit between: the state that names none of
  them is then on disk, and so is a `last_seq` past them. An unlink lost to a power loss only
  leaves a file for the next sweep.
- The other way round, the writer makes SQLite durable (WAL fsync, checkpoint) only after the
  journal's fsync, so a row it made durable never names a file that did not reach the disk.
  (The kernel may write the WAL back earlier on its own; that window is the fsync interval.)

Files of schema version 2 sat in the journal's folder: `adopt_legacy_tables` links them over
at start, and the journal deletes the old names once the start has stored what they hold.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TypeVar

import pyarrow as pa
import pyarrow.ipc as ipc

from edge.errors import LogBufferDiskFull, LogBufferError
from edge.logbuffer import retention, schema
from edge.logbuffer.codec import Codec, Decoder, Encoder, file_name
from edge.logbuffer.records import TABLE_SUFFIX, fsync_path, name_parts
from edge.logbuffer.transaction import Transaction

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass
class State:
    """What the writer knows about the file; replaced as a whole after each commit."""

    last_seq: int = 0
    acked_through: int = 0
    bytes: int = 0
    rows: int = 0
    batches: int = 0
    unsynced_rows: int = 0
    drops: dict[str, int] = field(default_factory=lambda: dict.fromkeys(retention.DROP_REASONS, 0))
    files: set[str] = field(default_factory=set)  # the table files rows name

    def copy(self) -> State:
        return replace(self, drops=dict(self.drops), files=set(self.files))


class Store:
    """The SQLite file on the writer's side, and the tables folder."""

    def __init__(
        self,
        path: Path,
        *,
        max_bytes: int,
        keep_synced_bytes: int,
        wal_checkpoint_bytes: int,
        journal_size_limit: int,
    ) -> None:
        self.path = path
        self.tables = Path(f"{path}.tables")
        self.max_bytes = max_bytes
        self.keep_synced_bytes = keep_synced_bytes
        self.wal_checkpoint_bytes = wal_checkpoint_bytes
        self.journal_size_limit = journal_size_limit
        self.state = State()
        self.epoch = ""
        self.created_at = ""
        self.schemas: dict[int, pa.Schema] = {}  # committed, by id (readers look here first)
        self.set_aside: list[str] = []
        self.encoder = Encoder()
        self.decoder = Decoder(self.tables)
        self.schema_ids: dict[str, int] = {}
        self._conn: sqlite3.Connection | None = None
        self._lock_fd: int | None = None
        self._lock = threading.Lock()

    # ---------------------------------------------------------------- open and close

    def open(self) -> None:
        """Take the file lock, open (or create) the file, set a corrupt one aside, load the
        state."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock_fd = schema.lock_file(self.path)
        try:
            self.set_aside = schema.earlier_set_aside(self.path)
            self._conn = schema.open_file(self.path, self.journal_size_limit, self.set_aside)
            self._load_state(self._conn)
            self.tables.mkdir(exist_ok=True)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing drops the flock
            self._lock_fd = None

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise LogBufferError(f"log buffer {self.path} is not open")
        return self._conn

    def _load_state(self, conn: sqlite3.Connection) -> None:
        meta = schema.read_meta(conn)
        self.epoch = meta["epoch"]
        self.created_at = meta.get("created_at", "")
        st = State()
        count, total, rows, max_seq = conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(bytes), 0), COALESCE(SUM(n_rows), 0),"
            " COALESCE(MAX(last_seq), 0) FROM batches"
        ).fetchone()
        st.batches, st.bytes, st.rows = count, total, rows
        st.last_seq = max(int(meta.get("last_seq", 0)), max_seq)
        st.acked_through = int(meta.get("acked_through", 0))
        st.unsynced_rows = schema.rows_between(conn, st.acked_through, st.last_seq)
        for reason, n in conn.execute("SELECT reason, count FROM drops"):
            st.drops[reason] = n
        query = "SELECT body FROM batches WHERE codec = ?"
        st.files = {file_name(body) for (body,) in conn.execute(query, (Codec.FILE.value,))}
        self.state = st
        for schema_id, fingerprint, blob in conn.execute(
            "SELECT id, fingerprint, ipc FROM schemas"
        ):
            self.schema_ids[fingerprint] = schema_id
            self.schemas[schema_id] = ipc.read_schema(pa.py_buffer(blob))

    def adopt_legacy_tables(self, journal_folder: Path) -> list[Path]:
        """Schema version 2 kept large tables in the journal's folder: link each into the
        tables folder (the journal deletes its own names once the start is through) and
        return those no row names yet (journaled, not stored: the recovery replays them)."""
        linked = False
        unstored: list[Path] = []
        for path in sorted(journal_folder.glob(f"*{TABLE_SUFFIX}")):
            target = self.tables / path.name
            if not target.exists():
                try:
                    os.link(path, target)
                except OSError:  # no hard links here: a copy, renamed once whole
                    partial = target.with_suffix(".partial")
                    shutil.copyfile(path, partial)
                    fsync_path(partial)
                    partial.replace(target)
                linked = True
            if path.name not in self.state.files:
                unstored.append(target)
        if linked:
            fsync_path(self.tables)
        return unstored

    # ---------------------------------------------------------------- writing

    def transact(self, fn: Callable[[Transaction], T]) -> T:
        """Run `fn` in one write transaction on a copy of the state; keep it only on commit.
        SQLite's errors come out as `LogBufferDiskFull` or `LogBufferError`."""
        conn = self.conn
        txn = Transaction(self, conn, self.state.copy())
        try:
            conn.execute("BEGIN IMMEDIATE")
            result = fn(txn)
            conn.execute("COMMIT")
        except BaseException as exc:
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    log.exception("log buffer rollback failed path=%s", self.path)
            if isinstance(exc, sqlite3.Error):
                raise _failure(self.path, exc) from exc
            raise
        with self._lock:
            self.state = txn.state
            for fingerprint, (schema_id, new) in txn.new_schemas.items():
                self.schema_ids[fingerprint] = schema_id
                self.schemas[schema_id] = new
        return result

    # ---------------------------------------------------------------- the tables folder

    def garbage(self) -> list[str]:
        """The table files no committed row names and no replay could store."""
        st = self.state
        found: list[str] = []
        with os.scandir(self.tables) as entries:
            for entry in entries:
                parts = name_parts(entry.name)
                if not entry.name.endswith(TABLE_SUFFIX) or parts is None:
                    continue
                if entry.name in st.files or (parts[0] == self.epoch and parts[1] > st.last_seq):
                    continue  # a row names it, or it is journaled and not stored yet
                found.append(entry.name)
        return found

    def delete_files(self, names: list[str]) -> None:
        """Delete garbage files (`garbage`, then `sync_wal` with no commit between)."""
        for name in names:
            (self.tables / name).unlink(missing_ok=True)

    # ---------------------------------------------------------------- durability and size

    def sync_wal(self) -> None:
        """Make every committed transaction durable (fsync the journal first)."""
        wal = schema.wal(self.path)
        if wal.exists():  # none: a checkpoint put everything in the file, synced
            fsync_path(wal)

    def checkpoint(self) -> int:
        """Copy the WAL into the file and truncate it (synced); nonzero: a reader was busy."""
        return int(self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0])

    def wal_bytes(self) -> int:
        return schema.size(schema.wal(self.path))

    def vacuum_if_sparse(self) -> None:
        """Give free pages back once they are many (incremental auto-vacuum)."""
        conn = self.conn
        free, pages, page_size = (
            conn.execute(f"PRAGMA {name}").fetchone()[0]
            for name in ("freelist_count", "page_count", "page_size")
        )
        if free * page_size > max(8 << 20, self.max_bytes // 4) and free * 2 > pages // 4:
            conn.execute("PRAGMA incremental_vacuum")


def _failure(path: Path, exc: sqlite3.Error) -> LogBufferError:
    if getattr(exc, "sqlite_errorcode", 0) & 0xFF == sqlite3.SQLITE_FULL:
        return LogBufferDiskFull(
            f"log buffer {path}: disk full ({exc}); the rows wait in the journal and are "
            "stored once there is room. Free space on the persist volume or lower the "
            "buffer's max_bytes"
        )
    return LogBufferError(f"log buffer {path}: write failed: {exc}")
