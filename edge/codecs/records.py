"""Result tables to pandas-records JSON, the seed's response and `pipeline.logs` shape.

JSON records carry the seed's edge fields (`check_failures`, `elapsed`, `model_name`,
`model_version`, `original_data`, `outputs`, `pipeline_name`, `shadow_data`, `time`) plus
`in`/`out`/`anomaly`/`metadata`, nested, or flat keys joined by `separator` when the client
asks (Wallaroo's SDK does). Two writers produce the same records: a per-row one with orjson
for small results and a columnar one for large ones (`edge.codecs.records_large`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
import pyarrow as pa

from edge import result
from edge.errors import BadInput
from edge.tensors import column_to_ndarray, numbers, single_array

SMALL = 64  # rows; below this the per-row JSON writer is faster
ORIGINAL_DATA_BYTES = 64 << 10  # a row's `original_data` JSON above this is written as null


@dataclass
class RecordInfo:
    """What the JSON records carry besides the table's columns (the seed's edge fields): per
    request (`elapsed`, the names), or per record (`check_failures`, `original_data`)."""

    pipeline_name: str
    model_name: str
    model_version: str
    elapsed: list[int]
    # per record: the validations that flagged its row (None: none flagged any row)
    check_failures: list[list[Any]] | None = None
    shadow_data: dict[str, Any] = field(default_factory=dict)
    # the request's input columns (names as received), each record's `original_data`
    inputs: pa.Table | None = None
    # per record (model_name, model_version), when an A/B split chose per row
    row_models: list[tuple[str, str]] | None = None

    def original_data(self, rows: int, shared: Any = None) -> list[bytes]:
        """Each record's `original_data`: its row of the input, as JSON text, or null past
        `ORIGINAL_DATA_BYTES` (the seed: null "if the input may be too long"); `shared`:
        the columnar writer's columns, whose JSON is reused for the same arrays."""
        inputs = self.inputs
        if inputs is None or inputs.num_columns == 0:
            return [b"null"] * rows
        if rows < SMALL:
            values = {name: _row_values(inputs.column(name)) for name in inputs.column_names}
            texts = [
                orjson.dumps({n: v[row] for n, v in values.items()}, option=_NUMPY)
                for row in range(rows)
            ]
        else:
            from edge.codecs.records_large import row_objects

            texts = row_objects(inputs, shared)
        if max(map(len, texts), default=0) <= ORIGINAL_DATA_BYTES:
            return texts  # the usual case: one pass in C
        return [t if len(t) <= ORIGINAL_DATA_BYTES else b"null" for t in texts]

    def model_of(self, row: int) -> tuple[str, str]:
        if self.row_models is not None:
            return self.row_models[row]
        return self.model_name, self.model_version


_NUMPY = orjson.OPT_SERIALIZE_NUMPY
_NO_FAILURES: list[Any] = []


def encode_records(table: pa.Table, info: RecordInfo | None, separator: str | None) -> bytes:
    """The result table as pandas-records JSON (see module docstring)."""
    if table.num_rows < SMALL:
        return _records_small(table, info, separator)
    from edge.codecs.records_large import records_large

    return records_large(table, info, separator)


def _type_name(arrow_type: pa.DataType) -> str:
    while (
        pa.types.is_list(arrow_type)
        or pa.types.is_large_list(arrow_type)
        or (pa.types.is_fixed_size_list(arrow_type))
    ):
        arrow_type = arrow_type.value_type
    if pa.types.is_floating(arrow_type):
        return "Float" if arrow_type.bit_width <= 32 else "Double"
    if pa.types.is_integer(arrow_type):
        return f"{'U' if pa.types.is_unsigned_integer(arrow_type) else ''}Int{arrow_type.bit_width}"
    if pa.types.is_boolean(arrow_type):
        return "Bool"
    return "String"


RecordKeys = dict[str, list[tuple[str, str | None]]]


def record_keys(names: list[str], separator: str | None) -> RecordKeys:
    """How a record keys its columns, for every writer (per row, columnar, the fast path):
    top-level key -> [(column, key inside it)], in order of first appearance. Nested by
    default ('in.tensor' -> 'in': {'tensor': ...}, the key inside None for top-level columns
    such as 'time'); with a separator, flat keys ('in_tensor' for '_', each key inside None)."""
    keys: RecordKeys = {}
    for name in names:
        shown = name
        if separator is not None and separator != "." and "." in name:
            shown = name.replace(".", separator, 1)
        head, dot, rest = shown.partition(".")
        if separator is None and dot and head in ("in", "out", "anomaly", "metadata"):
            keys.setdefault(head, []).append((name, rest))
        else:
            keys.setdefault(shown, []).append((name, None))
    return keys


def _output_columns(table: pa.Table) -> list[str]:
    return result.output_columns(table.column_names)


def _shadow_columns(table: pa.Table, info: RecordInfo) -> dict[str, list[str]]:
    return _shadow_of(table.column_names, info)


def _shadow_of(names: list[str], info: RecordInfo) -> dict[str, list[str]]:
    """Shadow challengers' `out_<model>.<output>` columns by model, for `shadow_data` (the
    seed: "in the same format as outputs"); a failed challenger's error is already there."""
    shadow: dict[str, list[str]] = {}
    for name in names:
        model = result.shadow_model(name)
        if model is not None and model not in info.shadow_data:
            shadow.setdefault(model, []).append(name)
    return shadow


def _records_small(table: pa.Table, info: RecordInfo | None, separator: str | None) -> bytes:
    columns = {name: _row_values(table.column(name)) for name in table.column_names}
    if result.MODEL_SPLIT in columns:  # the seed's list holding one object
        columns[result.MODEL_SPLIT] = [
            None if text is None else [orjson.Fragment(text)]
            for text in columns[result.MODEL_SPLIT]
        ]
    kinds = {field.name: _type_name(field.type) for field in table.schema}
    return records_of(columns, kinds, table.num_rows, info, separator)


def records_of(
    columns: dict[str, Any],
    kinds: dict[str, str],
    rows: int,
    info: RecordInfo | None,
    separator: str | None,
) -> bytes:
    """Records from per-row values (`columns[name][row]`: what `_row_values` makes of a column)
    and the seed's type names (`kinds`, for `outputs`): the one record layout of both paths."""
    names = list(columns)
    outputs = [(c, kinds[c]) for c in result.output_columns(names)]
    shadow = {}
    if info is not None:
        shadow = {m: [(c, kinds[c]) for c in cs] for m, cs in _shadow_of(names, info).items()}
    keys = record_keys(names, separator)
    records = []
    original = info.original_data(rows) if info is not None else []
    for row in range(rows):
        record: dict[str, Any] = {}
        if info is not None:
            shadow_data = info.shadow_data
            if shadow:
                shadow_data = {
                    **shadow_data,
                    **{
                        m: [{kind: _tensor_entry(columns[c][row])} for c, kind in cols]
                        for m, cols in shadow.items()
                    },
                }
            model_name, model_version = info.model_of(row)
            failures = info.check_failures
            record.update(
                check_failures=_NO_FAILURES if failures is None else failures[row],
                elapsed=info.elapsed,
                model_name=model_name,
                model_version=model_version,
                original_data=orjson.Fragment(original[row]),
                outputs=[{kind: _tensor_entry(columns[c][row])} for c, kind in outputs],
                pipeline_name=info.pipeline_name,
                shadow_data=shadow_data,
            )
        for key, members in keys.items():
            if members[0][1] is None:
                record[key] = columns[members[0][0]][row]
            else:
                record[key] = {sub: columns[name][row] for name, sub in members}
        records.append(record)
    return orjson.dumps(records, option=orjson.OPT_SERIALIZE_NUMPY)


def _row_values(column: pa.ChunkedArray) -> Any:
    """Per-row values for orjson: numeric tensors as one numpy array (orjson writes them
    natively, in their own precision), timestamps as epoch ms, the rest as Python objects."""
    array = single_array(column)
    kind = array.type
    if pa.types.is_timestamp(kind):
        return numbers(array.view(pa.int64())).tolist()
    inner = kind
    while pa.types.is_list(inner) or pa.types.is_fixed_size_list(inner):
        inner = inner.value_type
    if inner is not kind and (pa.types.is_integer(inner) or pa.types.is_floating(inner)):
        try:
            return column_to_ndarray(array, inner.to_pandas_dtype(), None, "")
        except BadInput:  # ragged or nulls: fall back to Python lists
            pass
    return array.to_pylist()


ENTRY_DATA = b'{"data":['  # an `outputs` entry's text up to its data (`_tensor_entry`)


def entry_end(dim: bytes) -> bytes:
    """An `outputs` entry's text after its data, `dim` its JSON (`_tensor_entry`)."""
    return b'],"dim":' + dim + b',"v":1}'


def _tensor_entry(value: Any) -> dict[str, Any]:
    if isinstance(value, np.ndarray):
        return {"data": value.reshape(-1), "dim": [1, *value.shape], "v": 1}
    if isinstance(value, list):
        dims = [1]
        probe: Any = value
        while isinstance(probe, list):
            dims.append(len(probe))
            probe = probe[0] if probe else None
        data = value
        while data and isinstance(data[0], list):
            data = [x for part in data for x in part]
        return {"data": data, "dim": dims, "v": 1}
    return {"data": [value], "dim": [1], "v": 1}
