"""Every step kind end to end: publish to a real registry, serve with a real `edge serve`
process, and compare what comes back with the same computation done directly.

Models are made at test time (tests/models.py): ONNX classifiers on scikit-learn's iris data,
a Keras SavedModel, a BYOP zip with a KMeans model saved by joblib, Python pre/post steps.
Each pipeline is published and served once per module.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.client
import json
import os
import subprocess
import sys
import textwrap
import threading
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import polars as pl
import pyarrow as pa
import pytest

from tests.conftest import Edge, Registry, free_port, publish
from tests.models import (
    byop_zip,
    fit_kmeans,
    iris,
    keras_savedmodel_zip,
    onnx_classifier,
    write_files,
    write_schema,
)

JSON = {"Content-Type": "application/json; format=pandas-records"}
ARROW = "application/vnd.apache.arrow.file"
FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]

PRE = """
    import numpy as np

    FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


    def wallaroo_json(data):
        # centimetres to millimetres, as the model was trained; `fault` makes it misbehave
        features = data[FEATURES].to_numpy(dtype="float32") * 10
        fault = data["fault"].iloc[0] if "fault" in data.columns else None
        if fault == "raise":
            raise ValueError("asked to fail")
        if fault == "rows":
            features = np.vstack([features, features[:1]])
        return {"tensor_fields": ["tensor"], "tensor": features, "unused": list(features)}
"""

POST = """
    import numpy as np

    SPECIES = {species!r}


    def wallaroo_json(data):
        probabilities = np.stack(data["probabilities"].to_numpy())
        return {{
            "species": [SPECIES[int(label)] for label in data["label"]],
            "confidence": probabilities.max(axis=1),
        }}
"""

FLAKY = """
    def wallaroo_json(data):
        raise ValueError("challenger exploded")
"""

VALIDATIONS = {
    "unsure": 'pl.col("out.confidence") < 0.9',
    "setosa": 'pl.col("out.species") == "setosa"',
    "wide": 'pl.col("in.sepal_width") > 3.5',
}


@dataclasses.dataclass
class Models:
    """Every model file, and the fitted objects to compute expected results with."""

    folder: Path
    features: np.ndarray  # iris, centimetres
    species: list[str]
    logistic: Any  # trained on millimetres
    tree: Any  # trained on millimetres
    kmeans: Any

    def spec(self, name: str, text: str) -> Path:
        path = self.folder / f"{name}.yaml"
        path.write_text(textwrap.dedent(text))
        return path

    def sha(self, relative: str) -> str:
        return hashlib.sha256((self.folder / relative).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Models:
    from sklearn.linear_model import LogisticRegression
    from sklearn.tree import DecisionTreeClassifier

    folder = tmp_path_factory.mktemp("pipelines")
    features, labels, species = iris()
    millimetres = features * 10
    logistic = onnx_classifier(
        LogisticRegression(max_iter=2000), millimetres, labels, folder / "models/logistic.onnx"
    )
    tree = onnx_classifier(
        DecisionTreeClassifier(max_depth=2, random_state=0),
        millimetres,
        labels,
        folder / "models/tree.onnx",
    )
    kmeans = fit_kmeans()
    byop_zip(folder / "models", kmeans, "clustering")
    write_files(
        folder / "steps",
        {"pre.py": PRE, "post.py": POST.format(species=species), "flaky.py": FLAKY},
    )
    write_schema(
        folder / "schemas/in.arrow", pa.schema([pa.field("points", pa.list_(pa.float64(), 2))])
    )
    write_schema(folder / "schemas/out.arrow", pa.schema([pa.field("predictions", pa.int64())]))
    return Models(folder, features, species, logistic, tree, kmeans)


def serve(registry: Registry, url: str, persist: Path, wait_ready: bool = True) -> Edge:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OCI_") and k != "EDGE_BUNDLE"}
    env.update(
        PIPELINE_URL=url,
        OCI_USERNAME=registry.username,
        OCI_PASSWORD=registry.password,
        OCI_REGISTRY=registry.host,
        CONFIG_CPUS="1",
    )
    return Edge(free_port(), persist, env).start(wait_ready=wait_ready, timeout=120)


@pytest.fixture(scope="module")
def served(
    registry: Registry, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[[Path], tuple[Edge, dict]]]:
    """Publish a spec and serve it, once per module and spec: `(edge, published)`."""
    running: dict[Path, tuple[Edge, dict]] = {}

    def start(spec: Path) -> tuple[Edge, dict]:
        if spec not in running:
            published = publish(spec, registry=registry)
            persist = tmp_path_factory.mktemp(spec.stem) / "persist"
            running[spec] = (serve(registry, published["pipeline_url"], persist), published)
        return running[spec]

    yield start
    for edge, _ in running.values():
        edge.stop()


def infer(edge: Edge, name: str, rows: list[dict], **params: Any) -> httpx.Response:
    return httpx.post(
        f"{edge.url}/pipelines/{name}",
        content=json.dumps(rows),
        headers=JSON,
        params=params,
        timeout=60,
    )


def infer_arrow(edge: Edge, name: str, rows: list[dict]) -> pa.Table:
    reply = httpx.post(
        f"{edge.url}/pipelines/{name}",
        content=json.dumps(rows),
        headers={**JSON, "Accept": ARROW},
        params={"dataset": ["*", "metadata"]},
        timeout=60,
    )
    assert reply.status_code == 200, reply.text
    return pa.ipc.open_file(pa.py_buffer(reply.content)).read_all()


def flower_rows(features: np.ndarray) -> list[dict]:
    return [dict(zip(FEATURES, map(float, row), strict=True)) for row in features]


def tensor_rows(features: np.ndarray, **extra: Any) -> list[dict]:
    return [{**extra, "tensor": row} for row in features.tolist()]


def listed_models(edge: Edge) -> dict[str, dict]:
    return {m["name"]: m for m in httpx.get(f"{edge.url}/models").json()["models"]}


# ---------------------------------------------------------------------------- pre -> model -> post

CHAIN = """
    name: iris-chain
    steps:
      - python: pre
        file: steps/pre.py
      - model: iris-logistic
        file: models/logistic.onnx
      - python: post
        file: steps/post.py
    validations:
      unsure: pl.col("out.confidence") < 0.9
      setosa: pl.col("out.species") == "setosa"
      wide: pl.col("in.sepal_width") > 3.5
"""


@pytest.fixture(scope="module")
def chain(models: Models, served) -> tuple[Edge, dict]:  # type: ignore[no-untyped-def]
    return served(models.spec("chain", CHAIN))


def expected_chain(models: Models, features: np.ndarray) -> tuple[list[str], np.ndarray]:
    """The chain done directly: cm -> mm, the scikit-learn model, most likely species."""
    millimetres = features.astype(np.float32) * 10
    probabilities = models.logistic.predict_proba(millimetres)
    labels = models.logistic.predict(millimetres)
    return [models.species[i] for i in labels], probabilities.max(axis=1)


@pytest.mark.parametrize("count", [5, 150])  # per-row and columnar JSON writers
def test_pre_model_post_equals_direct_computation(chain, models: Models, count: int) -> None:  # type: ignore[no-untyped-def]
    edge, published = chain
    features = models.features[np.linspace(0, 149, count).astype(int)]
    reply = infer(edge, "iris-chain", flower_rows(features), dataset=["*", "metadata"])
    assert reply.status_code == 200, reply.text
    records = reply.json()
    assert len(records) == count
    species, confidence = expected_chain(models, features)
    assert [r["out"]["species"] for r in records] == species
    np.testing.assert_allclose([r["out"]["confidence"] for r in records], confidence, rtol=1e-5)
    assert set(records[0]["out"]) == {"species", "confidence"}
    assert records[0]["in"] == dict(zip(FEATURES, map(float, features[0]), strict=True))

    # validations: one boolean per validation, their count, and the failures in JSON
    expected = {
        "unsure": confidence < 0.9,
        "setosa": np.array(species) == "setosa",
        "wide": features[:, 1] > 3.5,
    }
    for i, record in enumerate(records):
        flags = {name: bool(values[i]) for name, values in expected.items()}
        assert record["anomaly"] == {"count": sum(flags.values()), **flags}
    for i, record in enumerate(records):  # each record: the validations its row triggered
        failed = {f["True"]["name"] for f in record["check_failures"]}
        assert failed == {name for name, values in expected.items() if values[i]}
        assert {f["True"]["expr"] for f in record["check_failures"]} <= set(VALIDATIONS.values())

    # metadata: the last step's model, the published version, one elapsed entry per step + parse
    metadata = records[0]["metadata"]
    assert json.loads(metadata["last_model"]) == {
        "model_name": "post",
        "model_sha": models.sha("steps/post.py"),
    }
    assert metadata["pipeline_version"] == published["pipeline_version"]
    assert len(metadata["elapsed"]) == 4 and all(n >= 0 for n in metadata["elapsed"])
    assert metadata["elapsed"][2] > 0  # the ONNX step took some time
    assert records[0]["elapsed"] == metadata["elapsed"]
    assert records[0]["model_name"] == "post"
    assert records[0]["model_version"] == listed_models(edge)["post"]["version"]
    assert records[0]["pipeline_name"] == "iris-chain"


def test_chain_arrow_result_columns(chain, models: Models) -> None:  # type: ignore[no-untyped-def]
    edge, published = chain
    features = models.features[[0, 60, 120]]
    table = infer_arrow(edge, "iris-chain", flower_rows(features))
    assert table.column_names[:8] == [
        "time",
        *(f"in.{f}" for f in FEATURES),
        "out.species",
        "out.confidence",
        "anomaly.count",
    ]
    assert sorted(table.column_names[8:11]) == ["anomaly.setosa", "anomaly.unsure", "anomaly.wide"]
    assert table.column_names[11:] == [
        "metadata.last_model",
        "metadata.pipeline_version",
        "metadata.elapsed",
        "metadata.dropped",
        "metadata.partition",
    ]
    assert table.schema.field("anomaly.count").type == pa.int8()  # the seed's Arrow type
    assert table.schema.field("anomaly.wide").type == pa.bool_()
    assert table.schema.field("out.species").type == pa.string()
    species, confidence = expected_chain(models, features)
    assert table.column("out.species").to_pylist() == species
    np.testing.assert_allclose(table.column("out.confidence").to_numpy(), confidence, rtol=1e-5)


def test_chain_lists_every_model(chain, models: Models) -> None:  # type: ignore[no-untyped-def]
    edge, _ = chain
    listed = listed_models(edge)
    assert {n: (m["runtime"], m["sha"], m["status"]) for n, m in listed.items()} == {
        "pre": ("python", models.sha("steps/pre.py"), "Running"),
        "iris-logistic": ("onnx", models.sha("models/logistic.onnx"), "Running"),
        "post": ("python", models.sha("steps/post.py"), "Running"),
    }
    assert all(len(m["version"]) == 36 for m in listed.values())


def test_step_that_raises_is_a_5xx_naming_the_step(chain, models: Models) -> None:  # type: ignore[no-untyped-def]
    edge, _ = chain
    good = flower_rows(models.features[:2])
    raising = infer(edge, "iris-chain", [{**row, "fault": "raise"} for row in good])
    assert raising.status_code == 500, raising.text
    error = raising.json()
    assert error["code"] == 500 and error["source"] == "engine"
    assert "step 'pre'" in error["error"] and "ValueError: asked to fail" in error["error"]
    assert "Traceback" not in error["error"]

    extra_row = infer(edge, "iris-chain", [{**row, "fault": "rows"} for row in good])
    assert extra_row.status_code == 500, extra_row.text
    assert "step 'pre'" in extra_row.json()["error"]
    assert "3 rows for 2 input rows" in extra_row.json()["error"]

    assert httpx.get(f"{edge.url}/health/live").status_code == 200
    assert infer(edge, "iris-chain", good).status_code == 200  # still serving
    missing = infer(edge, "iris-chain", [{"sepal_length": 1.0}])  # the user's code fails
    assert missing.status_code == 500 and "step 'pre'" in missing.json()["error"]


def test_onnx_only_appliance_never_imports_tensorflow(
    chain, registry: Registry, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    edge, published = chain
    assert edge.process is not None
    maps = Path(f"/proc/{edge.process.pid}/maps").read_text()
    assert "onnxruntime" in maps and "tensorflow" not in maps
    code = textwrap.dedent(
        """
        import sys
        import pyarrow as pa
        from edge.appliance import load_pipeline
        from edge.config import load_settings

        pipeline = load_pipeline(load_settings())
        flowers = {"sepal_length": [5.1], "sepal_width": [3.5], "petal_length": [1.4],
                   "petal_width": [0.2]}
        result = pipeline.run(pa.table(flowers)).table
        assert result.column("out.species").to_pylist() == ["setosa"], result
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras"))
        assert not loaded, loaded
        print("no tensorflow")
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OCI_")}
    env.update(
        PIPELINE_URL=published["pipeline_url"],
        OCI_USERNAME=registry.username,
        OCI_PASSWORD=registry.password,
        PERSIST_DIR=str(tmp_path / "persist"),
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "no tensorflow" in done.stdout


# ---------------------------------------------------------------------------- TensorFlow


@pytest.fixture(scope="module")
def keras_model(models: Models) -> Any:
    pytest.importorskip("tensorflow")
    model, _ = keras_savedmodel_zip(models.folder / "models", "dense", inputs=4)
    return model


def test_tensorflow_savedmodel_step_equals_keras(models: Models, keras_model, served) -> None:  # type: ignore[no-untyped-def]
    spec = models.spec(
        "keras",
        """
        name: keras-dense
        steps:
          - model: dense
            file: models/dense.zip
        """,
    )
    edge, published = served(spec)
    features = models.features[::30]
    reply = infer(edge, "keras-dense", tensor_rows(features), dataset=["*", "metadata"])
    assert reply.status_code == 200, reply.text
    records = reply.json()
    (output,) = records[0]["out"]  # the signature's own output name
    got = np.array([r["out"][output] for r in records], dtype=np.float32)
    np.testing.assert_allclose(got, keras_model(features).numpy(), rtol=1e-5, atol=1e-6)
    assert records[0]["outputs"][0]["Float"]["dim"] == [1, 2]
    assert json.loads(records[0]["metadata"]["last_model"])["model_sha"] == models.sha(
        "models/dense.zip"
    )
    listed = listed_models(edge)["dense"]
    assert listed["runtime"] == "tensorflow" and listed["status"] == "Running"
    assert edge.process is not None
    assert "tensorflow" in Path(f"/proc/{edge.process.pid}/maps").read_text()


# ---------------------------------------------------------------------------- BYOP

BYOP = """
    name: clusters
    steps:
      - byop: kmeans
        file: models/clustering.zip
        input_schema: schemas/in.arrow
        output_schema: schemas/out.arrow
"""


def test_byop_step_equals_sklearn(models: Models, served) -> None:  # type: ignore[no-untyped-def]
    edge, _ = served(models.spec("byop", BYOP))
    points = np.array([[0.1, -0.2], [5.2, 4.9], [4.8, 5.3], [-1.0, 0.5]])
    table = infer_arrow(edge, "clusters", tensor_rows(points))  # lone column -> lone field
    assert table.schema.field("out.predictions").type == pa.int64()
    assert table.column("out.predictions").to_pylist() == models.kmeans.predict(points).tolist()
    listed = listed_models(edge)["kmeans"]
    assert listed["runtime"] == "byop"
    assert listed["builder"] == "custom_inference.ClusteringBuilder"

    wrong = infer(edge, "clusters", [{"tensor": ["a", "b"]}])
    assert wrong.status_code == 400 and "'tensor'" in wrong.json()["error"]


@pytest.mark.parametrize(
    "case,words",
    [
        ("missing-requirement", ["no-such-dist==1.2", "offline"]),
        ("escaping-entry", ["../../escaped.py", "outside the model folder"]),
    ],
)
def test_bad_byop_zip_is_refused_at_start(
    models: Models, registry: Registry, tmp_path: Path, case: str, words: list[str]
) -> None:
    folder = tmp_path / "spec"
    if case == "missing-requirement":
        byop_zip(folder, models.kmeans, "bad", **{"requirements.txt": "numpy\nno-such-dist==1.2\n"})
    else:
        byop_zip(folder, models.kmeans, "bad")
        with zipfile.ZipFile(folder / "bad.zip", "a") as archive:
            archive.writestr("../../escaped.py", "print('escaped')\n")
    spec = folder / "pipeline.yaml"
    spec.write_text(f"name: bad-{case}\nsteps:\n  - byop: bad\n    file: bad.zip\n")
    url = publish(spec, registry=registry)["pipeline_url"]
    edge = serve(registry, url, tmp_path / "persist", wait_ready=False)
    try:  # refused with its reason; the server stays up (and retries the load)
        reason = edge.load_error(120)["error"]
        assert httpx.get(f"{edge.url}/health/ready").status_code == 503
    finally:
        edge.stop()
    assert "BYOP model 'bad'" in reason
    output = edge.output()
    assert "BYOP model 'bad'" in output
    for word in words:
        assert word in output
    assert "Traceback" not in output
    assert not list(tmp_path.rglob("escaped.py"))


# ---------------------------------------------------------------------------- validations


def test_unsafe_validation_in_a_definition_is_refused_at_load(
    models: Models, registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A definition made by hand (not by `edge publish`) whose validation carries a pickled
    Python function: the appliance refuses it before polars reads it, and says so."""
    import edge.publish as publishing
    from edge.artifact import Validation

    marker = tmp_path / "function-ran"
    unsafe = pl.col("in.x").map_elements(
        lambda v: __import__("pathlib").Path(str(marker)).touch() or True, return_dtype=pl.Boolean
    )
    serialized = unsafe.meta.serialize(format="json")
    assert "AnonymousFunction" in serialized
    made = publishing.build_definition

    def tampered(spec: Any, packed: Any = None, warn: Any = None) -> Any:
        definition = made(spec, packed, warn)
        validations = dict(definition.validations, sneaky=Validation("looks harmless", serialized))
        return dataclasses.replace(definition, validations=validations)

    monkeypatch.setattr(publishing, "build_definition", tampered)
    spec = models.spec(
        "tampered",
        """
        name: tampered
        steps:
          - model: m
            file: models/logistic.onnx
        validations:
          fine: pl.col("out.label") > 5
        """,
    )
    published, definition = publishing.publish(
        spec,
        registry=registry.host,
        repository="edge-tests",
        username=registry.username,
        password=registry.password,
        progress=False,
    )
    assert "AnonymousFunction" in definition.validations["sneaky"].expr
    edge = serve(registry, published.pipeline_url, tmp_path / "persist", wait_ready=False)
    try:  # refused with its reason; the server stays up (and retries the load)
        reason = edge.load_error(120)["error"]
    finally:
        edge.stop()
    assert "validation 'sneaky'" in reason
    output = edge.output()
    assert "validation 'sneaky'" in output and "AnonymousFunction" in output
    assert not marker.exists()


# ---------------------------------------------------------------------------- A/B random split

SPLIT = """
    name: iris-split
    steps:
      - random_split:
          models:
            - {weight: 2, model: control, file: models/logistic.onnx}
            - {weight: 1, model: challenger, file: models/tree.onnx}
"""

HASHED = """
    name: iris-split-hashed
    steps:
      - random_split:
          hash_key: id
          models:
            - {weight: 2, model: control, file: models/logistic.onnx, tensor_fields: [tensor]}
            - {weight: 1, model: challenger, file: models/tree.onnx, tensor_fields: [tensor]}
"""


def send_all(edge: Edge, path: str, bodies: list[bytes], threads: int = 16) -> list[dict]:
    """POST every body (one request each) over `threads` keep-alive connections; returns the
    JSON replies in order. Plain http.client: httpx costs more client time than the server."""
    local = threading.local()

    def send(body: bytes) -> dict:
        if not hasattr(local, "connection"):
            local.connection = http.client.HTTPConnection("127.0.0.1", edge.port, timeout=60)
        local.connection.request("POST", f"{path}?dataset=out", body, JSON)
        reply = local.connection.getresponse()
        content = reply.read()
        assert reply.status == 200, content
        return json.loads(content)

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(send, bodies))


def split_of(record: dict) -> dict:
    (split,) = record["out"]["_model_split"]  # the seed's list holding one object
    return split


def test_random_split_follows_the_weights(models: Models, served) -> None:  # type: ignore[no-untyped-def]
    edge, _ = served(models.spec("split", SPLIT))
    listed = listed_models(edge)
    assert set(listed) == {"control", "challenger"}
    features = models.features[[0, 70, 140]] * 10
    bodies = [json.dumps(tensor_rows(features[i % 3 : i % 3 + 1])).encode() for i in range(10_000)]
    replies = send_all(edge, "/pipelines/iris-split", bodies)
    chosen: Counter[str] = Counter()
    for i, (record,) in enumerate(replies):
        split = split_of(record)
        chosen[split["name"]] += 1
        assert split == {
            "name": split["name"],
            "version": listed[split["name"]]["version"],
            "sha": listed[split["name"]]["sha"],
        }
        if i < 30:  # the chosen model's outputs are `out.*`
            model = models.logistic if split["name"] == "control" else models.tree
            row = features[i % 3 : i % 3 + 1]
            assert record["out"]["label"] == int(model.predict(row)[0])
            np.testing.assert_allclose(
                record["out"]["probabilities"], model.predict_proba(row)[0], rtol=1e-5, atol=1e-6
            )
    n, p = 10_000, 2 / 3
    tolerance = 4 * np.sqrt(n * p * (1 - p))  # 4 standard deviations of the binomial
    assert abs(chosen["control"] - n * p) < tolerance, chosen
    assert chosen["control"] + chosen["challenger"] == n
    assert listed["control"]["sha"] == models.sha("models/logistic.onnx")
    assert listed["challenger"]["sha"] == models.sha("models/tree.onnx")


def test_random_split_hash_key_is_sticky(models: Models, served) -> None:  # type: ignore[no-untyped-def]
    edge, _ = served(models.spec("hashed", HASHED))
    features = models.features[[0]] * 10
    keys = [(k + 0.5) / 300 for k in range(300)]  # the seed: a key between 0.0 and 1.0
    bodies = [json.dumps(tensor_rows(features, id=key)).encode() for key in keys * 2]
    replies = send_all(edge, "/pipelines/iris-split-hashed", bodies)
    names = [split_of(record)["name"] for (record,) in replies]
    first, second = names[: len(keys)], names[len(keys) :]
    assert first == second  # the same key always picks the same model
    # used instead of the random number: weights 2:1 map [0, 2/3) to control
    assert first == ["control" if key < 2 / 3 else "challenger" for key in keys]
    missing = infer(edge, "iris-split-hashed", tensor_rows(features))
    assert missing.status_code == 400 and "'id'" in missing.json()["error"]


# ---------------------------------------------------------------------------- shadow deploy

SHADOW = """
    name: iris-shadow
    steps:
      - shadow:
          champion: {model: champion, file: models/logistic.onnx}
          challengers:
            - {model: tree, file: models/tree.onnx}
            - {python: flaky, file: steps/flaky.py}
"""


@pytest.fixture(scope="module")
def shadow(models: Models, served) -> tuple[Edge, dict]:  # type: ignore[no-untyped-def]
    return served(models.spec("shadow", SHADOW))


@pytest.mark.parametrize("count", [4, 150])  # per-row and columnar JSON writers
def test_shadow_deploy_json(shadow, models: Models, count: int) -> None:  # type: ignore[no-untyped-def]
    edge, _ = shadow
    millimetres = models.features[np.linspace(0, 149, count).astype(int)] * 10
    reply = infer(edge, "iris-shadow", tensor_rows(millimetres), dataset=["*", "metadata"])
    assert reply.status_code == 200, reply.text  # the failing challenger fails nothing
    records = reply.json()
    champion_labels = models.logistic.predict(millimetres).tolist()
    tree_labels = models.tree.predict(millimetres).tolist()
    tree_probabilities = models.tree.predict_proba(millimetres)
    assert [r["out"]["label"] for r in records] == champion_labels
    np.testing.assert_allclose(
        [r["out"]["probabilities"] for r in records],
        models.logistic.predict_proba(millimetres),
        rtol=1e-5,
        atol=1e-6,
    )
    # challengers' columns are `out_<model>.<output>`, not `out.*` (top-level keys in JSON)
    assert [r["out_tree.label"] for r in records] == tree_labels
    assert all("challenger exploded" in r["out_flaky.error"] for r in records)
    for i, record in enumerate(records):
        assert record["model_name"] == "champion"
        assert json.loads(record["metadata"]["last_model"])["model_name"] == "champion"
        assert len(record["metadata"]["elapsed"]) == 2
        assert [list(o) for o in record["outputs"]] == [["Int64"], ["Float"]]  # champion's
        shadow_data = record["shadow_data"]  # each row's challenger outputs, as `outputs`
        assert set(shadow_data) == {"tree", "flaky"}
        assert "step 'flaky'" in shadow_data["flaky"]["error"]
        assert "ValueError: challenger exploded" in shadow_data["flaky"]["error"]
        label, probabilities = shadow_data["tree"]
        assert label == {"Int64": {"data": [tree_labels[i]], "dim": [1], "v": 1}}
        assert probabilities["Float"]["dim"] == [1, 3]
        np.testing.assert_allclose(probabilities["Float"]["data"], tree_probabilities[i])


def test_shadow_deploy_arrow_and_models(shadow, models: Models) -> None:  # type: ignore[no-untyped-def]
    edge, _ = shadow
    listed = listed_models(edge)
    assert {n: m["runtime"] for n, m in listed.items()} == {
        "champion": "onnx",
        "tree": "onnx",
        "flaky": "python",
    }
    millimetres = models.features[[0, 60, 120, 55]] * 10
    table = infer_arrow(edge, "iris-shadow", tensor_rows(millimetres))
    assert table.column_names[:8] == [
        "time",
        "in.tensor",
        "out.label",
        "out.probabilities",
        "out_tree.label",
        "out_tree.probabilities",
        "out_flaky.error",
        "anomaly.count",
    ]
    assert table.column("out.label").to_pylist() == models.logistic.predict(millimetres).tolist()
    assert table.column("out_tree.label").to_pylist() == models.tree.predict(millimetres).tolist()
    np.testing.assert_allclose(
        np.stack(table.column("out_tree.probabilities").to_numpy(zero_copy_only=False)),
        models.tree.predict_proba(millimetres),
        rtol=1e-6,
    )
    errors = table.column("out_flaky.error").to_pylist()
    assert all("step 'flaky'" in e and "challenger exploded" in e for e in errors)
    last_model = json.loads(table.column("metadata.last_model")[0].as_py())
    assert last_model == {"model_name": "champion", "model_sha": listed["champion"]["sha"]}
    assert "shadow model=flaky failed" in edge.output()
