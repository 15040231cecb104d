"""Result tables to Arrow IPC files (the seed's Arrow answers and logs), in the seed's types.

The result table keeps its own types (`edge.result`: the log buffer's stored schemas and the
ops center's tables depend on them); what a client receives is cast here, at the boundary, to
the types the seed's Arrow examples show (`pyarrow.Table` printouts of `infer` and task logs):

    time               timestamp[ms]            (the table's timestamp[ms, tz=UTC], same instants)
    in.<col>           list<item: T> not null
    out.<name>         list<inner: T not null> not null   (shadow `out_<model>.*` alike)
    anomaly.count      int8                     (the table's uint32; publish allows 127 validations)
    out._model_split   list<struct<name, version, sha>>   (the seed's list of one object)

A field is `not null` only when the column holds no null; an inner level is `not null` only
when no value inside holds one. Fixed-size lists (a model's declared output schema) keep
their type. Columns the seed shows no Arrow type for (`anomaly.<validation>`, `metadata.*`)
keep the table's.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from edge import result

SEED_TIME_TYPE = pa.timestamp("ms")
SEED_ANOMALY_COUNT_TYPE = pa.int8()
SPLIT_TYPE = pa.list_(
    pa.struct([("name", pa.string()), ("version", pa.string()), ("sha", pa.string())])
)


def encode_arrow(table: pa.Table) -> bytes:
    return arrow_file(table).to_pybytes()


def arrow_file(table: pa.Table) -> pa.Buffer:
    """`encode_arrow` as Arrow's own buffer: a large answer is not copied once more into
    `bytes` (send it as `memoryview(buffer)`)."""
    table = seed_types(table)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue()


def seed_types(table: pa.Table) -> pa.Table:
    """`table` with the seed's Arrow types (see the module docstring)."""
    fields, columns = [], []
    for field, column in zip(table.schema, table.columns, strict=True):
        field, column = _seed_column(field, column)
        fields.append(field)
        columns.append(column)
    schema = pa.schema(fields, metadata=table.schema.metadata)
    if schema.equals(table.schema, check_metadata=True):
        return table
    return pa.Table.from_arrays(columns, schema=schema)


def _seed_column(field: pa.Field, column: pa.ChunkedArray) -> tuple[pa.Field, pa.ChunkedArray]:
    name, kind = field.name, field.type
    if name == result.TIME and pa.types.is_timestamp(kind):
        return field.with_type(SEED_TIME_TYPE), column.cast(SEED_TIME_TYPE)
    if name == result.ANOMALY_COUNT and pa.types.is_integer(kind):
        capped = pc.min_element_wise(column, result.scalar(result.MAX_VALIDATIONS, kind))
        return field.with_type(SEED_ANOMALY_COUNT_TYPE), capped.cast(SEED_ANOMALY_COUNT_TYPE)
    if name == result.MODEL_SPLIT and pa.types.is_string(kind):
        return field.with_type(SPLIT_TYPE), split_lists(column)
    if not _is_list(kind):
        return field, column
    if result.is_input(name):
        wanted = _lists(kind, "item", inner_nullable=True)
    elif result.is_output(name):
        wanted = _lists(kind, "inner", inner_nullable=_has_inner_nulls(column))
    else:
        return field, column
    if not wanted.equals(kind, check_metadata=True):
        column = column.cast(wanted)
    return pa.field(name, wanted, nullable=column.null_count > 0), column


def _is_list(kind: pa.DataType) -> bool:
    """Variable-size lists (fixed-size ones keep their type)."""
    return pa.types.is_list(kind) or pa.types.is_large_list(kind)


def _lists(kind: pa.DataType, child: str, inner_nullable: bool) -> pa.DataType:
    """Every list level as `list<child: ...>`; below the top, levels are `not null` when
    `inner_nullable` is False (the seed's `list<inner: float not null>`)."""
    value = kind.value_type
    if _is_list(value):
        value = _lists(value, child, inner_nullable)
    return pa.list_(pa.field(child, value, nullable=inner_nullable))


def _has_inner_nulls(column: pa.ChunkedArray) -> bool:
    for chunk in column.chunks:
        values = chunk
        while _is_list(values.type) or pa.types.is_fixed_size_list(values.type):
            values = values.flatten()
            if values.null_count:
                return True
    return False


def split_lists(column: pa.ChunkedArray) -> pa.Array:
    """The split's JSON text per row as a list of one {name, version, sha} object (built from
    buffers: `pa.array` of Python objects imports pandas)."""
    import json

    chosen = [None if text is None else json.loads(text) for text in column.to_pylist()]
    objects = [c for c in chosen if c is not None]
    struct = pa.StructArray.from_arrays(
        [result.texts([o.get(key) for o in objects]) for key in ("name", "version", "sha")],
        fields=list(SPLIT_TYPE.value_type),
    )
    offsets = np.cumsum([0] + [c is not None for c in chosen], dtype=np.int32)
    buffers = [result.validity(chosen), pa.py_buffer(offsets)]
    return pa.Array.from_buffers(SPLIT_TYPE, len(chosen), buffers, children=[struct])
