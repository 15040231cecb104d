"""The inference log buffer: every answered row, kept in one SQLite file until the sync ships it.

A buffer row holds one appended table, or several small ones of one schema that arrived in the
same transaction, as zstd-compressed Arrow IPC record-batch messages (small tables: the very
messages the journal wrote, so the writer does no Arrow work) beside its sequence range and
time range (the schema is stored once in `schemas`). A large table (over
`LARGE_TABLE_BYTES`) stays in the journal file it was written to, and the row holds that file's
name (codec "file"): SQLite is slow at multi-megabyte blobs (a 3.4 MB INSERT costs ~20 ms
here), a file of its own costs one write. Reading back is `edge.logquery`; the file's tables
and migrations are in `edge.logschema`.

Write path. `log(table)` writes the table to the journal (`edge.journal`: one `write`, or a
file of its own) and puts it on a bounded queue; the server's `submit` gathers the small tables
of one turn of the event loop and logs them as one (one encode and one write for all the
requests in flight, 3-5 at concurrency 8; each waits one turn for it). From then on
the rows survive a crash of the process, and of the machine once the journal is fsynced (every
`fsync_interval`, or before the answer when that is 0). A single writer thread owns the SQLite
connection (WAL, `synchronous=NORMAL`: the journal is the durable record): it lingers up to
`linger` for appends, stores them all in ONE transaction, then resolves their futures
(`append_nowait` / `await append()` return only then, for callers that read back at once).
Every `fsync_interval` it fsyncs the journal, then SQLite's WAL, then deletes the journal
segments SQLite now holds. At start, journaled rows SQLite lacks (a crash came between) are
stored first. A failed commit (disk full) fails those futures; the rows stay in the journal and
are stored once SQLite can write again. Acks and maintenance run on the writer, in queue order.

Backpressure. The queue holds at most `max_queue` tables and `max_queue_bytes` of Arrow data
(one table is always admitted to an empty queue). When full, `log` / `append_nowait` raise
`LogBufferFull` at once (nothing journaled) and `await append()` waits up to `enqueue_timeout`
seconds for room. No accepted row is ever dropped silently: the caller answers with an error.

Sequence numbers. The epoch is a random id made when the file is created. Sequence numbers start
at 1 per epoch and are given when a table is journaled; the `last_seq` high-water mark in `meta`
(written with the rows) and the journal together mean that acked, deleted, dropped or
unstorable rows never free a number for reuse.

Bound. Past `max_bytes` of stored payload (own files counted), within the same transaction:
synced rows kept for on-device reads go first (they were delivered, nothing is lost); then the
oldest unsynced tables lose input columns, largest first, then output columns (`out.*`,
`out_<model>.*`), keeping `time`, `anomaly.*` and `metadata.*`, each dropped name appended to
`metadata.dropped`; only then whole oldest tables go. Each drop adds to a counter in `drops`,
shown in `stats()["dropped"]`: `input_values` / `output_values` count (row, column) values
dropped, `rows` counts whole rows. A row's own file is deleted when the row goes.

Crash safety. At start a file that SQLite calls corrupt (open failure, `PRAGMA quick_check`) or
that is not a log buffer is renamed aside (`<name>.corrupt-<UTC time>`, never deleted), logged,
listed in `stats()["set_aside"]`, and a new file with a new epoch begins (journaled rows of the
old epoch are stored in it under new numbers). The WAL is kept small with explicit
`wal_checkpoint(TRUNCATE)` (when it passes `wal_checkpoint_bytes`, and when idle, after a
journal fsync) and `journal_size_limit`.

Reads (`query`, `pending`, `stats`) use their own read-only connection and never block the writer;
`query` first waits for the rows already logged. One process writes a file at a time
(`<file>.lock`, an flock): a second writer would hand out the same sequence numbers.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import errno
import fcntl
import hashlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc
import zstandard

from edge import journal
from edge.errors import LogBufferError
from edge.logquery import Batch, Reader, time_bounds
from edge.logschema import (
    SCHEMA_VERSION,
    is_corrupt,
    migrate,
    quick_check,
    read_meta,
    rows_between,
    set_meta,
)

__all__ = ["Batch", "LogBuffer", "LogBufferDiskFull", "LogBufferFull", "SeqRange"]

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_MAX_BYTES = 256 << 20
COMPRESS_BELOW = 256 << 10  # serialized tables above this are stored uncompressed
# a larger table is journaled on a worker thread (`submit`) into a file of its own, which
# SQLite refers to instead of holding the bytes
LARGE_TABLE_BYTES = 256 << 10
# `submit` journals a table of up to this many rows on the event loop, a larger one on a
# worker thread; `log` measures a larger one before encoding it (a few rows: encoding is cheaper)
INLINE_ROWS = 64
DROP_REASONS = ("input_values", "output_values", "rows")
DROPPED_COLUMN = "metadata.dropped"
_FULL_CODE = 13  # SQLITE_FULL
_TRIM_INPUTS, _TRIM_OUTPUTS = 0, 1  # batches.trimmed: 0 inputs left, 1 outputs left, 2 none


class LogBufferFull(LogBufferError):
    """The writer's queue is full (backpressure): nothing was stored; retry shortly."""


class LogBufferDiskFull(LogBufferError):
    """SQLite could not grow the file (disk or quota full): nothing was stored."""


@dataclass(frozen=True)
class SeqRange:
    """The sequence numbers given to one appended table: `first..last`, inclusive."""

    epoch: str
    first: int
    last: int

    @property
    def count(self) -> int:
        return self.last - self.first + 1


@dataclass
class _State:
    """What the writer knows about the file; replaced as a whole after each commit."""

    last_seq: int = 0
    acked_through: int = 0
    bytes: int = 0
    rows: int = 0
    batches: int = 0
    unsynced_rows: int = 0
    drops: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DROP_REASONS, 0))

    def copy(self) -> _State:
        return replace(self, drops=dict(self.drops))


@dataclass
class _Append:
    table: pa.Table
    nbytes: int
    future: concurrent.futures.Future[SeqRange] | None  # None: nobody waits for the commit
    first_seq: int
    file: str | None = None  # a large table's own journal file, which SQLite will refer to
    # the journal's record batch messages, which SQLite stores as they are (None: encode)
    messages: list[bytes | pa.Buffer] | None = None

    @property
    def last_seq(self) -> int:
        return self.first_seq + self.table.num_rows - 1


@dataclass
class _Call:
    fn: Callable[[], Any]
    future: concurrent.futures.Future[Any]


class _Stop:
    pass


_Item = _Append | _Call | _Stop


@dataclass
class _Encoded:
    schema: pa.Schema
    fingerprint: str
    body: bytes
    n_rows: int
    min_time: int | None
    max_time: int | None
    codec: str = "zstd"  # "none", or "file": `body` names the table's own journal file
    size: int = -1  # bytes stored (-1: len(body))

    @property
    def stored_bytes(self) -> int:
        return len(self.body) if self.size < 0 else self.size


class _Queue:
    """The writer's inbox: appends are bounded, control calls always get in."""

    def __init__(self, max_items: int, max_bytes: int) -> None:
        self._items: collections.deque[_Item] = collections.deque()
        self._cond = threading.Condition()
        self._max_items = max_items
        self._max_bytes = max_bytes
        self._appends = 0
        self._bytes = 0
        self.closed = False

    def has_room(self, nbytes: int) -> bool:
        with self._cond:
            if self.closed:
                raise LogBufferError("log buffer is closed")
            return not self._appends or (
                self._appends < self._max_items and self._bytes + nbytes <= self._max_bytes
            )

    def add(self, item: _Append) -> None:
        """Queue an append (the caller checked `has_room` under the journal lock). The writer
        is woken by the first append and again only when a quarter of the queue is used: it
        lingers to store many appends in one transaction."""
        with self._cond:
            self._appends += 1
            self._bytes += item.nbytes
            self._items.append(item)
            if (
                self._appends == 1
                or self._appends * 4 >= self._max_items
                or self._bytes * 4 >= self._max_bytes
            ):
                self._cond.notify()

    def put(self, item: _Call | _Stop) -> None:
        with self._cond:
            if self.closed:
                raise LogBufferError("log buffer is closed")
            if isinstance(item, _Stop):
                self.closed = True
            self._items.append(item)
            self._cond.notify()

    def take(self, timeout: float, limit: int, linger: float = 0.0) -> list[_Item]:
        """Wait up to `timeout` for work; when it is only appends, linger up to `linger`
        seconds for more (one transaction for all of them), unless the queue fills."""
        with self._cond:
            if not self._items:
                self._cond.wait(timeout)
            if self._items and len(self._items) == self._appends and not self.closed:
                self._cond.wait(linger)
            taken: list[_Item] = []
            while self._items and len(taken) < limit:
                item = self._items.popleft()
                if isinstance(item, _Append):
                    self._appends -= 1
                    self._bytes -= item.nbytes
                taken.append(item)
            return taken

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)


class LogBuffer:
    """The appliance's inference log: append after each answer, read, ship, ack."""

    def __init__(
        self,
        path: Path | str,
        max_bytes: int = DEFAULT_MAX_BYTES,
        *,
        keep_synced_bytes: int = 0,
        max_queue: int = 4096,
        max_queue_bytes: int = 64 << 20,
        enqueue_timeout: float = 2.0,
        commit_timeout: float = 30.0,
        wal_checkpoint_bytes: int = 8 << 20,
        journal_size_limit: int = 16 << 20,
        group_limit: int = 1024,
        linger: float = 0.05,
        fsync_interval: float = 0.1,
        journal_segment_bytes: int = 16 << 20,
    ) -> None:
        """`keep_synced_bytes`: how much already-acked data to keep for `query` on the device
        (0: `ack` deletes at once); it is the first thing evicted when the cap is reached.
        `linger`: how long the writer gathers appends into one transaction. `fsync_interval`:
        how often the journal and SQLite reach the disk (power-loss window); 0: `submit`
        waits for the journal's fsync before it returns."""
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.keep_synced_bytes = keep_synced_bytes
        self.enqueue_timeout = enqueue_timeout
        self.commit_timeout = commit_timeout
        self.wal_checkpoint_bytes = wal_checkpoint_bytes
        self.journal_size_limit = journal_size_limit
        self._group_limit = group_limit
        self.linger = linger
        self.fsync_interval = fsync_interval
        self._journal = journal.Journal(Path(f"{self.path}.journal"), journal_segment_bytes)
        self._next_seq = 1
        self._behind = 0.0  # when SQLite failed: the time to replay the journal again
        self._last_fsync = 0.0
        self._queue = _Queue(max_queue, max_queue_bytes)
        self._lock = threading.Lock()
        self._state = _State()
        self._epoch = ""
        self._created_at = ""
        self._schema_ids: dict[str, int] = {}
        self._schemas: dict[int, pa.Schema] = {}
        self._txn_schemas: dict[str, tuple[int, pa.Schema]] = {}
        self._txn_unlink: list[str] = []  # own files of rows this transaction deletes
        self._unlink_later: list[str] = []  # ... deleted after the next WAL fsync
        # the writer's encode cache: schema, stored schema, fingerprint, has dictionaries
        self._last_schema: tuple[pa.Schema, pa.Schema, str, bool] | None = None
        # what `submit` gathered during this turn of the event loop, journaled at the next
        self._turn: list[tuple[pa.Table, asyncio.Future[SeqRange]]] = []
        self._wconn: sqlite3.Connection | None = None
        self._rconn: sqlite3.Connection | None = None
        self._rlock = threading.Lock()
        self._lock_fd: int | None = None
        self._thread: threading.Thread | None = None
        self._compressor = zstandard.ZstdCompressor(level=1)
        self._wdecompressor = zstandard.ZstdDecompressor()
        self._rdecompressor = zstandard.ZstdDecompressor()
        self._set_aside: list[str] = []
        self._counters = {
            "commits": 0,
            "appends": 0,
            "rejected": 0,
            "failed": 0,
            "checkpoints": 0,
            "replayed": 0,
        }
        self._last_error: str | None = None

    # ---------------------------------------------------------------- lifecycle

    @property
    def epoch(self) -> str:
        return self._epoch

    def start(self) -> None:
        """Open (or create) the file, set a corrupt one aside, start the writer thread."""
        if self._thread is not None:
            raise LogBufferError("log buffer already started")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._take_file_lock()
        try:
            earlier = self.path.parent.glob(f"{self.path.name}.corrupt-*")
            self._set_aside = sorted(
                str(p) for p in earlier if not p.name.endswith(("-wal", "-shm"))
            )
            self._wconn = self._open_checked()
            self._load_state(self._wconn)
            self._recover()
            self._journal.begin(self._epoch, self._next_seq, keep=self._own_files())
        except BaseException:
            self._release_file_lock()
            raise
        self._rconn = sqlite3.connect(
            self.path.resolve().as_uri() + "?mode=ro",
            uri=True,
            isolation_level=None,
            check_same_thread=False,
            timeout=5.0,
        )
        self._thread = threading.Thread(target=self._run, name="logbuffer-writer", daemon=True)
        self._thread.start()
        log.info(
            "log buffer ready path=%s epoch=%s last_seq=%d rows=%d bytes=%d max_bytes=%d",
            self.path,
            self._epoch,
            self._state.last_seq,
            self._state.rows,
            self._state.bytes,
            self.max_bytes,
        )

    def close(self, timeout: float = 30.0) -> None:
        """Commit what is queued, checkpoint the WAL, close the file. Safe to call twice."""
        if self._thread is None:
            return
        if not self._queue.closed:
            self._queue.put(_Stop())
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.error("log buffer writer did not stop within %.0fs path=%s", timeout, self.path)
            return
        self._thread = None
        self._journal.close()
        for conn in (self._rconn, self._wconn):
            if conn is not None:
                conn.close()
        self._rconn = self._wconn = None
        self._release_file_lock()

    def _take_file_lock(self) -> None:
        """One writer per file: a second one would hand out the same sequence numbers."""
        lock_path = Path(f"{self.path}.lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise LogBufferError(
                f"log buffer {self.path} is in use by another process (lock {lock_path}); "
                "run one appliance per persist directory"
            ) from None
        self._lock_fd = fd

    def _release_file_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing drops the flock
            self._lock_fd = None

    def __enter__(self) -> LogBuffer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------- writing

    def log(self, table: pa.Table) -> SeqRange:
        """Journal `table` and queue it for SQLite; return its sequence range. Once this
        returns the rows survive a crash of this process (and, after the next fsync, of the
        machine). Never blocks on SQLite: a full queue raises `LogBufferFull`, a full disk
        `LogBufferDiskFull`, a closed or stopped buffer `LogBufferError`. Thread-safe."""
        return self._offer_or_raise(table, wait=False)[0]

    def submit(self, table: pa.Table) -> asyncio.Future[SeqRange]:
        """`log` for the event loop. The tables of a few rows submitted during one turn of
        the loop are journaled together, as one record, at the start of the next turn (one
        encode and one write for all the requests the loop is serving); larger tables on a
        worker thread (await the result while encoding the answer). With `fsync_interval` 0
        the result also waits for the journal's fsync, one for many concurrent requests."""
        loop = asyncio.get_running_loop()
        if table.num_rows > INLINE_ROWS:
            done: asyncio.Future[SeqRange] = loop.run_in_executor(None, self.log, table)
        else:
            done = loop.create_future()
            if not self._turn:
                loop.call_soon(self._log_turn)
            self._turn.append((table, done))
        if self.fsync_interval > 0:
            return done
        return asyncio.ensure_future(self._synced(done))

    def _log_turn(self) -> None:
        """Journal the tables `submit` gathered in one turn of the loop: each run of one
        schema as one table, each caller told its own part of the sequence range."""
        gathered, self._turn = self._turn, []
        start = 0
        while start < len(gathered):
            schema = gathered[start][0].schema
            end = start + 1
            while end < len(gathered) and gathered[end][0].schema.equals(schema):
                end += 1
            group = gathered[start:end]
            start = end
            tables = [table for table, _ in group]
            try:
                joined = tables[0] if len(tables) == 1 else _joined(tables)
            except Exception:  # cannot be joined: one record each
                for one in group:
                    self._log_group([one], one[0])
                continue
            self._log_group(group, joined)

    def _log_group(
        self, group: list[tuple[pa.Table, asyncio.Future[SeqRange]]], joined: pa.Table
    ) -> None:
        try:
            first = self._offer_or_raise(joined, wait=False, requests=len(group))[0].first
        except Exception as exc:  # each caller answers with the error
            for _, fut in group:
                if not fut.done():
                    fut.set_exception(exc)
            return
        for table, fut in group:
            last = first + table.num_rows - 1
            if not fut.done():  # a caller may be gone
                fut.set_result(SeqRange(self._epoch, first, last))
            first = last + 1

    async def _synced(self, logged: asyncio.Future[SeqRange]) -> SeqRange:
        seq_range = await logged
        await asyncio.get_running_loop().run_in_executor(None, self._journal.sync)
        return seq_range

    def append_nowait(self, table: pa.Table) -> concurrent.futures.Future[SeqRange]:
        """`log`, returning a future that resolves once the rows are committed to SQLite
        (for callers that read them back at once)."""
        fut = self._offer_or_raise(table, wait=True)[1]
        assert fut is not None
        return fut

    async def append(self, table: pa.Table) -> SeqRange:
        """Store `table`; return its sequence range once COMMITTED to SQLite.

        Waits up to `enqueue_timeout` s for room in the queue (then `LogBufferFull`) and up to
        `commit_timeout` s for the commit (then `LogBufferError`; the rows may still land)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.enqueue_timeout
        delay = 0.001
        while True:
            offered = self._offer(table, wait=True)
            if offered is not None:
                fut = offered[1]
                assert fut is not None
                break
            if loop.time() >= deadline:
                with self._lock:
                    self._counters["rejected"] += 1
                raise LogBufferFull(
                    f"log buffer {self.path}: the writer queue stayed full for "
                    f"{self.enqueue_timeout:.1f}s; the rows were not stored, retry shortly"
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)
        # Cancelling this wait (a client gone) does not unqueue the rows: the writer stores
        # every table it was handed, done or not.
        try:
            async with asyncio.timeout(self.commit_timeout):
                return await asyncio.wrap_future(fut)
        except TimeoutError:
            raise LogBufferError(
                f"log buffer {self.path}: no commit within {self.commit_timeout:.0f}s"
            ) from None

    def _offer_or_raise(
        self, table: pa.Table, wait: bool, requests: int = 1
    ) -> tuple[SeqRange, concurrent.futures.Future[SeqRange] | None]:
        """`_offer`, raising `LogBufferFull` when there is no room; `requests`: how many
        callers the table answers (the `rejected` counter counts them)."""
        offered = self._offer(table, wait)
        if offered is None:
            with self._lock:
                self._counters["rejected"] += requests
            raise LogBufferFull(
                f"log buffer {self.path}: the writer queue is full ({len(self._queue)} tables "
                "waiting); the rows were not stored, retry shortly"
            )
        return offered

    def _offer(
        self, table: pa.Table, wait: bool
    ) -> tuple[SeqRange, concurrent.futures.Future[SeqRange] | None] | None:
        """Journal and queue `table` (None: no room in the queue, nothing written). With
        `wait`, the returned future resolves once SQLite holds the rows."""
        if self._thread is None or not self._thread.is_alive():
            raise LogBufferError(f"log buffer {self.path} is not running")
        fut: concurrent.futures.Future[SeqRange] | None = (
            concurrent.futures.Future() if wait else None
        )
        if table.num_rows == 0:
            empty = SeqRange(self._epoch, 0, -1)  # an empty range: nothing stored
            if fut is not None:
                fut.set_result(empty)
            return empty, fut
        # A table of a few rows is encoded for the journal first (outside the lock) and its
        # encoded size decides; a larger one is measured, and a large one gets its own file.
        encoded = None
        nbytes = table.get_total_buffer_size() if table.num_rows > INLINE_ROWS else 0
        if nbytes <= LARGE_TABLE_BYTES:
            encoded = self._journal.encode(table)
            nbytes = encoded.length
            if nbytes > LARGE_TABLE_BYTES:
                encoded = None
        with self._journal.lock:
            if not self._queue.has_room(nbytes):
                return None
            first = self._next_seq
            own: str | None = None
            try:
                if encoded is None:
                    own = self._journal.write_own(first, journal.pack_constants(table))
                else:
                    self._journal.write(first, encoded)
            except OSError as exc:
                raise self._translate(exc) from None
            self._next_seq += table.num_rows
            messages = encoded.batches if encoded is not None else None
            self._queue.add(_Append(table, nbytes, fut, first, own, messages))
        return SeqRange(self._epoch, first, first + table.num_rows - 1), fut

    def ack(self, epoch: str, last_seq: int) -> None:
        """The ops center holds every row of `epoch` up to `last_seq`: stop offering them and
        delete them (or keep `keep_synced_bytes` of them for `query`). Blocks for one commit;
        from async code call it through `asyncio.to_thread`."""
        if epoch != self._epoch:
            log.warning(
                "log buffer ack ignored: epoch=%s is not this buffer's %s", epoch, self._epoch
            )
            return
        self._call(lambda: self._transact(lambda conn, st: self._ack(conn, st, last_seq)))

    def _call(self, fn: Callable[[], T]) -> T:
        """Run `fn` on the writer thread, in queue order, and wait for its result."""
        fut: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._queue.put(_Call(fn, fut))
        try:
            return fut.result(timeout=self.commit_timeout)
        except concurrent.futures.TimeoutError:
            raise LogBufferError(
                f"log buffer {self.path}: writer busy for {self.commit_timeout:.0f}s"
            ) from None

    # ---------------------------------------------------------------- reading

    def pending(self, max_rows: int) -> list[Batch]:
        """Up to `max_rows` oldest unsynced rows, in sequence order. Consecutive tables are
        concatenated into one `Batch` while their schemas unify; a table larger than what is
        left of `max_rows` is sliced (acking part of a table is fine)."""
        with self._read() as reader:
            return reader.pending(self._epoch, max_rows)

    def query(
        self,
        limit: int = 100,
        start: datetime | int | None = None,
        end: datetime | int | None = None,
    ) -> tuple[pa.Table, bool]:
        """The seed's `pipeline.logs`: newest first without a range; with `start` and `end`
        (both or neither, else ValueError; datetimes, naive = UTC, or epoch ms; inclusive),
        chronological. Returns the rows and whether more rows than `limit` exist.
        Rows logged before the call are included (it waits for them to reach SQLite)."""
        if self._thread is not None:
            self._call(lambda: None)
        with self._read() as reader:
            return reader.logs(limit, start, end)

    def stats(self) -> dict[str, Any]:
        """Counters for `/metrics`, health and the logs API."""
        with self._lock:
            st = self._state.copy()
            counters = dict(self._counters)
            last_error = self._last_error
        oldest_seq, oldest_time = None, None
        if self._rconn is not None:
            with self._read() as reader:
                oldest_seq, oldest_time = reader.oldest_unsynced(st.acked_through)
        return {
            "path": str(self.path),
            "epoch": self._epoch,
            "created_at": self._created_at,
            "schema_version": SCHEMA_VERSION,
            "rows": st.rows,
            "batches": st.batches,
            "bytes": st.bytes,
            "max_bytes": self.max_bytes,
            "file_bytes": _size(self.path),
            "wal_bytes": _size(_wal(self.path)),
            "last_seq": st.last_seq,
            "acked_through": st.acked_through,
            "unsynced_rows": st.unsynced_rows,
            "oldest_unsynced": oldest_time,
            "oldest_unsynced_seq": oldest_seq,
            "dropped": dict(st.drops),
            "queue": len(self._queue),
            "journal_files": self._journal.files,
            "set_aside": list(self._set_aside),
            "last_error": last_error,
            **counters,
        }

    @contextmanager
    def _read(self) -> Iterator[Reader]:
        """One read snapshot on the read-only connection."""
        if self._rconn is None:
            raise LogBufferError(f"log buffer {self.path} is not open")
        with self._rlock:
            conn = self._rconn
            conn.execute("BEGIN")
            try:
                yield Reader(conn, self._schemas, self._rdecompressor, self._journal.folder)
            finally:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")

    # ---------------------------------------------------------------- opening

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=0.2
        )
        try:
            conn.execute("PRAGMA auto_vacuum=INCREMENTAL")  # takes effect only in a new file
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode != "wal":
                raise LogBufferError(f"log buffer {self.path}: cannot use WAL (journal {mode})")
            conn.execute("PRAGMA synchronous=NORMAL")  # durability: the journal (edge.journal)
            conn.execute("PRAGMA wal_autocheckpoint=0")  # only ours, after a journal sync
            conn.execute(f"PRAGMA journal_size_limit={int(self.journal_size_limit)}")
        except BaseException:
            conn.close()
            raise
        return conn

    def _open_checked(self) -> sqlite3.Connection:
        if self.path.exists():
            conn: sqlite3.Connection | None = None
            try:
                conn = self._connect()
                problem = quick_check(conn)
                if problem is None:
                    migrate(conn)
                    if read_meta(conn).get("epoch"):
                        return conn
                    problem = "no epoch in meta"
            except sqlite3.DatabaseError as exc:
                if not is_corrupt(exc):
                    if conn is not None:
                        conn.close()
                    raise LogBufferError(f"log buffer {self.path}: cannot open: {exc}") from exc
                problem = str(exc)
            except LogBufferError:
                if conn is not None:
                    conn.close()
                raise
            if conn is not None:
                conn.close()
            self._set_aside_file(problem)
        try:
            conn = self._connect()
            migrate(conn)
        except sqlite3.Error as exc:
            raise LogBufferError(f"log buffer {self.path}: cannot create: {exc}") from exc
        return conn

    def _set_aside_file(self, problem: str) -> None:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        n = 1
        while target.exists():
            target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}-{n}")
            n += 1
        self.path.replace(target)
        for suffix in ("-wal", "-shm"):
            side = Path(f"{self.path}{suffix}")
            if side.exists():
                side.replace(Path(f"{target}{suffix}"))
        self._set_aside.append(str(target))
        log.error(
            "log buffer file unusable, set aside path=%s problem=%r set_aside=%s; "
            "starting a new buffer with a new epoch",
            self.path,
            problem,
            target,
        )

    def _load_state(self, conn: sqlite3.Connection) -> None:
        meta = read_meta(conn)
        self._epoch = meta["epoch"]
        self._created_at = meta.get("created_at", "")
        st = _State()
        count, total, rows, max_seq = conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(bytes), 0), COALESCE(SUM(n_rows), 0),"
            " COALESCE(MAX(last_seq), 0) FROM batches"
        ).fetchone()
        st.batches, st.bytes, st.rows = count, total, rows
        st.last_seq = max(int(meta.get("last_seq", 0)), max_seq)
        st.acked_through = int(meta.get("acked_through", 0))
        st.unsynced_rows = rows_between(conn, st.acked_through, st.last_seq)
        for reason, n in conn.execute("SELECT reason, count FROM drops"):
            st.drops[reason] = n
        self._state = st
        for schema_id, fingerprint, blob in conn.execute(
            "SELECT id, fingerprint, ipc FROM schemas"
        ):
            self._schema_ids[fingerprint] = schema_id
            self._schemas[schema_id] = ipc.read_schema(pa.py_buffer(blob))

    # ---------------------------------------------------------------- the writer thread

    def _run(self) -> None:
        stop = False
        while not stop:
            # Appends linger up to `linger` so that one transaction stores many; nobody waits
            # on it but `append` callers (the request path waits only for the journal).
            idle = 1.0 if not self._journal.unsynced else max(self.fsync_interval, 0.01)
            if self._behind:
                idle = min(idle, max(self._behind - time.monotonic(), 0.01))
            items = self._queue.take(timeout=idle, limit=self._group_limit, linger=self.linger)
            try:
                stop = self._process(items)
            except Exception as exc:  # a bug: fail what was taken, keep the writer alive
                log.exception("log buffer writer error path=%s", self.path)
                for item in items:
                    if not isinstance(item, _Stop):
                        _settle(item.future, LogBufferError(f"log buffer writer error: {exc!r}"))
                stop = any(isinstance(item, _Stop) for item in items)
            try:
                self._keep_durable(final=stop)
            except Exception:
                log.exception("log buffer sync failed path=%s", self.path)

    def _process(self, items: list[_Item]) -> bool:
        """Commit the appends among `items` in groups, run the calls in order; True on stop."""
        if self._behind and time.monotonic() >= self._behind:
            self._catch_up()
        if not items:
            self._maintain(idle=True)
            return False
        stop = False
        appends: list[_Append] = []
        for item in items:
            if isinstance(item, _Append):
                appends.append(item)
                continue
            self._commit_appends(appends)
            appends = []
            if isinstance(item, _Stop):
                stop = True
            elif item.future.set_running_or_notify_cancel():
                try:
                    item.future.set_result(item.fn())
                except BaseException as exc:  # handed to the caller, who re-raises it
                    item.future.set_exception(exc)
        self._commit_appends(appends)
        self._maintain(idle=stop)
        return stop

    def _keep_durable(self, final: bool = False) -> None:
        """Every `fsync_interval` (and at stop): fsync the journal, then drop the journal
        segments whose rows SQLite holds durably (its WAL fsynced first)."""
        now = time.monotonic()
        if not final and now - self._last_fsync < max(self.fsync_interval, 0.1):
            return
        self._last_fsync = now
        self._journal.sync()
        stored = self._state.last_seq
        if self._journal.releasable(stored, final) or self._unlink_later:
            wal = _wal(self.path)
            if wal.exists():  # none: a checkpoint put everything in the file, synced
                journal.fsync_path(wal)
            self._journal.release(stored, final)
            for name in self._unlink_later:
                self._journal.delete(name)
            self._unlink_later = []

    def _catch_up(self) -> None:
        """After a failed commit: store what the journal holds beyond SQLite's last row."""
        try:
            with self._journal.lock:  # no record is half-written while we read
                files = list(self._journal.read(live=True, skip=self._own_files()))
            stored = self._state.last_seq
            self._commit_appends(_in_order(files, lambda r: r.first_seq > stored), replay=True)
        except Exception as exc:
            self._behind = time.monotonic() + 1.0
            log.warning("log buffer still cannot store the journal's rows: %s", exc)
            return
        self._behind = 0.0
        log.info("log buffer caught up from the journal last_seq=%d", self._state.last_seq)

    def _recover(self) -> None:
        """At start: store every journaled row SQLite does not hold (a crash came between
        the answer and the commit), in one transaction. Rows of another epoch (a file set
        aside as corrupt) get new numbers after every number this epoch gave."""
        initial = self._state.last_seq
        files = list(self._journal.read(live=False, skip=self._own_files()))
        items = _in_order(files, lambda r: r.epoch == self._epoch and r.first_seq > initial)
        given = [r.last_seq for _, records in files for r in records if r.epoch == self._epoch]
        next_seq = max([initial, *given]) + 1
        for name, records in files:
            for record in records:
                if record.epoch != self._epoch:
                    items.append(_replayed(record.table, next_seq, name))
                    next_seq += record.table.num_rows
        try:
            self._commit_appends(items, replay=True)
        except Exception as exc:
            raise LogBufferError(
                f"log buffer {self.path}: cannot store the journal's rows: {exc}"
            ) from exc
        self._next_seq = max(next_seq, self._state.last_seq + 1)
        replayed = sum(item.table.num_rows for item in items)
        if replayed:
            assert self._wconn is not None
            self._wconn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # durable before unlinking
            with self._lock:
                self._counters["replayed"] += replayed
            log.warning("log buffer stored %d rows from the journal (after a crash)", replayed)

    def _own_files(self) -> set[str]:
        """The journal files SQLite rows refer to (large tables stored in their own file)."""
        conn = self._writer()
        return {
            bytes(b).decode()
            for (b,) in conn.execute("SELECT body FROM batches WHERE codec = 'file'")
        }

    def _commit_appends(self, appends: list[_Append], replay: bool = False) -> None:
        """One transaction for every table waiting. Consecutive small tables of one schema are
        stored as one buffer row: one encode and one INSERT for many small requests.

        A failed commit fails the waiters (the rows stay in the journal and are stored by
        `_catch_up` later); with `replay` it raises instead."""
        fresh = []
        for item in appends:
            if not replay and item.last_seq <= self._state.last_seq:  # stored by a catch-up
                _settle(item.future, SeqRange(self._epoch, item.first_seq, item.last_seq))
            else:
                fresh.append(item)
        if not fresh:
            return
        if self._behind and not replay:
            for item in fresh:
                _settle(item.future, LogBufferError(self._last_error or "log buffer behind"))
            return
        ready: list[tuple[list[_Append], _Encoded]] = []
        for run in _runs(fresh):
            ready.extend(self._encode_run(run))
        top = max(item.last_seq for item in fresh)  # past rows that could not be encoded too

        def insert(conn: sqlite3.Connection, st: _State) -> None:
            for run, enc in ready:
                self._insert(conn, st, enc, run[0].first_seq)
            st.last_seq = max(st.last_seq, top)
            set_meta(conn, "last_seq", st.last_seq)
            self._enforce_cap(conn, st)

        stored = [item for run, _ in ready for item in run]
        try:
            self._transact(insert)
        except Exception as exc:
            if replay:
                raise
            error = self._translate(exc)
            with self._lock:
                self._counters["failed"] += len(stored)
                self._last_error = str(error)
            self._behind = time.monotonic() + 0.2
            log.error("log buffer commit failed tables=%d error=%s", len(stored), error)
            for item in stored:
                _settle(item.future, error)
            return
        with self._lock:
            self._counters["commits"] += 1
            self._counters["appends"] += len(stored)
            self._last_error = None
        for item in stored:  # a waiter may have given up (client gone): stored all the same
            _settle(item.future, SeqRange(self._epoch, item.first_seq, item.last_seq))

    def _encode_run(self, run: list[_Append]) -> list[tuple[list[_Append], _Encoded]]:
        """Encode a run as one table; if that fails, table by table, failing only the bad."""
        try:
            if run[0].file is not None:  # `_runs` gives such a table a run of its own
                return [(run, self._encode_file(run[0]))]
            if all(item.messages is not None for item in run):
                return [(run, self._encode_journaled(run))]
            return [(run, self._encode([item.table for item in run]))]
        except Exception as exc:
            if len(run) > 1:
                return [pair for item in run for pair in self._encode_run([item])]
            _settle(run[0].future, LogBufferError(f"log buffer cannot store this table: {exc}"))
            return []

    def _transact(self, fn: Callable[[sqlite3.Connection, _State], T]) -> T:
        """Run `fn` in one write transaction on a copy of the state; keep it only on commit."""
        conn = self._writer()
        st = self._state.copy()
        self._txn_schemas = {}
        self._txn_unlink = []
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = fn(conn, st)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    log.exception("log buffer rollback failed path=%s", self.path)
            raise
        with self._lock:
            self._state = st
            for fingerprint, (schema_id, schema) in self._txn_schemas.items():
                self._schema_ids[fingerprint] = schema_id
                self._schemas[schema_id] = schema
        # deleted once the WAL is fsynced: after a power loss SQLite may come back without
        # this transaction, its rows still naming the files (an orphan is swept at start)
        self._unlink_later.extend(self._txn_unlink)
        return result

    def _writer(self) -> sqlite3.Connection:
        if self._wconn is None:
            raise LogBufferError(f"log buffer {self.path} is not open")
        return self._wconn

    def _translate(self, exc: Exception) -> LogBufferError:
        if isinstance(exc, LogBufferError):
            return exc
        if isinstance(exc, OSError):  # the journal
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                return LogBufferDiskFull(
                    f"log buffer {self.path}: disk full ({exc.strerror}); the rows were not "
                    "stored. Free space on the persist volume; logging resumes by itself"
                )
            return LogBufferError(f"log buffer {self.path}: journal write failed: {exc}")
        if isinstance(exc, sqlite3.Error) and (
            getattr(exc, "sqlite_errorcode", 0) & 0xFF == _FULL_CODE or "is full" in str(exc)
        ):
            return LogBufferDiskFull(
                f"log buffer {self.path}: disk full ({exc}); the rows wait in the journal and "
                "are stored once there is room. Free space on the persist volume or lower the "
                "buffer's max_bytes"
            )
        return LogBufferError(f"log buffer {self.path}: write failed: {exc}")

    def _maintain(self, idle: bool) -> None:
        """Keep the WAL small: truncate it when large, and whenever the writer is idle.

        TRUNCATE waits for readers to leave old snapshots, so it first takes the read lock
        (this process's readers all go through it): briefly, so a long `query` delays the
        checkpoint rather than the next group commit, unless the WAL is far past its limit."""
        conn = self._wconn
        if conn is None:
            return
        wal = _size(_wal(self.path))
        if wal > self.wal_checkpoint_bytes or (idle and wal > 0):
            urgent = wal > 4 * self.wal_checkpoint_bytes
            if self._rlock.acquire(timeout=1.0 if urgent else 0.02):
                try:
                    self._journal.sync()  # the files rows refer to reach the disk first
                    busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
                    with self._lock:
                        self._counters["checkpoints"] += 1
                    if busy:
                        log.debug("log buffer checkpoint busy (another reader) wal_bytes=%d", wal)
                except sqlite3.Error as exc:
                    log.warning("log buffer checkpoint failed error=%s", exc)
                finally:
                    self._rlock.release()
        if idle:
            try:
                free, pages, page_size = (
                    conn.execute(f"PRAGMA {name}").fetchone()[0]
                    for name in ("freelist_count", "page_count", "page_size")
                )
                if free * page_size > max(8 << 20, self.max_bytes // 4) and free * 2 > pages // 4:
                    conn.execute("PRAGMA incremental_vacuum")
            except sqlite3.Error as exc:
                log.warning("log buffer vacuum failed error=%s", exc)

    # ---------------------------------------------------------------- rows in and out

    def _encode(self, tables: list[pa.Table], compress: bool = False) -> _Encoded:
        """`tables` (one schema) as one stored row: one record batch message."""
        schema, fingerprint, has_dictionaries = self._fingerprint(tables[0].schema)
        if has_dictionaries:
            tables = [journal.plain(table) for table in tables]
        batches = [batch for table in tables for batch in table.to_batches()]
        batch = batches[0] if len(batches) == 1 else pa.concat_batches(batches)
        lo, hi = time_bounds(batch)
        raw = batch.serialize()
        # Tensors of floats barely compress and zstd would cost more than the model run on big
        # batches; small tables (mostly repeated strings) shrink well.
        codec = "zstd" if compress or raw.size <= COMPRESS_BELOW else "none"
        body = self._compressor.compress(raw) if codec == "zstd" else raw.to_pybytes()
        return _Encoded(schema, fingerprint, body, batch.num_rows, lo, hi, codec)

    def _encode_file(self, item: _Append) -> _Encoded:
        """A table stored in the journal already, in a file of its own: SQLite keeps its name."""
        file = item.file
        assert file is not None
        schema, fingerprint, _ = self._fingerprint(item.table.schema)
        lo, hi = time_bounds(item.table)
        size = (self._journal.folder / file).stat().st_size
        return _Encoded(
            schema, fingerprint, file.encode(), item.table.num_rows, lo, hi, "file", size
        )

    def _encode_journaled(self, run: list[_Append]) -> _Encoded:
        """Small tables as one stored row: their record batch messages as the journal wrote
        them, joined (no Arrow work: `Reader` reads the messages back one by one)."""
        schema, fingerprint, _ = self._fingerprint(run[0].table.schema)
        raw = b"".join(m for item in run for m in item.messages or ())
        n_rows = sum(item.table.num_rows for item in run)
        lo, hi = time_bounds(pa.concat_tables([item.table for item in run]))
        # each message repeats its metadata, which zstd folds away: compress unless the
        # tables are large (tensors of floats barely compress)
        codec = "zstd" if len(raw) <= max(COMPRESS_BELOW, len(run) * (16 << 10)) else "none"
        body = self._compressor.compress(raw) if codec == "zstd" else raw
        return _Encoded(schema, fingerprint, body, n_rows, lo, hi, codec)

    def _fingerprint(self, schema: pa.Schema) -> tuple[pa.Schema, str, bool]:
        """The stored schema (dictionaries decoded), its fingerprint, and whether `schema`
        has dictionaries. Cached: most appends share the last one's schema, and hashing it
        costs more than the rest."""
        cached = self._last_schema
        if cached is None or not cached[0].equals(schema, check_metadata=True):
            has_dictionaries = any(pa.types.is_dictionary(t) for t in schema.types)
            stored = journal.plain_schema(schema) if has_dictionaries else schema
            fingerprint = hashlib.sha256(stored.serialize().to_pybytes()).hexdigest()
            cached = (schema, stored, fingerprint, has_dictionaries)
            self._last_schema = cached
        return cached[1], cached[2], cached[3]

    def _schema_id(self, conn: sqlite3.Connection, schema: pa.Schema, fingerprint: str) -> int:
        known = self._schema_ids.get(fingerprint)
        if known is not None:
            return known
        if fingerprint in self._txn_schemas:
            return self._txn_schemas[fingerprint][0]
        cursor = conn.execute(
            "INSERT INTO schemas (fingerprint, ipc) VALUES (?, ?)",
            (fingerprint, schema.serialize().to_pybytes()),
        )
        schema_id = int(cursor.lastrowid or 0)
        self._txn_schemas[fingerprint] = (schema_id, schema)
        return schema_id

    def _insert(self, conn: sqlite3.Connection, st: _State, enc: _Encoded, first: int) -> None:
        last = first + enc.n_rows - 1
        conn.execute(
            "INSERT INTO batches (first_seq, last_seq, n_rows, min_time, max_time, bytes,"
            " schema_id, codec, trimmed, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0, ?)",
            (
                first,
                last,
                enc.n_rows,
                enc.min_time,
                enc.max_time,
                enc.stored_bytes,
                self._schema_id(conn, enc.schema, enc.fingerprint),
                enc.codec,
                enc.body,
            ),
        )
        st.last_seq = max(st.last_seq, last)
        st.bytes += enc.stored_bytes
        st.rows += enc.n_rows
        st.batches += 1
        st.unsynced_rows += enc.n_rows

    def _stored(
        self, conn: sqlite3.Connection, schema_id: int, codec: str, body: bytes
    ) -> pa.Table:
        reader = Reader(conn, self._schemas, self._wdecompressor, self._journal.folder)
        return reader.table(schema_id, codec, body)

    def _rewrite(
        self,
        conn: sqlite3.Connection,
        st: _State,
        first_seq: int,
        table: pa.Table,
        trimmed: int,
        new_first: int | None = None,
    ) -> None:
        old_bytes, old_codec, old_body = conn.execute(
            "SELECT bytes, codec, body FROM batches WHERE first_seq = ?", (first_seq,)
        ).fetchone()
        self._forget(old_codec, old_body)
        enc = self._encode([table], compress=True)  # what trimming leaves is mostly strings
        conn.execute(
            "UPDATE batches SET first_seq = ?, n_rows = ?, min_time = ?, max_time = ?, bytes = ?,"
            " schema_id = ?, codec = ?, trimmed = ?, body = ? WHERE first_seq = ?",
            (
                first_seq if new_first is None else new_first,
                enc.n_rows,
                enc.min_time,
                enc.max_time,
                len(enc.body),
                self._schema_id(conn, enc.schema, enc.fingerprint),
                enc.codec,
                trimmed,
                enc.body,
                first_seq,
            ),
        )
        st.bytes += len(enc.body) - old_bytes

    def _forget(self, codec: str, body: bytes) -> None:
        """A row that had its own file lost it: delete the file once this transaction commits."""
        if codec == "file":
            self._txn_unlink.append(bytes(body).decode())

    def _delete(self, conn: sqlite3.Connection, st: _State, first_seq: int) -> tuple[int, int]:
        last, n_rows, size, codec, body = conn.execute(
            "SELECT last_seq, n_rows, bytes, codec, body FROM batches WHERE first_seq = ?",
            (first_seq,),
        ).fetchone()
        conn.execute("DELETE FROM batches WHERE first_seq = ?", (first_seq,))
        self._forget(codec, body)
        st.bytes -= size
        st.rows -= n_rows
        st.batches -= 1
        unsynced = min(n_rows, max(0, last - st.acked_through))
        st.unsynced_rows -= unsynced
        return n_rows, unsynced

    # ---------------------------------------------------------------- the cap

    def _enforce_cap(self, conn: sqlite3.Connection, st: _State) -> None:
        before = dict(st.drops)
        while st.bytes > self.max_bytes and st.batches > 0:
            if not (
                self._evict_synced(conn, st)
                or self._trim_oldest(conn, st, _TRIM_INPUTS)
                or self._trim_oldest(conn, st, _TRIM_OUTPUTS)
            ):
                (oldest,) = conn.execute("SELECT MIN(first_seq) FROM batches").fetchone()
                _, unsynced = self._delete(conn, st, oldest)
                st.drops["rows"] += unsynced
        if st.drops != before:
            conn.executemany(
                "INSERT INTO drops (reason, count) VALUES (?, ?)"
                " ON CONFLICT (reason) DO UPDATE SET count = excluded.count",
                sorted(st.drops.items()),
            )
            log.warning(
                "log buffer over its cap, dropped data max_bytes=%d bytes=%d dropped=%s",
                self.max_bytes,
                st.bytes,
                {
                    k: st.drops[k] - before.get(k, 0)
                    for k in st.drops
                    if st.drops[k] != before.get(k)
                },
            )

    def _evict_synced(self, conn: sqlite3.Connection, st: _State) -> bool:
        """Delete the oldest table if it was all delivered (synced rows are always the oldest)."""
        row = conn.execute(
            "SELECT first_seq, last_seq FROM batches ORDER BY first_seq LIMIT 1"
        ).fetchone()
        if row is None or row[1] > st.acked_through:
            return False
        self._delete(conn, st, row[0])
        return True

    def _trim_oldest(self, conn: sqlite3.Connection, st: _State, level: int) -> bool:
        """Drop the largest columns of one kind from the oldest table that still has some."""
        row = conn.execute(
            "SELECT first_seq, bytes, schema_id, codec, body FROM batches WHERE trimmed = ?"
            " ORDER BY first_seq LIMIT 1",
            (level,),
        ).fetchone()
        if row is None:
            return False
        first_seq, size, schema_id, codec, body = row
        table = self._stored(conn, schema_id, codec, body)
        wanted = _is_input if level == _TRIM_INPUTS else _is_output
        candidates = sorted(
            ((table.column(name).nbytes, name) for name in table.column_names if wanted(name)),
            key=lambda pair: (-pair[0], pair[1]),
        )
        if not candidates:
            conn.execute(
                "UPDATE batches SET trimmed = ? WHERE first_seq = ?", (level + 1, first_seq)
            )
            return True
        ratio = size / max(table.nbytes, 1)  # stored bytes per in-memory byte
        excess = st.bytes - self.max_bytes
        chosen: list[str] = []
        saved = 0.0
        for nbytes, name in candidates:
            chosen.append(name)
            saved += nbytes * ratio
            if saved >= excess:
                break
        done = len(chosen) == len(candidates)
        trimmed = level + 1 if done else level
        self._rewrite(conn, st, first_seq, _drop_columns(table, chosen), trimmed)
        reason = "input_values" if level == _TRIM_INPUTS else "output_values"
        st.drops[reason] += table.num_rows * len(chosen)
        return True

    # ---------------------------------------------------------------- acks

    def _ack(self, conn: sqlite3.Connection, st: _State, last_seq: int) -> None:
        if last_seq > st.last_seq:
            raise ValueError(
                f"cannot ack seq {last_seq}: the last committed seq of epoch {self._epoch} "
                f"is {st.last_seq}"
            )
        if last_seq <= st.acked_through:
            return
        st.unsynced_rows -= rows_between(conn, st.acked_through, last_seq)
        st.acked_through = last_seq
        set_meta(conn, "acked_through", last_seq)
        synced = conn.execute(
            "SELECT first_seq, bytes FROM batches WHERE first_seq <= ? AND last_seq <= ?"
            " ORDER BY first_seq",
            (last_seq, last_seq),
        ).fetchall()
        synced_bytes = sum(size for _, size in synced)
        for first_seq, size in synced:
            if synced_bytes <= self.keep_synced_bytes:
                break
            self._delete(conn, st, first_seq)
            synced_bytes -= size
        if self.keep_synced_bytes == 0:
            self._cut_straddling(conn, st, last_seq)

    def _cut_straddling(self, conn: sqlite3.Connection, st: _State, last_seq: int) -> None:
        """Delete the acked head of a table that was acked only in part."""
        row = conn.execute(
            "SELECT first_seq, schema_id, codec, body, trimmed FROM batches"
            " WHERE first_seq <= ? AND last_seq > ? ORDER BY first_seq DESC LIMIT 1",
            (last_seq, last_seq),
        ).fetchone()
        if row is None:
            return
        first_seq, schema_id, codec, body, trimmed = row
        table = self._stored(conn, schema_id, codec, body)
        cut = last_seq - first_seq + 1
        self._rewrite(conn, st, first_seq, table.slice(cut), trimmed, new_first=last_seq + 1)
        st.rows -= cut


# -------------------------------------------------------------------- schema and meta


# -------------------------------------------------------------------- Arrow helpers


def _runs(appends: list[_Append], max_bytes: int = 1 << 20) -> Iterator[list[_Append]]:
    """Consecutive appends with one schema, together up to `max_bytes` of Arrow data."""
    run: list[_Append] = []
    size = 0
    for item in appends:
        if run and (
            size + item.nbytes > max_bytes
            or item.file is not None
            or run[0].file is not None
            or item.first_seq != run[-1].last_seq + 1
            or not item.table.schema.equals(run[0].table.schema, check_metadata=True)
        ):
            yield run
            run, size = [], 0
        run.append(item)
        size += item.nbytes
    if run:
        yield run


def _joined(tables: list[pa.Table]) -> pa.Table:
    """Tables of one schema as one table of one record batch."""
    batches = [batch for table in tables for batch in table.to_batches()]
    return pa.Table.from_batches([pa.concat_batches(batches)])


def _is_input(name: str) -> bool:
    return name.startswith("in.")


def _is_output(name: str) -> bool:
    return name.startswith(("out.", "out_"))


def _drop_columns(table: pa.Table, names: list[str]) -> pa.Table:
    """`table` without `names`, each row's `metadata.dropped` extended by them."""
    kept = table.drop_columns(names)
    list_type = pa.list_(pa.string())
    rows = kept.num_rows
    if DROPPED_COLUMN not in kept.column_names:
        return kept.append_column(pa.field(DROPPED_COLUMN, list_type), _repeated(names, rows))
    index = kept.column_names.index(DROPPED_COLUMN)
    old = kept.column(index).combine_chunks()
    # The rows of a stored table were all trimmed alike: one list for all, built in bulk
    # (a per-row Python loop holds the GIL for ~10 ms per 10,000 rows, stalling requests).
    first = (old[0].as_py() or []) if rows else []
    if rows and _all_equal_to(old, first):
        values = _repeated(first + names, rows)
    else:
        values = pa.array([(row or []) + names for row in old.to_pylist()], list_type)
    return kept.set_column(index, pa.field(DROPPED_COLUMN, list_type), values)


def _repeated(names: list[str], rows: int) -> pa.Array:
    """`rows` copies of the list `names`, as list<string>."""
    width = len(names)
    offsets = pa.array(np.arange(rows + 1, dtype=np.int32) * width)
    values = pa.array(names, pa.string()).take(pa.array(np.tile(np.arange(width), rows)))
    return pa.ListArray.from_arrays(offsets, values)


def _all_equal_to(lists: pa.Array, first: list[str]) -> bool:
    """Whether every row of a list<string> array is `first` (a null row counts as [])."""
    lengths = pc.fill_null(pc.list_value_length(lists), 0).to_numpy()
    if not (lengths == len(first)).all():
        return False
    if not first:
        return True
    flat = lists.flatten()
    return bool(pc.all(pc.equal(flat, _repeated(first, len(lists)).flatten())).as_py())


def _in_order(
    files: list[tuple[str, list[journal.Record]]], wanted: Callable[[journal.Record], bool]
) -> list[_Append]:
    """The `wanted` records of journal files as appends, in sequence order (a table in a
    file of its own sits between the records of a segment)."""
    chosen = [(r, name) for name, records in files for r in records if wanted(r)]
    chosen.sort(key=lambda pair: pair[0].first_seq)
    return [_replayed(r.table, r.first_seq, name) for r, name in chosen]


def _replayed(table: pa.Table, first_seq: int, name: str) -> _Append:
    """A journal record as an append; a table in a file of its own keeps that file."""
    own = name if name.endswith(journal.OWN_SUFFIX) else None
    future: concurrent.futures.Future[SeqRange] = concurrent.futures.Future()
    return _Append(table, table.get_total_buffer_size(), future, first_seq, own)


def _settle(fut: concurrent.futures.Future[Any] | None, outcome: Any) -> None:
    """Resolve `fut` with `outcome`, or fail it when that is an exception."""
    if fut is None:
        return
    try:  # the waiter may have been cancelled meanwhile
        if isinstance(outcome, BaseException):
            fut.set_exception(outcome)
        else:
            fut.set_result(outcome)
    except concurrent.futures.InvalidStateError:
        pass


def _wal(path: Path) -> Path:
    return Path(f"{path}-wal")


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0
