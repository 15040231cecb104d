"""The log buffer's writer thread: journaled tables into SQLite, group commit, fsync order.

One thread owns the SQLite connection (`edge.logbuffer.store`). It lingers up to `linger` for
journaled tables (`edge.logbuffer.inbox`), stores them all in ONE transaction (consecutive
small tables of one schema as one buffer row: one INSERT for many requests), and runs calls
(acks, `flush`) in queue order. Nobody on the request path waits for it: a request waits only
for the journal.

Durability, in this order, every `fsync_interval` (and at stop): fsync the journal (table
files before the records that name them), then, when a journal segment or a table file can
go, fsync SQLite's WAL, then delete the journal segments SQLite now holds and the table files
no row names (the store's docstring has the argument). A WAL checkpoint also syncs the
journal first. The WAL is kept small with explicit `wal_checkpoint(TRUNCATE)` when it passes
`wal_checkpoint_bytes` and when idle.

A failed commit (disk full) is counted and reported (`last_error`); its rows stay in the
journal, and the writer stores what the journal holds beyond SQLite's last row once SQLite can
write again (`_catch_up`). At start (`recover`), journaled rows SQLite lacks (a crash came
between) are stored first; rows of another epoch (a file set aside as corrupt) get new numbers
after every number this epoch gave.
"""

from __future__ import annotations

import concurrent.futures
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from edge.errors import LogBufferError
from edge.logbuffer.codec import StoredRow
from edge.logbuffer.inbox import Append, Call, Inbox, Item, Stop
from edge.logbuffer.journal import Journal, Record, file_record
from edge.logbuffer.store import Store, Transaction

log = logging.getLogger(__name__)

T = TypeVar("T")

COUNTERS = ("commits", "appends", "rejected", "failed", "checkpoints", "replayed")


class Writer:
    """The thread that stores what the journal holds."""

    def __init__(
        self,
        store: Store,
        journal: Journal,
        inbox: Inbox,
        read_lock: threading.Lock,
        *,
        linger: float,
        fsync_interval: float,
        group_limit: int,
        commit_timeout: float,
    ) -> None:
        self.store = store
        self.journal = journal
        self.inbox = inbox
        self.read_lock = read_lock  # every reader of this process holds it (checkpoints wait)
        self.linger = linger
        self.fsync_interval = fsync_interval
        self.group_limit = group_limit
        self.commit_timeout = commit_timeout
        self.counters = dict.fromkeys(COUNTERS, 0)
        self.last_error: LogBufferError | None = None
        self._lock = threading.Lock()  # guards counters and last_error
        self._behind = 0.0  # when SQLite failed: the time to replay the journal again
        self._last_fsync = 0.0
        self._thread: threading.Thread | None = None

    # ---------------------------------------------------------------- from other threads

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="logbuffer-writer", daemon=True)
        self._thread.start()

    def stop(self, timeout: float) -> bool:
        """Store what is queued and stop; False when the thread did not stop in time."""
        if self._thread is None:
            return True
        if not self.inbox.closed:
            self.inbox.put(Stop())
        self._thread.join(timeout)
        if self._thread.is_alive():
            return False
        self._thread = None
        return True

    def call(self, fn: Callable[[], T]) -> T:
        """Run `fn` on the writer thread, in queue order, and wait for its result."""
        fut: concurrent.futures.Future[T] = concurrent.futures.Future()
        self.inbox.put(Call(fn, fut))
        try:
            return fut.result(timeout=self.commit_timeout)
        except concurrent.futures.TimeoutError:
            raise LogBufferError(
                f"log buffer {self.store.path}: writer busy for {self.commit_timeout:.0f}s"
            ) from None

    def count(self, counter: str, n: int = 1) -> None:
        with self._lock:
            self.counters[counter] += n

    def report(self) -> tuple[dict[str, int], LogBufferError | None]:
        with self._lock:
            return dict(self.counters), self.last_error

    # ---------------------------------------------------------------- start-up

    def recover(self) -> None:
        """Store every journaled row SQLite lacks, in one transaction, then begin the
        journal afresh (before the thread starts)."""
        store, epoch = self.store, self.store.epoch
        initial = store.state.last_seq
        legacy = [file_record(path) for path in store.adopt_legacy_tables(self.journal.folder)]
        found = [*self.journal.read(live=False), *(r for r in legacy if r is not None)]
        mine = sorted((r for r in found if r.epoch == epoch), key=lambda r: r.first_seq)
        items = [_replayed(r) for r in mine if r.first_seq > initial]
        next_seq = max([initial, *(r.last_seq for r in mine)]) + 1
        for record in found:
            if record.epoch != epoch:
                item = _replayed(record, next_seq)
                items.append(item)
                next_seq += item.rows if item is not None else 0
        fresh = [item for item in items if item is not None]
        try:
            self._commit(fresh, replay=True, through=next_seq - 1)
        except Exception as exc:
            raise LogBufferError(
                f"log buffer {store.path}: cannot store the journal's rows: {exc}"
            ) from exc
        if found:
            store.checkpoint()  # durable before the journal deletes its files
        self.journal.begin(epoch, max(next_seq, store.state.last_seq + 1))
        replayed = sum(item.rows for item in fresh)
        if replayed:
            self.count("replayed", replayed)
            log.warning("log buffer stored %d rows from the journal (after a crash)", replayed)

    # ---------------------------------------------------------------- the thread

    def _run(self) -> None:
        stop = False
        while not stop:
            idle = 1.0 if not self.journal.unsynced else max(self.fsync_interval, 0.01)
            if self._behind:
                idle = min(idle, max(self._behind - time.monotonic(), 0.01))
            items = self.inbox.take(timeout=idle, limit=self.group_limit, linger=self.linger)
            try:
                stop = self._process(items)
            except Exception as exc:  # a bug: fail the calls taken, keep the writer alive
                log.exception("log buffer writer error path=%s", self.store.path)
                for item in items:
                    if isinstance(item, Call):
                        _settle(item.future, LogBufferError(f"log buffer writer error: {exc!r}"))
                stop = any(isinstance(item, Stop) for item in items)
            try:
                self._keep_durable(final=stop)
            except Exception:
                log.exception("log buffer sync failed path=%s", self.store.path)

    def _process(self, items: list[Item]) -> bool:
        """Commit the appends among `items` in groups, run the calls in order; True on stop."""
        if self._behind and time.monotonic() >= self._behind:
            self._catch_up()
        if not items:
            self._maintain(idle=True)
            return False
        stop = False
        appends: list[Append] = []
        for item in items:
            if isinstance(item, Append):
                appends.append(item)
                continue
            self._commit(appends)
            appends = []
            if isinstance(item, Stop):
                stop = True
            elif item.future.set_running_or_notify_cancel():
                try:
                    item.future.set_result(item.fn())
                except BaseException as exc:  # handed to the caller, who re-raises it
                    item.future.set_exception(exc)
        self._commit(appends)
        self._maintain(idle=stop)
        return stop

    def _keep_durable(self, final: bool = False) -> None:
        """Every `fsync_interval` (and at stop): fsync the journal; then, if anything can be
        deleted, the WAL, then the journal segments SQLite holds and the garbage table files.
        No commit comes between `garbage` and `sync_wal` (this thread makes every commit)."""
        now = time.monotonic()
        if not final and now - self._last_fsync < max(self.fsync_interval, 0.1):
            return
        self._last_fsync = now
        self.journal.sync()
        stored = self.store.state.last_seq
        garbage = self.store.garbage()
        if garbage or self.journal.releasable(stored, final):
            self.store.sync_wal()
            self.journal.release(stored, final)
            self.store.delete_files(garbage)

    def _catch_up(self) -> None:
        """After a failed commit: store what the journal holds beyond SQLite's last row."""
        try:
            stored, epoch = self.store.state.last_seq, self.store.epoch
            wanted = [
                r for r in self.journal.read(live=True) if r.epoch == epoch and r.first_seq > stored
            ]
            items = [item for item in map(_replayed, wanted) if item is not None]
            self._commit(items, replay=True, through=max((r.last_seq for r in wanted), default=0))
        except Exception as exc:
            self._behind = time.monotonic() + 1.0
            log.warning("log buffer still cannot store the journal's rows: %s", exc)
            return
        self._behind = 0.0
        log.info("log buffer caught up from the journal last_seq=%d", self.store.state.last_seq)

    def _commit(self, appends: list[Append], replay: bool = False, through: int = 0) -> None:
        """One transaction for every table waiting; the high-water mark goes to `through`
        at least. A failed commit is counted and reported, its rows left in the journal for
        `_catch_up`; with `replay` it raises instead."""
        last_seq = self.store.state.last_seq
        fresh = [item for item in appends if replay or item.last_seq > last_seq]
        top = max([through, *(item.last_seq for item in fresh)])  # past unstorable rows too
        if top <= last_seq:
            return  # nothing new (a catch-up stored these already)
        if self._behind and not replay:
            return  # the journal holds them; `_catch_up` stores them
        ready = [pair for run in _runs(fresh) for pair in self._encode_run(run)]

        def insert(txn: Transaction) -> None:
            for run, row in ready:
                txn.insert(row, run[0].first_seq)
            txn.stored_through(top)
            txn.enforce_cap()

        stored = sum(len(run) for run, _ in ready)
        try:
            self.store.transact(insert)
        except Exception as exc:
            if replay:
                raise
            error = (
                exc
                if isinstance(exc, LogBufferError)
                else LogBufferError(f"log buffer {self.store.path}: write failed: {exc!r}")
            )
            with self._lock:
                self.counters["failed"] += stored
                self.last_error = error
            self._behind = time.monotonic() + 0.2
            log.error("log buffer commit failed tables=%d error=%s", stored, error)
            return
        with self._lock:
            self.counters["commits"] += 1
            self.counters["appends"] += stored
            self.last_error = None

    def _encode_run(self, run: list[Append]) -> list[tuple[list[Append], StoredRow]]:
        """Encode a run as one stored row; if that fails, table by table, counting the bad."""
        encoder = self.store.encoder
        try:
            first = run[0]
            if first.file is not None:  # `_runs` gives such a table a run of its own
                bounds = first.time_bounds()
                row = encoder.file(first.schema, first.rows, bounds, first.file, first.file_bytes)
                return [(run, row)]
            if all(item.messages is not None for item in run):
                messages = [m for item in run for m in item.messages or ()]
                rows = sum(item.rows for item in run)
                bounds = _bounds([item.time_bounds() for item in run])
                return [(run, encoder.journaled(first.schema, rows, bounds, messages))]
            tables = [item.table for item in run if item.table is not None]
            assert len(tables) == len(run)  # an append without messages keeps its table
            return [(run, encoder.tables(tables))]
        except Exception as exc:
            if len(run) > 1:
                return [pair for item in run for pair in self._encode_run([item])]
            self.count("failed")
            log.error(
                "log buffer cannot store a table first_seq=%d rows=%d error=%r",
                run[0].first_seq,
                run[0].rows,
                exc,
            )
            return []

    def _maintain(self, idle: bool) -> None:
        """Keep the WAL small: truncate it when large, and whenever the writer is idle.

        TRUNCATE waits for readers to leave old snapshots, so it first takes the read lock
        (this process's readers all go through it): briefly, so a long `query` delays the
        checkpoint rather than the next group commit, unless the WAL is far past its limit."""
        store = self.store
        wal = store.wal_bytes()
        if wal > store.wal_checkpoint_bytes or (idle and wal > 0):
            urgent = wal > 4 * store.wal_checkpoint_bytes
            if self.read_lock.acquire(timeout=1.0 if urgent else 0.02):
                try:
                    self.journal.sync()  # the files rows name reach the disk first
                    busy = store.checkpoint()
                    self.count("checkpoints")
                    if busy:
                        log.debug("log buffer checkpoint busy (another reader) wal_bytes=%d", wal)
                except sqlite3.Error as exc:
                    log.warning("log buffer checkpoint failed error=%s", exc)
                finally:
                    self.read_lock.release()
        if idle:
            try:
                store.vacuum_if_sparse()
            except sqlite3.Error as exc:
                log.warning("log buffer vacuum failed error=%s", exc)


def _runs(appends: list[Append], max_bytes: int = 1 << 20) -> Iterator[list[Append]]:
    """Consecutive appends with one schema, together up to `max_bytes` of Arrow data."""
    run: list[Append] = []
    size = 0
    for item in appends:
        if run and (
            size + item.nbytes > max_bytes
            or item.file is not None
            or run[0].file is not None
            or item.first_seq != run[-1].last_seq + 1
            or not item.schema.equals(run[0].schema, check_metadata=True)
        ):
            yield run
            run, size = [], 0
        run.append(item)
        size += item.nbytes
    if run:
        yield run


def _bounds(bounds: list[tuple[int | None, int | None]]) -> tuple[int | None, int | None]:
    """The earliest and the latest of several tables' (earliest, latest) times."""
    los = [lo for lo, _ in bounds if lo is not None]
    his = [hi for _, hi in bounds if hi is not None]
    return (min(los) if los else None, max(his) if his else None)


def _replayed(record: Record, first_seq: int | None = None) -> Append | None:
    """A journal record as an append (under `first_seq`, or its own number); a table in a
    file of its own keeps that file. None when that file is unreadable (logged)."""
    try:
        table = record.table()
    except OSError as exc:
        log.warning(
            "log journal: the table of seq %d (%d rows) is unreadable, not stored: %s",
            record.first_seq,
            record.rows,
            exc,
        )
        return None
    seq = record.first_seq if first_seq is None else first_seq
    if record.path is None:
        return Append.of(table, table.get_total_buffer_size(), seq)
    size = record.path.stat().st_size
    return Append.of(table, table.get_total_buffer_size(), seq, record.path.name, size)


def _settle(fut: concurrent.futures.Future[Any], error: BaseException) -> None:
    try:  # the waiter may have been cancelled meanwhile
        fut.set_exception(error)
    except concurrent.futures.InvalidStateError:
        pass
