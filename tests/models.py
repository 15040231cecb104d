"""Models and model files made at test time, shared by the runtime and end-to-end tests:
ONNX classifiers (scikit-learn + skl2onnx), Keras SavedModel zips, BYOP zips (a KMeans model
saved with joblib), Python step files and Arrow schema files."""

from __future__ import annotations

import textwrap
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa


def zip_folder(folder: Path, target: Path) -> Path:
    """Like `zip -r name.zip name/`: entries keep the folder name as their first part."""
    with zipfile.ZipFile(target, "w") as archive:
        for file in sorted(folder.rglob("*")):
            archive.write(file, file.relative_to(folder.parent).as_posix())
    return target


def write_files(folder: Path, files: dict[str, str | bytes]) -> Path:
    for name, content in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(textwrap.dedent(content))
    return folder


def write_schema(path: Path, schema: pa.Schema) -> Path:
    """An Arrow schema file as the spec's input_schema/output_schema expect: an IPC stream
    of an empty table."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, schema):
        pass
    return path


# ---------------------------------------------------------------------------- ONNX


def iris() -> tuple[np.ndarray, np.ndarray, list[str]]:
    """scikit-learn's bundled iris data (no download): features, labels, class names."""
    from sklearn.datasets import load_iris

    data = load_iris()
    return data.data.astype(np.float32), data.target, [str(n) for n in data.target_names]


def onnx_classifier(estimator: Any, features: np.ndarray, labels: np.ndarray, path: Path) -> Any:
    """Fit `estimator` and write it as ONNX with plain outputs `label` and `probabilities`
    (no ZipMap). Returns the fitted estimator."""
    from skl2onnx import to_onnx

    estimator.fit(features, labels)
    onnx = to_onnx(
        estimator, features[:1], options={id(estimator): {"zipmap": False}}, target_opset=17
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(onnx.SerializeToString())
    return estimator


# ---------------------------------------------------------------------------- TensorFlow


def keras_savedmodel_zip(folder: Path, name: str, inputs: int, seed: int = 7) -> tuple[Any, Path]:
    """A small Keras model exported as a SavedModel and zipped; returns (model, zip path).
    Imports TensorFlow: call it only from tests that need it."""
    import keras

    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [keras.Input((inputs,)), keras.layers.Dense(3, activation="relu"), keras.layers.Dense(2)]
    )
    model.export(str(folder / name), verbose=False)
    return model, zip_folder(folder / name, folder / f"{name}.zip")


# ---------------------------------------------------------------------------- BYOP

BYOP_INFERENCE = """
    \"\"\"A BYOP model as the seed describes it: a KMeans model loaded from artifacts/.\"\"\"

    import pathlib
    from typing import Any, Set

    import joblib
    import numpy as np
    from sklearn.cluster import KMeans

    from mac.config.inference import CustomInferenceConfig
    from mac.exceptions import InferenceDataValidationError
    from mac.inference import Inference
    from mac.inference.creation import InferenceBuilder
    from mac.types import InferenceData

    import helpers


    class Clustering(Inference):
        @property
        def expected_model_types(self) -> Set[Any]:
            return {KMeans}

        @Inference.model.setter  # type: ignore
        def model(self, model) -> None:
            self._raise_error_if_model_is_wrong_type(model)
            self._model = model

        def _predict(self, input_data: InferenceData) -> InferenceData:
            points = input_data["points"]
            if points.ndim != 2:
                raise InferenceDataValidationError("points must be a 2-D array")
            return {"predictions": self.model.predict(helpers.prepare(points))}


    class ClusteringBuilder(InferenceBuilder):
        @property
        def inference(self) -> Clustering:
            return Clustering

        def create(self, config: CustomInferenceConfig) -> Clustering:
            inference = self.inference()
            inference.model = joblib.load(config.model_path / "artifacts" / "kmeans.joblib")
            return inference
"""

BYOP_HELPERS = """
    import numpy as np

    def prepare(points):
        return np.asarray(points, dtype=np.float64)
"""

BYOP_REQUIREMENTS = "scikit-learn>=1.0  # the model\njoblib\nnumpy\n\n# comment\n"


def fit_kmeans() -> Any:
    """Two well-separated 2-D clusters."""
    from sklearn.cluster import KMeans

    points = np.random.default_rng(0).normal(size=(60, 2)) + np.repeat([[0, 0], [5, 5]], 30, 0)
    return KMeans(n_clusters=2, n_init=3, random_state=0).fit(points)


def byop_zip(tmp_path: Path, kmeans: Any, name: str = "clustering", **files: str | bytes) -> Path:
    """The BYOP zip `<tmp_path>/<name>.zip`: custom_inference.py, helpers.py, requirements.txt
    and the KMeans model saved with joblib under artifacts/. `files` adds or replaces files."""
    import joblib

    folder = tmp_path / name
    artifacts = folder / "artifacts"
    artifacts.mkdir(parents=True)
    joblib.dump(kmeans, artifacts / "kmeans.joblib")
    contents: dict[str, str | bytes] = {
        "custom_inference.py": BYOP_INFERENCE,
        "helpers.py": BYOP_HELPERS,
        "requirements.txt": BYOP_REQUIREMENTS,
        # never imported: importing it would fail the load
        "artifacts/notes.py": "raise RuntimeError('artifacts must not be imported')\n",
    }
    contents.update(files)
    write_files(folder, contents)
    return zip_folder(folder, tmp_path / f"{name}.zip")
