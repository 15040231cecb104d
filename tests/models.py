"""Models and model files made at test time, shared by the runtime and end-to-end tests:
ONNX classifiers (scikit-learn + skl2onnx), Keras SavedModel zips, BYOP zips (a KMeans model
saved with joblib), Python step files and Arrow schema files."""

from __future__ import annotations

import textwrap
import warnings
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


# ---------------------------------------------------------------------------- other frameworks
# Each trained (or, for Hugging Face, initialised at random) at test time; none fetched.


def iris_estimator(kind: str, path: Path) -> Any:
    """A classifier on iris (float64 features), pickled with joblib as a person would."""
    import joblib

    features, labels, _ = iris()
    if kind == "sklearn":
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500))
    else:
        import xgboost

        model = xgboost.XGBClassifier(n_estimators=8, max_depth=3, n_jobs=1, random_state=0)
    model.fit(features.astype(np.float64), labels)
    path.parent.mkdir(parents=True, exist_ok=True)
    joblib.dump(model, path)
    return model


def torchscript_model(path: Path) -> Any:
    """A small scripted network (4 -> 3 class scores and their softmax), saved as TorchScript."""
    import torch

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.hidden = torch.nn.Linear(4, 8)
            self.out = torch.nn.Linear(8, 3)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            scores = self.out(torch.relu(self.hidden(x)))
            return scores, torch.softmax(scores, dim=1)

    torch.manual_seed(0)
    with warnings.catch_warnings():  # TorchScript is deprecated upstream; it is the seed's format
        warnings.simplefilter("ignore", DeprecationWarning)
        scripted = torch.jit.script(Net().eval())
    path.parent.mkdir(parents=True, exist_ok=True)
    scripted.save(str(path))
    return scripted


def keras_model(folder: Path, name: str, kind: str) -> tuple[Any, Path]:
    """A small Keras model (4 -> 3 softmax) as an HDF5 file (`kind` "h5") or as the seed's
    SavedModel zip (`kind` "zip"). Imports TensorFlow."""
    import keras

    keras.utils.set_random_seed(3)
    model = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(8, activation="relu"),
            keras.layers.Dense(3, activation="softmax"),
        ]
    )
    folder.mkdir(parents=True, exist_ok=True)
    if kind == "h5":
        model.save(str(folder / f"{name}.h5"))
        return model, folder / f"{name}.h5"
    model.export(str(folder / name), verbose=False)
    return model, zip_folder(folder / name, folder / f"{name}.zip")


VOCABULARY = "the a good bad movie film great awful plot actor was is not very".split()


def hugging_face_folder(folder: Path, task: str) -> Path:
    """A tiny BERT with random weights and a tokenizer made from `VOCABULARY`, saved as a
    Hugging Face pipeline folder for `task` (text-classification or feature-extraction)."""
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    import transformers

    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *VOCABULARY]
    tokenizer = transformers.BertTokenizer(vocab={t: i for i, t in enumerate(tokens)})
    config = transformers.BertConfig(
        vocab_size=len(tokens),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
        initializer_range=0.5,  # random weights far enough apart to tell texts apart
        num_labels=3,
        id2label={0: "negative", 1: "neutral", 2: "positive"},
        label2id={"negative": 0, "neutral": 1, "positive": 2},
    )
    torch.manual_seed(0)
    if task == "text-classification":
        model = transformers.BertForSequenceClassification(config)
    else:
        model = transformers.BertModel(config)
    transformers.utils.logging.disable_progress_bar()
    transformers.pipeline(task, model=model.eval(), tokenizer=tokenizer).save_pretrained(
        str(folder)
    )
    return folder
