"""The facade: `LogBuffer`, what the server, the CLI and the sync agent use.

Every answered row is journaled before the answer (`log`, or `submit` on the event loop) and
stored in one SQLite file by the writer thread moments later, until the sync ships and acks
it (`pending`, `ack`); `query` reads it back for `GET /logs`. Sequence numbers: the epoch is a
random id made when the file is created; numbers start at 1 per epoch, are given when a table
is journaled, and are never reused (the `last_seq` high-water mark is written with the rows).
No accepted row is dropped silently: a full queue or disk is an error for the caller, and
past `max_bytes` what the cap drops is counted (`stats()["dropped"]`).

Where each part lives (in the data's order):

    batcher.py    the request side: one journal record per turn of the event loop
    journal.py    the write-ahead journal; its lock and the sequence numbers
    spares.py     large tables' files, made ahead of the requests that fill them
    records.py    the journal's record format and the file helpers
    inbox.py      the writer's bounded queue (backpressure)
    writer.py     the writer thread: group commit, fsync order, replay after a crash
    codec.py      a buffer row's bytes, encode and decode
    store.py      the SQLite file's state and transactions, the large tables' folder
    transaction.py  one write: rows in, out and rewritten, the cap applied, acks
    retention.py  the cap's policy, pure
    schema.py     the file's tables, migrations, opening and the corrupt set-aside
    reader.py     pending batches, the logs query
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow as pa

from edge.errors import LogBufferError, LogBufferFull
from edge.ipc_template import EncodedBatch
from edge.logbuffer import schema
from edge.logbuffer.batcher import INLINE_ROWS, Rows, TurnBatcher
from edge.logbuffer.codec import pack_constants
from edge.logbuffer.inbox import Append, Inbox
from edge.logbuffer.journal import Journal, SeqRange, Written
from edge.logbuffer.reader import Batch, Reads
from edge.logbuffer.store import Store
from edge.logbuffer.writer import Writer
from edge.result import time_bounds

log = logging.getLogger("edge.logbuffer")

DEFAULT_MAX_BYTES = 256 << 20
# a larger table is journaled into a file of its own, which SQLite names instead of holding it
LARGE_TABLE_BYTES = 256 << 10


class LogBuffer:
    """The appliance's inference log: log after each answer, read, ship, ack."""

    def __init__(
        self,
        path: Path | str,
        max_bytes: int = DEFAULT_MAX_BYTES,
        *,
        keep_synced_bytes: int = 0,
        max_queue: int = 4096,
        max_queue_bytes: int = 64 << 20,
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
        `linger`: how long the writer gathers tables into one transaction. `fsync_interval`:
        how often the journal and SQLite reach the disk (power-loss window); 0: `submit`
        waits for the journal's fsync before it returns."""
        self.path = Path(path)
        self.max_bytes = max_bytes
        self._store = Store(
            self.path,
            max_bytes=max_bytes,
            keep_synced_bytes=keep_synced_bytes,
            wal_checkpoint_bytes=wal_checkpoint_bytes,
            journal_size_limit=journal_size_limit,
        )
        self._journal = Journal(
            Path(f"{self.path}.journal"), self._store.tables, journal_segment_bytes
        )
        self._inbox = Inbox(max_queue, max_queue_bytes)
        self._reads = Reads(self.path, self._store.tables, self._store.schemas)
        self._writer = Writer(
            self._store,
            self._journal,
            self._inbox,
            self._reads.lock,
            linger=linger,
            fsync_interval=fsync_interval,
            group_limit=group_limit,
            commit_timeout=commit_timeout,
        )
        self._sync_each = fsync_interval == 0
        self._batcher = TurnBatcher(self._log, self._journal.sync if self._sync_each else None)

    @property
    def syncs_each_answer(self) -> bool:
        """Whether an answer waits for the journal's fsync (`fsync_interval` 0)."""
        return self._sync_each

    @property
    def epoch(self) -> str:
        return self._store.epoch

    def start(self) -> None:
        """Open (or create) the file, set a corrupt one aside, store what the journal holds
        beyond it, start the writer thread."""
        if self._writer.running:
            raise LogBufferError("log buffer already started")
        self._store.open()
        try:
            self._writer.recover()
            self._reads.open()
        except BaseException:
            self._store.close()
            raise
        self._writer.start()
        st = self._store.state
        log.info(
            "log buffer ready path=%s epoch=%s last_seq=%d rows=%d bytes=%d max_bytes=%d",
            self.path,
            self.epoch,
            st.last_seq,
            st.rows,
            st.bytes,
            self.max_bytes,
        )

    def close(self, timeout: float = 30.0) -> None:
        """Store what is queued, checkpoint the WAL, close the files. Safe to call twice."""
        if not self._writer.running:
            return
        if not self._writer.stop(timeout):
            log.error("log buffer writer did not stop within %.0fs path=%s", timeout, self.path)
            return
        self._journal.close()
        self._reads.close()
        self._store.close()

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
        return self._log(table, 1)

    def log_answered(self, table: pa.Table) -> SeqRange:
        """`log` for a worker thread that answers once this returns: with `fsync_interval`
        0 it also waits for the journal's fsync, as `submit` does."""
        seqs = self._log(table, 1)
        if self._sync_each:
            self._journal.sync()
        return seqs

    def submit(self, result: pa.Table | Rows) -> asyncio.Future[SeqRange]:
        """`log` for the event loop: the small results of one turn (tables, or the small
        requests' numpy rows) are journaled as one record (`edge.logbuffer.batcher`)."""
        return self._batcher.submit(result)

    def log_now(self, result: pa.Table | Rows) -> SeqRange | None:
        """`log` for a request alone in flight, on the event loop: journaled at once, or
        None when it must be `submit`ted (`TurnBatcher.now`)."""
        return self._batcher.now(result)

    def flush(self) -> None:
        """Wait until every row logged so far is in SQLite (for readers that read back at
        once). Raises the error that keeps them out (they wait in the journal)."""
        if not self._writer.running:
            raise LogBufferError(f"log buffer {self.path} is not running")
        target = self._journal.last_seq
        self._writer.call(lambda: None)
        if self._store.state.last_seq < target:
            raise self._writer.last_error or LogBufferError(
                f"log buffer {self.path}: rows up to seq {target} are not stored yet"
            )

    def ack(self, epoch: str, last_seq: int) -> None:
        """The ops center holds every row of `epoch` up to `last_seq`: stop offering them and
        delete them (or keep `keep_synced_bytes` of them for `query`). Blocks for one commit;
        from async code call it through `asyncio.to_thread`."""
        if epoch != self.epoch:
            log.warning(
                "log buffer ack ignored: epoch=%s is not this buffer's %s", epoch, self.epoch
            )
            return
        self._writer.call(lambda: self._store.transact(lambda txn: txn.ack(last_seq)))

    def _log(self, table: pa.Table | EncodedBatch, requests: int) -> SeqRange:
        """`log` for a table, or a turn's rows as one message, that answers `requests`
        callers (the `rejected` counter counts them)."""
        if not self._writer.running:
            raise LogBufferError(f"log buffer {self.path} is not running")
        if isinstance(table, EncodedBatch):
            encoded = table
            payload: Any = self._journal.encode(encoded)
            nbytes = payload.length

            def queue(written: Written) -> None:
                schema, rows, first = encoded.schema, encoded.rows, written.seqs.first
                messages, bounds = written.batches, encoded.bounds
                self._inbox.add(
                    Append(None, schema, rows, nbytes, first, None, 0, messages, bounds)
                )

            return self._append(payload, nbytes, queue, requests)
        if table.num_rows == 0:
            return SeqRange(self.epoch, 0, -1)  # an empty range: nothing stored
        # A table of a few rows is encoded for the journal first and its encoded size
        # decides; a larger one is measured, and a large one gets a file of its own.
        payload = None
        nbytes = table.get_total_buffer_size() if table.num_rows > INLINE_ROWS else 0
        if nbytes <= LARGE_TABLE_BYTES:
            payload = self._journal.encode(table)
            nbytes = payload.length
        bounds = None
        if nbytes > LARGE_TABLE_BYTES:
            payload = pack_constants(table, fresh=True)
            # Its file is the stored copy: the writer's queue keeps only what its row needs
            # (not the table), and counts the file's bytes, which are not under the cap yet.
            nbytes = payload.nbytes
            bounds = time_bounds(table)

        def queue_table(written: Written) -> None:
            first, file, size = written.seqs.first, written.file, written.file_bytes
            if file is not None and bounds is not None:
                schema, rows = table.schema, table.num_rows
                self._inbox.add(Append(None, schema, rows, nbytes, first, file, size, None, bounds))
                return
            self._inbox.add(Append.of(table, nbytes, first, file, size, written.batches))

        return self._append(payload, nbytes, queue_table, requests)

    def _append(
        self, payload: Any, nbytes: int, queue: Callable[[Written], None], requests: int
    ) -> SeqRange:
        written = self._journal.append(payload, lambda: self._inbox.has_room(nbytes), queue)
        if written is None:
            self._writer.count("rejected", requests)
            raise LogBufferFull(
                f"log buffer {self.path}: the writer queue is full ({len(self._inbox)} tables "
                "waiting); the rows were not stored, retry shortly"
            )
        return written.seqs

    # ---------------------------------------------------------------- reading

    def pending(self, max_rows: int) -> list[Batch]:
        """Up to `max_rows` oldest unsynced rows, in sequence order. Consecutive tables are
        concatenated into one `Batch` while their schemas unify; a table larger than what is
        left of `max_rows` is sliced (acking part of a table is fine)."""
        with self._reads.snapshot() as reader:
            return reader.pending(self.epoch, max_rows)

    def query(
        self,
        limit: int = 100,
        start: datetime | int | None = None,
        end: datetime | int | None = None,
        where: Callable[[pa.Table], pa.Table] | None = None,
    ) -> tuple[pa.Table, bool]:
        """The seed's `pipeline.logs`: newest first (reverse order of insertion) without a
        range; with `start` and `end` (both or neither, else ValueError; datetimes, naive =
        UTC, or epoch ms; inclusive), chronological. `where` filters each stored table's rows
        before they count (`LogQuery.row_filter`). Returns the rows and whether more rows
        than `limit` exist. Rows logged before the call are included once SQLite can take
        them."""
        if self._writer.running:
            self._writer.call(lambda: None)
        with self._reads.snapshot() as reader:
            return reader.logs(limit, start, end, where)

    def stats(self) -> dict[str, Any]:
        """Counters for `/metrics`, health and the logs API."""
        st = self._store.state  # replaced whole on commit, never changed in place
        counters, last_error = self._writer.report()
        oldest_seq, oldest_time = None, None
        if self._reads.is_open:
            with self._reads.snapshot() as reader:
                oldest_seq, oldest_time = reader.oldest_unsynced(st.acked_through)
        return {
            "path": str(self.path),
            "epoch": self.epoch,
            "created_at": self._store.created_at,
            "schema_version": schema.SCHEMA_VERSION,
            "rows": st.rows,
            "batches": st.batches,
            "bytes": st.bytes,
            "max_bytes": self.max_bytes,
            "file_bytes": schema.size(self.path),
            "wal_bytes": schema.size(schema.wal(self.path)),
            "last_seq": st.last_seq,
            "acked_through": st.acked_through,
            "unsynced_rows": st.unsynced_rows,
            "oldest_unsynced": oldest_time,
            "oldest_unsynced_seq": oldest_seq,
            "dropped": dict(st.drops),
            "queue": len(self._inbox),
            "journal_files": self._journal.files,
            "set_aside": list(self._store.set_aside),
            "last_error": None if last_error is None else str(last_error),
            **counters,
        }
