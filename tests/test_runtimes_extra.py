"""TensorFlow, Python-step and BYOP runtimes, each on a model built at test time."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import textwrap
import uuid
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from edge.artifact import ModelInfo, encode_schema
from edge.errors import ArtifactError, BadInput, PipelineError
from edge.runtimes import RuntimeContext, load_runtime
from edge.runtimes.base import Runtime
from tests.models import BYOP_HELPERS, BYOP_INFERENCE, byop_zip, fit_kmeans, write_files, zip_folder


def make_info(name: str, runtime: str, path: Path, **extra: object) -> ModelInfo:
    data = path.read_bytes()
    return ModelInfo(
        name=name,
        version=str(uuid.uuid4()),
        sha256=hashlib.sha256(data).hexdigest(),
        runtime=runtime,
        filename=path.name,
        size=len(data),
        **extra,  # type: ignore[arg-type]
    )


def load(tmp_path: Path, name: str, runtime: str, path: Path, **extra: object) -> Runtime:
    context = RuntimeContext(threads=1, gpus=0, work_dir=tmp_path / "work")
    return load_runtime(make_info(name, runtime, path, **extra), path, context)


def test_extra_runtimes_do_not_import_tensorflow() -> None:
    code = (
        "import sys, edge.runtimes.byop, edge.runtimes.python_step, edge.validations, mac; "
        "assert 'tensorflow' not in sys.modules, 'tensorflow imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------------------- TensorFlow


@pytest.fixture(scope="module")
def tf():  # type: ignore[no-untyped-def]
    return pytest.importorskip("tensorflow")


def test_tensorflow_keras_savedmodel_matches_keras(tf, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import keras

    keras.utils.set_random_seed(7)
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(3, activation="relu"), keras.layers.Dense(2)]
    )
    model.export(str(tmp_path / "house"), verbose=False)
    path = zip_folder(tmp_path / "house", tmp_path / "house.zip")
    runtime = load(tmp_path, "house", "tensorflow", path)

    x = np.random.default_rng(1).normal(size=(5, 4)).astype(np.float32)
    table = pa.table({"tensor": pa.array(x.tolist(), pa.list_(pa.float64()))})
    result = runtime.predict(table)  # a lone column feeds the lone input whatever its name
    (name,) = result.column_names  # the signature's own name, whatever Keras chose
    got = np.array(result.column(name).to_pylist(), dtype=np.float32)
    np.testing.assert_allclose(got, model(x).numpy(), rtol=1e-5)
    runtime.close()
    assert not any((tmp_path / "work").iterdir())  # the unzipped copy is gone


def test_tensorflow_named_inputs_and_errors(tf, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    class Scorer(tf.Module):
        def __init__(self) -> None:
            self.w = tf.Variable([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])

        @tf.function(
            input_signature=[
                tf.TensorSpec([None, 3], tf.float32, name="features"),
                tf.TensorSpec([None], tf.int64, name="k"),
            ]
        )
        def serve(self, features, k):  # type: ignore[no-untyped-def]
            return {"scores": features @ self.w, "k2": k * 2}

    scorer = Scorer()
    tf.saved_model.save(
        scorer, str(tmp_path / "scorer"), signatures={"serving_default": scorer.serve}
    )
    path = zip_folder(tmp_path / "scorer", tmp_path / "scorer.zip")
    runtime = load(tmp_path, "scorer", "tensorflow", path)
    table = pa.table({"k": [1, 2], "features": [[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]})
    result = runtime.predict(table)
    assert result.column("scores").to_pylist() == [[1.0, 2.0], [5.0, 6.0]]
    assert result.column("k2").to_pylist() == [2, 4]

    with pytest.raises(BadInput, match="features"):  # wrong width names the column
        runtime.predict(pa.table({"k": [1], "features": [[1.0, 2.0]]}))
    with pytest.raises(BadInput, match="missing"):
        runtime.predict(pa.table({"features": [[1.0, 2.0, 3.0]], "other": [1]}))
    renamed = load(tmp_path, "scorer", "tensorflow", path, tensor_fields=["f", "kk"])
    out = renamed.predict(pa.table({"kk": [3], "f": [[0.0, 1.0, 0.0]]}))
    assert out.column("scores").to_pylist() == [[3.0, 4.0]]
    assert out.column("k2").to_pylist() == [6]


def test_tensorflow_pipeline_pre_model_post_equals_direct(tf, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import keras

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.export(str(tmp_path / "lin"), verbose=False)
    tf_model = load(tmp_path, "lin", "tensorflow", zip_folder(tmp_path / "lin", tmp_path / "l.zip"))
    pre = tmp_path / "pre.py"
    pre.write_text(
        "def wallaroo_json(data):\n"
        "    return {'tensor_fields': ['x'], 'x': [[a, a * b] for a, b in zip(data.a, data.b)]}\n"
    )
    post = tmp_path / "post.py"
    post.write_text(
        "def wallaroo_json(data):\n"
        "    (name,) = data.columns\n"
        "    return data.assign(doubled=[float(v[0]) * 2 for v in data[name]])[['doubled']]\n"
    )
    steps = [
        load(tmp_path, "pre", "python", pre),
        tf_model,
        load(tmp_path, "post", "python", post),
    ]
    table = pa.table({"a": [1.0, 2.0, 3.0], "b": [0.5, 1.0, -1.0]})
    for step in steps:
        table = step.predict(table)
    features = np.array([[1.0, 0.5], [2.0, 2.0], [3.0, -3.0]], dtype=np.float32)
    expected = model(features).numpy()[:, 0] * 2
    np.testing.assert_allclose(table.column("doubled").to_pylist(), expected, rtol=1e-5)


def test_tensorflow_zip_without_savedmodel_is_refused(tf, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = zip_folder(write_files(tmp_path / "empty", {"README": "nothing"}), tmp_path / "e.zip")
    with pytest.raises(ArtifactError, match="saved_model.pb"):
        load(tmp_path, "empty", "tensorflow", path)
    (tmp_path / "bad.zip").write_bytes(b"not a zip")
    with pytest.raises(ArtifactError, match="unzip"):
        load(tmp_path, "bad", "tensorflow", tmp_path / "bad.zip")


# ---------------------------------------------------------------------------- Python steps

SEED_POSTPROCESS = """
import pandas as pd

def wallaroo_json(data: pd.DataFrame):
    print(data)
    return [{"output": [data["dense_2"].to_list()[0][0]]}]
"""

# The seed's pre-processing example, reading the DataFrame it is given (the seed's version
# parses a JSON string first) and returning its `tensor_fields` dict unchanged.
SEED_PREPROCESS = """
import numpy
import pandas

def actual_preprocess(pdata):
    pd = pdata.copy()
    # convert boolean cust_known to 0/1
    pd.cust_known = numpy.where(pd.cust_known, 1, 0)
    # interact UnitPrice and cust_known
    pd['UnitPriceXcust_known'] = pd.UnitPrice * pd.cust_known
    return pd.loc[:, ['UnitPrice', 'cust_known', 'UnitPriceXcust_known']]

def wallaroo_json(data):
    pprocessed = actual_preprocess(data)
    return {
       'tensor_fields': ['model_input'],
       'model_input': pprocessed.to_numpy().tolist()
    }
"""


def python_step(tmp_path: Path, source: str, name: str = "step") -> Runtime:
    path = tmp_path / f"{name}.py"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(source))
    return load(tmp_path, name, "python", path)


def test_python_seed_postprocess(tmp_path: Path) -> None:
    runtime = python_step(tmp_path, SEED_POSTPROCESS, "post")
    table = pa.table({"dense_2": pa.array([[12.886651]], pa.list_(pa.float32()))})
    result = runtime.predict(table)
    assert result.column_names == ["output"]
    assert result.column("output").to_pylist() == [[pytest.approx(12.886651)]]


def test_python_seed_preprocess_tensor_fields(tmp_path: Path) -> None:
    runtime = python_step(tmp_path, SEED_PREPROCESS, "pre")
    table = pa.table({"UnitPrice": [2.5, 4.0], "cust_known": [True, False], "extra": ["a", "b"]})
    result = runtime.predict(table)
    assert result.column_names == ["model_input"]
    assert result.column("model_input").to_pylist() == [[2.5, 1.0, 2.5], [4.0, 0.0, 0.0]]


@pytest.mark.parametrize(
    "body",
    [
        "return data.assign(y=data.x * 2)[['y']]",  # DataFrame
        "return {'y': (data.x * 2).to_numpy()}",  # dict of columns (numpy)
        "return {'y': data.x * 2}",  # dict of columns (Series)
        "return [{'y': v * 2} for v in data.x]",  # list of row dicts
        "import pyarrow as pa; return pa.table({'y': (data.x * 2).tolist()})",  # Arrow table
    ],
)
def test_python_return_forms(tmp_path: Path, body: str) -> None:
    runtime = python_step(tmp_path, f"def wallaroo_json(data):\n    {body}\n")
    result = runtime.predict(pa.table({"x": [1.0, 2.5]}))
    assert result.column("y").to_pylist() == [2.0, 5.0]


def test_python_dataframe_strings_come_back_plain(tmp_path: Path) -> None:
    runtime = python_step(tmp_path, "def wallaroo_json(data):\n    return data.assign(n=1)\n")
    result = runtime.predict(pa.table({"s": ["a", "b"]}))
    assert result.schema == pa.schema([("s", pa.string()), ("n", pa.int64())])


def test_python_step_errors_name_the_step(tmp_path: Path) -> None:
    raising = python_step(tmp_path, "def wallaroo_json(data):\n    raise ValueError('no good')\n")
    with pytest.raises(PipelineError, match="step 'step'.*ValueError: no good") as caught:
        raising.predict(pa.table({"x": [1]}))
    assert "Traceback" not in str(caught.value)
    rows = python_step(tmp_path, "def wallaroo_json(data):\n    return {'y': [1, 2, 3]}\n", "rows")
    with pytest.raises(PipelineError, match="step 'rows'.*3 rows for 1 input rows"):
        rows.predict(pa.table({"x": [1]}))
    wrong = python_step(tmp_path, "def wallaroo_json(data):\n    return 42\n", "wrong")
    with pytest.raises(PipelineError, match="returned int"):
        wrong.predict(pa.table({"x": [1]}))
    missing = python_step(
        tmp_path, "def wallaroo_json(data):\n    return {'tensor_fields': ['z'], 'y': [1]}\n", "tf"
    )
    with pytest.raises(PipelineError, match="'z'"):
        missing.predict(pa.table({"x": [1]}))


def test_python_step_bad_files(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="wallaroo_json"):
        python_step(tmp_path, "def other(data):\n    return data\n")
    with pytest.raises(ArtifactError, match="SyntaxError"):
        python_step(tmp_path, "def wallaroo_json(data)\n", "syntax")
    with pytest.raises(ArtifactError, match="ZeroDivisionError"):
        python_step(tmp_path, "x = 1 / 0\n", "boom")


def test_python_steps_with_same_name_stay_apart(tmp_path: Path) -> None:
    one = python_step(tmp_path / "a", "def wallaroo_json(data):\n    return {'y': data.x + 1}\n")
    two = python_step(tmp_path / "b", "def wallaroo_json(data):\n    return {'y': data.x + 2}\n")
    table = pa.table({"x": [1]})
    assert one.predict(table).column("y").to_pylist() == [2]
    assert two.predict(table).column("y").to_pylist() == [3]


# ---------------------------------------------------------------------------- BYOP


@pytest.fixture(scope="module")
def kmeans():  # type: ignore[no-untyped-def]
    return fit_kmeans()


def test_byop_kmeans_matches_sklearn(tmp_path: Path, kmeans) -> None:  # type: ignore[no-untyped-def]
    path = byop_zip(tmp_path, kmeans)
    schemas = {
        "input_schema": encode_schema(pa.schema([pa.field("points", pa.list_(pa.float64(), 2))])),
        "output_schema": encode_schema(pa.schema([pa.field("predictions", pa.int64())])),
    }
    runtime = load(tmp_path, "clustering", "byop", path, **schemas)
    points = [[0.1, -0.2], [5.2, 4.9], [4.8, 5.3]]
    result = runtime.predict(pa.table({"tensor": points}))  # lone column -> lone field
    assert result.schema == pa.schema([pa.field("predictions", pa.int64())])
    assert result.column("predictions").to_pylist() == kmeans.predict(np.array(points)).tolist()
    assert runtime.describe() == {"builder": "custom_inference.ClusteringBuilder"}

    with pytest.raises(BadInput, match="'points'"):
        runtime.predict(pa.table({"points": [["a", "b"]]}))
    with pytest.raises(BadInput, match="points"):
        runtime.predict(pa.table({"a": [[1.0, 2.0]], "b": [1]}))
    with pytest.raises(BadInput, match="2-D"):  # the model's own InferenceDataValidationError
        schemaless = load(tmp_path, "clustering", "byop", path)
        schemaless.predict(pa.table({"points": [1.0, 2.0]}))
    runtime.close()
    assert "custom_inference" not in sys.modules and "helpers" not in sys.modules


def test_byop_output_schema_is_enforced(tmp_path: Path, kmeans) -> None:  # type: ignore[no-untyped-def]
    path = byop_zip(tmp_path, kmeans)
    missing = encode_schema(pa.schema([pa.field("labels", pa.int64())]))
    runtime = load(tmp_path, "clustering", "byop", path, output_schema=missing)
    with pytest.raises(PipelineError, match="'labels'"):
        runtime.predict(pa.table({"points": [[0.0, 0.0]]}))
    wrong = encode_schema(pa.schema([pa.field("predictions", pa.list_(pa.string()))]))
    runtime = load(tmp_path, "clustering", "byop", path, output_schema=wrong)
    with pytest.raises(PipelineError, match="'predictions'"):
        runtime.predict(pa.table({"points": [[0.0, 0.0]]}))


def test_byop_missing_requirement(tmp_path: Path, kmeans) -> None:  # type: ignore[no-untyped-def]
    path = byop_zip(tmp_path, kmeans, **{"requirements.txt": "numpy\nno-such-dist==1.2\n"})
    with pytest.raises(ArtifactError, match=r"no-such-dist==1\.2.*offline") as caught:
        load(tmp_path, "clustering", "byop", path)
    assert "clustering" in str(caught.value) and "sha256:" in str(caught.value)
    assert not any((tmp_path / "work").iterdir())  # the failed load left nothing behind


def test_byop_path_escaping_entry_is_refused(tmp_path: Path, kmeans) -> None:  # type: ignore[no-untyped-def]
    path = byop_zip(tmp_path, kmeans)
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr("../../escaped.py", "print('owned')\n")
    with pytest.raises(ArtifactError, match="escaped.py"):
        load(tmp_path, "clustering", "byop", path)
    assert not list(tmp_path.rglob("escaped.py"))
    absolute = tmp_path / "abs.zip"
    with zipfile.ZipFile(absolute, "w") as archive:
        info = zipfile.ZipInfo("x")
        info.filename = "/tmp/absolute-entry.py"  # ZipInfo() strips the slash; force it back
        archive.writestr(info, "x = 1\n")
    with pytest.raises(ArtifactError, match="outside"):
        load(tmp_path, "abs", "byop", absolute)


def test_byop_needs_exactly_one_builder(tmp_path: Path, kmeans) -> None:  # type: ignore[no-untyped-def]
    second = """
        from custom_inference import ClusteringBuilder

        class OtherBuilder(ClusteringBuilder):
            pass
    """
    path = byop_zip(tmp_path, kmeans, "two", **{"other.py": second})
    with pytest.raises(ArtifactError, match="exactly one.*ClusteringBuilder.*OtherBuilder"):
        load(tmp_path, "two", "byop", path)
    none = byop_zip(tmp_path, kmeans, "none", **{"custom_inference.py": "x = 1\n"})
    with pytest.raises(ArtifactError, match="exactly one InferenceBuilder subclass; found none"):
        load(tmp_path, "none", "byop", none)


def test_byop_wrong_model_type_and_import_errors(tmp_path: Path, kmeans) -> None:  # type: ignore[no-untyped-def]
    wrong = BYOP_INFERENCE.replace(
        'joblib.load(config.model_path / "artifacts" / "kmeans.joblib")', "object()"
    )
    path = byop_zip(tmp_path, kmeans, "wrong", **{"custom_inference.py": wrong})
    with pytest.raises(ArtifactError, match="TypeError.*KMeans"):
        load(tmp_path, "wrong", "byop", path)
    broken = byop_zip(tmp_path, kmeans, "broken", **{"helpers.py": "import not_a_module_here\n"})
    with pytest.raises(ArtifactError, match="importing 'custom_inference' failed.*not_a_module"):
        load(tmp_path, "broken", "byop", broken)


def test_byop_two_zips_with_same_module_names_stay_apart(tmp_path: Path, kmeans) -> None:  # type: ignore[no-untyped-def]
    shifted = BYOP_HELPERS.replace("dtype=np.float64)", "dtype=np.float64) * 0 + 100")
    first = load(tmp_path, "a", "byop", byop_zip(tmp_path, kmeans, "a"))
    second = load(tmp_path, "b", "byop", byop_zip(tmp_path, kmeans, "b", **{"helpers.py": shifted}))
    table = pa.table({"points": [[0.0, 0.0]]})
    far = kmeans.predict(np.array([[100.0, 100.0]])).tolist()
    assert (
        first.predict(table).column("predictions").to_pylist()
        == kmeans.predict(np.array([[0.0, 0.0]])).tolist()
    )
    assert second.predict(table).column("predictions").to_pylist() == far


def test_byop_ragged_input_reaches_the_model(tmp_path: Path, kmeans) -> None:  # type: ignore[no-untyped-def]
    lengths = """
        import numpy as np
        from mac.inference import Inference
        from mac.inference.creation import InferenceBuilder

        class Lengths(Inference):
            expected_model_types = {dict}

            def _predict(self, input_data):
                return {"n": np.array([len(row) for row in input_data["seq"]])}

        class Builder(InferenceBuilder):
            inference = Lengths

            def create(self, config):
                inference = Lengths()
                inference.model = {}
                return inference
    """
    folder = write_files(tmp_path / "ragged", {"model.py": lengths})
    runtime = load(tmp_path, "ragged", "byop", zip_folder(folder, tmp_path / "ragged.zip"))
    result = runtime.predict(pa.table({"seq": [[1, 2, 3], [4], []]}))
    assert result.column("n").to_pylist() == [3, 1, 0]


def test_mac_inference_contract() -> None:
    from mac.exceptions import ModelNotAssignedError
    from mac.inference import Inference

    class Doubler(Inference):
        @property
        def expected_model_types(self) -> set[type]:
            return {int}

        def _predict(self, input_data: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            return {"y": input_data["x"] * self.model}

    doubler = Doubler()
    with pytest.raises(ModelNotAssignedError):
        doubler.predict({"x": np.array([1])})
    with pytest.raises(TypeError, match="int"):
        doubler.model = "two"
    doubler.model = 2
    assert doubler.predict({"x": np.array([1, 2])})["y"].tolist() == [2, 4]
