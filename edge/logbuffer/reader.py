"""Reading the log buffer back: the sync's pending batches, the seed's `pipeline.logs` query,
and the oldest unsynced row for `stats`.

Reads use their own read-only connection, one snapshot at a time (`Reads.snapshot`), and never
block the writer; the writer's WAL checkpoint waits for `Reads.lock` instead of failing on a
reader's snapshot. Stored tables are decoded by `edge.logbuffer.codec.Decoder`.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from edge.errors import LogBufferError
from edge.logbuffer.codec import Decoder
from edge.logbuffer.schema import UNSYNCED, stored_schema
from edge.logquery import to_ms
from edge.result import TIME, TIME_TYPE, scalar, time_ms


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


class Reads:
    """The read-only connection, its lock and its decoder."""

    def __init__(self, path: Path, tables: Path, schemas: Mapping[int, pa.Schema]) -> None:
        self.path = path
        self.lock = threading.Lock()
        self._schemas = schemas  # the store's committed schemas by id
        self._decoder = Decoder(tables)
        self._conn: sqlite3.Connection | None = None

    def open(self) -> None:
        self._conn = sqlite3.connect(
            self.path.resolve().as_uri() + "?mode=ro",
            uri=True,
            isolation_level=None,
            check_same_thread=False,
            timeout=5.0,
        )

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    @property
    def is_open(self) -> bool:
        return self._conn is not None

    @contextmanager
    def snapshot(self) -> Iterator[Reader]:
        """One read snapshot on the read-only connection."""
        if self._conn is None:
            raise LogBufferError(f"log buffer {self.path} is not open")
        with self.lock:
            conn = self._conn
            conn.execute("BEGIN")
            try:
                yield Reader(conn, self._schemas, self._decoder)
            finally:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")


class Reader:
    """Answers the read paths on one connection and snapshot; never writes."""

    def __init__(
        self, conn: sqlite3.Connection, schemas: Mapping[int, pa.Schema], decoder: Decoder
    ) -> None:
        self.conn = conn
        self.schemas = schemas  # committed schemas by id; others are read from the file
        self.decoder = decoder

    def table(self, schema_id: int, codec: str, body: bytes) -> pa.Table:
        known = self.schemas.get(schema_id)
        if known is None:  # new in the writer's open transaction, or from another process
            known = stored_schema(self.conn, schema_id)
        return self.decoder.decode(known, codec, body)

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
        self,
        limit: int,
        start: datetime | int | None,
        end: datetime | int | None,
        where: Callable[[pa.Table], pa.Table] | None = None,
    ) -> tuple[pa.Table, bool]:
        """Newest first (reverse order of insertion) without a range; chronological (insertion
        order) within [start, end]. `where` keeps some rows of each stored table (the query's
        version and anomaly filter) before they count. Returns at most `limit` rows and
        whether more exist."""
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
            if where is not None:
                table = where(table)
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


def _reversed(table: pa.Table) -> pa.Table:
    order = np.arange(table.num_rows - 1, -1, -1, dtype=np.int64)
    return table.take(pa.Array.from_buffers(pa.int64(), len(order), [None, pa.py_buffer(order)]))


def _between(table: pa.Table, lo: int, hi: int) -> pa.Table:
    times = time_ms(table)
    if times is None:
        return table.slice(0, 0)
    low, high = scalar(lo, pa.int64()), scalar(hi, pa.int64())  # Python ints import pandas
    return table.filter(pc.and_(pc.greater_equal(times, low), pc.less_equal(times, high)))


def _result(tables: list[pa.Table]) -> pa.Table:
    return concat(tables) if tables else pa.Table.from_batches([], pa.schema([(TIME, TIME_TYPE)]))
