"""The published pipeline: its definition (the OCI config blob) and media types.

One pipeline version is one OCI image manifest. Its config blob is `Definition.to_json()`;
each layer is one model file annotated with `ModelInfo.annotations()`. Push (`edge publish`)
and pull (`edge serve`) both use this module, so the two ends cannot drift apart.
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import pyarrow as pa

from edge.errors import ArtifactError

SCHEMA_VERSION = 1
CONFIG_MEDIA_TYPE = "application/vnd.edge.pipeline.config.v1+json"
ARTIFACT_TYPE = "application/vnd.edge.pipeline.v1"
MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
LAYER_MEDIA_TYPES = {
    "onnx": "application/vnd.edge.model.onnx.v1",
    "tensorflow": "application/vnd.edge.model.tensorflow.v1+zip",
    "python": "application/vnd.edge.model.python.v1+text",
    "byop": "application/vnd.edge.model.byop.v1+zip",
    # native runtimes of the frameworks publish could not (or was told not to) convert to ONNX
    "sklearn": "application/vnd.edge.model.sklearn.v1+pickle",
    "xgboost": "application/vnd.edge.model.xgboost.v1+pickle",
    "pytorch": "application/vnd.edge.model.pytorch.v1+torchscript",
    "keras": "application/vnd.edge.model.keras.v1",
    "hugging-face": "application/vnd.edge.model.hugging-face.v1+zip",
}
RUNTIMES = tuple(LAYER_MEDIA_TYPES)
ANNOTATION_PREFIX = "ai.edge.model."
TITLE_ANNOTATION = "org.opencontainers.image.title"

Runtime = Literal[
    "onnx", "tensorflow", "python", "byop", "sklearn", "xgboost", "pytorch", "keras", "hugging-face"
]
DNS_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


@dataclass(frozen=True)
class ModelInfo:
    """One model file of a pipeline, as recorded in the definition and on its layer."""

    name: str
    version: str  # UUID
    sha256: str  # hex digest of the file (also the layer digest)
    runtime: str
    filename: str  # layer title: the file name inside the pulled artifact
    size: int
    tensor_fields: list[str] | None = None
    batch_config: str | None = None  # "single" or None
    input_schema: str | None = None  # base64 of an Arrow IPC-serialized schema
    output_schema: str | None = None
    # the framework the person published (`sklearn`, `hugging-face-text-classification`, ...)
    # when it is not the runtime's own, and what publish did with it ("skl2onnx 1.20.0 ...")
    framework: str | None = None
    conversion: str | None = None

    @property
    def digest(self) -> str:
        return f"sha256:{self.sha256}"

    @property
    def media_type(self) -> str:
        return LAYER_MEDIA_TYPES[self.runtime]

    def annotations(self) -> dict[str, str]:
        notes = {
            TITLE_ANNOTATION: self.filename,
            ANNOTATION_PREFIX + "name": self.name,
            ANNOTATION_PREFIX + "version": self.version,
            ANNOTATION_PREFIX + "sha256": self.sha256,
            ANNOTATION_PREFIX + "runtime": self.runtime,
            ANNOTATION_PREFIX + "batch_config": self.batch_config or "",
            ANNOTATION_PREFIX + "tensor_fields": json.dumps(self.tensor_fields),
        }
        if self.framework:
            notes[ANNOTATION_PREFIX + "framework"] = self.framework
        if self.conversion:
            notes[ANNOTATION_PREFIX + "conversion"] = self.conversion
        return notes

    def arrow_schema(self, which: Literal["input", "output"]) -> pa.Schema | None:
        encoded = self.input_schema if which == "input" else self.output_schema
        if not encoded:
            return None
        return pa.ipc.read_schema(pa.py_buffer(base64.b64decode(encoded)))


def encode_schema(schema: pa.Schema) -> str:
    return base64.b64encode(schema.serialize().to_pybytes()).decode()


@dataclass(frozen=True)
class ModelStep:
    """Run one model (any runtime) on the previous step's output."""

    model: str
    kind: Literal["model"] = "model"


@dataclass(frozen=True)
class SplitChoice:
    weight: float
    model: str


@dataclass(frozen=True)
class RandomSplitStep:
    """A/B test: each request goes to one model, picked by weight (or by hashing a key)."""

    models: list[SplitChoice]
    hash_key: str | None = None
    kind: Literal["random_split"] = "random_split"


@dataclass(frozen=True)
class ShadowStep:
    """Champion answers; challengers run on the same input and are recorded beside it."""

    champion: str
    challengers: list[str]
    kind: Literal["shadow"] = "shadow"


Step = ModelStep | RandomSplitStep | ShadowStep


@dataclass(frozen=True)
class Validation:
    """A named polars expression over the result columns; True means an anomaly."""

    source: str  # the text the person wrote, for messages and check_failures
    expr: str  # polars' JSON serialization of the expression


@dataclass(frozen=True)
class Deployment:
    cpus: float = 1
    memory: str = "512Mi"
    gpus: int = 0
    arch: str = "x86"


@dataclass(frozen=True)
class Definition:
    """The pipeline definition: the OCI config blob of a published pipeline version."""

    name: str
    version: str
    steps: list[Step]
    models: dict[str, ModelInfo]
    deployment: Deployment = field(default_factory=Deployment)
    validations: dict[str, Validation] = field(default_factory=dict)
    polars_version: str | None = None
    created: str | None = None
    schema_version: int = SCHEMA_VERSION

    def to_json(self) -> bytes:
        doc = asdict(self)
        for model in doc["models"].values():  # absent, not null: older appliances read it too
            for key in _OPTIONAL_MODEL_KEYS:
                if model[key] is None:
                    del model[key]
        return json.dumps(doc, indent=1).encode()  # keeps spec order

    @classmethod
    def from_json(cls, raw: bytes) -> Definition:
        try:
            doc = json.loads(raw)
            if doc.get("schema_version") != SCHEMA_VERSION:
                raise ArtifactError(
                    f"pipeline definition schema_version {doc.get('schema_version')!r} is not "
                    f"{SCHEMA_VERSION}: publish it again with this version of `edge`"
                )
            return cls(
                name=doc["name"],
                version=doc["version"],
                steps=[_step_from_dict(s) for s in doc["steps"]],
                models={k: ModelInfo(**m) for k, m in doc["models"].items()},
                deployment=Deployment(**doc.get("deployment") or {}),
                validations={k: Validation(**v) for k, v in (doc.get("validations") or {}).items()},
                polars_version=doc.get("polars_version"),
                created=doc.get("created"),
            )
        except ArtifactError:
            raise
        except (ValueError, KeyError, TypeError) as exc:
            raise ArtifactError(f"pipeline definition (config blob) is malformed: {exc}") from exc

    def step_models(self, step: Step) -> list[str]:
        if isinstance(step, ModelStep):
            return [step.model]
        if isinstance(step, RandomSplitStep):
            return [c.model for c in step.models]
        return [step.champion, *step.challengers]

    def engine_config(self) -> dict[str, Any]:
        return asdict(self.deployment)


_OPTIONAL_MODEL_KEYS = ("framework", "conversion")


def _step_from_dict(doc: dict[str, Any]) -> Step:
    kind = doc.get("kind")
    if kind == "model":
        return ModelStep(model=doc["model"])
    if kind == "random_split":
        return RandomSplitStep(
            models=[SplitChoice(**c) for c in doc["models"]], hash_key=doc.get("hash_key")
        )
    if kind == "shadow":
        return ShadowStep(champion=doc["champion"], challengers=list(doc["challengers"]))
    raise ArtifactError(f"unknown step kind {kind!r} in pipeline definition")
