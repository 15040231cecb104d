"""Arrow columns <-> numpy tensors, with the seed's input rules checked on the way in.

A row of a tensor column is a scalar or a (nested) list of one element type; a column becomes
an array of shape (rows, *dims). Ragged lists, nulls, strings where numbers are expected and
casts that would lose information are `BadInput` naming the column and the step.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

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
    """
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    rows = len(array)
    if array.null_count:
        first = pc.index(pc.is_null(array), True).as_py()
        raise BadInput(f"{where}: missing value (null) in row {first}")
    dims: list[int] = []
    values: pa.Array = array
    while isinstance(values.type, _LIST_TYPES):
        if isinstance(values.type, pa.FixedSizeListType):
            width = values.type.list_size
            values = values.flatten()
        else:
            lengths = values.value_lengths()
            if len(lengths) == 0:
                width = 0
            else:
                low, high = pc.min_max(lengths).values()
                if low.as_py() != high.as_py():
                    bad = pc.index(pc.not_equal(lengths, low), True).as_py()
                    raise BadInput(
                        f"{where}: ragged tensor: row lengths differ ({low.as_py()} in the "
                        f"first rows, {lengths[bad].as_py()} in row {bad}); every row must "
                        f"have the same shape"
                    )
                width = low.as_py()
            values = values.flatten()
        if values.null_count:
            raise BadInput(f"{where}: missing value (null) inside a tensor")
        dims.append(width)
    if rows and not (pa.types.is_integer(values.type) or pa.types.is_floating(values.type)
                     or pa.types.is_boolean(values.type)):
        if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
            if dtype.kind in "OUS":
                return np.asarray(values.to_pylist(), dtype=object).reshape((rows, *dims))
            raise BadInput(
                f"{where}: holds text (or mixed element types) where the model expects "
                f"{dtype.name} numbers"
            )
        raise BadInput(f"{where}: element type {values.type} cannot feed a {dtype.name} input")
    target = pa.from_numpy_dtype(dtype)
    try:
        values = values.cast(target, safe=True)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise BadInput(
            f"{where}: values of type {values.type} cannot be cast to {dtype.name} "
            f"without loss ({exc})"
        ) from exc
    tensor = values.to_numpy(zero_copy_only=False).reshape((rows, *dims))
    if expected_shape is not None:
        tensor = _fit_shape(tensor, expected_shape, where)
    return tensor


def _fit_shape(
    tensor: np.ndarray, expected: Sequence[int | str | None], where: str
) -> np.ndarray:
    fixed = [d if isinstance(d, int) and d > 0 else None for d in expected[1:]]
    have = list(tensor.shape[1:])
    if len(have) == len(fixed) - 1 and fixed[-1] == 1:
        tensor = tensor.reshape((*tensor.shape, 1))  # a scalar column feeds an [N, 1] input
        have.append(1)
    if len(have) != len(fixed) or any(f is not None and f != h for f, h in zip(fixed, have)):
        want = "x".join("?" if d is None else str(d) for d in fixed) or "scalar"
        got = "x".join(str(d) for d in have) or "scalar"
        raise BadInput(f"{where}: each row has shape {got}; the model expects {want}")
    return tensor


def ndarray_to_column(tensor: np.ndarray) -> pa.Array:
    """A tensor shaped (rows, *dims) as one Arrow column; rows of rank >= 1 become lists."""
    if tensor.ndim <= 1:
        return pa.array(tensor.reshape(-1) if tensor.ndim == 0 else tensor)
    flat = np.ascontiguousarray(tensor).reshape(-1)
    column: pa.Array = pa.array(flat)
    for width in reversed(tensor.shape[1:]):
        count = len(column) // width if width else tensor.shape[0]
        offsets = pa.array(np.arange(0, (count + 1) * width, width, dtype=np.int32)[: count + 1])
        column = pa.ListArray.from_arrays(offsets, column)
    return column
