"""scikit-learn -> ONNX with skl2onnx. The first output schema field takes the converted
model's first output (`label`, or `variable` for a regressor), a second takes its
`probabilities` (no ZipMap: a plain tensor, as predict_proba gives)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import pyarrow as pa

from edge.convert.check import Tolerance
from edge.convert.graph import expose
from edge.tensors import tensor_type

TOLERANCE = Tolerance(rtol=1e-5, atol=1e-6)
OPSET = {"": 17, "ai.onnx.ml": 3}  # the seed's DEFAULT_OPSET_NUMBER for converted models


def convert(source: Path, inputs: pa.Schema, outputs: pa.Schema, target: Path) -> str:
    import joblib
    import skl2onnx
    from skl2onnx.common.data_types import DoubleTensorType, FloatTensorType, Int64TensorType

    model = joblib.load(source)  # the publisher's own file
    field = inputs.field(0)
    dtype, dims = tensor_type(field.type)
    types: dict[Any, Any] = {
        np.dtype(np.float32): FloatTensorType,
        np.dtype(np.float64): DoubleTensorType,
        np.dtype(np.int64): Int64TensorType,
    }
    if dtype not in types:
        raise ValueError(f"skl2onnx takes float32, float64 or int64 features, not {dtype}")
    final = model.steps[-1][1] if hasattr(model, "steps") else model
    options = {id(final): {"zipmap": False}} if hasattr(final, "predict_proba") else None
    # skl2onnx emits some double-precision models onnxruntime cannot load (tree ensembles):
    # then float32 features, as scikit-learn's trees use themselves
    tried = []
    for features in dict.fromkeys([dtype, np.dtype(np.float32)]):
        onnx_model = skl2onnx.convert_sklearn(
            model,
            initial_types=[(field.name, types[features]([None, dims[0]]))],
            options=options,
            target_opset=OPSET,
        )
        picks = [(onnx_model.graph.output[0].name, outputs.field(0))]
        if len(outputs) == 2:
            picks.append(("probabilities", outputs.field(1)))
        data = expose(onnx_model, picks).SerializeToString()
        try:
            onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime's own untyped errors
            tried.append(f"{features} features: {str(exc).splitlines()[0]}")
            continue
        target.write_bytes(data)
        return f"skl2onnx {skl2onnx.__version__}, opset 17, {features} features"
    raise ValueError("onnxruntime cannot load the converted model (" + "; ".join(tried) + ")")
