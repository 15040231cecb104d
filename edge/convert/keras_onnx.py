"""Keras -> ONNX with tf2onnx, from a tf.function over the loaded model (a SavedModel zip's
serving signature, or an HDF5 / .keras file). Input fields feed the model's inputs in order;
output fields take its outputs by name when the names match, else in order."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pyarrow as pa

from edge.convert.check import Tolerance
from edge.convert.graph import expose
from edge.tensors import tensor_type

TOLERANCE = Tolerance(rtol=1e-4, atol=1e-5)  # float32 through two sets of kernels
OPSET = 17


def convert(source: Path, inputs: pa.Schema, outputs: pa.Schema, target: Path) -> str:
    import tensorflow as tf
    import tf2onnx

    signature = [
        tf.TensorSpec(
            [None, *tensor_type(f.type)[1]], tf.as_dtype(tensor_type(f.type)[0]), name=f.name
        )
        for f in inputs
    ]
    with tempfile.TemporaryDirectory() as scratch:
        call, _keep = _callable(source, Path(scratch))  # _keep: the SavedModel's variables
        function = tf.function(lambda *values: call(*values))
        onnx_model, _ = tf2onnx.convert.from_function(
            function, input_signature=signature, opset=OPSET
        )
    produced = [output.name for output in onnx_model.graph.output]
    if set(outputs.names) <= set(produced):
        picks = [(field.name, field) for field in outputs]
    elif len(produced) == len(outputs):
        picks = list(zip(produced, outputs, strict=True))
    else:
        raise ValueError(f"the model gives outputs {produced} for the schema's {outputs.names}")
    target.write_bytes(expose(onnx_model, picks).SerializeToString())
    return f"tf2onnx {tf2onnx.__version__}, opset {OPSET}"


def _callable(source: Path, scratch: Path) -> tuple[Any, Any]:
    import keras
    import tensorflow as tf

    from edge.runtimes.base import extract_zip
    from edge.runtimes.tensorflow import SIGNATURE, _input_order

    if source.suffix != ".zip":
        model = keras.saving.load_model(str(source), compile=False, safe_mode=True)
        return (
            lambda *values: model(list(values) if len(values) > 1 else values[0], training=False)
        ), model
    root = extract_zip(source, scratch, f"Keras model {source.name}")
    found = sorted(root.rglob("saved_model.pb"), key=lambda p: len(p.parts))
    if not found:
        raise ValueError("the zip holds no saved_model.pb (not a SavedModel)")
    loaded = tf.saved_model.load(str(found[0].parent))
    function = loaded.signatures[SIGNATURE]
    names = _input_order(function, function.structured_input_signature[1])
    return (lambda *values: function(**dict(zip(names, values, strict=True)))), loaded
