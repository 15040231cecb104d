"""The log buffer's write-ahead journal: an answered inference is safe once `write` returns.

Appending a table to SQLite costs a transaction; appending it to a file costs one `write`. So
the request path writes each result table here (one record: a header and the table as an Arrow
IPC stream; the small tables of one turn of the event loop joined as one) and answers; the log
buffer's writer thread stores the tables in SQLite in large batches a few milliseconds later.
A process crash (SIGKILL, OOM kill) loses nothing: the kernel holds what was written, and at
the next start every record not yet in SQLite is replayed. Power loss can lose what was
written since the last `sync` (the writer syncs every `LOG_FSYNC_INTERVAL`; 0 makes every
answer wait for one, shared by concurrent requests).

Files: `<folder>/<epoch>-<first seq, 16 digits>.journal`, written in sequence order; a new one
starts past `segment_bytes`. A segment is deleted once SQLite durably holds all its rows (the
current one once it holds an eighth of a segment of them).
A large table gets a file of its own, `<epoch>-<first seq>.table` (same record format), which
SQLite then refers to instead of copying megabytes into its pages; it goes with its row.

Record: 40-byte header (magic, flags, payload length, first sequence number, rows, checksum:
CRC-32 of a payload up to 64 KiB, the sum of its 64-bit words above) then the payload, padded
to 8 bytes. Reading stops at
the first record that is short or fails its checksum: a torn tail, never an answered row.
"""

from __future__ import annotations

import functools
import logging
import os
import struct
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc

log = logging.getLogger(__name__)

MAGIC = b"EDJ1"
SMALL = 64 << 10  # payloads up to this are checksummed with CRC-32, larger ones word-summed
HEADER = struct.Struct("<4sIQQQQ")  # magic, flags, length, first_seq, rows, checksum
SUFFIX = ".journal"
OWN_SUFFIX = ".table"  # one large table, kept as the log buffer's storage for it


@dataclass(frozen=True)
class Record:
    epoch: str
    first_seq: int
    table: pa.Table

    @property
    def last_seq(self) -> int:
        return self.first_seq + self.table.num_rows - 1


@dataclass(frozen=True)
class Encoded:
    """A table as a record's payload: an Arrow IPC stream, in parts."""

    parts: list[bytes | pa.Buffer]
    rows: int
    length: int
    # the record batch messages alone, without the schema message (None when the stream
    # holds dictionaries): the log buffer stores them joined, with no Arrow work
    batches: list[bytes | pa.Buffer] | None


@dataclass
class _Segment:
    path: Path
    first_seq: int
    last_seq: int  # first_seq - 1 while empty


class Journal:
    """Append-only segment files. `lock` guards `write`; the caller holds it so that sequence
    numbers, journal order and queue order stay one order."""

    def __init__(self, folder: Path, segment_bytes: int = 16 << 20) -> None:
        self.folder = folder
        self.segment_bytes = segment_bytes
        self.lock = threading.Lock()
        self._sync_lock = threading.Lock()
        self._epoch = ""
        self._closed: list[_Segment] = []
        self._current: _Segment | None = None
        self._fd: int | None = None
        self._size = 0
        self._written = 0  # bytes written since open, across segments
        self._synced = 0
        self._new_files = False
        self._schema_bytes: tuple[pa.Schema, bytes] | None = None
        self._unsynced_fds: list[int] = []  # own files and old segments, not yet synced

    # ---------------------------------------------------------------- start-up

    def read(
        self, live: bool, skip: frozenset[str] | set[str] = frozenset()
    ) -> Iterator[tuple[str, list[Record]]]:
        """Each file on disk but `skip`, oldest first: its name and its readable records,
        tables as they were logged (dictionary columns decoded). `live`: the current segment
        may be mid-write (its tail is not reported as torn)."""
        for path in self._files():
            if path.name not in skip:
                epoch = path.name.rsplit("-", 1)[0]
                records = [Record(epoch, seq, plain(t)) for seq, t in _read_segment(path, live)]
                yield path.name, records

    def begin(self, epoch: str, next_seq: int, keep: set[str]) -> None:
        """Delete the files on disk but `keep` (the caller stored their rows) and open a
        new segment."""
        self.folder.mkdir(parents=True, exist_ok=True)
        for path in self._files():
            if path.name not in keep:
                path.unlink()
        self._epoch = epoch
        self._open(next_seq)
        fsync_path(self.folder)

    # ---------------------------------------------------------------- writing

    def encode(self, table: pa.Table) -> Encoded:
        """`table` as a record's payload: an Arrow IPC stream, the schema message (cached)
        then its batches. No lock needed: encode before taking `lock`."""
        schema = table.schema
        cached = self._schema_bytes
        if cached is None or not (cached[0] is schema or cached[0].equals(schema)):
            dictionaries = any(map(pa.types.is_dictionary, schema.types))
            cached = (schema, b"" if dictionaries else schema.serialize().to_pybytes())
            self._schema_bytes = cached
        if not cached[1]:  # dictionaries: the stream writer writes them too
            return _stream(table)
        batches: list[bytes | pa.Buffer] = [b.serialize() for b in table.to_batches()]
        length = len(cached[1]) + sum(len(b) for b in batches)
        return Encoded([cached[1], *batches], table.num_rows, length, batches)

    def write(self, first_seq: int, encoded: Encoded) -> None:
        """Append one record (caller holds `lock`). On failure the file is cut back to its
        last whole record and the error (an OSError) is raised: nothing half-written stays."""
        assert self._fd is not None and self._current is not None, "journal not open"
        if self._size >= self.segment_bytes:
            self._rotate(first_seq)
        record, size = _record(first_seq, encoded)
        try:
            _write_all(self._fd, record, size)
        except OSError:
            try:  # the next record starts where this one did
                os.ftruncate(self._fd, self._size)
                os.lseek(self._fd, self._size, os.SEEK_SET)
            except OSError:
                log.exception("log journal: cannot cut back %s", self._current.path)
            raise
        self._size += size
        self._written += size
        self._current.last_seq = first_seq + encoded.rows - 1

    def write_own(self, first_seq: int, table: pa.Table) -> str:
        """Write one (large) table to a file of its own (caller holds `lock`); return its
        name. The file is synced by the next `sync` and deleted by `delete`."""
        name = f"{self._epoch}-{first_seq:016d}{OWN_SUFFIX}"
        # one stream, not `encode`: the small tables' cached schema stays
        record, size = _record(first_seq, _stream(table))
        fd = os.open(
            self.folder / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600
        )
        try:
            _write_all(fd, record, size)
        except OSError:
            os.close(fd)
            (self.folder / name).unlink(missing_ok=True)
            raise
        self._unsynced_fds.append(fd)
        self._written += size
        self._new_files = True
        return name

    def delete(self, name: str) -> None:
        """Delete a table's own file (its row is gone from SQLite)."""
        (self.folder / name).unlink(missing_ok=True)

    def sync(self) -> None:
        """Make everything written so far durable. Concurrent callers share one fsync."""
        with self.lock:
            target = self._written
            new_files, self._new_files = self._new_files, False
            own, self._unsynced_fds = self._unsynced_fds, []
            fd = os.dup(self._fd) if self._fd is not None and target > self._synced else None
        try:
            with self._sync_lock:
                for own_fd in own:  # tables in files of their own, and full segments
                    os.fsync(own_fd)
                    _forget_pages(own_fd)
                if fd is not None and target > self._synced:
                    os.fsync(fd)
                if new_files:
                    fsync_path(self.folder)
                self._synced = max(self._synced, target)
        finally:
            for any_fd in [*own, *([fd] if fd is not None else [])]:
                os.close(any_fd)

    @property
    def unsynced(self) -> bool:
        return self._written > self._synced

    def releasable(self, stored_seq: int, final: bool = False) -> bool:
        """Whether `release(stored_seq, final)` would delete anything."""
        with self.lock:
            return any(s.last_seq <= stored_seq for s in self._closed) or self._current_done(
                stored_seq, final
            )

    def release(self, stored_seq: int, final: bool = False) -> int:
        """Delete the closed segments whose rows SQLite holds durably (all <= `stored_seq`);
        the current segment too once it holds only stored rows and an eighth of
        `segment_bytes` (a new file every `fsync_interval` would cost a file and a folder
        sync each time), or at `final`. Returns files deleted."""
        with self.lock:
            done = [s for s in self._closed if s.last_seq <= stored_seq]
            self._closed = [s for s in self._closed if s.last_seq > stored_seq]
            current = self._current
            if current is not None and self._current_done(stored_seq, final):
                self._rotate(current.last_seq + 1, sync=False)  # its rows are in SQLite
                done.append(self._closed.pop())
        for segment in done:
            try:
                segment.path.unlink()
            except FileNotFoundError:
                pass
        return len(done)

    def _current_done(self, stored_seq: int, final: bool) -> bool:
        current = self._current
        return (
            current is not None
            and self._size > (0 if final else self.segment_bytes // 8)
            and current.last_seq <= stored_seq
        )

    def close(self) -> None:
        self.sync()
        with self.lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    @property
    def files(self) -> int:
        return len(self._closed) + (self._current is not None)

    # ---------------------------------------------------------------- inside

    def _files(self) -> list[Path]:
        if not self.folder.is_dir():
            return []
        paths = [*self.folder.glob(f"*{SUFFIX}"), *self.folder.glob(f"*{OWN_SUFFIX}")]
        return sorted(paths, key=lambda p: p.name.rsplit("-", 1)[1])

    def _open(self, first_seq: int) -> None:
        path = self.folder / f"{self._epoch}-{first_seq:016d}{SUFFIX}"
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        self._current = _Segment(path, first_seq, first_seq - 1)
        self._size = 0
        self._new_files = True

    def _rotate(self, next_seq: int, sync: bool = True) -> None:
        """Start a new segment. The old one's descriptor goes to the next `sync` (no fsync
        here, on the request path), or is closed at once when its rows need no sync."""
        assert self._fd is not None and self._current is not None
        if sync:
            self._unsynced_fds.append(self._fd)
        else:
            os.close(self._fd)
        self._closed.append(self._current)
        self._open(next_seq)


def _stream(table: pa.Table) -> Encoded:
    """`table` as one Arrow IPC stream (dictionaries included)."""
    sink = pa.BufferOutputStream()
    with ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    stream = sink.getvalue()
    return Encoded([stream], table.num_rows, len(stream), None)


def _record(first_seq: int, encoded: Encoded) -> tuple[list[bytes | pa.Buffer], int]:
    """The header, the payload and the padding of one record."""
    parts = encoded.parts
    length = encoded.length
    if length <= SMALL or any(len(p) % 8 for p in parts[:-1]):
        parts = [b"".join(parts)]
    pad = b"\0" * (-length % 8)
    header = HEADER.pack(MAGIC, 0, length, first_seq, encoded.rows, _checksum(parts))
    return [header, *parts, pad], len(header) + length + len(pad)


def read_table(path: Path) -> pa.Table:
    """The table in a file of its own (`write_own`), dictionary columns decoded."""
    for _, table in _read_segment(path, live=False):
        return plain(table)
    raise OSError(f"{path}: no whole record")


def pack_constants(table: pa.Table) -> pa.Table:
    """Per-request columns (`time`, `anomaly.*`, `metadata.*`) that hold one value in every
    row, as dictionaries of that value with int8 indices: a 10,000-row result shrinks from
    3.4 MB to 1.5 MB on disk (and so the cap holds more of them)."""
    for index, field in enumerate(table.schema):
        name = field.name
        if name != "time" and not name.startswith(("anomaly.", "metadata.")):
            continue
        column = table.column(index)
        if column.num_chunks != 1 or pa.types.is_dictionary(field.type):
            continue
        packed = _packed(column.chunk(0))
        if packed is not None:
            table = table.set_column(index, pa.field(name, packed.type), packed)
    return table


def _packed(array: pa.Array) -> pa.Array | None:
    """`array` as a dictionary of its one value, or None when its rows differ (comparing
    10,000 values costs ~0.02 ms)."""
    rows = len(array)
    if rows == 0 or not array.slice(1).equals(array.slice(0, rows - 1)):
        return None  # a[i+1] == a[i] for every i: one value
    return pa.DictionaryArray.from_arrays(_zeros(rows), array.slice(0, 1))


@functools.lru_cache(maxsize=16)
def _zeros(rows: int) -> pa.Array:
    return pa.array(np.zeros(rows, np.int8))


def plain(table: pa.Table) -> pa.Table:
    """Dictionary columns decoded to their value type."""
    for index, column in enumerate(table.columns):
        if pa.types.is_dictionary(column.type):
            decoded = pa.chunked_array(
                [chunk.dictionary.take(chunk.indices) for chunk in column.chunks],
                column.type.value_type,
            )
            table = table.set_column(
                index, pa.field(table.field(index).name, decoded.type), decoded
            )
    return table


def plain_schema(schema: pa.Schema) -> pa.Schema:
    return pa.schema(
        [f.with_type(f.type.value_type) if pa.types.is_dictionary(f.type) else f for f in schema],
        metadata=schema.metadata,
    )


def _read_segment(path: Path, live: bool) -> Iterator[tuple[int, pa.Table]]:
    data = path.read_bytes()
    offset = 0
    while offset + HEADER.size <= len(data):
        magic, _, length, first_seq, rows, checksum = HEADER.unpack_from(data, offset)
        end = offset + HEADER.size + length
        if magic != MAGIC or end > len(data):
            break
        payload = memoryview(data)[offset + HEADER.size : end]
        if _checksum([payload]) != checksum:
            break
        try:
            table = ipc.open_stream(pa.py_buffer(payload)).read_all()
        except (pa.ArrowInvalid, OSError):
            break
        if table.num_rows != rows:
            break
        yield first_seq, table
        offset = end + (-length % 8)
    if offset < len(data) and not live:
        log.warning(
            "log journal %s: %d bytes after the last whole record ignored (a torn write)",
            path,
            len(data) - offset,
        )


def _checksum(parts: list[bytes | memoryview | pa.Buffer]) -> int:
    """CRC-32 of a small payload (one part); for a large one (every part but the last a
    whole number of 64-bit words) the sum of its words: ~40x faster, and enough to tell a
    torn or zero-filled tail from a whole record."""
    if len(parts) == 1 and len(parts[0]) <= SMALL:
        return zlib.crc32(parts[0])
    return sum(_word_sum(p) for p in parts) & 0xFFFFFFFFFFFFFFFF


def _word_sum(data: bytes | memoryview | pa.Buffer) -> int:
    view = memoryview(data).cast("B")
    whole = len(view) // 8 * 8
    total = int(np.frombuffer(view[:whole], np.uint64).sum(dtype=np.uint64)) if whole else 0
    return (total + int.from_bytes(view[whole:], "little")) & 0xFFFFFFFFFFFFFFFF


def _write_all(fd: int, parts: list[bytes | pa.Buffer], size: int) -> None:
    done = os.writev(fd, parts)
    if done == size:
        return
    rest = b"".join(bytes(p) for p in parts)[done:]  # a short write: rare, finish it
    while rest:
        rest = rest[os.write(fd, rest) :]


def _forget_pages(fd: int) -> None:
    """Let the kernel drop a written, synced file's pages from its cache: log data is read
    back rarely, and a page cache that only grows made each new 1.5 MB table cost ~5 ms of
    kernel time here, against ~1 ms while freed pages were reused."""
    if hasattr(os, "posix_fadvise"):
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)


def fsync_path(path: Path) -> None:
    """fsync a file, or a folder (so that the names in it are durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
