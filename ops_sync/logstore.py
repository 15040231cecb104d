"""The log store: edge batches in, exactly once, as Delta tables; time-ordered reads out.

Layout: one Delta table per pipeline at `<logs URL>/<pipeline>` (a local directory by default,
or `s3://bucket/prefix` with the standard AWS variables), partitioned by `pipeline`,
`partition` (the edge's name, from its certificate) and `date` (UTC, of `time`). Its columns
are the result table's (`edge.result`) plus two audit columns, `_epoch` and `_seq` (the edge's
buffer epoch and sequence number of the row). A pipeline version whose column types conflict
with the table's writes to the pipeline's next table, `<pipeline>.g2`, and so on
(`ops_sync.logschema` says why). Any engine reads a table through `deltalake`:
`DeltaTable(url).to_pyarrow_dataset()` into DuckDB, `polars.read_delta(url)`,
`DeltaTable(url).to_pandas()`.

What an edge may write is checked before anything is stored, each refusal a `BadRequest`
naming the column: result-table columns only (`ops_sync.protocol.check_rows`),
`metadata.pipeline_version` a version published for the edge's pipeline, and the version's
schema rules (`ops_sync.logschema`).

Many edges per commit: an upload's rows wait in its table's queue; one committer thread per
table and process takes everything queued (up to `max_group_rows`) into one Delta commit at
most every `commit_interval` seconds, and each upload is answered only after the commit that
holds it. Under load commits follow each other back to back, each carrying more uploads, so
the commit rate does not cap ingest. Exactly once across replicas: see `ops_sync.deltatable`
(the dedup mark per edge and epoch is in the same commit as the rows). The agent ships each
epoch in sequence order and acks by high-water mark, so a batch reaching below the mark
stores only its rows above it.

The read interface (for the logs API, and the dashboard and assays to come):
`read(pipeline, partition, start_ms, end_ms, limit)` (newest first, or chronological in a
range, with the seed's warnings), `scan(pipeline, partition, start_ms, end_ms, columns)` (a
range's rows of a few columns, file by file, for aggregates: the assays) and `tables(pipeline)`
(the Delta table URLs, for pushdown by time, partition and column in any engine).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from edge.logquery import RowFilter
from edge.result import PIPELINE_VERSION, TIME_TYPE
from ops_sync import logschema as ls
from ops_sync.compaction import compact
from ops_sync.deltatable import (
    Pending,
    TableReader,
    TableWriter,
    app_id,
    expire,
    probe,
)
from ops_sync.errors import BadRequest, StoreError
from ops_sync.logread import read_in_order
from ops_sync.metrics import Metrics
from ops_sync.protocol import check_rows
from ops_sync.store import Store

log = logging.getLogger("ops_sync.logstore")
S3_OPTIONS = {"timeout": "30s", "connect_timeout": "5s"}
WAIT_LIMIT = 120.0  # seconds an upload waits for its commit before it is answered 507


@dataclass(frozen=True)
class Ingested:
    stored: int
    duplicates: int


@dataclass(frozen=True)
class Upload:
    """A batch queued for a commit (`LogStore.submit`): its pending item and what the
    metrics need once it is stored."""

    item: Pending
    partition: str
    newest: int | None


def storage_options(url: str) -> dict[str, str]:
    """delta-rs options for `url`: finite timeouts; credentials come from the environment."""
    if url.startswith(("s3://", "s3a://")):
        options = dict(S3_OPTIONS)
        if os.environ.get("AWS_ALLOW_HTTP"):
            options["allow_http"] = os.environ["AWS_ALLOW_HTTP"]
        return options
    return {}


class LogStore:
    """Writes edge batches into the pipelines' Delta tables exactly once; reads them back."""

    def __init__(
        self,
        url: str | Path,
        store: Store,
        *,
        metrics: Metrics | None = None,
        commit_interval: float = 0.25,
        max_group_rows: int = 500_000,
    ) -> None:
        self.url = str(url).rstrip("/")
        if "://" not in self.url:
            Path(self.url).mkdir(parents=True, exist_ok=True)
            self.url = str(Path(self.url).resolve())
        self.options = storage_options(self.url)
        self.store = store
        self.metrics = metrics or Metrics()
        self.commit_interval = commit_interval
        self.max_group_rows = max_group_rows
        self._schemas: dict[tuple[str, str], tuple[pa.Schema, int, pa.Schema]] = {}
        self._writers: dict[str, _Committer] = {}
        self._readers: dict[str, TableReader] = {}
        self._floors: dict[tuple[str, str], int] = {}
        self._published: dict[str, set[str]] = {}  # pipeline -> versions seen published
        self._guard = threading.Lock()
        self._closed = False

    def table_url(self, pipeline: str, generation: int = 1) -> str:
        return f"{self.url}/{pipeline}" + ("" if generation == 1 else f".g{generation}")

    def tables(self, pipeline: str) -> list[str]:
        """The URLs of `pipeline`'s Delta tables, newest generation first."""
        generations = sorted(self.store.log_tables(pipeline), reverse=True)
        return [self.table_url(pipeline, g) for g in generations]

    def close(self) -> None:
        with self._guard:
            self._closed = True
            writers = list(self._writers.values())
        for writer in writers:
            writer.stop()

    # -- ingest ----------------------------------------------------------------------------
    def ingest(
        self, edge: dict[str, Any], epoch: str, first: int, last: int, table: pa.Table, now: float
    ) -> Ingested:
        """Store the rows of batch (epoch, first..last) not stored before. Blocking: returns
        once the commit holding them is durable."""
        upload = self.submit(edge, epoch, first, last, table, now)
        upload.item.done.wait(WAIT_LIMIT)
        return self.outcome(upload)

    def submit(
        self, edge: dict[str, Any], epoch: str, first: int, last: int, table: pa.Table, now: float
    ) -> Upload:
        """Check batch (epoch, first..last) and queue it for its table's next commit. The
        caller waits for `upload.item` (`done`, or `on_done` without holding a thread), then
        reads the `outcome`."""
        if table.num_rows != last - first + 1:
            raise BadRequest(
                f"the batch says sequence {first}..{last} ({last - first + 1} rows) but holds "
                f"{table.num_rows} rows"
            )
        partition, pipeline = edge["name"], edge["pipeline_name"]
        table = check_rows(table)
        versions = self._versions(table, pipeline)
        seqs = np.arange(first, last + 1, dtype=np.int64)
        table = ls.normalize(table, partition, epoch, seqs)
        generation = 0
        for version in versions:
            table, generation = self._agree(pipeline, version, table, now)
        # a batch of several versions goes to the table of the last one (sorted); a version
        # that does not fit that table's schema refuses: edges log one version at a time
        rows = ls.to_storage(ls.with_partitions(table, pipeline, partition))
        app = app_id(partition, epoch)
        item = Pending(app, edge["id"], first, last, rows, floor=self._floor(partition, epoch))
        newest = pc.max(table.column("time")).cast(pa.int64()).as_py()
        self._committer(self.table_url(pipeline, generation)).submit(item)
        return Upload(item, partition, newest)

    def outcome(self, upload: Upload) -> Ingested:
        """What the commit holding `upload` stored; a StoreError if it has not finished."""
        item = upload.item
        if not item.done.is_set():
            raise StoreError("the log commit did not finish in time; the edge will resend")
        if item.error is not None:
            raise item.error
        duplicates = item.last - item.first + 1 - item.stored
        self.metrics.ingested(upload.partition, item.stored, duplicates, upload.newest)
        return Ingested(item.stored, duplicates)

    def _floor(self, partition: str, epoch: str) -> int:
        """The Parquet store's mark for this epoch (0 if it had none), looked up once."""
        key = (partition, epoch)
        if key not in self._floors:
            self._floors[key] = self.store.legacy_high_water(partition, epoch) or 0
        return self._floors[key]

    def _versions(self, table: pa.Table, pipeline: str) -> list[str]:
        """The batch's pipeline versions, each one published for `pipeline`."""
        if PIPELINE_VERSION not in table.column_names:
            raise BadRequest(f"the batch has no {PIPELINE_VERSION} column")
        column = table.column(PIPELINE_VERSION)
        if not pa.types.is_string(column.type) or column.null_count:
            raise BadRequest(f"the batch's {PIPELINE_VERSION} must be text, never null")
        versions = sorted(pc.unique(column).to_pylist())
        known = self._published.get(pipeline, set())
        if not known.issuperset(versions):  # publishes are never deleted: ask only for news
            known = self._published[pipeline] = self.store.pipeline_versions(pipeline)
        unknown = [v for v in versions if v not in known]
        if unknown:
            raise BadRequest(
                f"the batch's {PIPELINE_VERSION} {unknown[0][:80]!r} is not a published version "
                f"of pipeline {pipeline!r}; register the publish first"
            )
        return versions

    def _agree(
        self, pipeline: str, version: str, table: pa.Table, now: float
    ) -> tuple[pa.Table, int]:
        """`table` in `version`'s types, and the generation of the table it goes to."""
        columns = pa.schema([f for f in table.schema if not f.name.startswith("_")])
        cached = self._schemas.get((pipeline, version))
        if cached is not None and ls.evolve(cached[0], columns, version) is None:
            return ls.conform(table, cached[0]), cached[1]
        agreed: list[tuple[pa.Schema, int, pa.Schema]] = []

        def agree(row: dict[str, Any] | None, tables: dict[int, bytes]) -> dict[str, Any] | None:
            old = None if row is None else ls.schema_of(row["schema"])
            merged = ls.evolve(old, columns, version)
            schema = merged or old or columns
            generation = int(row["generation"]) if row else max(tables, default=1)
            table_schema = ls.schema_of(tables[generation]) if generation in tables else None
            if table_schema is not None and not ls.fits(table_schema, schema):
                generation = max(tables) + 1  # conflicts with the table: the next generation
                table_schema = None
            grown = schema if table_schema is None else ls.extend(table_schema, schema)
            agreed.append((schema, generation, grown or table_schema or schema))
            if merged is None and row is not None and grown is None:
                return None
            return {
                "schema": ls.schema_bytes(schema),
                "generation": generation,
                "table_schema": ls.schema_bytes(grown or table_schema or schema),
            }

        self.store.agree_log_schema(pipeline, version, agree, now)
        self._schemas[(pipeline, version)] = agreed[-1]
        return ls.conform(table, agreed[-1][0]), agreed[-1][1]

    def _committer(self, url: str) -> _Committer:
        with self._guard:
            if self._closed:
                raise StoreError("the log store is closed")
            committer = self._writers.get(url)
            if committer is None:
                committer = self._writers[url] = _Committer(
                    TableWriter(url, self.options), self, self.commit_interval
                )
            return committer

    # -- reads -----------------------------------------------------------------------------
    def _reader(self, url: str) -> TableReader:
        with self._guard:
            reader = self._readers.get(url)
            if reader is None:
                reader = self._readers[url] = TableReader(url, self.options)
            return reader

    def _generations(
        self, pipeline: str, partition: str | None
    ) -> Iterator[tuple[TableReader, pa.Table, pa.Schema]]:
        """(reader, files of `partition` or all, logical schema) of each of `pipeline`'s
        tables that has files, newest generation first."""
        for generation, raw in sorted(self.store.log_tables(pipeline).items(), reverse=True):
            reader = self._reader(self.table_url(pipeline, generation))
            files = reader.files()
            if files is None or files.num_rows == 0:
                continue
            if partition is not None:
                files = files.filter(pc.equal(files.column("partition"), partition))
            yield reader, files, ls.schema_of(raw)

    def scan(
        self,
        pipeline: str,
        partition: str | None,
        start_ms: int,
        end_ms: int,
        columns: list[str],
    ) -> Iterator[pa.Table]:
        """`time` and `columns` of the rows with start_ms <= time < end_ms, one file at a
        time, in no particular order: only the files of `partition` (when given) whose time
        range meets the range are opened, and only those columns read from them (pushdown by
        partition, time and column), so an aggregate over a range never holds every row.
        Tables without one of `columns` are passed over."""
        for reader, files, logical in self._generations(pipeline, partition):
            if not set(columns) <= set(logical.names):
                continue
            mins = files.column("min_time").to_numpy(zero_copy_only=False)
            maxs = files.column("max_time").to_numpy(zero_copy_only=False)
            files = files.filter(pa.array((maxs >= start_ms) & (mins < end_ms)))
            for index in range(files.num_rows):
                for part in reader.read(files.slice(index, 1), ["time", *columns]):
                    if not set(columns) <= set(part.column_names):
                        continue  # a file from before the column was added
                    part = ls.to_logical(part, logical)
                    millis = part.column("time").cast(pa.int64())
                    keep = pc.and_(pc.greater_equal(millis, start_ms), pc.less(millis, end_ms))
                    yield part.filter(keep)

    def read(
        self,
        pipeline: str,
        partition: str | None,
        start_ms: int | None,
        end_ms: int | None,
        limit: int,
        where: RowFilter | None = None,
    ) -> tuple[pa.Table, bool, list[str]]:
        """Up to `limit` rows, whether more exist, and warnings: newest first, or, with a time
        range, oldest first; ties by buffer epoch and sequence. `where` keeps some rows of
        each file read (`LogQuery.row_filter`: a version, the anomaly filter). Only the files
        (or row groups of compacted files) that can hold the first `limit + 1` rows kept are
        read (`ops_sync.logread`). `time` stays timestamp[ms, UTC]."""
        chronological = start_ms is not None
        tables: list[pa.Table] = []
        for reader, files, logical in self._generations(pipeline, partition):

            def load(
                path: str, group: int | None, reader: TableReader = reader, logical: Any = logical
            ) -> pa.Table:
                part = ls.to_logical(reader.read_part(path, group), logical)
                if chronological:
                    millis = part.column("time").cast(pa.int64())
                    keep = pc.and_(
                        pc.greater_equal(millis, start_ms), pc.less_equal(millis, end_ms)
                    )
                    part = part.filter(keep)
                return part if where is None else where(part)

            tables += read_in_order(files, limit + 1, start_ms, end_ms, load, reader.row_groups)
        if not tables:
            return pa.table({"time": pa.array([], TIME_TYPE)}), False, []
        tables, left_out = ls.agreeing(tables, _versions_in)
        table = pa.concat_tables(tables, promote_options="permissive")
        order = "ascending" if chronological else "descending"
        keys = [("time", order), ("_epoch", order), ("_seq", order)]
        table = table.take(pc.sort_indices(table, sort_keys=keys)[: limit + 1])
        warnings = []
        if left_out:
            warnings.append(
                "Warning: rows of pipeline version(s) "
                f"{', '.join(sorted(left_out))} were left out: their column types differ from "
                "the newer rows'. Read them with start_datetime and end_datetime of their own."
            )
        rows = table.slice(0, limit)
        return rows, table.num_rows > limit, warnings

    # -- upkeep ----------------------------------------------------------------------------
    def compact(self, target_bytes: int = 16 << 20, min_files: int = 8) -> int:
        """Compact every table's small files per partition and day; files removed."""
        removed = 0
        for pipeline, generation in self.store.all_log_tables():
            removed += compact(
                self.table_url(pipeline, generation), self.options, target_bytes, min_files
            )
        self.metrics.compacted(removed)
        return removed

    def expire(self, retention_days: int | None, now: float, grace_hours: int = 1) -> int:
        """Delete partitions older than `retention_days` (if set), vacuum; files deleted."""
        before = None
        if retention_days:
            day = dt.datetime.fromtimestamp(now, dt.UTC).date() - dt.timedelta(days=retention_days)
            before = day.isoformat()
        deleted = 0
        for pipeline, generation in self.store.all_log_tables():
            deleted += expire(
                self.table_url(pipeline, generation), self.options, before, grace_hours
            )
        return deleted

    def check(self) -> None:
        """Raise `StoreError` unless the store's location answers now."""
        try:
            probe(self.url, self.options)
        except Exception as exc:
            raise StoreError(
                f"the log store {_shown(self.url)} does not answer: {type(exc).__name__}"
            ) from None


def _shown(url: str) -> str:
    return url.split("?", 1)[0]


def _versions_in(table: pa.Table) -> set[str]:
    if PIPELINE_VERSION not in table.column_names:
        return set()
    return set(map(str, pc.unique(table.column(PIPELINE_VERSION)).to_pylist()))


class _Committer:
    """The group commit of one table in this process (see the module doc)."""

    def __init__(self, writer: TableWriter, owner: LogStore, interval: float) -> None:
        self.writer, self.owner, self.interval = writer, owner, interval
        self._queue: list[Pending] = []
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="log-commit", daemon=True)
        self._thread.start()

    def submit(self, item: Pending) -> None:
        with self._cond:
            if self._stopping:
                raise StoreError("the log store is closing; the edge will resend")
            self._queue.append(item)
            self._cond.notify()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join(timeout=30)

    def _take(self) -> list[Pending]:
        with self._cond:
            while not self._queue and not self._stopping:
                self._cond.wait()
            group, rows = [], 0
            while self._queue and rows < self.owner.max_group_rows:
                item = self._queue.pop(0)
                group.append(item)
                rows += item.rows.num_rows
            return group

    def _run(self) -> None:
        last = 0.0
        while True:
            wait = last + self.interval - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            group = self._take()
            if not group:
                if self._stopping:
                    return
                continue
            last = time.monotonic()
            self._commit(group)

    def _commit(self, group: list[Pending]) -> None:
        new_columns = _has_new_columns(self.writer, group)
        try:
            seconds = self.writer.commit(group, new_columns)
            self.owner.metrics.committed(seconds, len(group), sum(i.stored for i in group))
            _touch(self.owner.store, group)
        except Exception as exc:
            if len(group) == 1:
                group[0].error = (
                    exc
                    if isinstance(exc, StoreError | BadRequest)
                    else StoreError(f"cannot store the log batch: {type(exc).__name__}: {exc}")
                )
            else:
                log.warning(
                    "group commit failed, retrying %d batches one by one: %s", len(group), exc
                )
                for item in group:
                    self._commit([item])
                return
        for item in group:
            item.finish()


def _has_new_columns(writer: TableWriter, group: list[Pending]) -> bool:
    names = writer.column_names()
    return names is not None and any(not set(i.rows.column_names) <= names for i in group)


def _touch(store: Store, group: list[Pending]) -> None:
    try:
        store.touch_many((i.edge_id for i in group), time.time())
    except StoreError as exc:  # last_seen is informational; the rows are committed
        log.warning("cannot record last_seen after a commit: %s", exc)
