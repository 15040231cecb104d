"""Shaping a converted ONNX graph to the step's output schema: each schema field becomes one
graph output of that name, reshaped to the field's row shape, in the schema's order; the
converter's other outputs are dropped. Inputs are named by the converters themselves."""

from __future__ import annotations

import onnx
import pyarrow as pa
from onnx import helper

from edge.tensors import tensor_type

DEFAULT_OPSET = 15


def expose(model: onnx.ModelProto, picks: list[tuple[str, pa.Field]]) -> onnx.ModelProto:
    """`picks` is [(converter's output name, schema field)]. Returns the checked model."""
    graph = model.graph
    if not any(opset.domain in ("", "ai.onnx") for opset in model.opset_import):
        # an all-ML-operator graph (tree ensembles) imports no standard opset; Reshape needs one
        model.opset_import.append(helper.make_opsetid("", DEFAULT_OPSET))
    produced = {output.name: output for output in graph.output}
    missing = [source for source, _ in picks if source not in produced]
    if missing:
        raise ValueError(
            f"the converted model has no output {missing[0]!r} (it has {sorted(produced)})"
        )
    renamed = {source: f"{source}__converted" for source, _ in picks}
    for node in graph.node:
        node.input[:] = [renamed.get(name, name) for name in node.input]
        node.output[:] = [renamed.get(name, name) for name in node.output]
    outputs = []
    for source, field in picks:
        _, dims = tensor_type(field.type)
        if all(d is not None for d in dims):  # fixed row shape: [rows, *dims]
            new_shape = helper.make_tensor(
                f"{field.name}__shape",
                onnx.TensorProto.INT64,
                [len(dims) + 1],
                [-1, *(int(d or 0) for d in dims)],
            )
            graph.initializer.append(new_shape)
            graph.node.append(
                helper.make_node("Reshape", [renamed[source], new_shape.name], [field.name])
            )
        else:
            graph.node.append(helper.make_node("Identity", [renamed[source]], [field.name]))
        element = produced[source].type.tensor_type.elem_type
        rows = ["rows", *(d if d is not None else f"{field.name}_{i}" for i, d in enumerate(dims))]
        outputs.append(helper.make_tensor_value_info(field.name, element, rows))
    del graph.output[:]
    graph.output.extend(outputs)
    onnx.checker.check_model(model)
    return model
