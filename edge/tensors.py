"""Arrow columns <-> numpy tensors, with the seed's input rules checked on the way in.

A row of a tensor column is a scalar or a (nested) list of one element type; a column becomes
an array of shape (rows, *dims). Ragged lists, nulls, strings where numbers are expected and
casts that would lose information are `BadInput` naming the column and the step.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from edge.errors import BadInput

_LIST_TYPES = (pa.ListType, pa.LargeListType, pa.FixedSizeListType)


def column_to_ndarray(
    column: pa.ChunkedArray | pa.Array,
    dtype: np.dtype,
    expected_shape: Sequence[int | str | None] | None,
    where: str,
) -> np.ndarray:
    """Turn one column into a tensor of `dtype` shaped (rows, *dims).

    `expected_shape` is the model input's shape including the batch axis (None or a string
    for a free axis); when the column's row shape differs in a fixed axis it is refused.
    `where` says where the column is, for messages ("column 'tensor' of step 'ccfraud'").
    Works on buffers with numpy: pyarrow's compute kernels cost tens of microseconds each,
    which is most of a one-row request.
    """
    array = single_array(column)
    rows = len(array)
    if array.null_count:
        first = array.is_null().to_numpy(zero_copy_only=False).argmax()
        raise BadInput(f"{where}: missing value (null) in row {first}")
    dims: list[int] = []
    values: pa.Array = array
    while isinstance(values.type, _LIST_TYPES):
        count = len(values)
        if isinstance(values.type, pa.FixedSizeListType):
            width = values.type.list_size
            start = values.offset * width
        else:
            width, start = _uniform_width(values, where, math.prod(dims))
        # the children of this slice of rows; cheaper than `flatten()` (a compute kernel)
        values = values.values.slice(start, count * width)
        if values.null_count:
            raise BadInput(f"{where}: missing value (null) inside a tensor")
        dims.append(width)
    kind = values.type
    if rows and not (
        pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)
    ):
        if pa.types.is_string(kind) or pa.types.is_large_string(kind):
            if dtype.kind in "OUS":
                return np.asarray(values.to_pylist(), dtype=object).reshape((rows, *dims))
            raise BadInput(
                f"{where}: holds text (or mixed element types) where the model expects "
                f"{dtype.name} numbers"
            )
        raise BadInput(f"{where}: element type {kind} cannot feed a {dtype.name} input")
    flat = numbers(values)
    tensor = _safe_cast(flat, dtype, where).reshape((rows, *dims))
    if expected_shape is not None:
        tensor = _fit_shape(tensor, expected_shape, where)
    return tensor


def array_to_tensor(
    array: np.ndarray,
    dtype: np.dtype,
    expected_shape: Sequence[int | str | None] | None,
    where: str,
) -> np.ndarray:
    """`column_to_ndarray` for a numeric numpy array shaped (rows, *dims) already (the small
    requests' path, which never builds Arrow columns): the same casts and shape checks."""
    tensor = _safe_cast(array.reshape(-1), dtype, where).reshape(array.shape)
    if expected_shape is not None:
        tensor = _fit_shape(tensor, expected_shape, where)
    return tensor


def numbers(values: pa.Array) -> np.ndarray:
    """A numeric or bool array without nulls as numpy, read off its buffers (pyarrow's own
    `to_numpy` would import pandas, ~40 MB resident, on the first request)."""
    if pa.types.is_boolean(values.type):
        bits = np.frombuffer(values.buffers()[1], np.uint8)
        unpacked = np.unpackbits(bits, bitorder="little", count=values.offset + len(values))
        return unpacked[values.offset :].astype(bool)
    dtype = np.dtype(values.type.to_pandas_dtype())
    if dtype.kind not in "iuf" or values.null_count:
        return values.to_numpy(zero_copy_only=False)
    return np.frombuffer(values.buffers()[1], dtype, len(values), values.offset * dtype.itemsize)


def single_array(column: pa.ChunkedArray | pa.Array) -> pa.Array:
    """A column as one contiguous array (no copy for the usual single chunk)."""
    if isinstance(column, pa.Array):
        return column
    if column.num_chunks == 1:
        return column.chunk(0)
    if column.num_chunks == 0:  # `combine_chunks` would import pandas
        return pa.nulls(0, column.type)
    return column.combine_chunks()


def _uniform_width(values: pa.Array, where: str, per_row: int = 1) -> tuple[int, int]:
    """The common length of every list of a list column (`per_row` lists to a request row at
    this nesting level), and where its values start in the child array; ragged rows are
    refused, naming the request rows."""
    offset_type = np.int64 if pa.types.is_large_list(values.type) else np.int32
    count = len(values)
    offsets = np.frombuffer(
        values.buffers()[1], offset_type, count + 1, values.offset * np.dtype(offset_type).itemsize
    )
    if count == 0:
        return 0, 0
    if count == 1:  # the common one-row request: no need to compare lengths
        return int(offsets[1] - offsets[0]), int(offsets[0])
    lengths = np.diff(offsets)
    width = int(lengths[0])
    if count > 1 and not (lengths == width).all():
        bad = int(np.argmax(lengths != width))
        raise BadInput(
            f"{where}: ragged tensor: row lengths differ ({width} in row 0, "
            f"{int(lengths[bad])} in row {bad // per_row}); every row must have the same shape"
        )
    return width, int(offsets[0])


def _safe_cast(flat: np.ndarray, dtype: np.dtype, where: str) -> np.ndarray:
    if flat.dtype == dtype:
        return flat
    if dtype.kind in "iu" and flat.dtype.kind == "f":
        if not np.all(np.isfinite(flat)) or not np.all(np.mod(flat, 1) == 0):
            raise BadInput(
                f"{where}: values of type {flat.dtype.name} cannot be cast to {dtype.name} "
                f"without loss (fractional or non-finite values)"
            )
    if dtype.kind in "iu" and flat.size:
        info = np.iinfo(dtype)
        if flat.min() < info.min or flat.max() > info.max:
            raise BadInput(f"{where}: values out of range for {dtype.name}")
    with np.errstate(over="ignore"):
        narrowed = flat.astype(dtype)
    if dtype.kind == "f" and flat.dtype.kind == "f" and dtype.itemsize < flat.itemsize:
        # an overflow shows up as an infinity the input did not have (one cheap pass)
        infinities = np.count_nonzero(np.isinf(narrowed))  # in C: `.sum()` goes via Python
        if infinities and infinities != np.count_nonzero(np.isinf(flat)):
            raise BadInput(f"{where}: values out of range for {dtype.name}")
    return narrowed


def _fit_shape(tensor: np.ndarray, expected: Sequence[int | str | None], where: str) -> np.ndarray:
    fixed = [d if isinstance(d, int) and d > 0 else None for d in expected[1:]]
    have = list(tensor.shape[1:])
    if len(have) == len(fixed) - 1 and fixed[-1] == 1:
        tensor = tensor.reshape((*tensor.shape, 1))  # a scalar column feeds an [N, 1] input
        have.append(1)
    mismatch = any(f is not None and f != h for f, h in zip(fixed, have, strict=False))
    if len(have) != len(fixed) or mismatch:
        want = "x".join("?" if d is None else str(d) for d in fixed) or "scalar"
        got = "x".join(str(d) for d in have) or "scalar"
        raise BadInput(f"{where}: each row has shape {got}; the model expects {want}")
    return tensor


def ndarray_to_column(tensor: np.ndarray) -> pa.Array:
    """A tensor shaped (rows, *dims) as one Arrow column; rows of rank >= 1 become lists."""
    if tensor.dtype.kind not in "iufb":
        return pa.array(tensor.tolist())
    if tensor.ndim == 0:
        tensor = tensor.reshape(1)
    flat = np.ascontiguousarray(tensor).reshape(-1)
    if flat.dtype == np.bool_:  # Arrow packs bools into bits
        bits = pa.py_buffer(np.packbits(flat, bitorder="little"))
        column: pa.Array = pa.Array.from_buffers(pa.bool_(), len(flat), [None, bits])
    else:
        column = pa.Array.from_buffers(
            _arrow_type(flat.dtype), len(flat), [None, pa.py_buffer(flat)]
        )
    rows = tensor.shape[0]
    for level in range(tensor.ndim - 1, 0, -1):
        width = tensor.shape[level]
        count = rows * math.prod(tensor.shape[1:level])
        column = pa.Array.from_buffers(
            _list_of(column.type), count, [None, _offsets(count, width)], children=[column]
        )
    return column


def _offsets(count: int, width: int) -> pa.Buffer:
    """List offsets 0, width, 2*width, ...; the small ones are cached (immutable buffers)."""
    if count <= 64:
        return _small_offsets(count, width)
    return pa.py_buffer(np.arange(count + 1, dtype=np.int32) * np.int32(width))


@functools.lru_cache(maxsize=1024)
def _small_offsets(count: int, width: int) -> pa.Buffer:
    return pa.py_buffer(np.arange(count + 1, dtype=np.int32) * np.int32(width))


@functools.cache
def _arrow_type(dtype: np.dtype) -> pa.DataType:
    return pa.from_numpy_dtype(dtype)


@functools.cache
def _list_of(kind: pa.DataType) -> pa.DataType:
    return pa.list_(kind)


def tensor_type(kind: pa.DataType) -> tuple[np.dtype, list[int | None]]:
    """The tensor an Arrow type describes: its element dtype and the shape of one row (a
    `None` for a list without a fixed size). Strings are object tensors. Raises `TypeError`
    for types that are not tensors (structs, maps, timestamps, ...)."""
    dims: list[int | None] = []
    while isinstance(kind, _LIST_TYPES):
        dims.append(kind.list_size if isinstance(kind, pa.FixedSizeListType) else None)
        kind = kind.value_type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return np.dtype(object), dims
    if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind):
        return np.dtype(kind.to_pandas_dtype()), dims
    raise TypeError(f"{kind} is not a tensor element type (numbers, booleans or strings)")
