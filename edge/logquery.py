"""Reading the log buffer's file: stored tables back to Arrow, the sync's pending batches, and
the seed's `pipeline.logs` query.

`edge.logbuffer.LogBuffer` owns the connections and the locking; a `Reader` works on one
connection inside one read snapshot and never writes. The stored format is one Arrow IPC
record-batch message per buffer row (zstd-compressed or raw), its schema kept once in `schemas`.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc
import zstandard

from edge.codecs import Shape, parse_shape
from edge.errors import BadInput, LogBufferError
from edge.journal import read_table
from edge.result import TIME_TYPE
from edge.tensors import single_array

_EPOCH_START = datetime(1970, 1, 1, tzinfo=UTC)

# Buffer rows holding a seq above :acked, found by primary-key range (no scan of synced rows).
UNSYNCED = (
    "first_seq >= COALESCE((SELECT MAX(first_seq) FROM batches WHERE first_seq <= :acked), 0)"
    " AND last_seq > :acked"
)


@dataclass
class Batch:
    """Unsynced rows for the sync: the sequence number of row i is `first_seq + i`."""

    epoch: str
    first_seq: int
    last_seq: int
    table: pa.Table


@dataclass
class _Group:
    """Consecutive tables that `pending` ships as one `Batch`."""

    first_seq: int
    next_seq: int
    tables: list[pa.Table]
    schema: pa.Schema


class Reader:
    """Decodes stored tables and answers the read paths, on one connection and snapshot."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        schemas: Mapping[int, pa.Schema],
        decompressor: zstandard.ZstdDecompressor,
        files: Path,
    ) -> None:
        self.conn = conn
        self.schemas = schemas  # committed schemas by id; others are read from the file
        self.decompressor = decompressor
        self.files = files  # where tables stored in files of their own are

    def table(self, schema_id: int, codec: str, body: bytes) -> pa.Table:
        schema = self.schemas.get(schema_id)
        if schema is None:  # new in the writer's open transaction, or from another process
            row = self.conn.execute("SELECT ipc FROM schemas WHERE id = ?", (schema_id,)).fetchone()
            if row is None:
                raise LogBufferError(f"log buffer row refers to unknown schema {schema_id}")
            schema = ipc.read_schema(pa.py_buffer(row[0]))
        if codec == "file":
            try:
                return read_table(self.files / bytes(body).decode())
            except OSError as exc:
                raise LogBufferError(f"log buffer table file is unreadable: {exc}") from exc
        if codec == "zstd":
            raw = self.decompressor.decompress(body)
        elif codec == "none":
            raw = body
        else:
            raise LogBufferError(f"log buffer row has unknown codec {codec!r}")
        # one record batch message, or several (small tables stored as journaled)
        messages = ipc.MessageReader.open_stream(pa.py_buffer(raw))
        batches = [ipc.read_record_batch(m, schema) for m in messages]
        return pa.Table.from_batches(batches, schema).combine_chunks()

    def acked_through(self) -> int:
        row = self.conn.execute("SELECT value FROM meta WHERE key = 'acked_through'").fetchone()
        return int(row[0]) if row else 0

    def pending(self, epoch: str, max_rows: int) -> list[Batch]:
        """Up to `max_rows` oldest unsynced rows in sequence order, consecutive tables joined
        while their schemas unify; a table bigger than what is left of `max_rows` is sliced."""
        if max_rows <= 0:
            return []
        acked = self.acked_through()
        groups: list[_Group] = []
        taken = 0
        rows = self.conn.execute(
            f"SELECT first_seq, schema_id, codec, body FROM batches WHERE {UNSYNCED}"
            " ORDER BY first_seq",
            {"acked": acked},
        )
        for first, schema_id, codec, body in rows:
            table = self.table(schema_id, codec, body)
            if first <= acked:  # a table acked in part (kept for on-device reads)
                table = table.slice(acked - first + 1)
                first = acked + 1
            table = table.slice(0, max_rows - taken)
            taken += table.num_rows
            group = groups[-1] if groups else None
            unified = unify(group.schema, table.schema) if group else None
            if group and unified is not None and group.next_seq == first:
                group.tables.append(table)
                group.schema = unified
                group.next_seq += table.num_rows
            else:
                groups.append(_Group(first, first + table.num_rows, [table], table.schema))
            if taken >= max_rows:
                break
        return [Batch(epoch, g.first_seq, g.next_seq - 1, concat(g.tables)) for g in groups]

    def logs(
        self, limit: int, start: datetime | int | None, end: datetime | int | None
    ) -> tuple[pa.Table, bool]:
        """Newest first without a range; chronological (insertion order) within [start, end].
        Returns at most `limit` rows and whether more exist."""
        if (start is None) != (end is None):
            raise ValueError("start and end must be given together, or neither")
        if limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        if start is None or end is None:
            cursor = self.conn.execute(
                "SELECT schema_id, codec, body FROM batches ORDER BY first_seq DESC"
            )
            tables = (_reversed(self.table(*row)) for row in cursor)
        else:
            lo, hi = to_ms(start), to_ms(end)
            cursor = self.conn.execute(
                "SELECT schema_id, codec, body FROM batches WHERE max_time >= ? AND min_time <= ?"
                " ORDER BY first_seq",
                (lo, hi),
            )
            tables = (_between(self.table(*row), lo, hi) for row in cursor)
        kept: list[pa.Table] = []
        got = 0
        for table in tables:
            if table.num_rows == 0:
                continue
            if got >= limit:
                return _result(kept), True
            kept.append(table.slice(0, limit - got))
            got += kept[-1].num_rows
            if kept[-1].num_rows < table.num_rows:
                return _result(kept), True
        return _result(kept), False

    def oldest_unsynced(self, acked: int) -> tuple[int | None, int | None]:
        """(seq, time in ms) of the oldest row not yet acked, or (None, None)."""
        row = self.conn.execute(
            f"SELECT first_seq, min_time FROM batches WHERE {UNSYNCED} ORDER BY first_seq LIMIT 1",
            {"acked": acked},
        ).fetchone()
        return (None, None) if row is None else (max(row[0], acked + 1), row[1])


def _reversed(table: pa.Table) -> pa.Table:
    return table.take(pa.array(np.arange(table.num_rows - 1, -1, -1)))


def _between(table: pa.Table, lo: int, hi: int) -> pa.Table:
    times = time_ms(table)
    if times is None:
        return table.slice(0, 0)
    return table.filter(pc.and_(pc.greater_equal(times, lo), pc.less_equal(times, hi)))


def _result(tables: list[pa.Table]) -> pa.Table:
    return concat(tables) if tables else pa.table({"time": pa.array([], TIME_TYPE)})


def time_ms(table: pa.Table) -> pa.ChunkedArray | None:
    """The `time` column as int64 epoch milliseconds, or None when there is none."""
    if "time" not in table.column_names:
        return None
    column = table.column("time")
    if pa.types.is_timestamp(column.type):
        if column.type.unit != "ms":
            column = column.cast(pa.timestamp("ms", tz=column.type.tz), safe=False)
        return column.cast(pa.int64())
    if pa.types.is_integer(column.type):
        return column.cast(pa.int64())
    return None


def time_bounds(rows: pa.RecordBatch | pa.Table) -> tuple[int | None, int | None]:
    """Earliest and latest `time` in epoch ms; (None, None) without one."""
    index = rows.schema.get_field_index("time")
    if index < 0:
        return None, None
    column = rows.column(index)
    if column.null_count == 0 and column.type.equals(TIME_TYPE) and len(column):
        # The common case, straight from the buffer: a compute kernel call costs ~50 us.
        chunk = single_array(column)
        v = np.frombuffer(chunk.buffers()[1], np.int64, count=len(chunk), offset=chunk.offset * 8)
        return int(v.min()), int(v.max())
    times = time_ms(pa.table(rows) if isinstance(rows, pa.RecordBatch) else rows)
    if times is None or times.null_count == len(times):
        return None, None
    bounds = pc.min_max(times)
    return bounds["min"].as_py(), bounds["max"].as_py()


def parse_time(text: str, name: str) -> int:
    """A query's ISO 8601 date-time (naive means UTC) or epoch milliseconds, as epoch ms;
    `BadInput` naming the parameter otherwise."""
    text = text.strip()
    if re.fullmatch(r"-?\d{1,15}", text):  # epoch ms, up to the year 33658
        return int(text)
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
        return to_ms(when)
    except (ValueError, OverflowError):
        raise BadInput(f"{name} {text!r} is not an ISO 8601 date-time or epoch ms") from None


def to_ms(value: datetime | int) -> int:
    """A datetime (naive means UTC) or epoch ms, as epoch ms."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return (value - _EPOCH_START) // timedelta(milliseconds=1)
    return int(value)


def unify(a: pa.Schema, b: pa.Schema) -> pa.Schema | None:
    """One schema for rows of both, or None when a column's types conflict."""
    if a.equals(b):
        return a
    try:
        return pa.unify_schemas([a, b], promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return None


def concat(tables: list[pa.Table]) -> pa.Table:
    """Rows of several pipeline versions in one table; missing columns become nulls."""
    if len(tables) == 1:
        return tables[0]
    try:
        return pa.concat_tables(tables, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise LogBufferError(
            "logs from pipeline versions with incompatible column types cannot be returned "
            f"together ({exc}); pass start and end to read one version's rows"
        ) from exc


MORE_LOGS = (
    "Warning: There are more logs available. "
    "Please set a larger limit or request a file using export_logs."
)
DROPPED_COLUMNS = (
    "The inference log is above the allowable limit and the following columns may have been "
    "suppressed for various rows in the logs: {columns}. To review the dropped columns for an "
    'individual inferences suppressed data, include dataset=["metadata"] in the log request.'
)


def log_warnings(rows: pa.Table, more: bool) -> list[str]:
    """The seed's `pipeline.logs` warnings for these rows (before dataset selection)."""
    warnings = [MORE_LOGS] if more else []
    if "metadata.dropped" in rows.column_names and rows.num_rows:
        column = rows.column("metadata.dropped").combine_chunks()
        dropped = sorted({name for names in column.to_pylist() if names for name in names})
        if dropped:
            warnings.append(DROPPED_COLUMNS.format(columns=", ".join(dropped)))
    return warnings


# ---------------------------------------------------------------------- the query


DEFAULT_LIMIT = 100
MAX_LIMIT = 100_000
TOO_LARGE = (
    "Log requests are limited to around 100k in size. For requests greater than 100k in size, "
    "use the Pipeline export_logs() method."
)


@dataclass(frozen=True)
class LogQuery:
    """The seed's `pipeline.logs` parameters, as both servers read them."""

    limit: int = DEFAULT_LIMIT
    start_ms: int | None = None
    end_ms: int | None = None
    shape: Shape = Shape()
    partition: str | None = None


def parse_log_query(
    params: Mapping[str, Sequence[str]], max_limit: int | None = MAX_LIMIT
) -> LogQuery:
    """Read `/logs` query parameters (the seed's names and the SDK's wire names): `limit`
    (default 100, 1 to `max_limit`), `start_datetime` and `end_datetime` (both or neither;
    ISO 8601 or epoch ms), the dataset shape, `partition`. Raises `BadInput` naming the
    parameter."""

    def one(*names: str) -> str | None:
        for name in names:
            if params.get(name):
                return params[name][-1]
        return None

    text = one("limit")
    limit = DEFAULT_LIMIT
    if text is not None:
        if not re.fullmatch(r"\s*\d{1,12}\s*", text):
            raise BadInput(f"limit must be a whole number, not {text!r}")
        limit = int(text)
    if limit < 1:
        raise BadInput("limit must be at least 1")
    if max_limit is not None and limit > max_limit:
        raise BadInput(TOO_LARGE)
    start, end = one("start_datetime", "start"), one("end_datetime", "end")
    if (start is None) != (end is None):
        raise BadInput("start_datetime and end_datetime go together: give both, or neither")
    start_ms = parse_time(start, "start_datetime") if start is not None else None
    end_ms = parse_time(end, "end_datetime") if end is not None else None
    if start_ms is not None and end_ms is not None and start_ms > end_ms:
        raise BadInput("start_datetime is after end_datetime")
    return LogQuery(
        limit, start_ms, end_ms, parse_shape(params), one("partition", "metadata.partition")
    )
