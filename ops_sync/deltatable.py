"""One Delta table of logs (delta-rs): grouped appends with exactly-once marks, file reads,
retention and vacuum (compaction is `ops_sync.compaction`). `ops_sync.logstore` decides what
goes in; this module knows Delta.

Exactly once: every (edge name, buffer epoch) is a Delta *application id*
(`<partition>/<epoch>`), and its *transaction version* is the highest sequence number stored.
A commit carries the rows and the new version of every application id it advances
(`CommitProperties(app_transactions=...)`), so the rows and the mark are one atomic commit.
Before writing, each batch is cut to the rows above its mark as of the snapshot the commit
is based on; if another writer (a replica) committed the same application id after that
snapshot, delta-rs refuses the commit (`CommitFailedError`, a concurrent transaction) and the
group is planned again on the newer snapshot. Commits of other application ids are appends
that do not conflict, so replicas commit side by side; on object storage, commits are
conditional puts (no lock service).

The marks of a snapshot: `DeltaTable.transaction_version` costs milliseconds per call, so
`TableWriter` keeps them in a dict that matches its handle's version: looked up once per
application id, then advanced by reading the `txn` actions of other writers' new commit
files (a writer knows its own commit's marks, so a commit right after its base costs no read).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from deltalake import (
    ColumnProperties,
    CommitProperties,
    DeltaTable,
    Transaction,
    WriterProperties,
    write_deltalake,
)
from deltalake.exceptions import CommitFailedError, SchemaMismatchError, TableNotFoundError
from deltalake.fs import DeltaStorageHandler

from edge.logquery import to_ms
from ops_sync.errors import BadRequest, StoreError
from ops_sync.logschema import PARTITION_COLUMNS

log = logging.getLogger("ops_sync.deltatable")
COMMIT_ATTEMPTS = 20
FOOTERS = 512  # Parquet footers a reader keeps (of the large files it read by row group)
# an upload's file (one per edge per commit, ~50 rows): statistics of `time` only, which the
# logs API prunes by (its file's range in the Delta log, its row groups' in the footer), and
# no dictionaries. Per-column statistics and dictionaries made a commit of 114 such files cost
# 0.86 ms of CPU a file against 0.50, and twice the Delta log. Compacted files have both in
# their footers (`ops_sync.compaction`); the Delta log has statistics of `time` only for every
# file, so other readers skip files by `time` (and row groups by any column).
SMALL_WRITES = WriterProperties(
    compression="SNAPPY",
    default_column_properties=ColumnProperties(statistics_enabled="NONE", dictionary_enabled=False),
    column_properties={"time": ColumnProperties(statistics_enabled="CHUNK")},
)


@dataclass
class Pending:
    """One edge batch waiting for a group commit; `done` is set once it has an outcome."""

    app_id: str
    edge_id: str
    first: int
    last: int
    rows: pa.Table  # storage types, audit and partition columns; `_seq` ascending
    floor: int = 0  # a high-water mark from before the Delta tables (legacy store)
    stored: int = 0
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)
    _callbacks: list[Callable[[], None]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def finish(self) -> None:
        """The outcome is in (`stored` or `error`): wake whoever waits for it."""
        with self._lock:
            self.done.set()
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback()

    def on_done(self, callback: Callable[[], None]) -> None:
        """Call `callback` (from the committer thread) once the outcome is in; at once if it
        already is."""
        with self._lock:
            if not self.done.is_set():
                self._callbacks.append(callback)
                return
        callback()


def app_id(partition: str, epoch: str) -> str:
    return f"{partition}/{epoch}"


class TableWriter:
    """Appends to one Delta table for one process: a handle, the marks of its snapshot."""

    def __init__(self, uri: str, options: dict[str, str]) -> None:
        self.uri, self.options = uri, options
        self._handle: DeltaTable | None = None
        self._marks: dict[str, int] = {}
        self._fs: pafs.FileSystem | None = None

    def _open(self) -> DeltaTable | None:
        if self._handle is None:
            try:
                self._handle = DeltaTable(self.uri, storage_options=self.options)
            except TableNotFoundError:
                return None
            self._marks.clear()
        return self._handle

    def _files(self) -> pafs.FileSystem:
        if self._fs is None:
            self._fs = filesystem(self.uri, self.options)
        return self._fs

    def _refresh(self) -> DeltaTable | None:
        handle = self._open()
        if handle is not None:
            before = handle.version()
            handle.update_incremental()
            self._advance(before, handle.version())
        return handle

    def _advance(self, before: int, after: int) -> None:
        """Apply the `txn` actions of commits before+1..after to the marks we hold."""
        for version in range(before + 1, after + 1):
            with self._files().open_input_stream(f"_delta_log/{version:020d}.json") as f:
                text = f.read().decode()
            for line in text.splitlines():
                if '"txn"' not in line:
                    continue
                txn = json.loads(line).get("txn")
                if txn and txn["appId"] in self._marks:
                    self._marks[txn["appId"]] = max(self._marks[txn["appId"]], txn["version"])

    def _create(self, schema: pa.Schema) -> None:
        """Create the table empty (no rows, no marks); another replica may win the race."""
        try:
            DeltaTable.create(
                self.uri,
                schema=schema,
                partition_by=list(PARTITION_COLUMNS),
                mode="ignore",
                storage_options=self.options,
            )
        except Exception as exc:
            if self._open() is None:
                raise StoreError(
                    f"cannot create log table {self.uri}: {_first_line(exc)}"
                ) from None
        self._open()

    def column_names(self) -> set[str] | None:
        handle = self._open()
        return None if handle is None else set(pa.schema(handle.schema().to_arrow()).names)

    def _mark(self, handle: DeltaTable | None, app: str) -> int:
        if app not in self._marks:
            version = handle.transaction_version(app) if handle is not None else None
            self._marks[app] = int(version) if version is not None else 0
        return self._marks[app]

    def commit(self, group: list[Pending], new_columns: bool) -> float:
        """Store each item's rows above its mark in one commit; seconds the commit took."""
        for attempt in range(COMMIT_ATTEMPTS):
            handle = self._refresh()
            parts: list[pa.Table] = []
            marks: dict[str, int] = {}
            for item in sorted(group, key=lambda i: (i.app_id, i.first)):
                mark = max(marks.get(item.app_id, self._mark(handle, item.app_id)), item.floor)
                rows = item.rows
                if item.first <= mark:
                    rows = rows.filter(pc.greater(rows.column("_seq"), mark))
                item.stored = rows.num_rows
                if rows.num_rows:
                    parts.append(rows)
                marks[item.app_id] = max(mark, item.last)
            if not parts:
                return 0.0
            data = pa.concat_tables(parts, promote_options="permissive")
            if handle is None:  # a commit needs a snapshot to be checked against: make one
                self._create(data.schema)
                continue
            started = time.perf_counter()
            before = handle.version()
            try:
                write_deltalake(
                    handle,
                    data,
                    mode="append",
                    partition_by=list(PARTITION_COLUMNS),
                    schema_mode="merge" if new_columns else None,
                    writer_properties=SMALL_WRITES,
                    commit_properties=CommitProperties(
                        app_transactions=[Transaction(a, v) for a, v in marks.items()]
                    ),
                )
            except CommitFailedError as exc:  # another replica's commit of one of our ids
                log.info("commit conflict table=%s attempt=%d: %s", self.uri, attempt + 1, exc)
                time.sleep(0.01 * (attempt + 1))
                continue
            except (SchemaMismatchError, pa.ArrowException, ValueError, TypeError) as exc:
                raise BadRequest(f"the batch cannot be stored: {_first_line(exc)}") from None
            except Exception as exc:
                raise StoreError(f"log table {self.uri}: {_first_line(exc)}") from None
            if handle.version() != before + 1:  # another writer's commits came between
                self._advance(before, handle.version())
            for a, v in marks.items():
                self._marks[a] = max(self._marks.get(a, 0), v)
            return time.perf_counter() - started
        raise StoreError(f"log table {self.uri}: {COMMIT_ATTEMPTS} commit conflicts in a row")


class TableReader:
    """Reads one Delta table's files: the newest snapshot's file list, then only the files a
    query needs (partition pruning and per-file time ranges from the Delta log)."""

    def __init__(self, uri: str, options: dict[str, str]) -> None:
        self.uri, self.options = uri, options
        self._lock = threading.Lock()
        self._handle: DeltaTable | None = None
        self._files: tuple[int, pa.Table] | None = None
        self._fs: pafs.FileSystem | None = None
        self._footers: dict[str, pq.FileMetaData] = {}  # path -> footer, oldest first
        self._footer_lock = threading.Lock()

    def files(self) -> pa.Table | None:
        """path, rows, min_time, max_time (ms), partition, date of every file; None if the
        table does not exist yet."""
        with self._lock:
            if self._handle is None:
                try:
                    self._handle = DeltaTable(self.uri, storage_options=self.options)
                except TableNotFoundError:
                    return None
            try:
                self._handle.update_incremental()
            except Exception as exc:
                raise StoreError(f"log table {self.uri}: {_first_line(exc)}") from None
            version = self._handle.version()
            if self._files is None or self._files[0] != version:
                self._files = (version, file_list(self._handle))
            return self._files[1]

    def read(self, files: pa.Table, columns: list[str] | None = None) -> list[pa.Table]:
        """Each file's rows (without the partition columns), in `files` order; with
        `columns`, only those of them the file has."""
        fs = self._filesystem()
        out = []
        for path in files.column("path").to_pylist():
            try:
                if columns is None:
                    out.append(pq.read_table(path, filesystem=fs))
                    continue
                with fs.open_input_file(path) as source:
                    parquet = pq.ParquetFile(source)
                    names = set(parquet.schema_arrow.names)
                    out.append(parquet.read(columns=[c for c in columns if c in names]))
            except OSError as exc:
                raise StoreError(f"cannot read log file {path}: {exc}") from exc
        return out

    def row_groups(self, path: str) -> list[tuple[int, int, int, int]] | None:
        """(index, rows, min time, max time in ms) of each row group of one file, from its
        footer (kept for `read_part`); None when a row group has no statistics of `time`."""
        meta = self._footer(path)
        names = [meta.schema.column(i).path for i in range(meta.num_columns)]
        if "time" not in names:
            return None
        column = names.index("time")
        groups = []
        for index in range(meta.num_row_groups):
            group = meta.row_group(index)
            stats = group.column(column).statistics
            if stats is None or not stats.has_min_max:
                return None
            groups.append((index, group.num_rows, _millis(stats.min), _millis(stats.max)))
        return groups

    def read_part(self, path: str, row_group: int | None) -> pa.Table:
        """One file, or one of its row groups (without the partition columns)."""
        try:
            with self._filesystem().open_input_file(path) as source:
                if row_group is None:
                    return pq.read_table(source)
                parquet = pq.ParquetFile(source, metadata=self._footers.get(path))
                return parquet.read_row_group(row_group)
        except OSError as exc:
            raise StoreError(f"cannot read log file {path}: {exc}") from exc

    def _footer(self, path: str) -> pq.FileMetaData:
        """A file's Parquet footer, read once (Delta files never change; a few hundred kept)."""
        meta = self._footers.get(path)
        if meta is None:
            try:
                with self._filesystem().open_input_file(path) as source:
                    meta = pq.ParquetFile(source).metadata
            except OSError as exc:
                raise StoreError(f"cannot read log file {path}: {exc}") from exc
            with self._footer_lock:  # readers run on several worker threads
                if len(self._footers) >= FOOTERS:
                    self._footers.pop(next(iter(self._footers)))
                self._footers[path] = meta
        return meta

    def _filesystem(self) -> pafs.FileSystem:
        if self._fs is None:
            self._fs = filesystem(self.uri, self.options)
        return self._fs

    def schema(self) -> pa.Schema | None:
        with self._lock:
            if self._handle is None:
                return None
            return pa.schema(self._handle.schema().to_arrow())


def filesystem(uri: str, options: dict[str, str]) -> pafs.FileSystem:
    """The table's store as a pyarrow file system (paths relative to the table's root)."""
    return pafs.PyFileSystem(DeltaStorageHandler(uri, options))


def file_list(handle: DeltaTable) -> pa.Table:
    """path (as in the Delta log), rows, bytes, min_time, max_time (ms), pipeline, partition
    and date of every file of the handle's snapshot."""
    actions = pa.table(handle.get_add_actions(flatten=True))
    n = actions.num_rows

    def column(name: str, kind: pa.DataType) -> pa.ChunkedArray | pa.Array:
        if name in actions.column_names:
            return actions.column(name).cast(kind)
        return pa.nulls(n, kind)

    return pa.table(
        {
            "path": actions.column("path"),
            "rows": column("num_records", pa.int64()),
            "bytes": column("size_bytes", pa.int64()),
            "min_time": column("min.time", pa.timestamp("ms", tz="UTC")).cast(pa.int64()),
            "max_time": column("max.time", pa.timestamp("ms", tz="UTC")).cast(pa.int64()),
            "pipeline": column("partition.pipeline", pa.string()),
            "partition": column("partition.partition", pa.string()),
            "date": column("partition.date", pa.string()),
        }
    )


def expire(uri: str, options: dict[str, str], before_date: str | None, grace_hours: int) -> int:
    """Delete the partitions dated before `before_date` (if given), then vacuum files removed
    more than `grace_hours` ago; files deleted."""
    try:
        handle = DeltaTable(uri, storage_options=options)
    except TableNotFoundError:
        return 0
    if before_date is not None:
        try:
            handle.delete(f"date < '{before_date}'")
        except CommitFailedError as exc:
            log.info("retention delete conflict table=%s: %s", uri, exc)
    deleted = handle.vacuum(
        retention_hours=grace_hours, enforce_retention_duration=False, dry_run=False
    )
    return len(deleted)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"[:300]


def probe(uri: str, options: dict[str, str]) -> None:
    """List the store's root once (raises if it does not answer)."""
    fs = filesystem(uri, options)
    fs.get_file_info(pafs.FileSelector("", allow_not_found=True))


def _millis(value: object) -> int:
    """A `time` statistic (a timestamp, or int64 epoch ms) as epoch ms."""
    if isinstance(value, dt.datetime):
        return to_ms(value)
    assert isinstance(value, int)
    return value
