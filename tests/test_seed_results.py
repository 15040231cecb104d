"""What the seed documents about results, done as documented (issue 16): per-record
`check_failures`, `original_data`, the seed's Arrow types, null inputs, a validation named
`count`, and the A/B split's per-row key and `out._model_split`."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pytest

from edge import codecs
from edge.appliance import Appliance, LoadState
from edge.config import Settings
from edge.logbuffer import LogBuffer
from edge.pipeline import Pipeline
from edge.server import create_app
from tests.conftest import load_quietly, publish
from tests.models import iris, onnx_classifier, write_files

FEATURES, LABELS, _ = iris()
ARROW = "application/vnd.apache.arrow.file"
JSON = {"content-type": "application/json; format=pandas-records"}

SPECS = {
    "single": (
        "name: single\nsteps:\n  - model: logistic\n    file: models/logistic.onnx\n"
        "    tensor_fields: [tensor]\n"
    ),
    "validated": (
        "name: validated\nsteps:\n  - model: logistic\n    file: models/logistic.onnx\n"
        "validations:\n"
        '  big: pl.col("in.tensor").list.get(0) > 6.0\n'
        '  wide: pl.col("in.tensor").list.get(1) > 3.5\n'
    ),
    "python": "name: python\nsteps:\n  - python: echo\n    file: steps/echo.py\n",
    "keyed": (
        "name: keyed\nsteps:\n  - random_split:\n      hash_key: key\n      models:\n"
        "        - {weight: 1, model: a, file: models/logistic.onnx, tensor_fields: [tensor]}\n"
        "        - {weight: 1, model: b, file: models/logistic.onnx, tensor_fields: [tensor]}\n"
    ),
}


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from sklearn.linear_model import LogisticRegression

    folder = tmp_path_factory.mktemp("seed")
    onnx_classifier(
        LogisticRegression(max_iter=300), FEATURES, LABELS, folder / "models/logistic.onnx"
    )
    write_files(folder, {"steps/echo.py": "def wallaroo_json(data):\n    return data\n"})
    return folder


@pytest.fixture(scope="module")
def urls(folder: Path) -> dict[str, str]:
    found = {}
    for name, spec in SPECS.items():
        (folder / f"{name}.yaml").write_text(spec)
        found[name] = publish(folder / f"{name}.yaml", layout=folder / f"layout-{name}")[
            "pipeline_url"
        ]
    return found


@pytest.fixture(scope="module")
def pipelines(folder: Path, urls: dict[str, str]) -> Iterator[dict[str, Pipeline]]:
    loaded = {}
    for name, url in urls.items():
        loaded[name] = load_quietly(url, folder / f"persist-{name}", partition="edge-1")
    yield loaded
    for pipeline in loaded.values():
        pipeline.close()


def records(pipeline: Pipeline, rows: list[dict[str, Any]], **shape: Any) -> list[dict[str, Any]]:
    inference = pipeline.run(codecs.decode_records(json.dumps(rows).encode()))
    how = codecs.Shape(**shape)
    shown = codecs.shape(inference.table, how)
    body = codecs.encode_records(shown, inference.record_info(pipeline.name), how.separator)
    return list(json.loads(body))


class App:
    """An appliance serving one pipeline with its own log buffer, called in-process."""

    def __init__(self, pipeline: Pipeline, url: str, persist: Path) -> None:
        self.buffer = LogBuffer(persist / "logbuffer.db")
        self.buffer.start()
        settings = Settings(pipeline_url=url, persist_dir=persist, partition="edge-1")
        appliance = Appliance(
            settings, buffer=self.buffer, pipeline=pipeline, state=LoadState.RUNNING
        )
        self.app = create_app(appliance)

    def call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        async def go() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://edge") as client:
                return await client.request(method, path, **kwargs)

        return asyncio.run(go())

    def infer(self, name: str, rows: Any, **headers: str) -> httpx.Response:
        body = rows if isinstance(rows, bytes) else json.dumps(rows).encode()
        return self.call("POST", f"/pipelines/{name}", content=body, headers={**JSON, **headers})

    def logs_arrow(self) -> pa.Table:
        self.buffer.flush()
        reply = self.call("GET", "/logs", headers={"accept": ARROW})
        assert reply.status_code == 200, reply.text
        return pa.ipc.open_file(pa.py_buffer(reply.content)).read_all()


@pytest.fixture
def app(pipelines: dict[str, Pipeline], urls: dict[str, str], tmp_path: Path) -> Iterator[Any]:
    made: list[App] = []

    def make(name: str) -> App:
        made.append(App(pipelines[name], urls[name], tmp_path / f"persist-{len(made)}"))
        return made[-1]

    yield make
    for one in made:
        one.buffer.close()


def tensor_rows(count: int, start: int = 0) -> list[dict[str, Any]]:
    return [{"tensor": row} for row in FEATURES[start : start + count].tolist()]


# ---------------------------------------------------------------------- 3. Arrow types


SEED_FLOAT_OUT = pa.list_(pa.field("inner", pa.float32(), nullable=False))


def test_arrow_answers_have_the_seeds_types(app: Any) -> None:
    """The seed's `infer` printout: time timestamp[ms], in.tensor list<item: float> not
    null, out.dense_1 list<inner: float not null> not null, anomaly.count int8."""
    served = app("validated")
    body = codecs.encode_arrow(
        pa.table({"tensor": pa.array(FEATURES[:3].tolist(), pa.list_(pa.float32()))})
    )
    reply = served.infer("validated", body, **{"content-type": ARROW, "accept": ARROW})
    assert reply.status_code == 200, reply.text
    table = pa.ipc.open_file(pa.py_buffer(reply.content)).read_all()
    schema = table.schema
    assert schema.field("time").type == pa.timestamp("ms")
    assert schema.field("in.tensor").type == pa.list_(pa.float32())
    assert not schema.field("in.tensor").nullable
    assert schema.field("anomaly.count").type == pa.int8()
    assert schema.field("anomaly.big").type == pa.bool_()
    assert schema.field("out.probabilities").type == SEED_FLOAT_OUT
    assert not schema.field("out.probabilities").nullable
    assert table.column("time").to_pylist()[0].year >= 2024  # the same instants, without tz
    # the same types in the Arrow log export
    logged = served.logs_arrow().schema
    for name in ("time", "in.tensor", "anomaly.count", "out.probabilities"):
        assert logged.field(name).type == schema.field(name).type, name


def test_the_result_table_keeps_its_own_types(pipelines: dict[str, Pipeline]) -> None:
    """The cast is at the boundary: the log buffer and the ops center store these."""
    table = (
        pipelines["validated"].run(codecs.decode_records(json.dumps(tensor_rows(2)).encode())).table
    )
    assert table.schema.field("time").type == pa.timestamp("ms", tz="UTC")
    assert table.schema.field("anomaly.count").type == pa.uint32()


# ---------------------------------------------------------------------- 1. check_failures


def test_check_failures_are_per_record(pipelines: dict[str, Pipeline]) -> None:
    """The seed's `check_failures` is a field of each record: a row that triggered no
    validation carries none of another row's."""
    pipeline = pipelines["validated"]
    big = {"True": {"expr": 'pl.col("in.tensor").list.get(0) > 6.0', "name": "big"}}
    wide = {"True": {"expr": 'pl.col("in.tensor").list.get(1) > 3.5', "name": "wide"}}
    rows = [{"tensor": FEATURES[i].tolist()} for i in (0, 5, 100, 0)]
    assert FEATURES[5][1] > 3.5 and FEATURES[100][0] > 6.0 and FEATURES[100][1] <= 3.5
    for count in (1, 20):  # the per-row writer and the columnar one
        written = records(pipeline, rows * count)
        failures = [r["check_failures"] for r in written[:4]]
        assert failures == [[], [wide], [big], []]
        assert [r["anomaly"]["count"] for r in written[:4]] == [0, 1, 1, 0]
        assert [r["check_failures"] for r in written] == failures * count
    assert all(r["check_failures"] == [] for r in records(pipeline, tensor_rows(1)))


# ---------------------------------------------------------------------- 2. original_data


def test_original_data_is_the_row_as_received(pipelines: dict[str, Pipeline]) -> None:
    sent = [{"tensor": FEATURES[i].tolist(), "id": i, "note": f"n{i}"} for i in range(3)]
    for shape in ({}, {"dataset": ("out",)}, {"separator": "."}):
        written = records(pipelines["single"], sent, **shape)
        assert [r["original_data"] for r in written] == sent
    many = [{"tensor": row, "id": i} for i, row in enumerate(FEATURES[:70].tolist())]
    assert [r["original_data"] for r in records(pipelines["single"], many)] == many


def test_original_data_is_null_past_64_kib(pipelines: dict[str, Pipeline]) -> None:
    long_row = {"text": "x" * (64 << 10)}
    short_row = {"text": "y"}
    written = records(pipelines["python"], [long_row, short_row])
    assert [r["original_data"] for r in written] == [None, short_row]
    assert written[0]["in"] == long_row  # the input itself is still there


# ---------------------------------------------------------------------- 4. null inputs


def test_null_inputs_are_accepted_and_logged_as_the_seed_documents(app: Any) -> None:
    """A Python step takes nulls (the seed's "None or Null" rule is for ONNX, TensorFlow and
    MLFlow); the answer shows them, the log writes zeroes, "" and empty lists instead."""
    served = app("python")
    sent = [
        {"a": 1.5, "t": [1.0, 2.0], "s": "x", "b": True},
        {"a": None, "t": None, "s": None, "b": None},
        {"a": 2.5, "t": [3.0, None], "s": "z", "b": False},
    ]
    reply = served.infer("python", sent)
    assert reply.status_code == 200, reply.text
    assert [r["in"] for r in reply.json()] == sent
    served.buffer.flush()
    logged = served.call("GET", "/logs", params={"dataset": "in"}).json()
    assert sorted((r["in"] for r in logged), key=lambda r: r["s"]) == [
        {"a": 0.0, "t": [], "s": "", "b": False},
        {"a": 1.5, "t": [1.0, 2.0], "s": "x", "b": True},
        {"a": 2.5, "t": [3.0, 0.0], "s": "z", "b": False},
    ]


@pytest.mark.parametrize(
    "rows",
    [[{"tensor": [5.1, 3.5, 1.4, 0.2]}, {"tensor": None}], [{"tensor": [5.1, None, 1.4, 0.2]}]],
)
def test_a_model_that_cannot_take_a_null_is_a_400_naming_the_column(
    app: Any, rows: list[dict[str, Any]]
) -> None:
    reply = app("single").infer("single", rows)
    assert reply.status_code == 400, reply.text
    message = reply.json()["error"]
    assert "'tensor'" in message and "null" in message, message


# ---------------------------------------------------------------------- 6. A/B split


def keyed_rows(keys: list[Any]) -> list[dict[str, Any]]:
    return [{"tensor": FEATURES[i].tolist(), "key": key} for i, key in enumerate(keys)]


def test_the_split_key_picks_each_rows_model(pipelines: dict[str, Pipeline]) -> None:
    """The seed's hash_key: "a key used instead of a random number ... between 0.0 and 1.0";
    with weights 1:1, 0.4 routes to the first model and 0.6 to the second. Each row by its own
    key; `out._model_split` is a list holding one object."""
    pipeline = pipelines["keyed"]
    models = pipeline.definition.models
    keys = [0.4, 0.6, 0.0, 1.0, 0.49, 0.5]
    expected = ["a", "b", "a", "b", "a", "b"]
    for count in (1, 12):  # the per-row writer and the columnar one
        written = records(pipeline, keyed_rows(keys * count))
        splits = [r["out"]["_model_split"] for r in written]
        assert [s[0]["name"] for s in splits] == expected * count
        assert all(len(s) == 1 for s in splits)
        assert splits[1] == [
            {"name": "b", "version": models["b"].version, "sha": models["b"].sha256}
        ]
        assert [r["model_name"] for r in written] == expected * count
        assert [r["model_version"] for r in written][:2] == [
            models["a"].version,
            models["b"].version,
        ]
        last = [
            json.loads(r["metadata"]["last_model"])["model_name"]
            for r in records(pipeline, keyed_rows(keys * count), dataset=("metadata",))
        ]
        assert last == expected * count
        # the outputs are each row's own, in row order
        labels = [r["out"]["label"] for r in written]
        alone = [records(pipeline, [row])[0]["out"]["label"] for row in keyed_rows(keys * count)]
        assert labels == alone


def test_the_split_in_arrow_is_a_list_of_one_struct(pipelines: dict[str, Pipeline]) -> None:
    pipeline = pipelines["keyed"]
    inference = pipeline.run(codecs.decode_records(json.dumps(keyed_rows([0.1, 0.9])).encode()))
    table = pa.ipc.open_file(pa.py_buffer(codecs.encode_arrow(inference.table))).read_all()
    column = table.column("out._model_split")
    assert pa.types.is_list(column.type) and pa.types.is_struct(column.type.value_type)
    assert [row[0]["name"] for row in column.to_pylist()] == ["a", "b"]


@pytest.mark.parametrize("keys", [[0.5, 1.5], [0.5, -0.1], ["user-1", "user-2"], [0.5, None]])
def test_a_split_key_outside_0_to_1_is_a_400_naming_the_column(app: Any, keys: Any) -> None:
    reply = app("keyed").infer("keyed", keyed_rows(keys))
    assert reply.status_code == 400, reply.text
    assert "'key'" in reply.json()["error"] and "0.0 and 1.0" in reply.json()["error"]
