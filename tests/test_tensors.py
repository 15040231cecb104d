"""edge.tensors: Arrow columns <-> numpy tensors, with the seed's input rules (every row one
shape, one element type, no nulls, no cast that loses information), each refusal a
`BadInput` naming where the column is."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from edge.errors import BadInput
from edge.tensors import array_to_tensor, column_to_ndarray, ndarray_to_column

F32 = np.dtype(np.float32)
WHERE = "column 'tensor' of step 'm'"


def from_column(values: Any, dtype: np.dtype, shape: Any) -> np.ndarray:
    return column_to_ndarray(pa.array(values), dtype, shape, WHERE)


def from_array(values: Any, dtype: np.dtype, shape: Any) -> np.ndarray:
    return array_to_tensor(np.asarray(values), dtype, shape, WHERE)


# the small requests' path (numpy arrays) and the general path (Arrow columns) obey one rule set
BOTH = pytest.mark.parametrize("convert", [from_column, from_array], ids=["arrow", "numpy"])


# ---------------------------------------------------------------------------- shapes


@BOTH
def test_rows_become_the_first_axis(convert: Callable[..., np.ndarray]) -> None:
    matrix = convert([[1, 2], [3, 4], [5, 6]], F32, [None, 2])
    assert matrix.dtype == F32 and matrix.shape == (3, 2)
    assert matrix.tolist() == [[1, 2], [3, 4], [5, 6]]
    cube = convert([[[1, 2], [3, 4]], [[5, 6], [7, 8]]], F32, ["batch", 2, 2])
    assert cube.shape == (2, 2, 2) and cube[1, 0].tolist() == [5, 6]


@BOTH
def test_a_scalar_column_feeds_an_n_by_1_input(convert: Callable[..., np.ndarray]) -> None:
    assert convert([1.0, 2.0], F32, [None, 1]).shape == (2, 1)
    assert convert([1.0, 2.0], F32, [None]).shape == (2,)


@BOTH
@pytest.mark.parametrize("free", [None, "N", -1, 0])
def test_free_axes_take_any_length(convert: Callable[..., np.ndarray], free: Any) -> None:
    assert convert([[1, 2, 3]], F32, [None, free]).shape == (1, 3)


@BOTH
@pytest.mark.parametrize(
    "values,expected,message",
    [
        ([[1, 2]], [None, 3], "each row has shape 2; the model expects 3"),
        ([[1, 2, 3, 4]], [None, 2, 2], "each row has shape 4; the model expects 2x2"),
        ([1.0, 2.0], [None, 3], "each row has shape scalar; the model expects 3"),
        ([[[1, 2]]], [None, 2], "each row has shape 1x2; the model expects 2"),
        ([[1, 2]], [None], "each row has shape 2; the model expects scalar"),
    ],
)
def test_a_row_shape_the_model_does_not_take_is_refused(
    convert: Callable[..., np.ndarray], values: Any, expected: list[Any], message: str
) -> None:
    with pytest.raises(BadInput) as refused:
        convert(values, F32, expected)
    assert str(refused.value) == f"{WHERE}: {message}"


def test_without_an_expected_shape_any_uniform_shape_passes() -> None:
    assert from_column([[[1], [2], [3]]], F32, None).shape == (1, 3, 1)


@pytest.mark.parametrize(
    "column",
    [
        pa.array([[9, 9], [1, 2], [3, 4]]).slice(1),
        pa.FixedSizeListArray.from_arrays(pa.array([9.0, 9, 1, 2, 3, 4]), 2).slice(1),
        pa.array([[9, 9], [1, 2], [3, 4]], pa.large_list(pa.int64())).slice(1),
        pa.chunked_array([pa.array([[1, 2]]), pa.array([[3, 4]])]),
    ],
    ids=["sliced-list", "sliced-fixed-size-list", "sliced-large-list", "two-chunks"],
)
def test_every_list_layout_gives_the_rows_it_holds(column: Any) -> None:
    tensor = column_to_ndarray(column, F32, [None, 2], WHERE)
    assert tensor.tolist() == [[1, 2], [3, 4]]


# ---------------------------------------------------------------------------- refusals


def test_ragged_rows_are_refused_naming_the_rows() -> None:
    with pytest.raises(BadInput) as refused:
        from_column([[1, 2], [3, 4], [5]], F32, [None, 2])
    assert str(refused.value) == (
        f"{WHERE}: ragged tensor: row lengths differ (2 in row 0, 1 in row 2); "
        "every row must have the same shape"
    )
    # a ragged inner list is named by the request row that holds it
    with pytest.raises(BadInput, match=r"ragged tensor: .*\(2 in row 0, 1 in row 1\)"):
        from_column([[[1, 2], [3, 4]], [[5, 6], [7]]], F32, None)
    with pytest.raises(BadInput, match=r"ragged tensor: .*\(2 in row 0, 3 in row 2\)"):
        from_column([[[1, 2]], [[3, 4]], [[5, 6, 7]]], F32, None)


def test_nulls_are_refused_naming_the_row() -> None:
    with pytest.raises(BadInput) as refused:
        from_column([1.0, 2.0, None], F32, [None])
    assert str(refused.value) == f"{WHERE}: missing value (null) in row 2"
    with pytest.raises(BadInput, match=f"^{WHERE}: missing value \\(null\\) inside a tensor$"):
        from_column([[1.0, None]], F32, [None, 2])
    with pytest.raises(BadInput, match="null"):
        from_column([[1.0, 2.0], None], F32, [None, 2])


def test_text_is_refused_where_numbers_are_expected_and_kept_where_text_is() -> None:
    with pytest.raises(BadInput) as refused:
        from_column([["a", "b"]], F32, [None, 2])
    assert str(refused.value) == (
        f"{WHERE}: holds text (or mixed element types) where the model expects float32 numbers"
    )
    text = from_column([["a", "b"], ["c", "d"]], np.dtype(object), [None, 2])
    assert text.dtype == object and text.tolist() == [["a", "b"], ["c", "d"]]


def test_an_element_type_that_is_not_numeric_is_refused() -> None:
    stamps = pa.array([1, 2], pa.timestamp("ms"))
    with pytest.raises(BadInput, match="element type timestamp\\[ms\\] cannot feed a float32"):
        column_to_ndarray(stamps, F32, [None], WHERE)


@BOTH
@pytest.mark.parametrize(
    "values,dtype,message",
    [
        ([[1.5, 2.0]], np.int64, "cannot be cast to int64 without loss"),
        ([[np.nan, 2.0]], np.int32, "cannot be cast to int32 without loss"),
        ([[np.inf, 2.0]], np.int64, "without loss"),
        ([[300, 1]], np.int8, "values out of range for int8"),
        ([[-1, 1]], np.uint8, "values out of range for uint8"),
        ([[1e20, 1.0]], np.int64, "values out of range for int64"),
        ([[1e300, 1.0]], np.float32, "values out of range for float32"),
    ],
)
def test_a_cast_that_would_lose_information_is_refused(
    convert: Callable[..., np.ndarray], values: Any, dtype: Any, message: str
) -> None:
    with pytest.raises(BadInput) as refused:
        convert(values, np.dtype(dtype), [None, 2])
    assert str(refused.value).startswith(f"{WHERE}: ") and message in str(refused.value)


@BOTH
@pytest.mark.parametrize(
    "values,dtype,expected",
    [
        ([[2.0, -3.0]], np.int64, [[2, -3]]),  # whole floats to integers
        ([[127, -128]], np.int8, [[127, -128]]),  # the edges of the range
        ([[1, 2]], np.float32, [[1.0, 2.0]]),  # integers to floats
        ([[True, False]], np.float32, [[1.0, 0.0]]),
        ([[0.1, 2.5]], np.float32, [[np.float32(0.1), 2.5]]),  # rounding is not loss
    ],
)
def test_a_cast_that_keeps_the_values_is_made(
    convert: Callable[..., np.ndarray], values: Any, dtype: Any, expected: Any
) -> None:
    tensor = convert(values, np.dtype(dtype), [None, 2])
    assert tensor.dtype == np.dtype(dtype) and tensor.tolist() == expected


@BOTH
def test_an_infinity_the_input_had_is_kept_when_narrowing(
    convert: Callable[..., np.ndarray],
) -> None:
    kept = convert([[np.inf, -np.inf]], F32, [None, 2])
    assert kept.dtype == F32 and np.isinf(kept).all()


# ---------------------------------------------------------------------------- back to Arrow


@pytest.mark.parametrize(
    "dtype", [np.int8, np.int32, np.int64, np.uint8, np.uint64, np.float32, np.float64, np.bool_]
)
@pytest.mark.parametrize("shape", [(5,), (5, 3), (5, 2, 3), (1, 1, 1, 2)])
def test_ndarray_arrow_ndarray_round_trip(dtype: Any, shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(3)
    tensor = (rng.random(shape) * 100).astype(dtype)
    column = ndarray_to_column(tensor)
    assert len(column) == shape[0]
    assert column.to_pylist() == tensor.tolist()  # rows of rank >= 1 are (nested) lists
    back = column_to_ndarray(column, np.dtype(dtype), [None, *shape[1:]], WHERE)
    assert back.dtype == np.dtype(dtype) and back.shape == shape
    np.testing.assert_array_equal(back, tensor)


def test_arrow_ndarray_arrow_round_trip_survives_ipc() -> None:
    column = pa.array([[[1.5, 2.5]], [[3.5, 4.5]]], pa.list_(pa.list_(pa.float64())))
    tensor = column_to_ndarray(column, np.dtype(np.float64), None, WHERE)
    sink = pa.BufferOutputStream()
    table = pa.table({"t": ndarray_to_column(tensor)})
    with pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    read = pa.ipc.open_file(sink.getvalue()).read_all()
    assert read.column("t").to_pylist() == column.to_pylist()


def test_a_view_that_is_not_contiguous_gives_its_own_values() -> None:
    view = np.arange(6).reshape(3, 2).T  # a transposed view: column-major in memory
    assert ndarray_to_column(view).to_pylist() == [[0, 2, 4], [1, 3, 5]]
    every_other = np.arange(10, dtype=np.float32)[::2]
    assert ndarray_to_column(every_other).to_pylist() == [0, 2, 4, 6, 8]


def test_text_and_zero_dimensional_tensors() -> None:
    assert ndarray_to_column(np.array(["a", "b"])).to_pylist() == ["a", "b"]
    assert ndarray_to_column(np.array([["a"], ["b"]])).to_pylist() == [["a"], ["b"]]
    assert ndarray_to_column(np.array(3.5)).to_pylist() == [3.5]


def test_many_rows_get_their_own_offsets() -> None:
    tensor = np.arange(1000 * 3).reshape(1000, 3)
    column = ndarray_to_column(tensor)
    assert column.to_pylist()[999] == [2997, 2998, 2999]
    assert ndarray_to_column(tensor[:2]).to_pylist() == [[0, 1, 2], [3, 4, 5]]
