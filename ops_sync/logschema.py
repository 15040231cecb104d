"""Log schemas: what an edge's rows may add to a pipeline's logs, and how they are stored.

Three levels, each with one rule:

- **A pipeline version** has one schema, fixed by its first batch stored and evolving only by
  new columns (`evolve`): a column keeps its type, and a batch may send it as another type of
  the same kind (integers, floats, text, timestamps; lists of them), stored as the version's
  type (`conform`). Any other change of type is a `BadRequest` naming the column, so no batch
  can make the version's logs unreadable.
- **A log table** (one Delta table) has one schema too. The versions of a pipeline share its
  table while they agree: a column in two versions has one type. A version whose column
  conflicts with the table (`fits` is false) starts the pipeline's next table, its schema
  *generation*. So a fleet whose pipeline versions keep their types (the usual case) has one
  table per pipeline, and nothing an edge sends can force a type onto another version's rows.
  Reads span a pipeline's tables and, where their types conflict, return the rows of the
  best-ranked tables that agree, with a warning (`agreeing`).
- **Storage types**: Delta has no unsigned integers, no float16, timestamps only in
  microseconds (UTC or without zone) and no empty structs, so `to_storage` widens unsigned
  integers (uint64 values past int64 are refused), float16 to float32 and timestamps to
  microseconds; reads cast back to the table's logical schema (`to_logical`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from edge.result import DROPPED, PARTITION, TIME_TYPE
from edge.result import DROPPED_TYPE as _DROPPED_TYPE
from ops_sync.errors import BadRequest

AUDIT = ("_epoch", "_seq")  # the edge's buffer epoch and sequence number of each row
PARTITION_COLUMNS = ("pipeline", "partition", "date")
STORED_TIME = pa.timestamp("us", tz="UTC")
_WIDER = {
    pa.uint8(): pa.int16(),
    pa.uint16(): pa.int32(),
    pa.uint32(): pa.int64(),
    pa.uint64(): pa.int64(),
    pa.float16(): pa.float32(),
    pa.date64(): pa.date32(),
}


def same_kind(a: pa.DataType, b: pa.DataType) -> bool:
    if a.equals(b) or pa.types.is_null(a) or pa.types.is_null(b):
        return True
    if pa.types.is_list(a) and pa.types.is_list(b):
        return same_kind(a.value_type, b.value_type)
    groups = (pa.types.is_integer, pa.types.is_floating, pa.types.is_string, pa.types.is_timestamp)
    return any(g(a) and g(b) for g in groups)


def evolve(stored: pa.Schema | None, batch: pa.Schema, version: str) -> pa.Schema | None:
    """A pipeline version's log schema after `batch` (None: unchanged). The first batch fixes
    it; later ones may add columns, and may send a column as another type of the same kind,
    which is stored as the version's type; any other change of type is a `BadRequest`."""
    if stored is None:
        return batch
    added = []
    for field in batch:
        index = stored.get_field_index(field.name)
        if index < 0:
            added.append(field)
        elif not same_kind(stored.field(index).type, field.type):
            raise BadRequest(
                f"batch column {field.name!r} is {field.type}; pipeline version {version} logs "
                f"it as {stored.field(index).type}"
            )
    return pa.schema([*stored, *added]) if added else None


def fits(table: pa.Schema, version: pa.Schema) -> bool:
    """Whether a version with schema `version` can write to a table with schema `table`."""
    for field in version:
        index = table.get_field_index(field.name)
        if index >= 0 and not table.field(index).type.equals(field.type):
            return False
    return True


def extend(table: pa.Schema, version: pa.Schema) -> pa.Schema | None:
    """`table` plus the columns of `version` it lacks (None: nothing to add)."""
    added = [f for f in version if table.get_field_index(f.name) < 0]
    return pa.schema([*table, *added]) if added else None


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
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


def storage_type(kind: pa.DataType, name: str) -> pa.DataType:
    """The type a Delta table holds a logical column of type `kind` in (see module doc)."""
    if pa.types.is_timestamp(kind):
        return pa.timestamp("us", tz="UTC" if kind.tz else None)
    if kind in _WIDER:
        return _WIDER[kind]
    if pa.types.is_list(kind):
        return pa.list_(storage_type(kind.value_type, name))
    if pa.types.is_struct(kind):
        if kind.num_fields == 0:
            raise BadRequest(
                f"batch column {name!r} is a struct without fields; logs cannot hold it"
            )
        members = [kind.field(i) for i in range(kind.num_fields)]
        return pa.struct([m.with_type(storage_type(m.type, name)) for m in members])
    return kind


def to_storage(table: pa.Table) -> pa.Table:
    """`table` in storage types; a value that does not fit (uint64 past int64, a timestamp past
    the microsecond range) is a `BadRequest` naming the column."""
    fields = [pa.field(f.name, storage_type(f.type, f.name)) for f in table.schema]
    for index, field in enumerate(fields):
        if field.type.equals(table.schema.field(index).type):
            continue
        try:
            column = table.column(index).cast(field.type)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise BadRequest(f"batch column {field.name!r} cannot be stored: {exc}") from exc
        table = table.set_column(index, field, column)
    return table


def to_logical(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Stored columns back in the logical types of `schema` (the table's); `time` in ms."""
    for index, field in enumerate(table.schema):
        if field.name == "time":
            want = TIME_TYPE
        elif field.name in schema.names:
            want = schema.field(field.name).type
        else:
            continue
        if not want.equals(field.type):
            column = table.column(index).cast(want, safe=False)
            table = table.set_column(index, pa.field(field.name, want), column)
    return table


def normalize(table: pa.Table, partition: str, epoch: str, seqs: np.ndarray) -> pa.Table:
    """Partition from the certificate, never null drops, audit columns, time in ms UTC."""
    time = table.column("time")
    if pa.types.is_integer(time.type):
        time = time.cast(pa.int64()).cast(TIME_TYPE)
    else:
        time = time.cast(TIME_TYPE)
    table = table.set_column(table.schema.get_field_index("time"), "time", time)
    n = table.num_rows
    table = put(table, PARTITION, _repeat(partition, n))
    if DROPPED in table.column_names:
        empty = pa.scalar([], _DROPPED_TYPE)
        dropped = pc.coalesce(table.column(DROPPED).cast(_DROPPED_TYPE), empty)
    else:
        dropped = pa.array([[]] * n, _DROPPED_TYPE)
    table = put(table, DROPPED, dropped)
    table = put(table, "_epoch", _repeat(epoch, n))
    return put(table, "_seq", pa.array(seqs, pa.int64()))


def with_partitions(table: pa.Table, pipeline: str, partition: str) -> pa.Table:
    """The table's partition columns: pipeline, partition (the edge) and the UTC date."""
    millis = table.column("time").cast(pa.int64()).to_numpy()
    days, index = np.unique(millis // 86_400_000, return_inverse=True)  # a batch spans few
    dates = pa.array(days.astype("datetime64[D]").astype(str), pa.string()).take(index)
    n = table.num_rows
    table = table.append_column("pipeline", _repeat(pipeline, n))
    table = table.append_column("partition", _repeat(partition, n))
    return table.append_column("date", dates)


def _repeat(text: str, n: int) -> pa.Array:
    return pa.repeat(pa.scalar(text, pa.string()), n)


def put(table: pa.Table, name: str, values: Any) -> pa.Table:
    index = table.schema.get_field_index(name)
    if index < 0:
        return table.append_column(name, values)
    return table.set_column(index, name, values)


def unify(a: pa.Schema, b: pa.Schema) -> pa.Schema:
    merged = pa.unify_schemas([a, b], promote_options="permissive")
    for field in a:  # unify_schemas promotes across kinds (e.g. list to string): not for us
        other = b.field(field.name) if field.name in b.names else None
        if other is not None and not same_kind(field.type, other.type):
            raise pa.ArrowTypeError(f"column {field.name}: {field.type} vs {other.type}")
    return merged


def agreeing(tables: list[pa.Table], versions_of: Any) -> tuple[list[pa.Table], set[str]]:
    """The tables, best-ranked first, whose schemas unify with those before them, and the
    pipeline versions (`versions_of(table)`) of the others."""
    kept: list[pa.Table] = []
    schema: pa.Schema | None = None
    left_out: set[str] = set()
    for table in tables:
        try:
            merged = table.schema if schema is None else unify(schema, table.schema)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            left_out.update(versions_of(table))
            continue
        schema = merged
        kept.append(table)
    return kept, left_out


def schema_bytes(schema: pa.Schema) -> bytes:
    return bytes(schema.serialize().to_pybytes())


def schema_of(data: bytes) -> pa.Schema:
    return pa.ipc.read_schema(pa.py_buffer(data))
