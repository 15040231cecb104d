"""The log buffer's write-ahead journal: an answered inference is safe once `append` returns.

Appending a table to SQLite costs a transaction; appending it to a file costs one `write`. So
the request path writes each result table here (one record, `edge.logbuffer.records`; the small
tables of one turn of the event loop joined as one) and answers; the writer thread stores the
tables in SQLite in large batches a few milliseconds later. A process crash (SIGKILL, OOM kill)
loses nothing: the kernel holds what was written, and at the next start every record not yet
in SQLite is replayed. Power loss can lose what was written since the last `sync` (the writer
syncs every `LOG_FSYNC_INTERVAL`; 0 makes every answer wait for one, shared by concurrent
requests).

The journal gives the sequence numbers: `append` numbers a table, writes it and hands it on
(`sink`, the writer's queue) under the journal's own lock, so numbers, journal order and queue
order are one order. A refused table (`admit`: the queue is full) takes no number.

Files: `<folder>/<epoch>-<first seq, 16 digits>.journal`, written in sequence order; a new one
starts past `segment_bytes`. A segment is deleted once SQLite durably holds all its rows (the
current one once it holds an eighth of a segment of them). A large table is written once, to
`<tables>/<epoch>-<first seq>.table` (the store's folder: the file becomes the store's copy,
SQLite only names it), and the segment gets a reference record in its place: a file made
ahead of it, renamed (`edge.logbuffer.spares`). The journal never deletes a table file: the
store does, once no row names it (`edge.logbuffer.store`).
"""

from __future__ import annotations

import errno
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from edge.errors import LogBufferDiskFull, LogBufferError
from edge.ipc_template import EncodedBatch
from edge.logbuffer import records
from edge.logbuffer.records import HEADER, MAGIC, TABLE_SUFFIX, Encoded
from edge.logbuffer.spares import Spares

log = logging.getLogger(__name__)

SUFFIX = ".journal"


@dataclass(frozen=True)
class SeqRange:
    """The sequence numbers given to one logged table: `first..last`, inclusive."""

    epoch: str
    first: int
    last: int

    @property
    def count(self) -> int:
        return self.last - self.first + 1


@dataclass(frozen=True)
class Record:
    """One journaled table: in its segment (`inline`), or in its own file (`path`)."""

    epoch: str
    first_seq: int
    rows: int
    inline: pa.Table | None = None
    path: Path | None = None

    @property
    def last_seq(self) -> int:
        return self.first_seq + self.rows - 1

    def table(self) -> pa.Table:
        """The table as it was logged (dictionary columns decoded); OSError when its own
        file is missing or torn (a power loss before the file reached the disk)."""
        if self.inline is not None:
            return records.plain(self.inline)
        assert self.path is not None
        return records.read_table(self.path)


@dataclass(frozen=True)
class Written:
    """What `append` wrote: the table's numbers, and its own file (large tables)."""

    seqs: SeqRange
    file: str | None
    file_bytes: int
    # the record batch messages as journaled (None: the stream held dictionaries)
    batches: list[bytes | pa.Buffer] | None


@dataclass
class _Segment:
    path: Path
    first_seq: int
    last_seq: int  # first_seq - 1 while empty


class Journal:
    """Append-only segment files, numbered tables, and large tables' own files."""

    def __init__(self, folder: Path, tables: Path, segment_bytes: int = 16 << 20) -> None:
        self.folder = folder
        self.tables = tables  # where large tables get their own file (the store's folder)
        self._spares = Spares(tables)  # those files, made ahead
        self.segment_bytes = segment_bytes
        self._lock = threading.Lock()  # guards writing: numbers, files, sizes
        self._sync_lock = threading.Lock()
        self._epoch = ""
        self._next_seq = 1
        self._closed: list[_Segment] = []
        self._current: _Segment | None = None
        self._fd: int | None = None
        self._size = 0
        self._written = 0  # bytes written since open, across files
        self._synced = 0
        self._new_segments = self._new_tables = False
        self._schema_bytes: tuple[pa.Schema, bytes] | None = None
        self._unsynced_tables: list[int] = []  # descriptors of table files not yet synced
        self._unsynced_segments: list[int] = []  # ... of full segments

    # ---------------------------------------------------------------- start-up

    def read(self, live: bool) -> list[Record]:
        """Every readable record on disk, oldest first. `live`: the current segment may be
        mid-write (its tail is not reported as torn)."""
        with self._lock:  # no record is half-written while the files are read
            files = [(path, path.read_bytes()) for path in self._segments()]
        found: list[Record] = []
        for path, data in files:
            epoch = path.name.rsplit("-", 1)[0]
            for seq, rows, table in records.read_records(path, live, data):
                if table is None:
                    own = self.tables / records.table_file_name(epoch, seq)
                    found.append(Record(epoch, seq, rows, path=own))
                else:
                    found.append(Record(epoch, seq, rows, inline=table))
        return found

    def begin(self, epoch: str, next_seq: int) -> None:
        """Delete every file in the folder (the caller stored their rows) and open a new
        segment; numbers go on from `next_seq`."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self.tables.mkdir(parents=True, exist_ok=True)
        for path in [*self._segments(), *self.folder.glob(f"*{TABLE_SUFFIX}")]:
            path.unlink()
        self._spares.clear()
        with self._lock:
            self._epoch = epoch
            self._next_seq = next_seq
            self._open(next_seq)
        records.fsync_path(self.folder)

    # ---------------------------------------------------------------- writing

    def encode(self, table: pa.Table | EncodedBatch) -> Encoded:
        """`table` as a record's payload: an Arrow IPC stream, the schema message (cached)
        then its batches (an `EncodedBatch` is one already). Encode before `append`: its
        lock is not needed for this."""
        schema_message = self._schema_message(table.schema)
        if isinstance(table, EncodedBatch):  # never with dictionaries (`BatchTemplate`)
            batches: list[bytes | pa.Buffer] = [table.message]
            length = len(schema_message) + len(table.message)
            return Encoded([schema_message, *batches], table.rows, length, batches)
        if not schema_message:  # dictionaries: the stream writer writes them too
            return records.stream(table)
        batches = [b.serialize() for b in table.to_batches()]
        length = len(schema_message) + sum(len(b) for b in batches)
        return Encoded([schema_message, *batches], table.num_rows, length, batches)

    def _schema_message(self, schema: pa.Schema) -> bytes:
        """The stream's schema message, cached for the last schema; b"" when the schema has
        dictionaries."""
        cached = self._schema_bytes
        if cached is None or not (cached[0] is schema or cached[0].equals(schema)):
            dictionaries = any(map(pa.types.is_dictionary, schema.types))
            cached = (schema, b"" if dictionaries else schema.serialize().to_pybytes())
            self._schema_bytes = cached
        return cached[1]

    def append(
        self,
        payload: Encoded | pa.Table,
        admit: Callable[[], bool],
        sink: Callable[[Written], None],
    ) -> Written | None:
        """Number and journal one table: `payload` encoded (a record in the segment), or a
        large table (a file of its own). Under the journal's lock: `admit()` first (False:
        nothing written, None returned), then the write, then `sink(written)`. A failed write
        leaves nothing behind and raises `LogBufferDiskFull` or `LogBufferError`."""
        with self._lock:
            if self._fd is None:
                raise LogBufferError(f"log journal {self.folder} is not open")
            if not admit():
                return None
            first = self._next_seq
            try:
                if isinstance(payload, Encoded):
                    rows, batches, file, size = payload.rows, payload.batches, None, 0
                    self._put(first, rows, *records.record(first, payload))
                else:
                    rows, batches = payload.num_rows, None
                    file, size = self._write_table(first, payload)
            except OSError as exc:
                raise _failure(self.folder, exc) from exc
            self._next_seq += rows
            written = Written(SeqRange(self._epoch, first, first + rows - 1), file, size, batches)
            sink(written)
        return written

    @property
    def last_seq(self) -> int:
        """The last number given."""
        return self._next_seq - 1

    def sync(self) -> None:
        """Make everything written so far durable: table files before the records that name
        them. Concurrent callers share one fsync."""
        with self._lock:
            target = self._written
            new_tables, self._new_tables = self._new_tables, False
            new_segments, self._new_segments = self._new_segments, False
            tables, self._unsynced_tables = self._unsynced_tables, []
            segments, self._unsynced_segments = self._unsynced_segments, []
            fd = os.dup(self._fd) if self._fd is not None and target > self._synced else None
        try:
            with self._sync_lock:
                for own_fd in [*tables, *segments]:
                    os.fsync(own_fd)
                    records.forget_pages(own_fd)
                if new_tables:
                    records.fsync_path(self.tables)
                if new_segments:
                    records.fsync_path(self.folder)
                if fd is not None and target > self._synced:
                    os.fsync(fd)
                self._synced = max(self._synced, target)
        finally:
            for any_fd in [*tables, *segments, *([fd] if fd is not None else [])]:
                os.close(any_fd)

    @property
    def unsynced(self) -> bool:
        return self._written > self._synced

    def releasable(self, stored_seq: int, final: bool = False) -> bool:
        """Whether `release(stored_seq, final)` would delete anything."""
        with self._lock:
            return any(s.last_seq <= stored_seq for s in self._closed) or self._current_done(
                stored_seq, final
            )

    def release(self, stored_seq: int, final: bool = False) -> int:
        """Delete the closed segments whose rows SQLite holds durably (all <= `stored_seq`);
        the current segment too once it holds only stored rows and an eighth of
        `segment_bytes` (a new file every `fsync_interval` would cost a file and a folder
        sync each time), or at `final`. Returns files deleted."""
        with self._lock:
            done = [s for s in self._closed if s.last_seq <= stored_seq]
            self._closed = [s for s in self._closed if s.last_seq > stored_seq]
            current = self._current
            if current is not None and self._current_done(stored_seq, final):
                self._rotate(current.last_seq + 1, sync=False)  # its rows are in SQLite
                done.append(self._closed.pop())
        for segment in done:
            segment.path.unlink(missing_ok=True)
        return len(done)

    def close(self) -> None:
        self.sync()
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
        self._spares.close()

    @property
    def files(self) -> int:
        return len(self._closed) + (self._current is not None)

    # ---------------------------------------------------------------- inside

    def _current_done(self, stored_seq: int, final: bool) -> bool:
        current = self._current
        return (
            current is not None
            and self._size > (0 if final else self.segment_bytes // 8)
            and current.last_seq <= stored_seq
        )

    def _segments(self) -> list[Path]:
        if not self.folder.is_dir():
            return []
        return sorted(self.folder.glob(f"*{SUFFIX}"), key=lambda p: p.name.rsplit("-", 1)[1])

    def _put(self, first_seq: int, rows: int, parts: list[bytes | pa.Buffer], size: int) -> None:
        """Append one record to the current segment. On failure the file is cut back to its
        last whole record and the OSError raised: nothing half-written stays."""
        assert self._fd is not None and self._current is not None
        if self._size >= self.segment_bytes:
            self._rotate(first_seq)
        try:
            records.write_all(self._fd, parts, size)
        except OSError:
            try:  # the next record starts where this one did
                os.ftruncate(self._fd, self._size)
                os.lseek(self._fd, self._size, os.SEEK_SET)
            except OSError:
                log.exception("log journal: cannot cut back %s", self._current.path)
            raise
        self._size += size
        self._written += size
        self._current.last_seq = first_seq + rows - 1

    def _write_table(self, first_seq: int, table: pa.Table) -> tuple[str, int]:
        """A large table in a file of its own, then its reference record; its name and size."""
        name = records.table_file_name(self._epoch, first_seq)
        path = self.tables / name
        # one stream, not `encode` (the small tables' cached schema stays), its large
        # buffers written from the table's own memory
        parts, size = records.record(first_seq, records.stream_parts(table))
        fd = self._spares.claim(path, size)
        try:
            records.write_all(fd, parts, size)
            self._put(
                first_seq,
                table.num_rows,
                [records.reference(first_seq, table.num_rows)],
                HEADER.size,
            )
        except OSError:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        self._unsynced_tables.append(fd)
        self._written += size
        self._new_tables = True
        return name, size

    def _open(self, first_seq: int) -> None:
        path = self.folder / f"{self._epoch}-{first_seq:016d}{SUFFIX}"
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        self._current = _Segment(path, first_seq, first_seq - 1)
        self._size = 0
        self._new_segments = True

    def _rotate(self, next_seq: int, sync: bool = True) -> None:
        """Start a new segment. The old one's descriptor goes to the next `sync` (no fsync
        here, on the request path), or is closed at once when its rows need no sync."""
        assert self._fd is not None and self._current is not None
        if sync:
            self._unsynced_segments.append(self._fd)
        else:
            os.close(self._fd)
        self._closed.append(self._current)
        self._open(next_seq)


def file_record(path: Path) -> Record | None:
    """The record in a table file of its own, read when its table is asked for; None when
    the name or header is not one (schema version 2 kept such files in the journal's folder,
    with no reference record)."""
    parts = records.name_parts(path.name)
    try:
        with path.open("rb") as handle:
            header = handle.read(HEADER.size)
    except OSError:
        return None
    if parts is None or len(header) < HEADER.size:
        return None
    magic, flags, _, first_seq, rows, _ = HEADER.unpack(header)
    if magic != MAGIC or flags:
        return None
    return Record(parts[0], first_seq, rows, path=path)


def _failure(folder: Path, exc: OSError) -> LogBufferError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return LogBufferDiskFull(
            f"log buffer journal {folder}: disk full ({exc.strerror}); the rows were not "
            "stored. Free space on the persist volume; logging resumes by itself"
        )
    return LogBufferError(f"log buffer journal {folder}: write failed: {exc}")
