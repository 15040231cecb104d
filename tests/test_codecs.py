"""Codecs: request bodies to Arrow, result tables to JSON records or Arrow, dataset shaping."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pytest

from edge import codecs
from edge.codecs import records
from edge.codecs.records_large import records_large
from edge.codecs.records_large import row_objects as records_large_rows
from edge.errors import BadInput
from edge.tensors import ndarray_to_column


def result_table(n: int) -> pa.Table:
    rng = np.random.default_rng(1)
    probabilities = rng.random((n, 2)).astype(np.float32)
    return pa.table(
        {
            "time": pa.array(
                np.full(n, 1_700_000_000_123, "datetime64[ms]"), pa.timestamp("ms", tz="UTC")
            ),
            "in.tensor": ndarray_to_column(rng.random((n, 3))),
            "out.label": pa.array(np.arange(n, dtype=np.int64)),
            "out.probabilities": ndarray_to_column(probabilities),
            "anomaly.count": pa.array(np.zeros(n, np.uint32)),
            "metadata.elapsed": pa.array([[1, 2]] * n, pa.list_(pa.int64())),
            "metadata.dropped": pa.array([[]] * n, pa.list_(pa.string())),
        }
    )


INFO = codecs.RecordInfo("p", "m", "v1", [10, 20])


def varied_table(n: int) -> pa.Table:
    """A result table with every kind of column the writers meet: tensors of 1 to 3
    dimensions in several precisions, text, bools, nulls, ragged lists, shadow outputs,
    per-request constants, a column whose first rows look constant."""
    rng = np.random.default_rng(2)
    table = result_table(n)
    extra = {
        "in.name": pa.array([f'row {i} \u00e9"' for i in range(n)]),
        "in.flag": pa.array([i % 3 == 0 for i in range(n)]),
        "in.late": pa.array([0, 0, *range(1, n - 1)]),  # its first two rows agree
        "in.maybe": pa.array([None if i % 5 == 0 else i * 1.5 for i in range(n)]),
        "in.ragged": pa.array([[1] * (i % 3) for i in range(n)], pa.list_(pa.int64())),
        "in.cube": ndarray_to_column(rng.integers(-9, 9, (n, 2, 3))),
        "out.score": pa.array(rng.random(n).astype(np.float32)),
        "out.small": pa.array(rng.integers(0, 9, n).astype(np.uint8)),
        "out.mask": ndarray_to_column(rng.random((n, 2)) > 0.5),
        "out_challenger.label": pa.array(np.arange(n, dtype=np.int32)),
        "out._model_split": pa.array(
            [None if i == 3 else '{"name":"a","version":"v","sha":"s"}' for i in range(n)]
        ),
        "metadata.partition": pa.array(["edge-1"] * n),
        "metadata.last_model": pa.array(['{"model_name": "m", "model_sha": "s"}'] * n),
    }
    for name, column in extra.items():
        table = table.append_column(name, column)
    return table


def per_record_info(table: pa.Table) -> codecs.RecordInfo:
    """Facts that differ per record: check failures, original data, the split's model."""
    rows = table.num_rows
    flagged: list[Any] = [{"True": {"expr": "x", "name": "x"}}]
    inputs = table.select([n for n in table.column_names if n.startswith("in.")])
    return codecs.RecordInfo(
        "p",
        "m",
        "v",
        [1],
        [flagged if i % 4 == 0 else [] for i in range(rows)],
        {"c": {"error": "e"}},
        inputs.rename_columns([n[3:] for n in inputs.column_names]),
        [("a", "va") if i % 3 else ("b", "vb") for i in range(rows)],
    )


@pytest.mark.parametrize("separator", [None, ".", "_"])
@pytest.mark.parametrize("info", [INFO, None, "per-record"])
def test_small_and_large_writers_write_the_same_bytes(
    separator: str | None, info: codecs.RecordInfo | str | None
) -> None:
    table = varied_table(codecs.SMALL + 6)
    if info == "per-record":
        info = per_record_info(table)
    assert not isinstance(info, str)
    large = records_large(table, info, separator)
    small = records._records_small(table, info, separator)
    assert large == small
    assert len(orjson.loads(large)) == table.num_rows


def test_original_data_is_each_records_input_row() -> None:
    """The seed's `original_data`: the row as received (the record's `in` object), null when
    it is too long; the columnar rows equal the per-row ones."""
    table = varied_table(codecs.SMALL + 6)
    info = per_record_info(table)
    assert info.inputs is not None
    for body in (records_large(table, info, None), records._records_small(table, info, None)):
        written = orjson.loads(body)
        assert [r["original_data"] for r in written] == [r["in"] for r in written]
        assert [r["check_failures"] for r in written] == info.check_failures
        assert [r["model_name"] for r in written] == [m for m, _ in info.row_models or []]
    few = info.inputs.slice(0, 5)
    assert records_large_rows(few) == [
        orjson.dumps(row, option=orjson.OPT_SERIALIZE_NUMPY) for row in few.to_pylist()
    ]
    wide = pa.table({"x": [[0.5] * 20_000, [1.0]]})
    texts = codecs.RecordInfo("p", "m", "v", [1], inputs=wide).original_data(2)
    assert texts == [b"null", b'{"x":[1.0]}']  # past ORIGINAL_DATA_BYTES: null


def test_records_normalize_to_seed_columns() -> None:
    records = json.loads(codecs.encode_records(result_table(3), INFO, None))
    frame = pd.json_normalize(records)
    assert {
        "time",
        "in.tensor",
        "out.label",
        "out.probabilities",
        "anomaly.count",
        "metadata.elapsed",
        "check_failures",
        "outputs",
    } <= set(frame.columns)
    assert records[0]["shadow_data"] == {} and records[0]["original_data"] is None
    assert records[0]["time"] == 1_700_000_000_123
    assert records[0]["outputs"][0] == {"Int64": {"data": [0], "dim": [1], "v": 1}}
    assert records[0]["outputs"][1]["Float"]["dim"] == [1, 2]
    flat = json.loads(codecs.encode_records(result_table(3), INFO, "."))
    assert "out.label" in flat[0] and "out" not in flat[0]


def test_dataset_selection() -> None:
    table = result_table(2)
    assert codecs.select_datasets(table, None, None).column_names == [
        "time",
        "in.tensor",
        "out.label",
        "out.probabilities",
        "anomaly.count",
    ]
    assert codecs.select_datasets(table, ["out"], None).column_names == [
        "out.label",
        "out.probabilities",
    ]
    assert codecs.select_datasets(table, ["*", "metadata.elapsed"], ["in"]).column_names == [
        "time",
        "out.label",
        "out.probabilities",
        "anomaly.count",
        "metadata.elapsed",
    ]


def test_decode_records_and_arrow() -> None:
    small = codecs.decode_records(b'[{"tensor": [1, 2]}, {"tensor": [3, 4]}]')
    assert small.num_rows == 2
    big_body = json.dumps([{"tensor": [1.5, 2.5], "id": i} for i in range(500)]).encode()
    big = codecs.decode_records(big_body)
    assert big.num_rows == 500 and set(big.column_names) == {"tensor", "id"}
    roundtrip = codecs.decode_arrow(codecs.encode_arrow(big))
    assert roundtrip.equals(big)
    for body in (b'{"a": 1}', b"[]", b"[1, 2]", b'[{"a": 1'):
        with pytest.raises(BadInput):
            codecs.decode_records(body)
    with pytest.raises(BadInput, match="Arrow"):
        codecs.decode_arrow(b"nonsense")


def test_large_json_types_come_from_every_row() -> None:
    rows = [{"a": 1}] * 1_000 + [{"a": 2.5}]
    table = codecs.decode_records(json.dumps(rows).encode())
    assert table.column("a").type == pa.float64()
    assert table.column("a")[-1].as_py() == 2.5


def test_damaged_arrow_bodies_are_always_a_bad_input() -> None:
    body = codecs.encode_arrow(pa.table({"X": pa.array([[1.0, 2.0]] * 4)}))
    rng = np.random.default_rng(7)
    for _ in range(400):
        damaged = bytearray(body)
        position = int(rng.integers(len(damaged)))
        damaged[position] ^= 1 << int(rng.integers(8))
        try:
            codecs.decode_arrow(bytes(damaged))
        except BadInput:
            pass  # anything else (a 500) fails the test
    twice = pa.Table.from_arrays([pa.array([1.0]), pa.array([2.0])], names=["X", "X"])
    with pytest.raises(BadInput, match="more than once"):
        codecs.decode_arrow(codecs.encode_arrow(twice))


def test_unknown_dataset_names_are_refused() -> None:
    with pytest.raises(BadInput, match="unknown dataset 'bogus'"):
        codecs.select_datasets(result_table(1), ["bogus"], None)
    assert codecs.select_datasets(result_table(1), ["metadata.elapsed"], None).column_names == [
        "metadata.elapsed"
    ]
