"""Each framework end to end: a model trained at test time (a tiny random one for Hugging
Face), published to a real registry, converted to ONNX and, with `--no-convert`, packed for
its own runtime, served by a real `edge serve`, answering as the framework's own predict does
on the same rows, logged like any other step, and refusing the seed's schema errors with a 400
that names the field."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pyarrow as pa
import pytest

from tests.conftest import Edge, Registry, edge_cmd
from tests.models import (
    hugging_face_folder,
    iris,
    iris_estimator,
    keras_model,
    torchscript_model,
    write_schema,
)

JSON = {"Content-Type": "application/json; format=pandas-records"}
ARROW = "application/vnd.apache.arrow.file"
OFFLINE = {"HF_HUB_OFFLINE": "1"}  # nothing reaches a hub, in publish or serve

ESTIMATOR_IN = pa.schema([pa.field("inputs", pa.list_(pa.float64(), list_size=4))])
ESTIMATOR_OUT = pa.schema(
    [pa.field("predictions", pa.int32()), pa.field("probabilities", pa.list_(pa.float64(), 3))]
)
NET_IN = pa.schema([pa.field("inputs", pa.list_(pa.float32(), list_size=4))])
TORCH_OUT = pa.schema(
    [
        pa.field("scores", pa.list_(pa.float32(), list_size=3)),
        pa.field("probabilities", pa.list_(pa.float32(), list_size=3)),
    ]
)
KERAS_OUT = pa.schema([pa.field("probabilities", pa.list_(pa.float32(), list_size=3))])
TEXTS = ["the movie was good", "awful plot", "a very bad actor", "great film", "not very good"]

# the seed's schema errors for the one-array frameworks: (rows, words the 400 must hold)
ARRAY_ERRORS = [
    ([{"inputs": [5.1, 3.5, 1.4]}], ["'inputs'", "shape 3", "expects 4"]),
    ([{"inputs": [5.1, "wide", 1.4, 0.2]}], ["'inputs'"]),
    ([{"features": [5.1, 3.5, 1.4, 0.2], "id": 1}], ["'inputs'", "missing"]),
    ([{"inputs": [5.1, None, 1.4, 0.2]}], ["'inputs'", "null"]),
]


def seed_list(kind: pa.DataType) -> pa.DataType:
    """An output list as clients receive it in Arrow (the seed's `list<inner: T not null>`)."""
    return pa.list_(pa.field("inner", kind, nullable=False))


@dataclass
class Case:
    """One framework's model, what its own predict answers, and its schema errors."""

    framework: str
    file: str
    native: str  # the runtime that serves it unconverted
    rows: list[dict[str, Any]]
    expected: dict[str, Any]  # output field -> the framework's own answers for `rows`
    rtol: float = 1e-6  # how close the converted model's floats are (the stated tolerance)
    atol: float = 1e-7
    schemas: tuple[str, str] | None = None
    errors: list[tuple[list[dict[str, Any]], list[str]]] = field(default_factory=list)
    types: dict[str, pa.DataType] = field(default_factory=dict)  # out.* column types
    # further requests and the framework's own answers (per-row options, ...)
    more: list[tuple[list[dict[str, Any]], dict[str, Any]]] = field(default_factory=list)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Case]]:
    folder = tmp_path_factory.mktemp("frameworks")
    models = folder / "models"
    write_schema(folder / "estimator-in.arrow", ESTIMATOR_IN)
    write_schema(folder / "estimator-out.arrow", ESTIMATOR_OUT)
    write_schema(folder / "net-in.arrow", NET_IN)
    write_schema(folder / "torch-out.arrow", TORCH_OUT)
    write_schema(folder / "keras-out.arrow", KERAS_OUT)
    features = iris()[0][::15].astype(np.float64)  # 10 flowers, every species
    rows = [{"inputs": row} for row in features.tolist()]
    cases = {}
    for kind in ("sklearn", "xgboost"):
        model = iris_estimator(kind, models / f"{kind}.pkl")
        own = {
            "predictions": model.predict(features),
            "probabilities": model.predict_proba(features),
        }
        cases[kind] = Case(
            kind, f"{kind}.pkl", kind, rows, own,
            rtol=1e-5, atol=1e-6, schemas=("estimator-in.arrow", "estimator-out.arrow"),
            errors=ARRAY_ERRORS,
            types={"predictions": pa.int32(), "probabilities": pa.list_(pa.float64(), 3)},
        )  # fmt: skip
    import torch

    net = torchscript_model(models / "net.pt")
    with torch.inference_mode():
        scores, probabilities = net(torch.from_numpy(features.astype(np.float32)))
    cases["pytorch"] = Case(
        "pytorch", "net.pt", "pytorch", rows,
        {"scores": scores.numpy(), "probabilities": probabilities.numpy()},
        rtol=1e-4, atol=1e-5, schemas=("net-in.arrow", "torch-out.arrow"), errors=ARRAY_ERRORS,
        types={"scores": pa.list_(pa.float32(), 3)},
    )  # fmt: skip
    keras, _ = keras_model(models, "dense", "h5")
    cases["keras"] = Case(
        "keras", "dense.h5", "keras", rows,
        {"probabilities": keras(features.astype(np.float32)).numpy()},
        rtol=1e-4, atol=1e-5, schemas=("net-in.arrow", "keras-out.arrow"), errors=ARRAY_ERRORS,
        types={"probabilities": pa.list_(pa.float32(), 3)},
    )  # fmt: skip
    cases.update(hugging_face_cases(models))
    return folder, cases


def hugging_face_cases(models: Path) -> dict[str, Case]:
    import transformers

    text_rows = [{"inputs": text} for text in TEXTS]
    classify = hugging_face_folder(models / "sentiment", "text-classification")
    reference = transformers.pipeline("text-classification", model=str(classify))
    answers = reference(TEXTS, top_k=None)  # every label, best first
    top = reference(TEXTS[:2], top_k=1, function_to_apply="none")  # raw scores, one label
    options = [{"inputs": t, "top_k": 1, "function_to_apply": "none"} for t in TEXTS[:2]]
    extract = hugging_face_folder(models / "embedding", "feature-extraction")
    vectors = transformers.pipeline("feature-extraction", model=str(extract))(TEXTS)
    return {
        "text-classification": Case(
            "hugging-face-text-classification", "sentiment", "hugging-face", text_rows,
            {"label": [[a["label"] for a in answer] for answer in answers],
             "score": [[a["score"] for a in answer] for answer in answers]},
            errors=[
                ([{"inputs": 42}], ["'inputs'", "text"]),
                ([{"inputs": "good", "top_k": 0}], ["'top_k'", "1 or more"]),
                ([{"inputs": "good", "function_to_apply": "tanh"}], ["'function_to_apply'"]),
                ([{"text": "good", "top_k": 1}], ["'inputs'"]),
            ],
            types={"label": seed_list(pa.string()), "score": seed_list(pa.float64())},
            more=[(options, {"label": [[a["label"] for a in answer] for answer in top],
                             "score": [[a["score"] for a in answer] for answer in top]})],
        ),
        "feature-extraction": Case(
            "hugging-face-feature-extraction", "embedding", "hugging-face", text_rows,
            {"output": [vector[0] for vector in vectors]},
            errors=[([{"inputs": None}], ["'inputs'", "null"])],
            types={"output": seed_list(seed_list(pa.float64()))},
        ),
    }  # fmt: skip


def publish_case(
    folder: Path, case: Case, name: str, registry: Registry, convert: bool
) -> tuple[dict, str]:
    """`edge publish` (a real process) of a one-step pipeline: its JSON and what it printed."""
    spec = folder / f"{name}.yaml"
    text = f"name: {name}\nsteps:\n  - model: m\n    file: models/{case.file}\n"
    text += f"    framework: {case.framework}\n"
    if case.schemas:
        text += f"    input_schema: {case.schemas[0]}\n    output_schema: {case.schemas[1]}\n"
    spec.write_text(text)
    args = ["publish", str(spec), "--json", "--registry", registry.host]
    args += ["--repository", "edge-tests", "--no-chart", *([] if convert else ["--no-convert"])]
    env = dict(os.environ, OCI_USERNAME=registry.username, OCI_PASSWORD=registry.password)
    done = subprocess.run(
        edge_cmd(*args), env={**env, **OFFLINE}, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout), done.stderr


def infer(edge: Edge, name: str, rows: list[dict], **params: Any) -> httpx.Response:
    return httpx.post(
        f"{edge.url}/pipelines/{name}", content=json.dumps(rows), headers=JSON, params=params,
        timeout=60,
    )  # fmt: skip


def assert_answers(case: Case, out: dict[str, list[Any]], converted: bool) -> None:
    """Served outputs against the framework's own: exact for labels and text, floats within
    the stated tolerance when converted; when native, the same code, but float32 sums taken
    in another order when the server's thread count differs from the test's (a transformer's
    features differed by 1.9e-5 relative once), so 1e-5."""
    rtol, atol = (case.rtol, case.atol) if converted else (1e-5, 1e-6)
    for name, want in case.expected.items():
        got = out[name]
        assert len(got) == len(want), name
        for served, own in zip(got, want, strict=True):  # row by row: rows may be ragged
            own = np.asarray(own)
            if own.dtype.kind in "iuUO":  # labels and text: equal
                assert served == own.tolist(), name
            else:
                np.testing.assert_allclose(
                    np.asarray(served, np.float64), own, rtol=rtol, atol=atol, err_msg=name
                )


PATHS = [
    ("sklearn", True), ("sklearn", False), ("xgboost", True), ("xgboost", False),
    ("pytorch", True), ("pytorch", False), ("keras", True), ("keras", False),
    ("text-classification", False), ("feature-extraction", False),
]  # fmt: skip


@pytest.mark.parametrize(
    "which,converted", PATHS, ids=[f"{w}-{'onnx' if c else 'native'}" for w, c in PATHS]
)
def test_framework_served_as_its_own_predict(
    zoo: tuple[Path, dict[str, Case]],
    registry: Registry,
    start_edge: Callable[..., Edge],
    which: str,
    converted: bool,
) -> None:
    folder, cases = zoo
    case = cases[which]
    name = f"{which}-{'onnx' if converted else 'native'}"
    published, printed = publish_case(folder, case, name, registry, convert=converted)
    (model,) = published["models"]
    runtime = "onnx" if converted else case.native
    assert model["framework"] == case.framework and model["runtime"] == runtime
    if converted:
        assert "converted to ONNX" in printed and "checked on 64 generated rows" in printed
    elif case.native != "hugging-face":
        assert "not converted: edge publish --no-convert" in printed
        assert model["conversion"] == "not converted: edge publish --no-convert"
    # the Engine URL names the image variant that runs the published runtime
    variant = "" if converted else "-tensorflow" if case.native == "keras" else "-frameworks"
    assert published["engine_url"].endswith(f":0.1.0{variant}"), published["engine_url"]
    edge = start_edge(published["pipeline_url"], registry=registry, env=OFFLINE)

    reply = infer(edge, name, case.rows, dataset=["*", "metadata"])
    assert reply.status_code == 200, reply.text
    records = reply.json()
    out = {key: [r["out"][key] for r in records] for key in case.expected}
    assert_answers(case, out, converted)
    assert [r["in"] for r in records] == case.rows
    if case.framework in ("sklearn", "xgboost"):  # the output schema's types, small or large
        assert [list(o) for o in records[0]["outputs"]] == [["Int32"], ["Double"]]
    assert json.loads(records[0]["metadata"]["last_model"])["model_name"] == "m"

    arrow = httpx.post(
        f"{edge.url}/pipelines/{name}", content=json.dumps(case.rows),
        headers={**JSON, "Accept": ARROW}, timeout=60,
    )  # fmt: skip
    table = pa.ipc.open_file(pa.py_buffer(arrow.content)).read_all()
    for key, kind in case.types.items():
        assert table.schema.field(f"out.{key}").type == kind, key

    listed = {m["name"]: m for m in httpx.get(f"{edge.url}/models").json()["models"]}["m"]
    assert listed["status"] == "Running"
    assert listed["runtime"] == runtime and listed["framework"] == case.framework

    # logged like any other step: the newest rows are these answers
    logs = httpx.get(f"{edge.url}/logs", params={"limit": 2 * len(case.rows)})
    assert logs.status_code == 200
    logged = logs.json()[: len(case.rows)][::-1]
    assert [r["in"] for r in logged] == case.rows
    assert [{k: r["out"][k] for k in case.expected} for r in logged] == [
        {k: r["out"][k] for k in case.expected} for r in records
    ]

    for rows, expected in case.more:
        reply = infer(edge, name, rows)
        assert reply.status_code == 200, reply.text
        answers = {key: [r["out"][key] for r in reply.json()] for key in expected}
        assert_answers(dataclasses.replace(case, expected=expected), answers, converted)

    for rows, words in case.errors:
        refused = infer(edge, name, rows)
        assert refused.status_code == 400, (rows, refused.text)
        for word in words:
            assert word in refused.json()["error"], (word, refused.json())
    assert infer(edge, name, case.rows[:1]).status_code == 200  # still serving

    assert edge.process is not None
    maps = Path(f"/proc/{edge.process.pid}/maps").read_text()
    if converted:  # an ONNX pipeline loads none of the framework
        assert "onnxruntime" in maps
        assert "torch" not in maps and "sklearn" not in maps and "xgboost" not in maps
        assert "tensorflow" not in maps
