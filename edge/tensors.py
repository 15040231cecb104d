"""Arrow columns <-> numpy tensors, with the seed's input rules checked on the way in.

A row of a tensor column is a scalar or a (nested) list of one element type; a column becomes
an array of shape (rows, *dims). Ragged lists, nulls, strings where numbers are expected and
casts that would lose information are `BadInput` naming the column and the step.
"""

from __future__ import annotations

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
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    rows = len(array)
    if array.null_count:
        first = array.is_null().to_numpy(zero_copy_only=False).argmax()
        raise BadInput(f"{where}: missing value (null) in row {first}")
    dims: list[int] = []
    values: pa.Array = array
    while isinstance(values.type, _LIST_TYPES):
        if isinstance(values.type, pa.FixedSizeListType):
            width = values.type.list_size
        else:
            width = _uniform_width(values, where)
        values = values.flatten()
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
    flat = values.to_numpy(zero_copy_only=False)
    tensor = _safe_cast(flat, dtype, where).reshape((rows, *dims))
    if expected_shape is not None:
        tensor = _fit_shape(tensor, expected_shape, where)
    return tensor


def _uniform_width(values: pa.Array, where: str) -> int:
    """The common length of every row of a list column; ragged rows are refused."""
    offset_type = np.int64 if pa.types.is_large_list(values.type) else np.int32
    count = len(values)
    offsets = np.frombuffer(
        values.buffers()[1], offset_type, count + 1, values.offset * np.dtype(offset_type).itemsize
    )
    if count == 0:
        return 0
    lengths = np.diff(offsets)
    width = int(lengths[0])
    if count > 1 and not (lengths == width).all():
        bad = int(np.argmax(lengths != width))
        raise BadInput(
            f"{where}: ragged tensor: row lengths differ ({width} in row 0, "
            f"{int(lengths[bad])} in row {bad}); every row must have the same shape"
        )
    return width


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
    return flat.astype(dtype)


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
    kind = pa.from_numpy_dtype(flat.dtype)
    if kind == pa.bool_():
        column: pa.Array = pa.array(flat)
    else:
        column = pa.Array.from_buffers(kind, len(flat), [None, pa.py_buffer(flat)])
    for width in reversed(tensor.shape[1:]):
        count = len(column) // width if width else 0
        offsets = np.arange(0, (count + 1) * width, width or 1, dtype=np.int32)[: count + 1]
        column = pa.Array.from_buffers(
            pa.list_(column.type), count, [None, pa.py_buffer(offsets)], children=[column]
        )
    return column
