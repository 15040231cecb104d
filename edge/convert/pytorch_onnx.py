"""PyTorch (TorchScript) -> ONNX with torch.onnx's TorchScript exporter. The seed converts
only models whose schema floats are float32; input and output fields map to `forward`'s
arguments and results in order."""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import pyarrow as pa

from edge.convert.check import Tolerance, sample_table
from edge.convert.graph import expose
from edge.tensors import column_to_ndarray, tensor_type

TOLERANCE = Tolerance(rtol=1e-4, atol=1e-5)  # float32 through two sets of kernels
OPSET = 17


def convert(source: Path, inputs: pa.Schema, outputs: pa.Schema, target: Path) -> str:
    import onnx
    import torch

    for field in (*inputs, *outputs):
        dtype, _ = tensor_type(field.type)
        if dtype.kind == "f" and dtype.itemsize != 4:
            raise ValueError(
                f"schema field {field.name!r} is {field.type}: PyTorch models convert to ONNX "
                f"with float32 fields only (the seed's rule)"
            )
    module = torch.jit.load(str(source), map_location="cpu").eval()
    sample = sample_table(inputs, rows=2)
    examples = []
    for field in inputs:
        dtype, _ = tensor_type(field.type)
        values = column_to_ndarray(sample.column(field.name), dtype, None, field.name)
        examples.append(torch.tensor(values))
    axes = {}
    for field in (*inputs, *outputs):
        _, dims = tensor_type(field.type)
        axes[field.name] = {
            0: "rows",
            **{i + 1: f"{field.name}_{i + 1}" for i, d in enumerate(dims) if d is None},
        }
    with tempfile.TemporaryDirectory() as scratch, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        raw = Path(scratch) / "raw.onnx"
        torch.onnx.export(
            module, tuple(examples), str(raw), input_names=inputs.names, output_names=outputs.names,
            dynamic_axes=axes, opset_version=OPSET, dynamo=False,
        )  # fmt: skip
        onnx_model = onnx.load(str(raw))
    picks = [(field.name, field) for field in outputs]
    target.write_bytes(expose(onnx_model, picks).SerializeToString())
    return f"torch.onnx (TorchScript exporter) {torch.__version__}, opset {OPSET}"
