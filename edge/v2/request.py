"""An inference request of the Open Inference Protocol, read from REST (a JSON header, then
the binary tensor extension's raw tensors) or from gRPC (`ModelInferRequest`), into one
`InferRequest`. Every failure is a `BadInput` saying what and where; sizes are checked
against the body before anything is sliced.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge.errors import BadInput
from edge.httpio import Fields, bounded_int, parse_json
from edge.v2 import tensors

MAX_TENSORS = 256
NAME_LEN = 256
ALIGN = 64  # bytes: where `placed` puts the binary tensors


@dataclass
class InputTensor:
    name: str
    datatype: str
    shape: tuple[int, ...]
    array: np.ndarray


@dataclass
class RequestedOutput:
    name: str
    binary: bool | None = None  # None: as the request's `binary_data_output` says


@dataclass
class InferRequest:
    inputs: list[InputTensor]
    outputs: list[RequestedOutput] | None = None  # None: every output
    id: str = ""
    binary_output: bool = False  # the request's `binary_data_output`
    parameters: dict[str, Any] = field(default_factory=dict)
    size: int = 0  # bytes received (small requests run on the event loop)


# ---------------------------------------------------------------------- REST


def placed(chunks: list[bytes], header_length: str) -> bytes | memoryview:
    """A binary-extension body received in `chunks`, joined so that what follows its JSON
    header (`header_length`, as sent) starts at an aligned address: its tensors are then read
    in place (`tensors.from_raw` copies an unaligned one), and joining was a copy anyway."""
    if len(chunks) == 1:
        return chunks[0]
    size = sum(map(len, chunks))
    length = header_length.strip()
    whole = length.isascii() and length.isdigit() and len(length) <= 18  # from_rest checks
    split = int(length) if whole else 0
    memory = np.empty(size + ALIGN, np.uint8)
    start = -(memory.ctypes.data + min(split, size)) % ALIGN
    body = memoryview(memory)[start : start + size]  # type: ignore[arg-type]
    at = 0
    for chunk in chunks:
        body[at : at + len(chunk)] = chunk
        at += len(chunk)
    return body


def from_rest(body: bytes | memoryview, header_length: str | None) -> InferRequest:
    """A REST request body: JSON, or (with `Inference-Header-Content-Length`) a JSON header
    followed by the raw tensors of the inputs that give `binary_data_size`, in their order."""
    binary = memoryview(b"")
    if header_length is None:
        header = body if isinstance(body, bytes) else bytes(body)
    else:
        length = header_length.strip()
        whole = length.isascii() and length.isdigit() and len(length) <= 18  # "²", 5,000 digits
        if not whole or not 0 < int(length) <= len(body):
            raise BadInput(
                f"Inference-Header-Content-Length {header_length[:24]!r} must be a whole number "
                f"from 1 to the body's {len(body)} bytes"
            )
        split = int(length)
        header, binary = bytes(body[:split]), memoryview(body)[split:]
    doc = parse_json(header, BadInput, "inference request")
    fields = Fields(doc, "inference request")
    parameters = check_parameters(fields.mapping("parameters"), "inference request")
    items = doc.get("inputs")
    if not isinstance(items, list) or not items or len(items) > MAX_TENSORS:
        raise BadInput(f"inference request: inputs must be a list of 1 to {MAX_TENSORS} tensors")
    inputs: list[InputTensor] = []
    offset = 0
    for index, item in enumerate(items):
        tensor, used = _rest_input(item, index, binary, offset, header_length is not None)
        inputs.append(tensor)
        offset += used
    if offset != len(binary):
        raise BadInput(
            f"inference request: {len(binary) - offset} bytes follow the JSON header that no "
            f"input's binary_data_size accounts for"
        )
    return InferRequest(
        inputs=_unique(inputs),
        outputs=_rest_outputs(doc.get("outputs")),
        id=fields.text("id", required=False, max_len=NAME_LEN) or "",
        binary_output=_flag(parameters, "binary_data_output", "inference request"),
        parameters=parameters,
        size=len(body),
    )


def _rest_input(
    item: Any, index: int, binary: memoryview, offset: int, has_binary: bool
) -> tuple[InputTensor, int]:
    where = f"inputs[{index}]"
    fields = Fields(item, where)
    name = _name(fields)
    where = f"input {name!r}"
    datatype = str(fields.text("datatype", max_len=16))
    shape = tensors.parse_shape(item.get("shape"), where)
    parameters = check_parameters(fields.mapping("parameters"), where)
    size = parameters.get("binary_data_size")
    if size is None:
        if "data" not in item:
            raise BadInput(f"{where}: give data, or binary_data_size and the raw tensor")
        array = tensors.from_json(item["data"], datatype, shape, where)
        return InputTensor(name, datatype, shape, array), 0
    if not has_binary:
        raise BadInput(
            f"{where}: binary_data_size needs the Inference-Header-Content-Length header"
        )
    size = bounded_int(size, f"{where}: binary_data_size", 0, 2**62)
    if offset + size > len(binary):
        raise BadInput(
            f"{where}: binary_data_size {size} runs past the body ({len(binary) - offset} "
            f"bytes left after the JSON header and earlier tensors)"
        )
    array = tensors.from_raw(binary[offset : offset + size], datatype, shape, where)
    return InputTensor(name, datatype, shape, array), size


def _rest_outputs(items: Any) -> list[RequestedOutput] | None:
    if items is None:
        return None
    if not isinstance(items, list) or len(items) > MAX_TENSORS:
        raise BadInput(f"inference request: outputs must be a list of at most {MAX_TENSORS}")
    outputs = []
    for index, item in enumerate(items):
        fields = Fields(item, f"outputs[{index}]")
        name = _name(fields)
        parameters = check_parameters(fields.mapping("parameters"), f"output {name!r}")
        outputs.append(RequestedOutput(name, _output_binary(parameters, name)))
    return outputs


def _name(fields: Fields) -> str:
    return str(fields.text("name", max_len=NAME_LEN))


def check_parameters(raw: dict[str, Any] | None, where: str) -> dict[str, Any]:
    """Parameters: names to booleans, numbers or strings (bounded)."""
    if not raw:
        return {}
    if len(raw) > 64:
        raise BadInput(f"{where}: parameters holds more than 64 entries")
    for key, value in raw.items():
        if len(key) > NAME_LEN or not isinstance(value, bool | int | float | str):
            raise BadInput(f"{where}: parameter {key[:40]!r} must be a boolean, number or string")
        if isinstance(value, str) and len(value) > 4096:
            raise BadInput(f"{where}: parameter {key[:40]!r} is longer than 4096 characters")
    return raw


def _flag(parameters: dict[str, Any], key: str, where: str) -> bool:
    value = parameters.get(key, False)
    if not isinstance(value, bool):
        raise BadInput(f"{where}: parameter {key} must be true or false")
    return value


def _output_binary(parameters: dict[str, Any], name: str) -> bool | None:
    if parameters.get("classification"):
        raise BadInput(f"output {name!r}: the classification extension is not supported")
    if "binary_data" not in parameters:
        return None
    return _flag(parameters, "binary_data", f"output {name!r}")


def _unique(inputs: list[InputTensor]) -> list[InputTensor]:
    names = [t.name for t in inputs]
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise BadInput(f"inference request: input(s) {twice} given more than once")
    return inputs


# ---------------------------------------------------------------------- gRPC

_CONTENTS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def from_grpc(message: Any, size: int) -> InferRequest:
    """A `ModelInferRequest`: tensors in `raw_input_contents` (one per input, in order), or
    each in its typed `contents`."""
    raw = message.raw_input_contents
    if len(message.inputs) == 0 or len(message.inputs) > MAX_TENSORS:
        raise BadInput(f"inference request: inputs must hold 1 to {MAX_TENSORS} tensors")
    if raw and len(raw) != len(message.inputs):
        raise BadInput(
            f"inference request: {len(raw)} raw_input_contents for {len(message.inputs)} inputs "
            f"(give one per input, in order, or none)"
        )
    inputs = []
    for index, tensor in enumerate(message.inputs):
        name = _grpc_name(tensor.name, f"inputs[{index}]")
        where = f"input {name!r}"
        datatype = tensor.datatype
        shape = tensors.parse_shape(list(tensor.shape), where)
        if raw:
            array = tensors.from_raw(raw[index], datatype, shape, where)
        else:
            array = _typed_contents(tensor, datatype, shape, where)
        inputs.append(InputTensor(name, datatype, shape, array))
    outputs = None
    if len(message.outputs):
        outputs = []
        for index, requested in enumerate(message.outputs):
            name = _grpc_name(requested.name, f"outputs[{index}]")
            _output_binary(grpc_parameters(requested.parameters), name)
            outputs.append(RequestedOutput(name))
    return InferRequest(
        inputs=_unique(inputs),
        outputs=outputs,
        id=message.id[:NAME_LEN],
        parameters=grpc_parameters(message.parameters),
        size=size,
    )


def _grpc_name(name: str, where: str) -> str:
    if not name or len(name) > NAME_LEN or any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise BadInput(f"{where}: name must be 1 to {NAME_LEN} printable characters")
    return name


def _typed_contents(tensor: Any, datatype: str, shape: tuple[int, ...], where: str) -> np.ndarray:
    dtype = tensors.dtype_of(datatype, where)
    slot = _CONTENTS.get(datatype)
    if slot is None:  # FP16 has no typed field
        raise BadInput(f"{where}: {datatype} data must come in raw_input_contents")
    values = getattr(tensor.contents, slot)
    if datatype == "BYTES":
        flat = [bytes(v) for v in values]
        return tensors.from_raw(_prefixed(flat), datatype, shape, where)
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if len(values) != count:
        raise BadInput(f"{where}: {len(values)} values in contents; the shape needs {count}")
    wide = np.array(values, dtype=np.float64 if dtype.kind == "f" else None)
    if datatype == "BOOL":
        return wide.astype(np.bool_).reshape(shape)
    if count == 0:
        return np.zeros(shape, dtype)
    return tensors.cast(wide, dtype, datatype, where).reshape(shape)


def _prefixed(elements: list[bytes]) -> bytes:
    return b"".join(len(e).to_bytes(4, "little") + e for e in elements)


def grpc_parameters(parameters: Any) -> dict[str, Any]:
    """gRPC `InferParameter`s as plain values."""
    if len(parameters) > 64:
        raise BadInput("inference request: parameters holds more than 64 entries")
    plain = {}
    for key, value in parameters.items():
        choice = value.WhichOneof("parameter_choice")
        plain[key[:NAME_LEN]] = getattr(value, choice) if choice else None
    return plain
