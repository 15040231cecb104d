"""The one interface every runtime implements: load, predict, close.

A runtime wraps one model file. `predict` takes the step's input as an Arrow table and
returns the model's outputs as an Arrow table with the same number of rows, one column per
output, named by the model's own output names (the pipeline adds `out.`). Errors in the
caller's data raise `BadInput` naming the column; errors inside the model raise
`PipelineError`. Everything else about a runtime stays in its own module.
"""

from __future__ import annotations

import hashlib
import zipfile
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from edge.artifact import ModelInfo
from edge.errors import ArtifactError, BadInput, DigestMismatch, PipelineError
from edge.tensors import array_to_tensor, column_to_ndarray, ndarray_to_column, tensor_type


@dataclass(frozen=True)
class RuntimeContext:
    """What the appliance lends a runtime: its thread budget, GPUs, a scratch folder."""

    threads: int = 1
    gpus: int = 0
    work_dir: Path = Path("/tmp")


class Runtime(ABC):
    """One loaded model behind `load` / `predict` / `close`."""

    # May small requests run on the event loop? Only for runtimes that take microseconds on
    # small inputs and run no user code (ONNX); the rest run on a worker thread.
    inline: bool = False

    def __init__(self, info: ModelInfo, path: Path, context: RuntimeContext) -> None:
        self.info = info
        self.path = path
        self.context = context

    @abstractmethod
    def load(self) -> None:
        """Read the model file; raise `ArtifactError` if it cannot be used."""

    @abstractmethod
    def predict(self, table: pa.Table) -> pa.Table:
        """Run the model on `table`; return one column per output, `table.num_rows` rows."""

    def close(self) -> None:  # noqa: B027 - optional hook, most runtimes hold nothing
        """Release what `load` took. Override when there is something to release."""

    def describe(self) -> dict[str, Any]:
        """Extra facts for `/models` (for example the execution provider)."""
        return {}

    # Runtimes that work on numpy arrays say so: small requests then reach them without Arrow
    # tables (`edge.fastpath`), and `predict` is `predict_arrays` between Arrow and numpy.
    arrays = False

    def predict_arrays(self, columns: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the model on columns shaped (rows, *dims); return one array per output."""
        raise NotImplementedError(f"runtime {self.info.runtime!r} takes Arrow tables only")

    def signature(self) -> Signature | None:
        """The model's input and output tensors, when the runtime knows them (the Open
        Inference Protocol's model metadata, `edge.v2.model`); None for code that takes any
        table (Python steps, BYOP)."""
        return None


TensorInput = tuple[str, np.dtype, Sequence[int | str | None] | None]  # name, dtype, shape
Signature = tuple[list[TensorInput], list[TensorInput]]  # inputs, outputs
_ARROW_ERRORS = (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError)


def schema_inputs(schema: pa.Schema | None, what: str) -> list[TensorInput]:
    """A model's inputs as its input schema describes them, one per field, in order: the
    element type and the row shape (batch axis first, `None` where a list has no fixed size)."""
    if schema is None or not len(schema):
        raise ArtifactError(f"{what}: the definition carries no input schema")
    inputs: list[TensorInput] = []
    for field in schema:
        try:
            dtype, dims = tensor_type(field.type)
        except TypeError as exc:
            raise ArtifactError(f"{what}: input schema field {field.name!r}: {exc}") from None
        inputs.append((field.name, dtype, [None, *dims]))
    return inputs


def conform(table: pa.Table, schema: pa.Schema | None, step: str) -> pa.Table:
    """A model's outputs as its output schema says: the schema's fields, in its order, cast to
    its types (without loss); a field the model did not give, or cannot give in that type, is
    a `PipelineError` naming it."""
    if schema is None:
        return table
    columns = []
    for field in schema:
        if field.name not in table.column_names:
            raise PipelineError(
                f"output schema field {field.name!r} is missing from the model's outputs "
                f"{table.column_names}",
                step=step,
            )
        column = table.column(field.name)
        if not column.type.equals(field.type):
            try:
                column = column.cast(field.type, safe=True)
            except _ARROW_ERRORS as exc:
                raise PipelineError(
                    f"output {field.name!r} ({column.type}) does not fit the output schema's "
                    f"{field.type}: {exc}",
                    step=step,
                ) from exc
        columns.append(column)
    return pa.Table.from_arrays(columns, schema=schema)


def verified_bytes(path: Path, info: ModelInfo, what: str) -> bytes:
    """The model file's bytes, only when their sha256 is the layer digest the definition names:
    a runtime that unpickles a file unpickles exactly the bytes the artifact's digests cover."""
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != info.sha256:
        raise DigestMismatch(
            f"{what}: {path.name} has sha256 {digest}, not the layer digest {info.digest}; "
            f"refusing to load it"
        )
    return data


def tensor_feed(
    table: pa.Table, inputs: Sequence[TensorInput], tensor_fields: list[str] | None, step: str
) -> dict[str, np.ndarray]:
    """The model's inputs as numpy tensors, mapped and checked by the seed's input rules."""
    names = [name for name, _, _ in inputs]
    mapping = map_inputs(table.column_names, names, tensor_fields, step)
    return {
        name: column_to_ndarray(
            table.column(mapping[name]),
            dtype,
            shape,
            f"column {mapping[name]!r} (model {step!r} input {name!r})",
        )
        for name, dtype, shape in inputs
    }


def array_feed(
    columns: dict[str, np.ndarray],
    inputs: Sequence[TensorInput],
    tensor_fields: list[str] | None,
    step: str,
) -> dict[str, np.ndarray]:
    """`tensor_feed` for numeric numpy columns shaped (rows, *dims). `ArrayFeed` is the same,
    compiled once per model."""
    names = [name for name, _, _ in inputs]
    mapping = map_inputs(list(columns), names, tensor_fields, step)
    return {
        name: array_to_tensor(
            columns[mapping[name]],
            dtype,
            shape,
            f"column {mapping[name]!r} (model {step!r} input {name!r})",
        )
        for name, dtype, shape in inputs
    }


class ArrayFeed:
    """`array_feed` of one model, with its usual case settled at load: a model of one input
    fed by a request's one column (the lone-column rule, or `tensor_fields` naming it) whose
    array already has the input's dtype and fixed dimensions, C-contiguous, is fed as it is:
    `array_feed` would give a view of the same array. Any other columns go through
    `array_feed`, which casts, reshapes or refuses them with its errors."""

    def __init__(
        self, inputs: Sequence[TensorInput], tensor_fields: list[str] | None, step: str
    ) -> None:
        self.inputs = list(inputs)
        self.tensor_fields = tensor_fields
        self.step = step
        self._lone: tuple[str, np.dtype, tuple[int, ...] | None] | None = None
        if len(self.inputs) == 1 and (not tensor_fields or len(tensor_fields) == 1):
            name, dtype, shape = self.inputs[0]
            dims = (
                None if shape is None else tuple(d for d in shape[1:] if type(d) is int and d > 0)
            )
            if dims is None or shape is not None and len(dims) == len(shape) - 1:  # all fixed
                self._lone = (name, dtype, dims)

    def __call__(self, columns: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        lone = self._lone
        if lone is not None and len(columns) == 1:
            ((column, array),) = columns.items()
            name, dtype, dims = lone
            if (
                (not self.tensor_fields or self.tensor_fields[0] == column)
                and type(array) is np.ndarray
                and array.dtype == dtype
                and array.ndim >= 1
                and (dims is None or array.shape[1:] == dims)
                and array.flags.c_contiguous
            ):
                return {name: array}
        return array_feed(columns, self.inputs, self.tensor_fields, self.step)


def check_outputs(outputs: dict[str, Any], rows: int, step: str) -> dict[str, np.ndarray]:
    """A model's outputs as arrays of `rows` rows each (else `PipelineError`)."""
    checked = {}
    for name, raw in outputs.items():
        value = np.asarray(raw)
        if value.ndim == 0 or value.shape[0] != rows:
            raise PipelineError(
                f"output {name!r} has {value.shape[0] if value.ndim else 0} rows for "
                f"{rows} input rows",
                step=step,
            )
        checked[name] = value
    return checked


def output_table(outputs: dict[str, Any], rows: int, step: str) -> pa.Table:
    """A model's outputs (name -> array, one row per input row) as an Arrow table."""
    checked = check_outputs(outputs, rows, step)
    return pa.table({name: ndarray_to_column(value) for name, value in checked.items()})


def map_inputs(
    columns: list[str], input_names: list[str], tensor_fields: list[str] | None, step: str
) -> dict[str, str]:
    """Decide which column feeds which model input: {input name: column name}.

    The seed's rules: `tensor_fields` names the columns, in input order; a lone column feeds
    a lone input whatever its name; otherwise columns map to inputs by name.
    """
    if tensor_fields:
        missing = [c for c in tensor_fields if c not in columns]
        if missing:
            raise BadInput(f"step {step!r}: tensor_fields column(s) {missing} not in the input")
        if len(tensor_fields) != len(input_names):
            raise BadInput(
                f"step {step!r}: tensor_fields names {len(tensor_fields)} column(s) but the "
                f"model takes {len(input_names)} input(s) {input_names}"
            )
        return dict(zip(input_names, tensor_fields, strict=True))
    if len(input_names) == 1 and len(columns) == 1:
        return {input_names[0]: columns[0]}
    missing = [name for name in input_names if name not in columns]
    if missing:
        raise BadInput(
            f"step {step!r}: the model takes inputs {input_names}; the input has columns "
            f"{columns} (missing {missing}); name the columns after the inputs or set "
            f"tensor_fields"
        )
    return {name: name for name in input_names}


MAX_UNZIPPED = 16 << 30  # a zip bomb stops here, far above any real model


def extract_zip(path: Path, dest: Path, what: str) -> Path:
    """Unzip `path` into `dest`, refusing the whole zip if any entry would land outside it.

    Returns the model folder: the zip's single top-level directory when it has one (the
    seed's `zip -r name.zip name/`), else `dest`.
    """
    root = dest.resolve()
    try:
        with zipfile.ZipFile(path) as archive:
            entries = archive.infolist()
            for entry in entries:
                if not (root / entry.filename).resolve().is_relative_to(root):
                    raise ArtifactError(
                        f"{what}: zip entry {entry.filename!r} points outside the model folder; "
                        f"refusing the zip"
                    )
            unpacked = sum(entry.file_size for entry in entries)
            if unpacked > MAX_UNZIPPED:
                raise ArtifactError(
                    f"{what}: {path.name} would unpack to {unpacked >> 20} MiB, over the "
                    f"{MAX_UNZIPPED >> 20} MiB limit"
                )
            archive.extractall(root)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ArtifactError(f"{what}: cannot unzip {path.name}: {exc}") from exc
    tops = [p for p in root.iterdir() if p.name != "__MACOSX"]
    return tops[0] if len(tops) == 1 and tops[0].is_dir() else root
