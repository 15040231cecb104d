"""Open Inference Protocol tensors <-> numpy arrays: the datatypes, JSON `data` (flat or
nested), raw little-endian bytes (the binary tensor extension, gRPC's raw contents), BYTES
elements behind 4-byte lengths. No HTTP or gRPC in here.

Everything read from the network fails only with `BadInput` naming the tensor: a count or
size that does not match its shape, a value its datatype cannot hold, a ragged `data`.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from edge.errors import BadInput, PipelineError
from edge.tensors import column_to_ndarray, ndarray_to_column, single_array

# little-endian, as the protocol sends them (BYTES elements: str or bytes objects)
DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype("?"),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(object),
}
_NAMES = {(dtype.kind, dtype.itemsize): name for name, dtype in DTYPES.items() if name != "BYTES"}
MAX_DIMS = 16
_FLOAT_MAX = {size: float(np.finfo(f"<f{size}").max) for size in (2, 4, 8)}
_LENGTH = struct.Struct("<I")


def datatype_of(dtype: np.dtype) -> str:
    """The protocol's datatype of a numpy dtype (text and objects are BYTES)."""
    return _NAMES.get((dtype.kind, dtype.itemsize), "BYTES")


def dtype_of(datatype: Any, where: str) -> np.dtype:
    found = DTYPES.get(datatype) if isinstance(datatype, str) else None
    if found is None:
        raise BadInput(
            f"{where}: datatype {str(datatype)[:40]!r} is not one of {', '.join(DTYPES)}"
        )
    return found


def parse_shape(shape: Any, where: str) -> tuple[int, ...]:
    """A request tensor's shape: whole numbers >= 0, at most `MAX_DIMS` of them."""
    if not isinstance(shape, list | tuple) or len(shape) > MAX_DIMS:
        raise BadInput(f"{where}: shape must be a list of at most {MAX_DIMS} whole numbers")
    for dim in shape:
        if isinstance(dim, bool) or not isinstance(dim, int) or not 0 <= dim < 2**62:
            raise BadInput(f"{where}: shape {list(shape)[:MAX_DIMS]} must hold whole numbers >= 0")
    return tuple(shape)


def shape_text(shape: Sequence[int]) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


# ---------------------------------------------------------------------- JSON data


def from_json(data: Any, datatype: str, shape: tuple[int, ...], where: str) -> np.ndarray:
    """A tensor's JSON `data` (row-major, flat or nested) as an array of `shape`."""
    dtype = dtype_of(datatype, where)
    count = math.prod(shape)
    if not isinstance(data, list):
        data = [data]  # a lone value for a one-element tensor
    if datatype == "BYTES":
        flat = _flat_strings(data, where)
        if len(flat) != count:
            raise _count(where, len(flat), shape)
        return np.array(flat, dtype=object).reshape(shape)
    try:
        raw = np.asarray(data)
    except ValueError:  # numpy refuses ragged nesting
        raise BadInput(f"{where}: data is ragged (nested lists of different lengths)") from None
    if raw.size != count:
        raise _count(where, raw.size, shape)
    kind = raw.dtype.kind
    if datatype == "BOOL":
        if kind != "b" and count:
            raise BadInput(f"{where}: BOOL data must be true or false values")
        return raw.astype(dtype).reshape(shape)
    if count == 0:
        return np.zeros(shape, dtype)
    if kind not in "iuf" or (dtype.kind in "iu" and kind == "f"):
        wanted = "whole numbers" if dtype.kind in "iu" else "numbers"
        raise BadInput(f"{where}: {datatype} data must hold {wanted} only")
    return cast(raw, dtype, datatype, where).reshape(shape)


def cast(raw: np.ndarray, dtype: np.dtype, datatype: str, where: str) -> np.ndarray:
    """`raw` (numbers) as `dtype`, refused when a value does not fit."""
    if raw.dtype == dtype:
        return raw
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        if raw.min() < info.min or raw.max() > info.max:
            raise BadInput(f"{where}: a value is out of range for {datatype}")
        return raw.astype(dtype)
    if raw.size and (raw.dtype.kind in "iu" or raw.dtype.itemsize > dtype.itemsize):
        largest = float(np.abs(raw).max())  # np.errstate costs more than this check
        if largest == math.inf:  # infinities stay infinite; is anything else too large?
            largest = float(np.abs(raw[np.isfinite(raw)]).max(initial=0))
        if largest > _FLOAT_MAX[dtype.itemsize]:
            raise BadInput(f"{where}: a value is out of range for {datatype}")
    return raw.astype(dtype)


def _flat_strings(data: list[Any], where: str) -> list[str]:
    flat: list[str] = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                if len(stack) > MAX_DIMS:
                    raise BadInput(f"{where}: data is nested deeper than {MAX_DIMS} levels")
                stack.append(iter(item))
                break
            if not isinstance(item, str):
                raise BadInput(f"{where}: BYTES data must hold strings only")
            flat.append(item)
        else:
            stack.pop()
    return flat


def _count(where: str, got: int, shape: tuple[int, ...]) -> BadInput:
    return BadInput(
        f"{where}: data holds {got} elements; shape {shape_text(shape)} needs {math.prod(shape)}"
    )


def to_json_data(array: np.ndarray) -> Any:
    """An output's flat `data`: a numpy array orjson writes itself, or a list (text)."""
    if array.dtype.kind in "iufb":  # native byte order: what orjson writes
        return np.ascontiguousarray(array, array.dtype.newbyteorder("=")).reshape(-1)
    return [_text(v) for v in array.reshape(-1).tolist()]


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


# ---------------------------------------------------------------------- raw bytes


def from_raw(raw: bytes | memoryview, datatype: str, shape: tuple[int, ...], where: str) -> Any:
    """A tensor from its raw bytes (row-major, little-endian; BYTES elements behind 4-byte
    lengths), refused unless the size is exactly what the shape needs."""
    dtype = dtype_of(datatype, where)
    count = math.prod(shape)
    if datatype == "BYTES":
        return np.array(_split_bytes(raw, count, where), dtype=object).reshape(shape)
    size = len(raw)
    if size != count * dtype.itemsize:
        raise BadInput(
            f"{where}: {size} bytes of {datatype} data; shape {shape_text(shape)} needs "
            f"{count * dtype.itemsize}"
        )
    array = np.frombuffer(raw, dtype=dtype if datatype != "BOOL" else np.uint8)
    if datatype == "BOOL":
        if count and array.max() > 1:
            raise BadInput(f"{where}: BOOL bytes must be 0 or 1")
        array = array.view(np.bool_)
    if not array.flags.aligned:  # the binary section starts anywhere after the JSON
        array = array.copy()
    return array.reshape(shape)


def _split_bytes(raw: bytes | memoryview, count: int, where: str) -> list[str | bytes]:
    """BYTES elements: each a 4-byte little-endian length, then that many bytes."""
    view = memoryview(raw)
    elements: list[str | bytes] = []
    offset, size = 0, len(view)
    while offset < size:
        if len(elements) == count or offset + 4 > size:
            raise BadInput(f"{where}: BYTES data holds more than {count} elements or is cut short")
        (length,) = _LENGTH.unpack_from(view, offset)
        offset += 4
        if offset + length > size:
            raise BadInput(f"{where}: a BYTES element of {length} bytes runs past the data")
        element = bytes(view[offset : offset + length])
        offset += length
        try:
            elements.append(element.decode("utf-8"))
        except UnicodeDecodeError:
            elements.append(element)  # kept as bytes: a binary column
    if len(elements) != count:
        raise BadInput(
            f"{where}: BYTES data holds {len(elements)} elements; the shape needs {count}"
        )
    return elements


def to_raw(array: np.ndarray) -> bytes:
    """An output's raw bytes (little-endian; BYTES elements behind 4-byte lengths)."""
    if array.dtype.kind in "iufb":
        return np.ascontiguousarray(array, array.dtype.newbyteorder("<")).tobytes()
    parts = []
    for value in array.reshape(-1).tolist():
        data = value if isinstance(value, bytes) else str(value).encode()
        parts.append(_LENGTH.pack(len(data)))
        parts.append(data)
    return b"".join(parts)


# ---------------------------------------------------------------------- columns


def to_column(array: np.ndarray) -> pa.Array:
    """A request tensor shaped (rows, *dims) as the pipeline's input column."""
    if array.dtype.kind != "O":
        return ndarray_to_column(array)
    values = array.tolist()
    return pa.array(values, _text_type(array))


def _text_type(array: np.ndarray) -> pa.DataType:
    kind: pa.DataType = (
        pa.binary() if any(isinstance(v, bytes) for v in array.reshape(-1)) else pa.string()
    )
    for _ in range(array.ndim - 1):
        kind = pa.list_(kind)
    return kind


def column_tensor(column: pa.ChunkedArray | pa.Array, name: str) -> np.ndarray:
    """A result column as an output tensor shaped (rows, *dims); a column the protocol cannot
    carry (ragged rows, nulls, structs) is the pipeline's error, not the client's."""
    array = single_array(column)
    kind = array.type
    while (
        pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)
    ):
        kind = kind.value_type
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        if array.null_count or not pa.types.is_binary(array.type):
            raise PipelineError(f"output {name!r} cannot be sent as a tensor ({array.type})")
        return np.array(array.to_pylist(), dtype=object)
    try:
        dtype = np.dtype(object) if _is_text(kind) else kind.to_pandas_dtype()
        if not _is_text(kind) and np.dtype(dtype).kind not in "iufb":
            raise TypeError(kind)
        return column_to_ndarray(array, np.dtype(dtype), None, f"output {name!r}")
    except (BadInput, TypeError, NotImplementedError, pa.ArrowException) as exc:
        raise PipelineError(
            f"output {name!r} ({array.type}) cannot be sent as a tensor: {exc}"
        ) from None


def _is_text(kind: pa.DataType) -> bool:
    return bool(pa.types.is_string(kind) or pa.types.is_large_string(kind))
