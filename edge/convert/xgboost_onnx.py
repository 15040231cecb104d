"""XGBoost -> ONNX with onnxmltools (float32 features, as XGBoost itself computes). The first
output schema field takes `label` (or `variable` for a regressor), a second `probabilities`."""

from __future__ import annotations

import pickle
from pathlib import Path

import pyarrow as pa

from edge.convert.check import Tolerance
from edge.convert.graph import expose
from edge.tensors import tensor_type

TOLERANCE = Tolerance(rtol=1e-5, atol=1e-6)
OPSET = 15  # the highest onnxmltools' XGBoost converter takes


def convert(source: Path, inputs: pa.Schema, outputs: pa.Schema, target: Path) -> str:
    import onnxmltools
    from onnxmltools.convert.common.data_types import FloatTensorType

    try:
        import joblib

        model = joblib.load(source)  # the publisher's own file
    except ImportError:
        model = pickle.loads(source.read_bytes())
    field = inputs.field(0)
    _, dims = tensor_type(field.type)
    onnx_model = onnxmltools.convert_xgboost(
        model, initial_types=[(field.name, FloatTensorType([None, dims[0]]))], target_opset=OPSET
    )
    picks = [(onnx_model.graph.output[0].name, outputs.field(0))]
    if len(outputs) == 2:
        picks.append(("probabilities", outputs.field(1)))
    target.write_bytes(expose(onnx_model, picks).SerializeToString())
    return f"onnxmltools {onnxmltools.__version__}, opset {OPSET}, float32 features"
