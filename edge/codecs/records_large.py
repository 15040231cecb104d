"""The columnar pandas-records writer for large results: the same bytes as the per-row writer
(`records.records_of`), without a Python object per cell.

Each column becomes one JSON fragment per row in one pass: a numeric tensor column is written
by one `orjson.dumps` of its whole numpy array, then cut at the row boundaries (numbers hold
no brackets or commas, so the cut is exact), or, for the inputs of a body read by
`tensor_text.tensor_rows`, cut from the body's own text when that is what orjson writes; a
column holding one value in every row (the per-request `metadata.*`) is written once. A
record is then constant text and fragments, joined. Anything else (text, nulls, ragged lists,
tensors of three or more dimensions) is written row by row with orjson, as the per-row writer
does.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import orjson
import pyarrow as pa

from edge import result
from edge.codecs.records import (
    ENTRY_DATA,
    RecordInfo,
    _row_values,
    _shadow_of,
    _tensor_entry,
    _type_name,
    entry_end,
    record_keys,
)
from edge.codecs.tensor_text import rows_text
from edge.tensors import numbers, single_array

_NUMPY = orjson.OPT_SERIALIZE_NUMPY
Fragments = list[bytes] | bytes  # one per row, or one for every row
Pieces = list[Fragments]  # in order; constant text between per-row fragments
Shared = dict[tuple[Any, ...], "_Column"]  # columns by array (`_shared`)


def records_large(table: pa.Table, info: RecordInfo | None, separator: str | None) -> bytes:
    rows = table.num_rows
    shared: Shared = {}
    values = {field.name: _shared(table.column(field.name), rows, shared) for field in table.schema}
    if result.MODEL_SPLIT in values:
        values[result.MODEL_SPLIT] = _SplitColumn(table.column(result.MODEL_SPLIT), rows)
    pieces: list[Fragments] = []
    text: list[bytes] = [b"{"]  # constant text gathered until the next per-row piece

    def put(*parts: Fragments) -> None:
        for piece in parts:
            if isinstance(piece, bytes):
                text.append(piece)
            else:
                pieces.append(b"".join(text))
                text.clear()
                pieces.append(piece)

    if info is not None:
        put(b'"check_failures":')
        put(_per_record(info.check_failures, []))
        put(b',"elapsed":' + orjson.dumps(info.elapsed))
        if info.row_models is None:
            put(b"," + _key_value("model_name", info.model_name) + b",")
            put(_key_value("model_version", info.model_version) + b",")
        else:
            put(b',"model_name":', [orjson.dumps(m[0]) for m in info.row_models])
            put(b',"model_version":', [orjson.dumps(m[1]) for m in info.row_models], b",")
        # `in.*` and the input rows hold the same arrays: their JSON is written once
        put(b'"original_data":', info.original_data(rows, shared), b',"outputs":[')
        kinds = {field.name: _type_name(field.type) for field in table.schema}
        _entries(put, [(n, kinds[n]) for n in result.output_columns(table.column_names)], values)
        put(b"]," + _key_value("pipeline_name", info.pipeline_name) + b',"shadow_data":')
        shadow = _shadow_of(table.column_names, info)
        if not shadow:
            put(orjson.dumps(info.shadow_data))
        else:
            put(orjson.dumps(info.shadow_data)[:-1] + (b"," if info.shadow_data else b""))
            for i, (model, names) in enumerate(shadow.items()):
                put((b"," if i else b"") + orjson.dumps(model) + b":[")
                _entries(put, [(n, kinds[n]) for n in names], values)
                put(b"]")
            put(b"}")
        put(b",")
    _columns(put, table.column_names, values, separator)
    put(b"}")
    pieces.append(b"".join(text))
    return _joined(pieces, rows)


def _columns(put: Any, names: list[str], values: dict[str, _Column], separator: str | None) -> None:
    """The columns as the per-row writer keys them: grouped into `in`/`out`/... objects in
    order of first appearance, or flat keys joined by `separator`."""
    for i, (key, members) in enumerate(record_keys(names, separator).items()):
        put((b"," if i else b"") + orjson.dumps(key) + b":")
        if members[0][1] is None:
            put(*values[members[0][0]].json())
            continue
        put(b"{")
        for j, (name, sub) in enumerate(members):
            put((b"," if j else b"") + orjson.dumps(sub) + b":")
            put(*values[name].json())
        put(b"}")


def _entries(put: Any, outputs: list[tuple[str, str]], values: dict[str, _Column]) -> None:
    """`outputs` entries: {"<Type>": {"data": [...], "dim": [1, ...], "v": 1}} per column."""
    for i, (name, kind) in enumerate(outputs):
        put((b"," if i else b"") + b'{"' + kind.encode() + b'":')
        column = values[name]
        entry = column.entry()
        if entry is None:
            put(column.entries_per_row())
        else:
            data, dim = entry
            put(ENTRY_DATA, data, entry_end(dim))
        put(b"}")


def _per_record(values: list[Any] | None, default: Any) -> Fragments:
    """One JSON fragment per record of `values` (None: `default` for every record); rows
    sharing one object share its text."""
    if values is None:
        return orjson.dumps(default)
    texts: dict[int, bytes] = {}
    out = []
    for value in values:
        text = texts.get(id(value))
        if text is None:
            text = texts[id(value)] = orjson.dumps(value)
        out.append(text)
    return out


def row_objects(table: pa.Table, shared: Shared | None = None) -> list[bytes]:
    """Each row of `table` as one JSON object (`{"<column>": value, ...}`), with the values
    written as the per-row writer writes them (columns met before in `shared` reused)."""
    rows = table.num_rows
    shared = {} if shared is None else shared
    pieces: list[Fragments] = []
    text = [b"{"]
    for i, name in enumerate(table.column_names):
        text.append((b"," if i else b"") + orjson.dumps(name) + b":")
        for piece in _shared(table.column(name), rows, shared).json():
            if isinstance(piece, bytes):
                text.append(piece)
            else:
                pieces.append(b"".join(text))
                text = []
                pieces.append(piece)
    text.append(b"}")
    pieces.append(b"".join(text))
    return list(_assemble(pieces, rows))


def _key_value(key: str, value: Any) -> bytes:
    return orjson.dumps(key) + b":" + orjson.dumps(value)


def _assemble(pieces: list[Fragments], rows: int) -> Iterator[bytes]:
    """Record per row: the pieces in order, constants repeated."""
    return map(b"".join, _per_row(pieces, rows))


def _joined(pieces: list[Fragments], rows: int) -> bytes:
    """`[record,record,...]` in one join: each record's pieces in order (constants
    repeated), a comma after each record's last (constant) piece but the last record's."""
    tail = pieces[-1]
    assert isinstance(tail, bytes)
    if rows == 0:
        return b"[]"
    flat = [b"["]
    flat.extend(itertools.chain.from_iterable(_per_row([*pieces[:-1], tail + b","], rows)))
    flat[-1] = tail + b"]"
    return b"".join(flat)


def _per_row(pieces: list[Fragments], rows: int) -> Iterator[tuple[bytes, ...]]:
    """Each row's pieces, in order: a constant repeated, a per-row fragment its row's."""
    streams: list[Iterable[bytes]] = [
        itertools.repeat(p, rows) if isinstance(p, bytes) else p for p in pieces
    ]
    return zip(*streams, strict=False)


def _shared(column: pa.ChunkedArray, rows: int, shared: Shared) -> _Column:
    """The column's `_Column`, one for every column holding the same array (same type and
    buffers), so its JSON is made once."""
    array = single_array(column)
    key = (
        str(array.type),
        array.offset,
        len(array),
        tuple(0 if b is None else b.address for b in array.buffers()),
    )
    found = shared.get(key)
    if found is None:
        found = shared[key] = _Column(array, rows)
    return found


class _Column:
    """One column's JSON fragments, made once, as the per-row writer writes its values."""

    def __init__(self, column: pa.ChunkedArray | pa.Array, rows: int) -> None:
        self.array = single_array(column)
        self.rows = rows
        self._json: Pieces | None = None
        self._tensor: np.ndarray | None = None
        self._tensor_done = False

    def json(self) -> Pieces:
        if self._json is None:
            self._json = self._fragments()
        return self._json

    def _fragments(self) -> Pieces:
        array, rows = self.array, self.rows
        if rows > 1 and array.null_count == 0 and _one_value(array):
            return [orjson.dumps(_row_values(array.slice(0, 1))[0], option=_NUMPY)]
        tensor = self.tensor()
        if tensor is not None and tensor.ndim == 1:
            return [_cut_1d(tensor)]
        if tensor is not None and tensor.ndim == 2:
            texts = rows_text(tensor) or _cut_2d(tensor)  # the body's own, if it is orjson's
            return [b"[", texts, b"]"]  # the brackets join the constant text
        values = tensor if tensor is not None else _row_values(array)
        return [[orjson.dumps(v, option=_NUMPY) for v in values]]

    def tensor(self) -> np.ndarray | None:
        """The column's numbers as the per-row writer writes them, shaped (rows, *dims), when
        they make one array (numeric, no nulls, every row of one shape)."""
        if not self._tensor_done:
            self._tensor_done = True
            self._tensor = _tensor(self.array)
        return self._tensor

    def entry(self) -> tuple[Fragments, bytes] | None:
        """The `outputs` entry's data (without its brackets) and dim, when they can be
        written column by column (from the column's own fragments, made once)."""
        tensor = self.tensor()
        if tensor is None:
            return None
        dim = orjson.dumps([1, *tensor.shape[1:]])
        pieces = self.json()
        if tensor.ndim == 1:  # bare values, or the one value of every row
            return pieces[0], dim
        if tensor.ndim == 2:
            bare = pieces[1] if len(pieces) == 3 else pieces[0]
            return (bare[1:-1] if isinstance(bare, bytes) else bare), dim
        return _cut_2d(tensor.reshape(len(tensor), -1)), dim

    def entries_per_row(self) -> list[bytes]:
        return [orjson.dumps(_tensor_entry(v), option=_NUMPY) for v in _row_values(self.array)]


class _SplitColumn(_Column):
    """`out._model_split`: its JSON text per row, written as the seed's list of one object."""

    def _fragments(self) -> Pieces:
        texts = self.array.to_pylist()
        return [[b"null" if t is None else b"[" + t.encode() + b"]" for t in texts]]


def _tensor(array: pa.Array) -> np.ndarray | None:
    if array.null_count:
        return None
    kind = array.type
    if pa.types.is_integer(kind):
        return numbers(array)
    if pa.types.is_floating(kind):  # the per-row writer has them as Python floats
        return numbers(array).astype(np.float64)
    if pa.types.is_timestamp(kind):
        return np.asarray(_row_values(array), np.int64)
    values = _row_values(array)  # numeric lists: one array, in their own precision
    return values if isinstance(values, np.ndarray) and values.dtype.kind in "iuf" else None


def _one_value(array: pa.Array) -> bool:
    """Whether every row holds the same value (comparing two slices is one pass in C)."""
    rows = len(array)
    if rows < 2 or not array.slice(0, 1).equals(array.slice(1, 1)):
        return False  # the usual answer, found without comparing the whole column
    return array.slice(1).equals(array.slice(0, rows - 1))


def _cut_1d(tensor: np.ndarray) -> list[bytes]:
    text = orjson.dumps(tensor, option=_NUMPY)
    return text[1:-1].split(b",") if len(tensor) else []


def _cut_2d(tensor: np.ndarray) -> list[bytes]:
    """The rows of a 2-D tensor as JSON, without their brackets."""
    if tensor.shape[1] == 0:
        return [b""] * len(tensor)
    return orjson.dumps(tensor, option=_NUMPY)[2:-2].split(b"],[")
