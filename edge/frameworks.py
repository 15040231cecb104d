"""The model frameworks a spec step may name (`framework:`), the seed's schema rules for each,
and where each one runs.

ONNX, TensorFlow SavedModels, Python steps and BYOP zips run as they are. scikit-learn,
XGBoost, PyTorch (TorchScript) and Keras models are converted to ONNX at publish when that
works and answers the same (`edge.convert`); otherwise the original file is packed for the
framework's own runtime (`runtime: sklearn`, ...), which a device runs from an extra
(`pip install 'edge-appliance[sklearn]'`). Hugging Face pipelines (`hugging-face-<task>`)
always run natively.

The schema rules are the seed's: scikit-learn and XGBoost take one field, a fixed-size list of
numbers in the order the model was trained on (`inputs`); PyTorch and Keras take one field per
model input, in the model's order (PyTorch floats must be float32 for the ONNX conversion);
each output schema field names one model output, in order. Hugging Face tasks have fixed
schemas (`HUGGING_FACE_TASKS`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from edge.errors import SpecError
from edge.tensors import tensor_type

HUGGING_FACE = "hugging-face-"


@dataclass(frozen=True)
class Framework:
    name: str
    native: str  # the runtime that runs the original file
    converter: str | None = None  # the `edge.convert` module that makes it ONNX
    suffixes: tuple[str, ...] = ()  # model file endings it takes ("/" a folder)
    schemas: bool = False  # input_schema and output_schema are required (the seed's rule)


FRAMEWORKS = {
    "onnx": Framework("onnx", "onnx", suffixes=(".onnx",)),
    "tensorflow": Framework("tensorflow", "tensorflow", suffixes=(".zip",)),
    "python": Framework("python", "python", suffixes=(".py",)),
    "byop": Framework("byop", "byop", suffixes=(".zip",)),
    "sklearn": Framework(
        "sklearn", "sklearn", "sklearn_onnx", (".pkl", ".pickle", ".joblib"), schemas=True
    ),
    "xgboost": Framework(
        "xgboost", "xgboost", "xgboost_onnx", (".pkl", ".pickle", ".joblib"), schemas=True
    ),
    "pytorch": Framework("pytorch", "pytorch", "pytorch_onnx", (".pt", ".pth"), schemas=True),
    "keras": Framework(
        "keras", "keras", "keras_onnx", (".zip", ".h5", ".hdf5", ".keras"), schemas=True
    ),
}

# The seed's schemas for each Hugging Face task served here: (input, output). Fields marked
# optional in the seed may be left out of a spec's own schema.
HUGGING_FACE_TASKS: dict[str, tuple[pa.Schema, pa.Schema]] = {
    "text-classification": (
        pa.schema(
            [
                pa.field("inputs", pa.string()),
                pa.field("top_k", pa.int64()),
                pa.field("function_to_apply", pa.string()),
            ]
        ),
        pa.schema(
            [pa.field("label", pa.list_(pa.string())), pa.field("score", pa.list_(pa.float64()))]
        ),
    ),
    "feature-extraction": (
        pa.schema([pa.field("inputs", pa.string())]),
        pa.schema([pa.field("output", pa.list_(pa.list_(pa.float64())))]),
    ),
}
# Tasks whose extra input fields are passed on to the pipeline as keyword arguments (the seed).
HUGGING_FACE_EXTRA_INPUTS = {"text-classification"}


def framework_names() -> list[str]:
    return [*FRAMEWORKS, *(HUGGING_FACE + task for task in HUGGING_FACE_TASKS)]


def find_framework(name: str, where: str) -> Framework:
    if name in FRAMEWORKS:
        return FRAMEWORKS[name]
    if name.startswith(HUGGING_FACE):
        task = name[len(HUGGING_FACE) :]
        if task in HUGGING_FACE_TASKS:
            return Framework(name, "hugging-face", suffixes=(".zip", "/"))
        raise SpecError(
            f"{where}: Hugging Face task {task!r} is not served here; tasks: "
            f"{sorted(HUGGING_FACE_TASKS)}"
        )
    raise SpecError(f"{where}: framework {name!r} is not one of {framework_names()}")


def hugging_face_task(framework: str) -> str:
    return framework[len(HUGGING_FACE) :]


def check_schemas(
    framework: Framework,
    input_schema: pa.Schema | None,
    output_schema: pa.Schema | None,
    where: str,
) -> tuple[pa.Schema | None, pa.Schema | None]:
    """The step's schemas checked against the framework's rules (the seed's); a Hugging Face
    step without schemas gets its task's. Errors name the schema and the field."""
    if framework.name.startswith(HUGGING_FACE):
        return _hugging_face(framework.name, input_schema, output_schema, where)
    if not framework.schemas:
        return input_schema, output_schema
    for which, schema in (("input_schema", input_schema), ("output_schema", output_schema)):
        if schema is None:
            raise SpecError(
                f"{where}.{which} is required for framework {framework.name!r} (an Arrow schema "
                f"file naming the model's {which.split('_')[0]}s)"
            )
    assert input_schema is not None and output_schema is not None
    if framework.name in ("sklearn", "xgboost"):
        _estimator_schemas(framework.name, input_schema, output_schema, where)
    else:
        for which, schema in (("input_schema", input_schema), ("output_schema", output_schema)):
            if not len(schema):
                raise SpecError(f"{where}.{which} has no fields")
            for field in schema:
                _numeric(field, f"{where}.{which} field {field.name!r}")
    return input_schema, output_schema


def _estimator_schemas(name: str, inputs: pa.Schema, outputs: pa.Schema, where: str) -> None:
    example = "pa.schema([pa.field('inputs', pa.list_(pa.float64(), list_size=4))])"
    if len(inputs) != 1:
        raise SpecError(
            f"{where}.input_schema: a {name} model takes one field, an array of the features in "
            f"the order the model was trained on ({example}); it has {inputs.names}"
        )
    field = inputs.field(0)
    at = f"{where}.input_schema field {field.name!r}"
    dtype, dims = _numeric(field, at)
    if len(dims) != 1 or dims[0] is None or dtype.kind == "b":
        raise SpecError(
            f"{at} must be a fixed-size list of numbers, one per feature ({example}), not "
            f"{field.type}"
        )
    if not 1 <= len(outputs) <= 2:
        raise SpecError(
            f"{where}.output_schema: a {name} model gives one field (predict) and optionally a "
            f"second (predict_proba); it has {outputs.names}"
        )
    first = outputs.field(0)
    at = f"{where}.output_schema field {first.name!r}"
    try:
        _, dims = tensor_type(first.type)
    except TypeError as exc:
        raise SpecError(f"{at}: {exc}") from None
    if len(dims) > 1:
        raise SpecError(f"{at} (predict) must be a scalar or a list of numbers, not {first.type}")
    if len(outputs) == 2:
        second = outputs.field(1)
        at = f"{where}.output_schema field {second.name!r}"
        dtype, dims = _numeric(second, at)
        if len(dims) != 1 or dtype.kind != "f":
            raise SpecError(
                f"{at} (predict_proba) must be a list of floats, one per class, not {second.type}"
            )


def _numeric(field: pa.Field, at: str) -> tuple[np.dtype, list[int | None]]:
    try:
        dtype, dims = tensor_type(field.type)
    except TypeError as exc:
        raise SpecError(f"{at}: {exc}") from None
    if dtype.kind not in "iufb":
        raise SpecError(f"{at} must hold numbers (or lists of numbers), not {field.type}")
    return dtype, dims


def _hugging_face(
    name: str, inputs: pa.Schema | None, outputs: pa.Schema | None, where: str
) -> tuple[pa.Schema, pa.Schema]:
    task = hugging_face_task(name)
    seed_inputs, seed_outputs = HUGGING_FACE_TASKS[task]
    inputs = inputs if inputs is not None else seed_inputs
    outputs = outputs if outputs is not None else seed_outputs
    if "inputs" not in inputs.names or not pa.types.is_string(inputs.field("inputs").type):
        raise SpecError(
            f"{where}.input_schema: {name} takes a string field 'inputs' (the seed's schema: "
            f"{_describe(seed_inputs)})"
        )
    for field in inputs:
        known = field.name in seed_inputs.names
        if not known and task not in HUGGING_FACE_EXTRA_INPUTS:
            raise SpecError(
                f"{where}.input_schema field {field.name!r}: {name} takes only {seed_inputs.names}"
            )
        if known and not field.type.equals(seed_inputs.field(field.name).type):
            raise SpecError(
                f"{where}.input_schema field {field.name!r} must be "
                f"{seed_inputs.field(field.name).type}, not {field.type}"
            )
    if sorted(outputs.names) != sorted(seed_outputs.names):
        raise SpecError(
            f"{where}.output_schema: {name} gives the fields {seed_outputs.names}; the schema "
            f"has {outputs.names}"
        )
    for field in outputs:
        want = seed_outputs.field(field.name).type
        if not _same_shape(field.type, want):
            raise SpecError(
                f"{where}.output_schema field {field.name!r} must be {want} (a list may have a "
                f"fixed size), not {field.type}"
            )
    return inputs, outputs


def _same_shape(kind: pa.DataType, want: pa.DataType) -> bool:
    """Equal types, where a list may be a fixed-size list (the seed's `list_size=2`)."""
    try:
        (have_dtype, have_dims), (want_dtype, want_dims) = tensor_type(kind), tensor_type(want)
    except TypeError:
        return False
    return have_dtype == want_dtype and len(have_dims) == len(want_dims)


def _describe(schema: pa.Schema) -> str:
    return ", ".join(f"{f.name}: {f.type}" for f in schema)
