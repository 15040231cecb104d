"""The pipeline as the Open Inference Protocol's model: its metadata, the input checks, and
one inference (the same `Pipeline` run as every other route).

- Name and version: the pipeline's. Inputs: the first step's model inputs (named by its
  `tensor_fields` when it has them), outputs: the last step's (a shadow step adds each
  challenger's as `out_<model>.<output>`), each with its datatype and shape, -1 for the
  batch dimension and any free one. Runtimes that take any table (Python steps, BYOP)
  declare nothing unless the model layer carries Arrow schemas.
- Inputs the metadata declares are checked by datatype and shape (as Triton does); the
  tensors become the request's columns, named by the tensors: they are logged as `in.<name>`.
- Numeric requests to a pipeline with a compiled plan (`Pipeline.fast`: model steps whose
  runtimes take numpy arrays, no validations; `edge.fastpath`) run on
  `FastPath.run_columns` whatever their size (numpy in, numpy out; only the journal builds
  an Arrow table), the rest on `Pipeline.run` over an Arrow table: steps, A/B split, shadow,
  validations, and whatever the compiled plan declines (its errors too). Outputs are the
  `out.*` columns without the prefix, shadow outputs keep theirs; anomaly counts and the
  split's choice are response parameters.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from edge import result
from edge.artifact import ModelInfo, ModelStep, RandomSplitStep, ShadowStep
from edge.errors import BadInput, PipelineError
from edge.pipeline import Pipeline
from edge.runtimes.base import TensorInput
from edge.v2 import tensors
from edge.v2.request import InferRequest, RequestedOutput

PLATFORMS = {"onnx": "onnxruntime_onnx", "tensorflow": "tensorflow_savedmodel"}


@dataclass(frozen=True)
class TensorMeta:
    name: str
    datatype: str
    shape: tuple[int, ...] | None  # -1: any size; None: any rank

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape or [-1])}

    def check(self, name: str, datatype: str, shape: tuple[int, ...]) -> None:
        """Refuse a tensor this input cannot take (datatype and fixed dimensions)."""
        if datatype != self.datatype:
            raise BadInput(
                f"input {name!r}: datatype {datatype}, but the model takes {self.datatype} "
                f"for {self.name!r}"
            )
        want = self.shape
        if want is not None and (
            len(shape) != len(want)
            or any(w >= 0 and w != d for w, d in zip(want, shape, strict=True))
        ):
            raise BadInput(
                f"input {name!r}: shape {tensors.shape_text(shape)}, but the model takes "
                f"{tensors.shape_text(want)} for {self.name!r} (-1: any size)"
            )


@dataclass
class Outcome:
    """One answered inference: its output tensors (made on demand), response parameters, and
    what the log buffer journals (`ResultRows` of the fast path, or the result table)."""

    model: V2Model
    logged: result.ResultRows | pa.Table
    rows: int
    parameters: dict[str, Any]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    columns: dict[str, str] = field(default_factory=dict)  # output name -> result column

    @property
    def names(self) -> list[str]:
        return list(self.arrays) if self.arrays else list(self.columns)

    def tensor(self, name: str) -> np.ndarray:
        array = self.arrays.get(name)
        if array is None:
            assert isinstance(self.logged, pa.Table)
            array = tensors.column_tensor(self.logged.column(self.columns[name]), name)
        return array

    def selected(self, request: InferRequest) -> list[tuple[str, bool]]:
        """(output name, in binary) of each output to answer with, in order."""
        default = request.binary_output
        if request.outputs is None:
            return [(name, default) for name in self.names]
        available = set(self.names)
        chosen = []
        for wanted in request.outputs:
            if wanted.name not in available:
                raise PipelineError(
                    f"output {wanted.name!r} was not produced by this inference (it made "
                    f"{self.names})"
                )
            chosen.append((wanted.name, default if wanted.binary is None else wanted.binary))
        return chosen


class V2Model:
    """One loaded pipeline, as the protocol sees it (built once per pipeline)."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        definition = pipeline.definition
        self.name = pipeline.name
        self.version = definition.version
        runtimes = {m.runtime for m in definition.models.values()}
        if len(definition.models) == 1:
            only = next(iter(runtimes))
            self.platform = PLATFORMS.get(only, only)
        else:
            self.platform = "ensemble"  # Triton's word for a pipeline of models
        self.inputs = _inputs(pipeline)
        self.outputs = _outputs(pipeline)
        self._inputs = {t.name: t for t in self.inputs}
        self.metadata = {
            "name": self.name,
            "versions": [self.version],
            "platform": self.platform,
            "inputs": [t.as_dict() for t in self.inputs],
            "outputs": [t.as_dict() for t in self.outputs],
        }

    def columns(self, request: InferRequest) -> dict[str, np.ndarray]:
        """The request's tensors as columns, checked against the declared inputs; every
        tensor has the batch dimension first, the same for all."""
        lone = self.inputs[0] if len(request.inputs) == 1 and len(self.inputs) == 1 else None
        rows = None
        columns: dict[str, np.ndarray] = {}
        for tensor in request.inputs:
            declared = self._inputs.get(tensor.name, lone)
            if declared is not None:
                declared.check(tensor.name, tensor.datatype, tensor.shape)
            if not tensor.shape:
                raise BadInput(
                    f"input {tensor.name!r}: shape [] has no batch dimension; send [rows, ...]"
                )
            if rows is None:
                rows, first = tensor.shape[0], tensor.name
            elif tensor.shape[0] != rows:
                raise BadInput(
                    f"inputs {first!r} and {tensor.name!r} differ in the batch dimension "
                    f"({rows} and {tensor.shape[0]} rows)"
                )
            columns[tensor.name] = tensor.array
        if not rows:
            raise BadInput("the request holds no rows (the batch dimension is 0)")
        return columns

    def check_outputs(self, requested: list[RequestedOutput] | None) -> None:
        """Refuse, before the run, an output the metadata does not list (when it lists any)."""
        if requested is None or not self.outputs:
            return
        known = [t.name for t in self.outputs]
        for wanted in requested:
            if wanted.name not in known:
                raise BadInput(f"unknown output {wanted.name!r}; the model's outputs are {known}")

    def run(self, request: InferRequest, parse_ns: int) -> Outcome:
        """The inference of `request` (blocking: a model run)."""
        columns = self.columns(request)
        self.check_outputs(request.outputs)
        pipeline = self.pipeline
        rows = request.inputs[0].shape[0]
        fast = pipeline.fast
        if fast is not None and all(a.dtype.kind in "iuf" for a in columns.values()):
            done = fast.run_columns(columns, parse_ns, max_rows=None)
            if done is not None:  # no validations on this path: nothing flagged
                parameters = {result.ANOMALY_COUNT: 0}
                return Outcome(self, done.rows, rows, parameters, arrays=done.rows.outputs)
        table = pa.table({name: tensors.to_column(array) for name, array in columns.items()})
        inference = pipeline.run(table, parse_ns)
        return _outcome(self, inference.table, rows)


def _outcome(model: V2Model, table: pa.Table, rows: int) -> Outcome:
    outputs: dict[str, str] = {}
    parameters: dict[str, Any] = {}
    for column in table.column_names:
        if column == result.MODEL_SPLIT:
            parameters["model_split"] = table.column(column)[0].as_py()
        elif column.startswith(result.OUT):
            outputs[column[len(result.OUT) :]] = column
        elif column.startswith(result.SHADOW):
            outputs[column] = column
        elif column == result.ANOMALY_COUNT:
            parameters[column] = int(pc.sum(table.column(column)).as_py() or 0)
        elif column.startswith(result.ANOMALY):
            flags = pc.sum(table.column(column).cast(pa.int64())).as_py()
            parameters[column] = int(flags or 0)
    return Outcome(model, table, rows, parameters, columns=outputs)


# ---------------------------------------------------------------------- metadata


def _inputs(pipeline: Pipeline) -> list[TensorMeta]:
    definition = pipeline.definition
    first = definition.models[definition.step_models(definition.steps[0])[0]]
    declared = _signature(pipeline, first, "input")
    if first.tensor_fields and len(first.tensor_fields) == len(declared):
        return [
            TensorMeta(column, meta.datatype, meta.shape)
            for column, meta in zip(first.tensor_fields, declared, strict=True)
        ]
    return declared


def _outputs(pipeline: Pipeline) -> list[TensorMeta]:
    definition = pipeline.definition
    last = definition.steps[-1]
    if isinstance(last, ModelStep | RandomSplitStep):
        model = last.model if isinstance(last, ModelStep) else last.models[0].model
        return _signature(pipeline, definition.models[model], "output")
    assert isinstance(last, ShadowStep)
    outputs = _signature(pipeline, definition.models[last.champion], "output")
    for challenger in last.challengers:
        for meta in _signature(pipeline, definition.models[challenger], "output"):
            name = f"{result.SHADOW}{challenger}.{meta.name}"
            outputs.append(TensorMeta(name, meta.datatype, meta.shape))
    return outputs


def _signature(pipeline: Pipeline, info: ModelInfo, which: str) -> list[TensorMeta]:
    runtime = pipeline.runtimes.get(info.name)
    signature = runtime.signature() if runtime is not None else None
    if signature is not None:
        return [_from_tensor(t) for t in signature[0 if which == "input" else 1]]
    schema = info.arrow_schema("input" if which == "input" else "output")
    return [] if schema is None else [m for f in schema if (m := _from_field(f)) is not None]


def _from_tensor(tensor: TensorInput) -> TensorMeta:
    name, dtype, shape = tensor
    return TensorMeta(name, tensors.datatype_of(dtype), _dims(shape))


def _dims(shape: Sequence[int | str | None] | None) -> tuple[int, ...] | None:
    if shape is None:
        return None
    dims = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in shape)
    return (-1, *dims[1:]) if dims else (-1,)  # any number of rows


def _from_field(f: pa.Field) -> TensorMeta | None:
    """An Arrow field of a model layer's schema as a tensor: lists are dimensions."""
    kind, dims = f.type, [-1]
    while (
        pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)
    ):
        dims.append(kind.list_size if pa.types.is_fixed_size_list(kind) else -1)
        kind = kind.value_type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_binary(kind):
        return TensorMeta(f.name, "BYTES", tuple(dims))
    try:
        dtype = np.dtype(kind.to_pandas_dtype())
    except (NotImplementedError, TypeError):
        return None
    if dtype.kind not in "iufb":
        return None
    return TensorMeta(f.name, tensors.datatype_of(dtype), tuple(dims))
