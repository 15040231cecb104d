"""The publish-time check of a converted model: rows generated from the input schema go
through the original model (its native runtime) and the ONNX model (the ONNX runtime), as
`edge serve` would run them, and every output field must agree: integers, booleans and
strings equal, floats within the framework's tolerance."""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from edge.artifact import ModelInfo, encode_schema
from edge.runtimes import RuntimeContext, load_runtime
from edge.tensors import column_to_ndarray, ndarray_to_column, tensor_type

SAMPLE_ROWS = 64
WORDS = "the a good bad movie film great awful plot actor was is not very edge model".split()


@dataclass(frozen=True)
class Tolerance:
    """Floats agree when |converted - original| <= atol + rtol * |original| (numpy.isclose)."""

    rtol: float
    atol: float

    def __str__(self) -> str:
        return f"|diff| <= {self.atol:g} + {self.rtol:g} * |original|"


def sample_table(schema: pa.Schema, rows: int = SAMPLE_ROWS, seed: int = 0) -> pa.Table:
    """`rows` rows for `schema`: floats drawn at scales 1, 10 and 100, small integers, random
    booleans and words; lists without a fixed size get three items."""
    rng = np.random.default_rng(seed)
    columns = []
    for field in schema:
        dtype, dims = tensor_type(field.type)
        shape = (rows, *(3 if d is None else d for d in dims))
        if dtype.kind == "f":
            scale = (10.0 ** (np.arange(rows) % 3)).reshape((rows,) + (1,) * len(dims))
            values = rng.normal(size=shape) * scale
        elif dtype.kind in "iu":
            values = rng.integers(0, 10, size=shape)
        elif dtype.kind == "b":
            values = rng.random(shape) < 0.5
        else:
            values = np.array([" ".join(rng.choice(WORDS, 4)) for _ in range(rows)], object)
        columns.append(ndarray_to_column(np.asarray(values).astype(dtype)).cast(field.type))
    return pa.Table.from_arrays(columns, schema=schema)


def model_info(
    name: str, path: Path, runtime: str, inputs: pa.Schema | None, outputs: pa.Schema | None,
    framework: str | None,
) -> ModelInfo:  # fmt: skip
    """A definition entry for one model file (the hash is the layer digest)."""
    return ModelInfo(
        name=name,
        version=str(uuid.uuid4()),
        sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
        runtime=runtime,
        filename=path.name,
        size=path.stat().st_size,
        input_schema=encode_schema(inputs) if inputs is not None else None,
        output_schema=encode_schema(outputs) if outputs is not None else None,
        framework=framework,
    )


def run(info: ModelInfo, path: Path, table: pa.Table) -> pa.Table:
    """`table` through `info`'s runtime, loaded as `edge serve` loads it."""
    work = Path(tempfile.mkdtemp(prefix="edge-check-"))
    try:
        runtime = load_runtime(info, path, RuntimeContext(threads=1, work_dir=work))
        try:
            return runtime.predict(table)
        finally:
            runtime.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def compare(original: pa.Table, converted: pa.Table, tolerance: Tolerance) -> tuple[bool, str]:
    """Do the two agree field by field? And a line saying how closely."""
    notes, agree = [], True
    for field in original.schema:
        if field.name not in converted.column_names:
            return False, f"{field.name} missing from the converted model's outputs"
        want, got = original.column(field.name), converted.column(field.name)
        dtype, _ = tensor_type(field.type)
        if dtype.kind != "f":
            differ = sum(a != b for a, b in zip(want.to_pylist(), got.to_pylist(), strict=True))
            notes.append(f"{field.name} equal" if not differ else f"{field.name}: {differ} differ")
            agree = agree and not differ
            continue
        a = column_to_ndarray(want, np.dtype(np.float64), None, field.name)
        b = column_to_ndarray(got, np.dtype(np.float64), None, field.name)
        if a.shape != b.shape:
            return False, f"{field.name}: shape {b.shape[1:]} for {a.shape[1:]}"
        close = np.isclose(b, a, rtol=tolerance.rtol, atol=tolerance.atol, equal_nan=True)
        worst = float(np.nanmax(np.abs(b - a))) if a.size else 0.0
        notes.append(f"{field.name} max |diff| {worst:.1e}")
        agree = agree and bool(close.all())
    return agree, ", ".join(notes)
