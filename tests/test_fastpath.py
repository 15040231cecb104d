"""The small requests' path (edge.fastpath) against the general one (Pipeline.run and
codecs.encode_records): for a corpus of requests and every dataset / dataset_exclude /
separator combination, the same response bytes and the same logged table; and every request
it does not take (validations, A/B split, shadow, Python steps, bad input) left to the general
path, which answers it as before."""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from edge import codecs, fastpath
from edge.errors import BadInput
from edge.pipeline import Pipeline
from edge.result import ResultRows
from tests.conftest import load_quietly, publish
from tests.models import iris, onnx_classifier, write_files

FEATURES, LABELS, _ = iris()
SHAPES = [
    codecs.Shape(dataset, exclude, separator)
    for dataset, exclude, separator in itertools.product(
        [
            None,
            ("*",),
            ("out",),
            ("time", "in"),
            ("metadata",),
            ("*", "metadata.elapsed"),
            ("anomaly", "meta"),
        ],
        [None, ("in",), ("metadata.partition", "time")],
        [None, ".", "_"],
    )
]


def _scaler(path: Path) -> None:
    from skl2onnx import to_onnx
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(FEATURES)
    path.write_bytes(to_onnx(scaler, FEATURES[:1], target_opset=17).SerializeToString())


SPECS = {
    "single": "name: single\nsteps:\n  - model: logistic\n    file: models/logistic.onnx\n",
    "chain": (
        "name: chain\nsteps:\n  - model: scaler\n    file: models/scaler.onnx\n"
        "  - model: logistic\n    file: models/logistic.onnx\n"
    ),
    "fields": (
        "name: fields\nsteps:\n  - model: logistic\n    file: models/logistic.onnx\n"
        "    tensor_fields: [tensor]\n"
    ),
    "validated": (
        "name: validated\nsteps:\n  - model: logistic\n    file: models/logistic.onnx\n"
        'validations:\n  high: pl.col("out.label") > 0\n'
    ),
    "split": (
        "name: split\nsteps:\n  - random_split:\n      models:\n"
        "        - {weight: 1, model: a, file: models/logistic.onnx}\n"
        "        - {weight: 1, model: b, file: models/logistic.onnx}\n"
    ),
    "keyed": (
        "name: keyed\nsteps:\n  - random_split:\n      hash_key: key\n      models:\n"
        "        - {weight: 1, model: a, file: models/logistic.onnx, tensor_fields: [tensor]}\n"
        "        - {weight: 1, model: b, file: models/scaler.onnx, tensor_fields: [tensor]}\n"
    ),
    "shadow": (
        "name: shadow\nsteps:\n  - shadow:\n"
        "      champion: {model: a, file: models/logistic.onnx}\n"
        "      challengers:\n        - {model: b, file: models/logistic.onnx}\n"
    ),
    "python": (
        "name: python\nsteps:\n  - model: logistic\n    file: models/logistic.onnx\n"
        "  - python: post\n    file: steps/post.py\n"
    ),
}


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Pipeline]:
    from sklearn.linear_model import LogisticRegression

    folder = tmp_path_factory.mktemp("fast")
    onnx_classifier(
        LogisticRegression(max_iter=300), FEATURES, LABELS, folder / "models/logistic.onnx"
    )
    _scaler(folder / "models/scaler.onnx")
    write_files(folder, {"steps/post.py": "def wallaroo_json(data):\n    return data\n"})
    loaded = {}
    for name, spec in SPECS.items():
        (folder / f"{name}.yaml").write_text(spec)
        url = publish(folder / f"{name}.yaml", layout=folder / f"layout-{name}")["pipeline_url"]
        loaded[name] = load_quietly(url, folder / f"persist-{name}", partition="edge-1")
    yield loaded
    for pipeline in loaded.values():
        pipeline.close()


@pytest.fixture(autouse=True)
def fixed_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """Both paths read the same clocks: `time` and `elapsed` come out equal."""
    monkeypatch.setattr(time, "time_ns", lambda: 1_790_000_000_123_000_000)
    monkeypatch.setattr(time, "perf_counter_ns", lambda: 0)


def general(pipeline: Pipeline, body: bytes, shape: codecs.Shape) -> tuple[bytes, pa.Table]:
    inference = pipeline.run(codecs.decode_records(body), 0)
    shown = codecs.shape(inference.table, shape)
    records = codecs.encode_records(shown, inference.record_info(pipeline.name), shape.separator)
    return records, inference.table


def rows(values: list[list[float]], **extra: list[object]) -> bytes:
    records = [
        {"tensor": v, **{k: col[i] for k, col in extra.items()}} for i, v in enumerate(values)
    ]
    return json.dumps(records).encode()


CORPUS = {
    "single": [
        rows(FEATURES[:1].tolist()),
        rows(FEATURES[:3].tolist()),
        rows([[5, 3, 1, 0]]),  # ints: the echo keeps them
        rows([[5, 3.5, 1, 0.25]]),
        json.dumps([{"X": FEATURES[7].tolist()}]).encode(),  # a lone column, any name
    ],
    "chain": [rows(FEATURES[10:11].tolist()), rows(FEATURES[20:25].tolist())],
    "fields": [
        rows(FEATURES[:2].tolist(), request_id=[7, 8]),
        rows(FEATURES[:1].tolist(), score=[0.5], flags=[[1, 0]]),
    ],
}


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_the_small_path_answers_byte_for_byte_as_the_general_path(
    pipelines: dict[str, Pipeline], name: str
) -> None:
    pipeline = pipelines[name]
    assert pipeline.fast is not None
    for body in CORPUS[name]:
        fast = pipeline.fast.run(body)
        assert fast is not None, body
        for shape in SHAPES:
            expected, table = general(pipeline, body, shape)
            assert fastpath.encode(fast, shape) == expected, (body, shape)
        logged = ResultRows.table([fast.rows])
        assert logged.schema == table.schema
        assert logged.equals(table)


def test_a_turn_of_requests_is_logged_as_one_table_equal_to_theirs(
    pipelines: dict[str, Pipeline],
) -> None:
    pipeline = pipelines["single"]
    assert pipeline.fast is not None
    bodies = [rows(FEATURES[i : i + n].tolist()) for i, n in ((0, 1), (5, 3), (9, 1))]
    answered = [pipeline.fast.run(body) for body in bodies]
    joined = ResultRows.table([a.rows for a in answered if a is not None])
    each = [general(pipeline, body, codecs.Shape())[1] for body in bodies]
    assert joined.equals(pa.concat_tables(each))


@pytest.mark.parametrize("name", ["validated", "split", "shadow", "python"])
def test_pipelines_the_small_path_cannot_run_have_none(
    pipelines: dict[str, Pipeline], name: str
) -> None:
    pipeline = pipelines[name]
    assert pipeline.fast is None
    records, _ = general(pipeline, rows(FEATURES[:1].tolist()), codecs.Shape())
    assert len(json.loads(records)) == 1


DECLINED = [
    b'[{"tensor": "text"}]',
    b'[{"tensor": null}]',
    b'[{"tensor": [1, 2, 3, 4]}, {"tensor": [1, 2]}]',  # ragged
    b'[{"tensor": [true, false, true, false]}]',
    b'[{"tensor": [1, 2, 3, 4, 5]}]',  # the model takes 4
    b'[{"tensor": [1e300, 2, 3, 4]}]',  # out of range for float32
    b'[{"tensor": [1, 2, 3, 4]}, {"other": [1, 2, 3, 4]}]',  # rows of other columns
    b"[]",
    b"{}",
    b"[1, 2]",
    b"not json",
    rows(FEATURES[:65].tolist()),  # more rows than the small path takes
]


@pytest.mark.parametrize("body", DECLINED)
def test_requests_it_does_not_take_go_to_the_general_path(
    pipelines: dict[str, Pipeline], body: bytes
) -> None:
    pipeline = pipelines["single"]
    assert pipeline.fast is not None
    assert pipeline.fast.run(body) is None
    try:
        records, _ = general(pipeline, body, codecs.Shape())
    except BadInput as exc:
        assert str(exc)  # the general path's 400, naming what is wrong
    else:
        assert json.loads(records)


def test_the_rows_of_one_loop_turn_are_journaled_as_one_table(
    pipelines: dict[str, Pipeline], tmp_path: Path
) -> None:
    import asyncio

    from edge.logbuffer import LogBuffer

    pipeline = pipelines["single"]
    assert pipeline.fast is not None
    bodies = [rows(FEATURES[i : i + n].tolist()) for i, n in ((0, 1), (5, 3), (9, 1))]
    answered = [pipeline.fast.run(body) for body in bodies]
    with LogBuffer(tmp_path / "logbuffer.db") as buffer:

        async def one_turn() -> list[tuple[int, int]]:
            logged = [buffer.submit(a.rows) for a in answered if a is not None]
            return [(r.first, r.last) for r in await asyncio.gather(*logged)]

        assert asyncio.run(one_turn()) == [(1, 1), (2, 4), (5, 5)]
        buffer.flush()
        assert buffer.stats()["appends"] == 1  # one journal record, one table, for the turn
        stored, _ = buffer.query(limit=10)
    each = [general(pipeline, body, codecs.Shape())[1] for body in bodies]
    expected = pa.concat_tables(each)
    assert stored.to_pylist()[::-1] == expected.to_pylist()  # newest first


def test_a_split_choosing_per_row_is_left_to_the_general_path(
    pipelines: dict[str, Pipeline],
) -> None:
    """The A/B split (one model per row by its key) is the general path's: it declines the
    pipeline, whose records name each row's model."""
    pipeline = pipelines["keyed"]
    assert pipeline.fast is None
    body = rows(FEATURES[:2].tolist(), key=[0.25, 0.75])
    for shape in SHAPES:
        records, table = general(pipeline, body, shape)
        assert len(json.loads(records)) == 2
    assert [r["model_name"] for r in json.loads(general(pipeline, body, codecs.Shape())[0])] == [
        "a",
        "b",
    ]


def test_the_small_path_writes_each_records_original_data_and_no_failures(
    pipelines: dict[str, Pipeline],
) -> None:
    body = rows(FEATURES[:2].tolist(), request_id=[7, 8])
    fast = pipelines["fields"].fast
    assert fast is not None
    answered = fast.run(body)
    assert answered is not None
    written = json.loads(fastpath.encode(answered, codecs.Shape()))
    assert [r["original_data"] for r in written] == json.loads(body)
    assert [r["check_failures"] for r in written] == [[], []]


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_a_turn_journaled_from_its_template_reads_back_as_its_table(
    pipelines: dict[str, Pipeline], name: str
) -> None:
    pipeline = pipelines[name]
    assert pipeline.fast is not None
    answered = [pipeline.fast.run(body) for body in CORPUS[name]]
    results = [a.rows for a in answered if a is not None]
    by_layout: dict[object, list[ResultRows]] = {}
    for one in results:
        by_layout.setdefault(one.key(), []).append(one)
    for group in [*by_layout.values(), *([r] for r in results)]:
        for _ in range(2):  # made, then taken from the builder's cache
            encoded = ResultRows.encoded(group)
            assert encoded is not None
            expected = ResultRows.table(group)
            assert encoded.schema.equals(expected.schema)
            batch = pa.ipc.read_record_batch(pa.py_buffer(encoded.message), encoded.schema)
            assert pa.Table.from_batches([batch]).equals(expected)
            assert encoded.rows == expected.num_rows
            assert encoded.bounds == (1_790_000_000_123, 1_790_000_000_123)


def test_a_layout_whose_values_are_not_kept_as_they_are_gets_no_template() -> None:
    from edge.ipc_template import BatchTemplate
    from edge.tensors import ndarray_to_column

    def build(arrays: list[np.ndarray]) -> pa.Table:
        return pa.table({f"c{i}": ndarray_to_column(a) for i, a in enumerate(arrays)})

    floats = BatchTemplate.make(build, [(np.dtype(np.float32), (3, 4))])
    assert floats is not None
    values = np.arange(12, dtype=np.float32).reshape(3, 4)
    batch = pa.ipc.read_record_batch(pa.py_buffer(floats.fill([values])), floats.schema)
    assert batch.column(0).to_pylist() == values.tolist()
    with pytest.raises(ValueError, match="12 bytes for a slot of 48"):
        floats.fill([values[:1, :3]])  # another layout
    # bools are packed into bits: no value's bytes are in the message as they are
    assert BatchTemplate.make(build, [(np.dtype(np.bool_), (3, 4))]) is None
