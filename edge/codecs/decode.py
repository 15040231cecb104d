"""Request bodies to Arrow tables: pandas-records JSON (a list of row objects) or an Arrow IPC
file (or stream), checked by the seed's input rules (a bad body is a `BadInput` naming where)."""

from __future__ import annotations

import gc
from typing import Any

import numpy as np
import orjson
import pyarrow as pa

from edge.codecs.tensor_text import tensor_rows
from edge.errors import BadInput
from edge.result import texts
from edge.tensors import ndarray_to_column

ORJSON_BODY = 4096  # bodies below this may take the small requests' path (`edge.fastpath`)
NO_GC_BODY = 64 << 10  # bodies from this size are parsed with the garbage collector paused


def decode_records(body: bytes) -> pa.Table:
    """pandas-records JSON (`DataFrame.to_json(orient="records")`) to an Arrow table."""
    head = body.lstrip()[:1]
    if head != b"[":
        raise BadInput(
            "body is not pandas-records JSON: expected a JSON list of row objects, like "
            '[{"tensor": [1.0, 2.0]}]'
        )
    if len(body) < NO_GC_BODY:
        return _parse(body)
    table = tensor_rows(body)  # one flat numeric tensor per row: no Python object per number
    if table is not None:
        return table
    if not gc.isenabled():
        return _parse(body)
    # A large body makes tens of thousands of lists and dicts (no cycles among them): the
    # collector would walk them, and now and then the whole heap, for nothing.
    gc.disable()
    try:
        return _parse(body)
    finally:
        gc.enable()


def _parse(body: bytes) -> pa.Table:
    try:
        rows = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadInput(f"malformed JSON at byte {exc.pos}: {exc.msg}") from exc
    return _rows_to_table(rows)


def _rows_to_table(rows: Any) -> pa.Table:
    if not isinstance(rows, list) or not rows:
        raise BadInput("the request holds no rows (expected a non-empty JSON list of objects)")
    first = rows[0]
    if isinstance(first, dict) and all(type(r) is dict and r.keys() == first.keys() for r in rows):
        # every row has the same keys (the usual request): a column is one comprehension
        same: dict[str, list[Any]] = {key: [row[key] for row in rows] for key in first}
        return pa.table({name: _column(name, values) for name, values in same.items()})
    columns: dict[str, list[Any]] = {}
    for index, row in enumerate(rows):
        if not isinstance(row, dict):
            raise BadInput(f"row {index} is not a JSON object")
        for key in row:
            if key not in columns:
                columns[key] = [None] * index
        for key, values in columns.items():
            values.append(row.get(key))
    return pa.table({name: _column(name, values) for name, values in columns.items()})


def _column(name: str, values: list[Any]) -> pa.Array:
    """One JSON column as Arrow; numeric tensors go through numpy (much faster than
    pyarrow's inference on nested Python lists), everything else through `pa.array`."""
    first = values[0]
    if _numeric_start(first) and None in values:
        # rows without a value: a null (the model step says whether it takes one)
        _check_shapes(name, [v for v in values if v is not None])
    elif _numeric_start(first):
        try:
            tensor = np.asarray(values)
        except ValueError as exc:  # numpy refuses inhomogeneous shapes
            raise BadInput(
                f"column {name!r}: ragged tensor (rows or nested lists differ in length); "
                f"every row must have the same shape"
            ) from exc
        if tensor.dtype.kind in "iuf":
            return ndarray_to_column(tensor)
        if tensor.dtype.kind in "US" and tensor.ndim > 1:
            raise BadInput(f"column {name!r}: mixed element types (numbers and text) in a tensor")
    if isinstance(first, str) and all(type(v) is str for v in values):
        return texts(values)  # an id or a key: `pa.array` would import pandas (~48 MiB)
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise BadInput(f"column {name!r}: mixed element types or ragged nesting ({exc})") from exc


def _check_shapes(name: str, values: list[Any]) -> None:
    try:
        np.asarray(values)
    except ValueError as exc:  # numpy refuses inhomogeneous shapes
        raise BadInput(
            f"column {name!r}: ragged tensor (rows or nested lists differ in length); "
            f"every row must have the same shape"
        ) from exc


def numeric_tensor(values: list[Any]) -> np.ndarray | None:
    """A JSON column as the numeric tensor the decoder makes of it (`_column`), shaped
    (rows, *dims), or None when the decoder would not (text, bools, nulls, ragged rows)."""
    if not _numeric_start(values[0]):
        return None
    try:
        tensor = np.asarray(values)
    except ValueError:
        return None
    return tensor if tensor.dtype.kind in "iuf" else None


def _numeric_start(first: Any) -> bool:
    return isinstance(first, list | int | float) and not isinstance(first, bool)


def decode_arrow(body: bytes) -> pa.Table:
    """An Arrow IPC file (or stream) to a table, checked in full: a damaged body is a 400."""
    buffer = pa.py_buffer(body)
    table = None
    problem: Exception | None = None
    for opener in (pa.ipc.open_file, pa.ipc.open_stream):
        try:
            table = opener(buffer).read_all()
            table.validate(full=True)
            break
        except (pa.ArrowException, OSError, ValueError, UnicodeDecodeError) as exc:
            table, problem = None, exc
    if table is None:
        raise BadInput(f"body is not a valid Arrow IPC file or stream: {problem}")
    names = table.column_names
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise BadInput(f"the Arrow table names column(s) {twice} more than once")
    return table
