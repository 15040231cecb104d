"""The framework rules of a spec (the seed's schemas), what publish makes of each model
(converted, or packed for its own runtime, and why), and the native runtimes' guards: a
missing extra named, a tampered pickle refused before it is unpickled."""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from edge.artifact import ModelInfo
from edge.errors import DigestMismatch, SpecError
from edge.registry import Reference, open_store
from edge.spec import parse_spec
from tests.conftest import edge_cmd, free_port
from tests.models import iris, iris_estimator, keras_model, write_schema

ESTIMATOR_IN = pa.schema([pa.field("inputs", pa.list_(pa.float64(), list_size=4))])
ESTIMATOR_OUT = pa.schema(
    [pa.field("predictions", pa.int64()), pa.field("probabilities", pa.list_(pa.float64(), 3))]
)


def spec_of(tmp_path: Path, step: dict[str, Any], schemas: dict[str, pa.Schema]) -> Any:
    """Parse a one-step spec whose model file and schema files exist in `tmp_path`."""
    for name, schema in schemas.items():
        write_schema(tmp_path / name, schema)
    model = tmp_path / step["file"]
    if not model.exists():
        model.mkdir() if "." not in model.name else model.write_bytes(b"not read by the spec")
    return parse_spec({"name": "p", "steps": [step]}, tmp_path)


def sklearn_step(**extra: Any) -> dict[str, Any]:
    step = {"model": "m", "file": "m.pkl", "framework": "sklearn"}
    return {**step, "input_schema": "in.arrow", "output_schema": "out.arrow", **extra}


@pytest.mark.parametrize(
    "step,schemas,words",
    [
        (
            {"model": "m", "file": "m.pkl", "framework": "sklearn"},
            {},
            ["steps[0].input_schema is required", "'sklearn'"],
        ),
        (
            sklearn_step(),
            {"in.arrow": pa.schema([("a", pa.float64()), ("b", pa.float64())]),
             "out.arrow": ESTIMATOR_OUT},
            ["steps[0].input_schema", "one field", "['a', 'b']"],
        ),
        (
            sklearn_step(),
            {"in.arrow": pa.schema([("inputs", pa.list_(pa.float64()))]),
             "out.arrow": ESTIMATOR_OUT},
            ["field 'inputs'", "fixed-size list"],
        ),
        (
            sklearn_step(),
            {"in.arrow": ESTIMATOR_IN,
             "out.arrow": pa.schema([("predictions", pa.int64()), ("odds", pa.string())])},
            ["output_schema field 'odds'"],
        ),
        (
            {"model": "m", "file": "m.pt", "framework": "pytorch", "input_schema": "in.arrow",
             "output_schema": "out.arrow"},
            {"in.arrow": pa.schema([("text", pa.string())]),
             "out.arrow": pa.schema([("y", pa.float32())])},
            ["input_schema field 'text'", "numbers"],
        ),
        (
            {"model": "m", "file": "m", "framework": "hugging-face-feature-extraction",
             "input_schema": "in.arrow"},
            {"in.arrow": pa.schema([("inputs", pa.string()), ("top_k", pa.int64())])},
            ["input_schema field 'top_k'", "['inputs']"],
        ),
        (
            {"model": "m", "file": "m", "framework": "hugging-face-text-classification",
             "output_schema": "out.arrow"},
            {"out.arrow": pa.schema([("labels", pa.list_(pa.string()))])},
            ["output_schema", "['label', 'score']", "['labels']"],
        ),
        (
            {"model": "m", "file": "m", "framework": "hugging-face-translation"},
            {},
            ["steps[0].framework", "'translation'", "text-classification"],
        ),
        ({"model": "m", "file": "m.pkl", "framework": "lightgbm"}, {}, ["'lightgbm'", "sklearn"]),
        (
            sklearn_step(runtime="tensorflow"),
            {"in.arrow": ESTIMATOR_IN, "out.arrow": ESTIMATOR_OUT},
            ["steps[0].runtime", "['onnx', 'sklearn']", "'tensorflow'"],
        ),
        (
            {"model": "m", "file": "m.onnx", "framework": "pytorch"},
            {},
            ["steps[0].file", ".pt or .pth"],
        ),
    ],
)  # fmt: skip
def test_spec_framework_errors_name_the_field(
    tmp_path: Path, step: dict[str, Any], schemas: dict[str, pa.Schema], words: list[str]
) -> None:
    with pytest.raises(SpecError) as caught:
        spec_of(tmp_path, step, schemas)
    for word in words:
        assert word in str(caught.value), (word, str(caught.value))


def test_spec_framework_entries(tmp_path: Path) -> None:
    spec = spec_of(tmp_path, sklearn_step(), {"in.arrow": ESTIMATOR_IN, "out.arrow": ESTIMATOR_OUT})
    entry = spec.models["m"]
    assert (entry.framework, entry.runtime, entry.convert) == ("sklearn", "sklearn", "try")
    forced = spec_of(tmp_path, sklearn_step(runtime="onnx"), {})
    assert forced.models["m"].convert == "required"
    native = spec_of(tmp_path, sklearn_step(runtime="sklearn"), {})
    assert native.models["m"].convert == "no"
    hugging = spec_of(tmp_path, {"model": "m", "file": "hf", "framework":
                                 "hugging-face-text-classification"}, {})  # fmt: skip
    entry = hugging.models["m"]
    assert (entry.runtime, entry.convert) == ("hugging-face", "no")
    assert entry.input_schema.names == ["inputs", "top_k", "function_to_apply"]  # the seed's
    assert entry.output_schema.names == ["label", "score"]
    onnx = spec_of(tmp_path, {"model": "m", "file": "m.onnx"}, {})
    assert (onnx.models["m"].framework, onnx.models["m"].runtime) == (None, "onnx")


# ---------------------------------------------------------------------------- publish


def write_spec(folder: Path, step: str) -> Path:
    write_schema(folder / "in.arrow", ESTIMATOR_IN)
    write_schema(folder / "out.arrow", ESTIMATOR_OUT)
    spec = folder / "pipeline.yaml"
    spec.write_text(f"name: iris\nsteps:\n  - {textwrap.dedent(step).strip()}\n")
    return spec


def layer_notes(url: str) -> dict[str, str]:
    ref = Reference.parse(url)
    store = open_store(ref, None, None, None)
    try:
        manifest = json.loads(store.get_manifest(ref)[0])
    finally:
        store.close()
    (layer,) = manifest["layers"]
    return {k.removeprefix("ai.edge.model."): v for k, v in layer["annotations"].items()}


def test_publish_records_the_conversion_on_the_layer(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from edge.publish import publish

    iris_estimator("sklearn", tmp_path / "iris.pkl")
    spec = write_spec(
        tmp_path,
        """model: iris
    file: iris.pkl
    framework: sklearn
    input_schema: in.arrow
    output_schema: out.arrow""",
    )
    published, definition = publish(spec, layout=tmp_path / "layout")
    info = definition.models["iris"]
    assert (info.runtime, info.framework, info.filename) == ("onnx", "sklearn", "iris.onnx")
    assert info.conversion and info.conversion.startswith("skl2onnx ")
    notes = layer_notes(published.pipeline_url)
    assert notes["runtime"] == "onnx" and notes["framework"] == "sklearn"
    assert notes["conversion"] == info.conversion
    assert "predictions equal" in info.conversion and "1e-05 * |original|" in info.conversion
    printed = capsys.readouterr().err
    assert "model 'iris' (sklearn): converted to ONNX with skl2onnx" in printed
    assert published.as_dict()["models"] == [
        {"name": "iris", "framework": "sklearn", "runtime": "onnx", "conversion": info.conversion}
    ]
    assert json.loads(definition.to_json())["models"]["iris"]["framework"] == "sklearn"


def test_answers_that_differ_fall_back_to_the_native_runtime(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """No tolerance at all: the float32 ONNX tree's probabilities are not the float64 ones."""
    import edge.convert.sklearn_onnx as converter
    from edge.convert.check import Tolerance
    from edge.publish import publish

    monkeypatch.setattr(converter, "TOLERANCE", Tolerance(rtol=0, atol=0))
    iris_estimator("sklearn", tmp_path / "iris.pkl")
    spec = write_spec(
        tmp_path,
        """model: iris
    file: iris.pkl
    framework: sklearn
    input_schema: in.arrow
    output_schema: out.arrow""",
    )
    _, definition = publish(spec, layout=tmp_path / "layout")
    info = definition.models["iris"]
    assert (info.runtime, info.filename) == ("sklearn", "iris.pkl")
    assert info.conversion and "answers differ" in info.conversion
    printed = capsys.readouterr().err
    assert "published for the sklearn runtime" in printed and "edge-appliance[sklearn]" in printed
    assert "probabilities max |diff|" in printed

    forced = write_spec(tmp_path, "model: iris\n    file: iris.pkl\n    framework: sklearn\n"
                        "    runtime: onnx\n    input_schema: in.arrow\n"
                        "    output_schema: out.arrow")  # fmt: skip
    with pytest.raises(SpecError, match="model 'iris': runtime: onnx, but .*answers differ"):
        publish(forced, layout=tmp_path / "layout")


def test_a_model_that_fails_its_own_schema_fails_the_publish(tmp_path: Path) -> None:
    import joblib
    from sklearn.cluster import KMeans

    from edge.publish import publish

    joblib.dump(KMeans(n_clusters=3, n_init=2).fit(iris()[0]), tmp_path / "kmeans.pkl")
    spec = write_spec(  # KMeans has no predict_proba for the second field
        tmp_path,
        """model: clusters
    file: kmeans.pkl
    framework: sklearn
    runtime: sklearn
    input_schema: in.arrow
    output_schema: out.arrow""",
    )
    with pytest.raises(SpecError, match="no predict_proba.*'probabilities'"):
        publish(spec, layout=tmp_path / "layout")


def test_hugging_face_folder_packs_the_same_zip_twice(tmp_path: Path) -> None:
    from edge.convert import zip_folder as pack_folder

    folder = tmp_path / "model"
    (folder / "sub").mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "sub" / "vocab.txt").write_text("a\nb\n")
    first = pack_folder(folder, tmp_path / "one.zip").read_bytes()
    os.utime(folder / "config.json", (0, 0))
    assert pack_folder(folder, tmp_path / "two.zip").read_bytes() == first


# ---------------------------------------------------------------------------- native runtimes


def info_for(path: Path, runtime: str, sha_of: Path | None = None, **extra: Any) -> ModelInfo:
    from edge.convert.check import model_info

    info = model_info("m", sha_of or path, runtime, ESTIMATOR_IN, ESTIMATOR_OUT, runtime)
    return dataclasses.replace(info, filename=path.name, **extra)


class Evil:
    """Unpickling this runs code: it touches the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


def test_a_pickle_is_unpickled_only_when_its_digest_matches(tmp_path: Path) -> None:
    from edge.runtimes import RuntimeContext, load_runtime

    model = iris_estimator("sklearn", tmp_path / "iris.pkl")
    context = RuntimeContext(work_dir=tmp_path / "work")
    runtime = load_runtime(
        info_for(tmp_path / "iris.pkl", "sklearn"), tmp_path / "iris.pkl", context
    )
    features = iris()[0][:3].astype(np.float64)
    result = runtime.predict(pa.table({"inputs": features.tolist()}))
    assert result.column("predictions").to_pylist() == model.predict(features).tolist()
    assert runtime.inline is False  # user-shaped code: never on the event loop

    marker = tmp_path / "ran"
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps(Evil(marker)))
    swapped = info_for(evil, "sklearn", sha_of=tmp_path / "iris.pkl")  # the digest published
    with pytest.raises(DigestMismatch, match="refusing to load it"):
        load_runtime(swapped, evil, context)
    assert not marker.exists()


def test_a_missing_extra_is_named(tmp_path: Path) -> None:
    """Each native runtime, on a device without its framework: the extra to install."""
    code = textwrap.dedent(
        """
        import sys
        for blocked in ("sklearn", "xgboost", "torch", "transformers", "keras", "tensorflow"):
            sys.modules[blocked] = None  # `import blocked` raises ImportError
        from edge.errors import ArtifactError
        from edge.runtimes import runtime_class
        for runtime in ("sklearn", "xgboost", "pytorch", "hugging-face", "keras"):
            try:
                runtime_class(runtime, "model 'm'")
            except ArtifactError as exc:
                print(runtime, "|", exc)
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = dict(line.split(" | ", 1) for line in done.stdout.splitlines())
    extras = {"sklearn": "sklearn", "xgboost": "xgboost", "pytorch": "pytorch",
              "hugging-face": "huggingface", "keras": "tensorflow"}  # fmt: skip
    for runtime, extra in extras.items():
        assert f"pip install 'edge-appliance[{extra}]'" in lines[runtime], lines[runtime]
        assert f"model 'm' needs runtime '{runtime}'" in lines[runtime]


def test_serve_without_the_extra_exits_naming_it(tmp_path: Path) -> None:
    """`edge serve` of a native scikit-learn pipeline where scikit-learn cannot be imported."""
    from edge.publish import publish

    iris_estimator("sklearn", tmp_path / "iris.pkl")
    spec = write_spec(
        tmp_path,
        """model: iris
    file: iris.pkl
    framework: sklearn
    input_schema: in.arrow
    output_schema: out.arrow""",
    )
    published, _ = publish(spec, layout=tmp_path / "layout", convert=False, progress=False)
    blocker = tmp_path / "blocked" / "sklearn"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('No module named sklearn')\n")
    env = dict(os.environ, PIPELINE_URL=published.pipeline_url, PYTHONPATH=str(blocker.parent))
    env["GRPC_PORT"] = "0"  # tests run side by side: no fixed port
    done = subprocess.run(
        edge_cmd("serve", "--host", "127.0.0.1", "--port", str(free_port()),
                 "--persist-dir", str(tmp_path / "p")),
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2, done.stdout + done.stderr
    output = done.stdout + done.stderr
    assert "model 'iris' needs runtime 'sklearn'" in output
    assert "pip install 'edge-appliance[sklearn]'" in output
    assert "Traceback" not in output


def test_keras_savedmodel_zip_native_equals_keras(tmp_path: Path) -> None:
    from edge.runtimes import RuntimeContext, load_runtime

    model, path = keras_model(tmp_path / "models", "dense", "zip")
    inputs = pa.schema([pa.field("inputs", pa.list_(pa.float32(), 4))])
    outputs = pa.schema([pa.field("probabilities", pa.list_(pa.float32(), 3))])
    from edge.convert.check import model_info

    info = model_info("dense", path, "keras", inputs, outputs, "keras")
    runtime = load_runtime(info, path, RuntimeContext(work_dir=tmp_path / "work"))
    features = iris()[0][::30]
    result = runtime.predict(pa.table({"x": features.tolist()}))  # a lone column feeds it
    assert result.schema == outputs
    got = np.array(result.column("probabilities").to_pylist(), np.float32)
    np.testing.assert_allclose(got, model(features).numpy(), rtol=1e-6)
    runtime.close()
    assert not any((tmp_path / "work").iterdir())  # the unzipped SavedModel is gone


def test_only_inline_runtimes_run_on_the_event_loop(tmp_path: Path) -> None:
    from sklearn.linear_model import LogisticRegression

    from edge.artifact import Definition, ModelStep
    from edge.convert.check import model_info
    from edge.pipeline import Pipeline
    from edge.runtimes import RuntimeContext, load_runtime
    from tests.models import onnx_classifier

    features, labels, _ = iris()
    onnx_classifier(LogisticRegression(max_iter=500), features, labels, tmp_path / "lr.onnx")
    iris_estimator("sklearn", tmp_path / "iris.pkl")
    context = RuntimeContext(work_dir=tmp_path / "work")
    onnx = load_runtime(
        model_info("a", tmp_path / "lr.onnx", "onnx", None, None, None),
        tmp_path / "lr.onnx",
        context,
    )
    native = load_runtime(
        info_for(tmp_path / "iris.pkl", "sklearn"), tmp_path / "iris.pkl", context
    )
    definition = Definition("p", "v", [ModelStep("a")], {"a": onnx.info})
    assert Pipeline(definition, {"a": onnx}, "edge").quick is True
    both = Definition(
        "p", "v", [ModelStep("a"), ModelStep("m")], {"a": onnx.info, "m": native.info}
    )
    assert Pipeline(both, {"a": onnx, "m": native}, "edge").quick is False
