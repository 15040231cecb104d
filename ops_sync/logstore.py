"""The Parquet log store: edge batches in, exactly once; time-ordered reads out.

Layout (hive-style, so `pyarrow.dataset.dataset(root, partitioning="hive")` and DuckDB's
`read_parquet('<root>/**/*.parquet', hive_partitioning=true)` read it as is):

    <root>/pipeline=<p>/partition=<edge>/date=<YYYY-MM-DD>/<epoch>-<first>-<last>-<rand>.parquet

Each file holds the edge's result-table columns (docs/CONTRACTS.md) with `metadata.partition`
set from the edge's certificate, `metadata.dropped` never null, and two audit columns `_epoch`
and `_seq` (the edge's buffer epoch and sequence number of the row).

What an edge may write (checked before anything is stored, each refusal a `BadRequest` naming
the column): result-table columns only (`ops_sync.protocol.check_rows`); `metadata.pipeline_version`
a version published for the edge's pipeline; and per pipeline version one schema, fixed by the
first batch stored and evolving only by new columns: a column keeps its type, so no batch can
make the version's logs unreadable. Versions may differ: a logs read that spans versions whose
types conflict returns the rows of the first-ranked versions that agree, and says so.

Exactly once: under a per-edge lock, the rows whose sequence numbers are already recorded in
`synced_ranges` are dropped, the rest are written to `<data>/tmp/`, their ranges and files are
committed in one SQLite transaction, and only then are the files renamed into the dataset. A
crash before the commit leaves only tmp files (deleted at the next start); a crash after it
leaves committed tmp files (renamed at the next start). Readers never see uncommitted rows.
"""

from __future__ import annotations

import os
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from edge.journal import fsync_path
from edge.result import DROPPED, PARTITION, PIPELINE_VERSION, TIME_TYPE
from edge.result import DROPPED_TYPE as _DROPPED_TYPE
from ops_sync.errors import BadRequest, StoreError
from ops_sync.protocol import check_rows
from ops_sync.store import Store


@dataclass(frozen=True)
class Ingested:
    stored: int
    duplicates: int


class LogStore:
    """Writes edge batches as Parquet exactly once and reads them back in time order."""

    def __init__(self, root: Path, tmp: Path, store: Store) -> None:
        self.root = root
        self.tmp = tmp
        self.store = store
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        root.mkdir(parents=True, exist_ok=True)
        tmp.mkdir(parents=True, exist_ok=True)
        self._recover()

    def _recover(self) -> None:
        committed = {Path(p).name: Path(p) for p in self.store.file_paths()}
        for leftover in self.tmp.glob("*.parquet"):
            final = committed.get(leftover.name)
            if final is None:
                leftover.unlink()  # written, never committed: the edge will resend it
            else:
                final.parent.mkdir(parents=True, exist_ok=True)
                os.replace(leftover, final)

    def _lock(self, partition: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(partition, threading.Lock())

    def ingest(
        self,
        edge: dict[str, Any],
        epoch: str,
        first: int,
        last: int,
        table: pa.Table,
        now: float,
    ) -> Ingested:
        """Store the rows of batch (epoch, first..last) not stored before. Blocking."""
        if table.num_rows != last - first + 1:
            raise BadRequest(
                f"the batch says sequence {first}..{last} ({last - first + 1} rows) but holds "
                f"{table.num_rows} rows"
            )
        partition, pipeline = edge["name"], edge["pipeline_name"]
        table = check_rows(table)
        versions = self._versions(table, pipeline)
        with self._lock(partition):
            covered = np.zeros(table.num_rows, dtype=bool)
            for a, b in self.store.synced_overlaps(partition, epoch, first, last):
                covered[max(a, first) - first : min(b, last) - first + 1] = True
            keep = ~covered
            fresh = int(keep.sum())
            if fresh == 0:
                return Ingested(0, table.num_rows)
            seqs = np.arange(first, last + 1, dtype=np.int64)
            if fresh < table.num_rows:
                table, seqs = table.filter(pa.array(keep)), seqs[keep]
            table = _normalize(table, partition, epoch, seqs)
            for version in versions:
                table = self._agree(pipeline, version, table, now)
            written = self._write(table, pipeline, partition, epoch)
            try:
                self.store.commit_batch(
                    edge["id"], partition, epoch, _runs(seqs), [f for f, _ in written], now
                )
            except BaseException:
                for _, tmp in written:
                    tmp.unlink(missing_ok=True)
                raise
            for record, tmp in written:
                final = Path(record["path"])
                final.parent.mkdir(parents=True, exist_ok=True)
                os.replace(tmp, final)
        return Ingested(fresh, last - first + 1 - fresh)

    def _versions(self, table: pa.Table, pipeline: str) -> list[str]:
        """The batch's pipeline versions, each one published for `pipeline`."""
        if PIPELINE_VERSION not in table.column_names:
            raise BadRequest(f"the batch has no {PIPELINE_VERSION} column")
        column = table.column(PIPELINE_VERSION)
        if not pa.types.is_string(column.type) or column.null_count:
            raise BadRequest(f"the batch's {PIPELINE_VERSION} must be text, never null")
        versions = sorted(pc.unique(column).to_pylist())
        known = self.store.pipeline_versions(pipeline)
        unknown = [v for v in versions if v not in known]
        if unknown:
            raise BadRequest(
                f"the batch's {PIPELINE_VERSION} {unknown[0][:80]!r} is not a published version "
                f"of pipeline {pipeline!r}; register the publish first"
            )
        return versions

    def _agree(self, pipeline: str, version: str, table: pa.Table, now: float) -> pa.Table:
        """`table` with its columns in the types `version` logs them as (see `evolve`)."""
        columns = pa.schema([f for f in table.schema if not f.name.startswith("_")])
        agreed: list[pa.Schema] = []

        def agree(stored: bytes | None) -> bytes | None:
            old = None if stored is None else pa.ipc.read_schema(pa.py_buffer(stored))
            merged = evolve(old, columns, version)
            agreed.append(merged or old or columns)
            return None if merged is None else merged.serialize().to_pybytes()

        self.store.agree_log_schema(pipeline, version, agree, now)
        return _conform(table, agreed[0])

    def _write(
        self, table: pa.Table, pipeline: str, partition: str, epoch: str
    ) -> list[tuple[dict[str, Any], Path]]:
        millis = table.column("time").cast(pa.int64()).to_numpy()
        days = millis // 86_400_000
        written = []
        for day in np.unique(days):
            part = table if len(np.unique(days)) == 1 else table.filter(pa.array(days == day))
            seq = part.column("_seq")
            span = f"{pc.min(seq).as_py()}-{pc.max(seq).as_py()}"
            name = f"{epoch}-{span}-{secrets.token_hex(4)}.parquet"
            date = np.datetime64(int(day), "D").astype(str)
            final = self.root / f"pipeline={pipeline}" / f"partition={partition}" / f"date={date}"
            tmp = self.tmp / name
            part_ms = millis[days == day]
            try:
                pq.write_table(
                    part,
                    tmp,
                    compression="zstd",
                    compression_level=1,
                    use_dictionary=_dictionary_columns(part.schema),
                )
                fsync_path(tmp)
                fsync_path(tmp.parent)  # the file's name is durable too, before any ack
            except OSError as exc:
                tmp.unlink(missing_ok=True)
                raise StoreError(f"cannot write log file {tmp}: {exc}") from exc
            record = {
                "pipeline": pipeline,
                "rows": part.num_rows,
                "min_time": int(part_ms.min()),
                "max_time": int(part_ms.max()),
                "path": str(final / name),
            }
            written.append((record, tmp))
        return written

    def read(
        self,
        pipeline: str,
        partition: str | None,
        start_ms: int | None,
        end_ms: int | None,
        limit: int,
    ) -> tuple[pa.Table, bool, list[str]]:
        """Up to `limit` rows, whether more exist, and warnings: newest first, or, with a time
        range, oldest first; ties in insertion order. `time` stays timestamp[ms, UTC]."""
        files = self.store.log_files(pipeline, partition, start_ms, end_ms)
        chronological = start_ms is not None
        files = _covering(files, limit + 1, start_ms, end_ms)
        files.sort(key=(lambda f: f["min_time"]) if chronological else (lambda f: -f["max_time"]))
        tables = []
        for f in files:
            try:
                part = pq.ParquetFile(f["path"]).read()
            except OSError as exc:
                raise StoreError(f"cannot read log file {f['path']}: {exc}") from exc
            if chronological:
                millis = part.column("time").cast(pa.int64())
                part = part.filter(
                    pc.and_(pc.greater_equal(millis, start_ms), pc.less_equal(millis, end_ms))
                )
            tables.append(
                part.append_column(
                    "_file", pa.array(np.full(part.num_rows, f["id"]))
                ).append_column("_row", pa.array(np.arange(part.num_rows)))
            )
        if not tables:
            return pa.table({"time": pa.array([], TIME_TYPE)}), False, []
        tables, left_out = _agreeing(tables)
        table = pa.concat_tables(tables, promote_options="permissive")
        order = "ascending" if chronological else "descending"
        keys = [("time", order), ("_file", order), ("_row", order)]
        table = table.take(pc.sort_indices(table, sort_keys=keys)[: limit + 1])
        warnings = []
        if left_out:
            warnings.append(
                "Warning: rows of pipeline version(s) "
                f"{', '.join(sorted(left_out))} were left out: their column types differ from "
                "the newer rows'. Read them with start_datetime and end_datetime of their own."
            )
        rows = table.drop_columns(["_file", "_row"]).slice(0, limit)
        return rows, table.num_rows > limit, warnings


def _agreeing(tables: list[pa.Table]) -> tuple[list[pa.Table], set[str]]:
    """The tables, best-ranked first, whose schemas unify with those before them, and the
    pipeline versions of the others."""
    kept: list[pa.Table] = []
    schema: pa.Schema | None = None
    left_out: set[str] = set()
    for table in tables:
        try:
            merged = table.schema if schema is None else _unify(schema, table.schema)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            if PIPELINE_VERSION in table.column_names:
                left_out.update(map(str, pc.unique(table.column(PIPELINE_VERSION)).to_pylist()))
            continue
        schema = merged
        kept.append(table)
    return kept, left_out


def _unify(a: pa.Schema, b: pa.Schema) -> pa.Schema:
    merged = pa.unify_schemas([a, b], promote_options="permissive")
    for field in a:  # unify_schemas promotes across kinds (e.g. list to string): not for us
        other = b.field(field.name) if field.name in b.names else None
        if other is not None and not _same_kind(field.type, other.type):
            raise pa.ArrowTypeError(f"column {field.name}: {field.type} vs {other.type}")
    return merged


def _same_kind(a: pa.DataType, b: pa.DataType) -> bool:
    if a.equals(b) or pa.types.is_null(a) or pa.types.is_null(b):
        return True
    if pa.types.is_list(a) and pa.types.is_list(b):
        return _same_kind(a.value_type, b.value_type)
    groups = (pa.types.is_integer, pa.types.is_floating, pa.types.is_string, pa.types.is_timestamp)
    return any(g(a) and g(b) for g in groups)


def evolve(stored: pa.Schema | None, batch: pa.Schema, version: str) -> pa.Schema | None:
    """A pipeline version's log schema after `batch` (None: unchanged). The first batch fixes
    it; later ones may add columns, and may send a column as another type of the same kind
    (integers, floats, text, timestamps; lists of them), which is stored as the version's
    type; any other change of type is a `BadRequest` naming the column."""
    if stored is None:
        return batch
    added = []
    for field in batch:
        index = stored.get_field_index(field.name)
        if index < 0:
            added.append(field)
        elif not _same_kind(stored.field(index).type, field.type):
            raise BadRequest(
                f"batch column {field.name!r} is {field.type}; pipeline version {version} logs "
                f"it as {stored.field(index).type}"
            )
    return pa.schema([*stored, *added]) if added else None


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """`table`'s columns cast to `schema`'s types (same kind; values that do not fit refuse)."""
    for index, field in enumerate(table.schema):
        want = schema.field(field.name).type if field.name in schema.names else field.type
        if not want.equals(field.type):
            try:
                column = table.column(index).cast(want)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise BadRequest(f"batch column {field.name!r} does not fit {want}: {exc}") from exc
            table = table.set_column(index, pa.field(field.name, want), column)
    return table


def _normalize(table: pa.Table, partition: str, epoch: str, seqs: np.ndarray) -> pa.Table:
    """Partition from the certificate, never null drops, audit columns, time in ms UTC."""
    if "time" not in table.column_names:
        raise BadRequest("the batch has no `time` column")
    time = table.column("time")
    if pa.types.is_integer(time.type):
        time = time.cast(pa.int64()).cast(TIME_TYPE)
    elif pa.types.is_timestamp(time.type):
        time = time.cast(TIME_TYPE)
    else:
        raise BadRequest(f"the batch's `time` column is {time.type}, not a timestamp")
    table = table.set_column(table.schema.get_field_index("time"), "time", time)
    n = table.num_rows
    values = pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, np.int32)), pa.array([partition]))
    table = _put(table, PARTITION, values.cast(pa.string()))
    if DROPPED in table.column_names:
        empty = pa.scalar([], _DROPPED_TYPE)
        dropped = pc.coalesce(table.column(DROPPED).cast(_DROPPED_TYPE), empty)
    else:
        dropped = pa.array([[]] * n, _DROPPED_TYPE)
    table = _put(table, DROPPED, dropped)
    epochs = pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, np.int32)), pa.array([epoch]))
    table = _put(table, "_epoch", epochs)
    return _put(table, "_seq", pa.array(seqs))


def _dictionary_columns(schema: pa.Schema) -> list[str]:
    """Dictionary-encode the repetitive string columns only: trying it on float tensors costs
    half the write time and saves nothing."""
    return [
        f.name
        for f in schema
        if pa.types.is_string(f.type) or pa.types.is_dictionary(f.type) or f.name == "time"
    ]


def _put(table: pa.Table, name: str, values: Any) -> pa.Table:
    index = table.schema.get_field_index(name)
    if index < 0:
        return table.append_column(name, values)
    return table.set_column(index, name, values)


def _runs(seqs: np.ndarray) -> list[tuple[int, int]]:
    """Contiguous runs of a sorted array of sequence numbers, as (first, last) pairs."""
    breaks = np.flatnonzero(np.diff(seqs) != 1)
    starts = np.concatenate(([0], breaks + 1))
    ends = np.concatenate((breaks, [len(seqs) - 1]))
    return [(int(seqs[a]), int(seqs[b])) for a, b in zip(starts, ends, strict=True)]


def _covering(
    files: list[dict[str, Any]], need: int, start_ms: int | None, end_ms: int | None
) -> list[dict[str, Any]]:
    """The files that can hold the first `need` rows in the requested order.

    Take files from the front of that order until they surely hold `need` rows (with a time
    range, only files wholly inside it count); every row that can rank in the first `need` then
    lies before the cutoff those files reach, so keep every file reaching past it.
    """
    chronological = start_ms is not None and end_ms is not None
    if chronological:
        ranked = sorted(files, key=lambda f: f["min_time"])
    else:
        ranked = sorted(files, key=lambda f: -f["max_time"])
    total, chosen = 0, 0
    while chosen < len(ranked) and total < need:
        f = ranked[chosen]
        inside = not chronological or (start_ms <= f["min_time"] and f["max_time"] <= end_ms)
        total += f["rows"] if inside else 0
        chosen += 1
    if total < need:
        return files
    if chronological:
        cutoff = max(f["max_time"] for f in ranked[:chosen])
        return [f for f in files if f["min_time"] <= cutoff]
    cutoff = min(f["min_time"] for f in ranked[:chosen])
    return [f for f in files if f["max_time"] >= cutoff]
