"""A columnar parse of the common large pandas-records body: every row an object with the
same keys, in the same order, each holding a number or a (nested) list of numbers of one
shape, like `[{"tensor": [17.99, 10.38, ...]}, ...]`. The numbers go from the body's bytes
to numpy through Arrow's CSV reader, without a Python object per number (orjson makes one
float object per number: most of the cost of a 10,000-row body).

`numeric_columns` returns None for any body it is not sure of (text, bools, nulls, escapes,
rows that differ in keys, order, shape or spacing, a number JSON refuses, malformed JSON):
the caller then parses it with orjson, which makes the one table and the one error message
for it. So a body gets the same table and the same errors whichever parser reads it.

How: the first row is parsed by orjson, for its keys and the shape of each value. Each key
(`"tensor":`) is replaced by a control byte (raw control bytes are not JSON, so none can be
in the body); then no quote may be left, nor anything but numbers, punctuation and spaces.
With the numbers deleted, what is left must be the first row's text repeated, so every row
has the first row's keys, order and shape. Every run of number characters is then one number:
they are cut into lines for the CSV reader (fast_float: correctly rounded, like orjson),
after the checks that make it as strict as JSON (no `01`, `1.`, `.5`, `+1`, infinity).
"""

from __future__ import annotations

import math

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from edge.tensors import ndarray_to_column

_NUMBER = b"0123456789.eE+-"
_MARKS = bytes(range(1, 32)).replace(b"\t", b"").replace(b"\n", b"").replace(b"\r", b"")
_ALLOWED = _NUMBER + b" \t\n\r[]{},:" + _MARKS
_NOT_NUMBER = bytes(c for c in range(256) if c not in _NUMBER)
_ZERO, _NINE, _DOT, _MINUS, _PLUS, _EXP_LOWER, _EXP_UPPER = b"09.-+eE"


def numeric_columns(body: bytes) -> pa.Table | None:
    """The table `decode.decode_records` makes of `body`, or None (see the module docstring)."""
    if b"\\" in body:
        return None
    first = _first_row(body)
    if first is None:
        return None
    names, shapes, ints = first
    rest = body
    for mark, name in zip(_MARKS, names, strict=False):
        if bytes((mark,)) in body:
            return None
        rest = rest.replace(orjson.dumps(name) + b":", bytes((mark,)))
    rows = _rows(rest.translate(None, _NUMBER))
    if rows is None:
        return None
    per_row = sum(math.prod(shape) for shape in shapes)
    tokens = _tokens(rest, rows * per_row, per_row)
    if tokens is None:
        return None
    data, offsets = tokens
    values = _numbers(data, offsets)
    if values is None:
        return None
    values = values.reshape(rows, per_row)
    written_as_float = None
    if any(ints) and (b"." in data or b"e" in data or b"E" in data):
        written_as_float = _float_tokens(data, offsets).reshape(rows, per_row)
    columns = {}
    offset = 0
    for name, shape, is_int in zip(names, shapes, ints, strict=True):
        size = math.prod(shape)
        part = values[:, offset : offset + size]
        if is_int and written_as_float is not None:
            # orjson reads `2.0` or `1e5` in any row as a float: the column is then float64
            is_int = not written_as_float[:, offset : offset + size].any()
        tensor = _as_int(part) if is_int else _as_float(part)
        if tensor is None:
            return None
        columns[name] = ndarray_to_column(tensor.reshape(rows, *shape))
        offset += size
    return pa.table(columns)


def _first_row(body: bytes) -> tuple[list[str], list[tuple[int, ...]], list[bool]] | None:
    """The first row's keys, its values' shapes and whether each is integers (by orjson);
    None unless every value is a number or a non-empty, regular (nested) list of numbers,
    and keys are few."""
    opening = body.find(b"{")
    try:
        row = orjson.loads(body[opening : body.find(b"}", opening) + 1])
    except orjson.JSONDecodeError:
        return None
    if not isinstance(row, dict) or not 0 < len(row) <= len(_MARKS):
        return None
    shapes, ints = [], []
    for value in row.values():
        if isinstance(value, bool) or not isinstance(value, list | int | float):
            return None
        try:
            tensor = np.asarray(value)
        except ValueError:  # ragged
            return None
        if tensor.dtype.kind not in "iuf" or 0 in tensor.shape:
            return None
        shapes.append(tensor.shape)
        ints.append(tensor.dtype.kind in "iu")
    return list(row), shapes, ints


def _rows(skeleton: bytes) -> int | None:
    """How many rows, when `skeleton` (the body without its numbers) is `[row,row,...]` with
    every row and every separator the same text; else None."""
    opening = skeleton.find(b"{")
    closing = skeleton.find(b"}")
    head = skeleton[:opening]
    if opening < 0 or head.strip() != b"[":
        return None
    row = skeleton[opening : closing + 1]
    if row.count(b"{") != 1:
        return None  # an object inside a row
    after = skeleton.find(b"{", closing)
    separator = skeleton[closing + 1 : after] if after > 0 else b""
    tail = skeleton[skeleton.rfind(b"}") + 1 :]
    if tail.strip() != b"]":
        return None
    middle = len(skeleton) - len(head) - len(tail) + len(separator)
    rows, extra = divmod(middle, len(row) + len(separator))
    if extra or not rows or separator.strip() != (b"," if rows > 1 else b""):
        return None
    if (head + row + separator + tail).translate(None, _ALLOWED):
        return None  # a quote left (a value in text), true/false/null, stray characters
    if skeleton != head + separator.join([row] * rows) + tail:
        return None
    return rows


def _tokens(rest: bytes, count: int, per_row: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The numbers of `rest` (the body, its keys replaced: numbers, punctuation and spaces),
    all in one array of bytes, and where each starts (one offset more: the end); None unless
    there are `count`."""
    raw = np.frombuffer(rest, np.uint8)
    number = (raw - np.uint8(_MINUS)) <= np.uint8(_NINE - _MINUS)  # - . / 0-9 (no / is left)
    if b"e" in rest or b"E" in rest or b"+" in rest:
        number |= (raw == _EXP_LOWER) | (raw == _EXP_UPPER) | (raw == _PLUS)
    if number[0] or number[-1]:
        return None
    edges = np.flatnonzero(number[1:] != number[:-1]) + 1  # starts and ends, in turn
    if len(edges) != 2 * count:
        return None  # an empty slot (`[1,,2]`)
    starts, ends = edges[0::2], edges[1::2]
    # the text between two numbers is the first row's, slot by slot (with the skeleton's
    # check, which has the text without its numbers: each number sits where the first
    # row has one, so no `"k":1[2]` passes as `"k":[1,2]`)
    gaps = np.empty(count, edges.dtype)
    gaps[:-1] = starts[1:] - ends[:-1]
    gaps[-1] = gaps[per_row - 1] if count > per_row else 0
    gaps = gaps.reshape(-1, per_row)
    if not (gaps == gaps[0]).all():
        return None
    offsets = np.zeros(count + 1, np.int32)
    np.cumsum(ends - starts, out=offsets[1:])
    return np.frombuffer(rest.translate(None, _NOT_NUMBER), np.uint8), offsets


def _numbers(data: np.ndarray, offsets: np.ndarray) -> np.ndarray | None:
    """The numbers as float64 (Arrow's cast: fast_float, correctly rounded as orjson is),
    when every one is a JSON number."""
    if not _strict(data, offsets):
        return None
    count = len(offsets) - 1
    strings = pa.StringArray.from_buffers(count, pa.py_buffer(offsets), pa.py_buffer(data))
    try:
        values = pc.cast(strings, pa.float64()).to_numpy(zero_copy_only=False)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None  # number characters that make no number (`1e`, `1.2.3`, `-`, `1-2`)
    if not np.isfinite(values).all():
        return None  # orjson refuses numbers past float64's range
    return values


def _strict(data: np.ndarray, offsets: np.ndarray) -> bool:
    """None of the numbers Arrow reads but JSON refuses (`01`, `-01`, `1.`, `.5`, `1.e5`,
    `+1`): each starts with a digit or `-` and a digit, ends with a digit, has a digit after
    its `.` and an `e` before its `+`, and its integer part starts with a zero only alone."""
    starts, ends = offsets[:-1], offsets[1:]
    first = data[starts]
    signed = first == _MINUS
    whole = starts + signed  # where the integer part starts
    if (whole >= ends).any():
        return False
    lead = data[whole]
    if not _digit(lead).all() or not _digit(data[ends - 1]).all():
        return False
    lone = whole + 1 < ends
    if (lone & (lead == _ZERO) & _digit(data[np.minimum(whole + 1, len(data) - 1)])).any():
        return False
    dots = np.flatnonzero(data == _DOT)  # never last (numbers end with a digit)
    if len(dots) and not _digit(data[dots + 1]).all():
        return False
    if _PLUS not in data:
        return True
    pluses = np.flatnonzero(data == _PLUS)  # never first
    return bool(np.isin(data[pluses - 1], (_EXP_LOWER, _EXP_UPPER)).all())


def _float_tokens(data: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """For each number, whether it is written with a `.` or an exponent."""
    marked = ((data == _DOT) | (data == _EXP_LOWER) | (data == _EXP_UPPER)).view(np.uint8)
    return np.add.reduceat(marked, offsets[:-1]) > 0  # each sum runs to the next start


def _digit(chars: np.ndarray) -> np.ndarray:
    return (chars - np.uint8(_ZERO)) <= np.uint8(9)  # uint8: below "0" wraps past 9


def _as_float(part: np.ndarray) -> np.ndarray | None:
    """A float column; an integer `-0` is read as 0 by orjson, -0.0 by the CSV reader."""
    if np.signbit(part[part == 0]).any():
        return None
    return part


def _as_int(part: np.ndarray) -> np.ndarray | None:
    """A column of integers as int64, when float64 held them exactly and none is a float."""
    if np.abs(part).max(initial=0) >= 2**53 or (part != np.round(part)).any():
        return None
    return part.astype(np.int64)
