"""The inference answer of the Open Inference Protocol, written from the chosen output tensors:
the REST body (JSON, with the binary extension's raw tensors after it) and gRPC's
`ModelInferResponse` (every tensor in `raw_output_contents`). The one writer of each, for the
general path (`edge.v2.model.Outcome`) and the small requests' path (`edge.v2.small`) alike,
so both answer with the same bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson

from edge.v2 import tensors

_NUMPY = orjson.OPT_SERIALIZE_NUMPY
Chosen = Sequence[tuple[str, np.ndarray, bool]]  # (output name, tensor, in binary)


def rest(
    name: str, version: str, request_id: str, parameters: dict[str, Any], chosen: Chosen
) -> tuple[bytes, int | None]:
    """The response body, and the JSON header's length when binary tensors follow it."""
    outputs: list[dict[str, Any]] = []
    binary: list[bytes] = []
    for output, array, in_binary in chosen:
        item: dict[str, Any] = {
            "name": output,
            "datatype": tensors.datatype_of(array.dtype),
            "shape": list(array.shape),
        }
        if in_binary:
            raw = tensors.to_raw(array)
            item["parameters"] = {"binary_data_size": len(raw)}
            binary.append(raw)
        else:
            item["data"] = tensors.to_json_data(array)
        outputs.append(item)
    doc = {
        "model_name": name,
        "model_version": version,
        "id": request_id,
        "parameters": parameters,
        "outputs": outputs,
    }
    header = orjson.dumps(doc, option=_NUMPY)
    if not binary:
        return header, None
    return b"".join([header, *binary]), len(header)


def grpc(
    name: str, version: str, request_id: str, parameters: dict[str, Any], chosen: Chosen
) -> Any:
    """A `ModelInferResponse` with every chosen output in `raw_output_contents`."""
    from edge.v2 import grpc_predict_v2_pb2 as pb  # protobuf: only once gRPC answers

    answer = pb.ModelInferResponse(model_name=name, model_version=version, id=request_id)
    for key, value in parameters.items():
        _set_parameter(answer.parameters[key], value)
    raw = []
    for output, array, _ in chosen:
        answer.outputs.add(
            name=output, datatype=tensors.datatype_of(array.dtype), shape=list(array.shape)
        )
        raw.append(tensors.to_raw(array))
    answer.raw_output_contents.extend(raw)
    return answer


def _set_parameter(parameter: Any, value: Any) -> None:
    if isinstance(value, bool):
        parameter.bool_param = value
    elif isinstance(value, int):
        parameter.int64_param = value
    elif isinstance(value, float):
        parameter.double_param = value
    else:
        parameter.string_param = str(value)
