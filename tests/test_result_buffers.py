"""The result table's columns built from buffers (pyarrow's own constructors, given Python
values, import pandas): each equals what `pa.array` / `pa.scalar` build, on the edge cases."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from edge.codecs.arrow import SPLIT_TYPE, split_lists
from edge.result import _all_equal_to, repeated_list, scalar, texts

LISTS = pa.list_(pa.string())


@pytest.mark.parametrize("values", [[], ["a"], ["", "é", "a b"], ["x", None, "y"], [None]])
def test_texts_are_the_string_arrays_pyarrow_builds(values: list[str | None]) -> None:
    built = texts(values)
    built.validate(full=True)
    assert built.equals(pa.array(values, pa.string()))


@pytest.mark.parametrize("names", [[], ["in.x"], ["in.é", "out.y"]])
@pytest.mark.parametrize("rows", [0, 1, 3])
def test_repeated_lists_are_the_lists_pyarrow_builds(names: list[str], rows: int) -> None:
    built = repeated_list(names, rows)
    built.validate(full=True)
    assert built.equals(pa.array([names] * rows, LISTS))


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        (0, pa.uint32()),
        (7, pa.int64()),
        (0.5, pa.float32()),
        (False, pa.bool_()),
        ("é", pa.string()),
    ],
)
def test_scalars_are_the_scalars_pyarrow_builds(value: object, kind: pa.DataType) -> None:
    assert scalar(value, kind).equals(pa.scalar(value, kind))


def test_all_equal_to_reads_sliced_lists_and_counts_null_rows_as_empty() -> None:
    lists = pa.array([["x"], [], ["a", "b"], ["a", "b"], None, ["a", "b"]], LISTS)
    assert _all_equal_to(lists.slice(2, 2), ["a", "b"])
    assert not _all_equal_to(lists.slice(2), ["a", "b"])  # the null row is []
    assert _all_equal_to(lists.slice(1, 1), []) and _all_equal_to(lists.slice(4, 1), [])
    assert not _all_equal_to(lists.slice(0, 2), ["x"])
    assert not _all_equal_to(pa.array([["a", "c"]], LISTS), ["a", "b"])  # same length, not equal


def test_split_lists_are_the_lists_pyarrow_builds() -> None:
    chosen = [{"name": "a", "version": "v1", "sha": "s"}, None, {"name": "b", "sha": "t"}]
    column = pa.chunked_array([pa.array([c and json.dumps(c) for c in chosen], pa.string())])
    expected = [
        None if c is None else [{k: c.get(k) for k in ("name", "version", "sha")}] for c in chosen
    ]
    built = split_lists(column)
    built.validate(full=True)
    assert built.equals(pa.array(expected, SPLIT_TYPE))
