"""The Open Inference Protocol's parts without a server: request parsing refuses what it
cannot use with a 400 naming where (never another exception), tensors round-trip, the
committed gRPC module matches the proto, and the OpenAPI document is valid."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import descriptor_pb2

from edge.errors import BadInput
from edge.v2 import grpc_predict_v2_pb2 as pb
from edge.v2 import tensors
from edge.v2.request import ALIGN, from_grpc, from_rest, placed

V2 = Path(__file__).resolve().parent.parent / "edge/v2"


def _header(**tensor: object) -> bytes:
    return json.dumps(
        {"inputs": [{"name": "x", "shape": [2], "datatype": "INT32", **tensor}]}
    ).encode()


@pytest.mark.parametrize(
    ("body", "header_length", "message"),
    [
        (_header(data=[1, 2]), "0", "Inference-Header-Content-Length '0' must be"),
        (_header(data=[1, 2]), "12x", "Inference-Header-Content-Length '12x' must be"),
        (_header(data=[1, 2]), "9" * 5000, "Inference-Header-Content-Length '999"),
        (_header(data=[1, 2]), "1\xb2", "Inference-Header-Content-Length '1\xb2' must be"),
        (_header(parameters={"binary_data_size": 8}), None, "needs the Inference-Header"),
        (_header(parameters={"binary_data_size": 2**40}) + b"\0" * 8, "len", "runs past the body"),
        (_header(parameters={"binary_data_size": -1}) + b"\0" * 8, "len", "binary_data_size must"),
        (_header(parameters={"binary_data_size": 4}) + b"\0" * 8, "len", "4 bytes of INT32"),
        (_header(parameters={"binary_data_size": 8}) + b"\0" * 9, "len", "1 bytes follow"),
        (_header(data=[1, 2**40]), None, "out of range for INT32"),
        (_header(data=[1.5, 2]), None, "whole numbers only"),
        (_header(data=[[1], [2, 3]]), None, "ragged"),
        (_header(data=["a", "b"]), None, "INT32 data must hold"),
        (_header(data=[1, 2], datatype="BF16"), None, "datatype 'BF16' is not one of"),
        (_header(data=[1, 2], shape=[-1]), None, "whole numbers >= 0"),
        (_header(data=[1, 2], shape=[2] * 17), None, "at most 16"),
        (b'{"inputs": []}', None, "inputs must be a list of 1 to"),
        (b'{"inputs": [{"name": "x"}]}', None, "datatype is required"),
        (b"[1, 2", None, "not valid JSON"),
        (_header(data=[True, 2], datatype="BOOL"), None, "BOOL data must be true or false"),
    ],
)
def test_rest_requests_refused_with_where(
    body: bytes, header_length: str | None, message: str
) -> None:
    if header_length == "len":
        header_length = str(body.index(b"}]}") + 3)
    with pytest.raises(BadInput) as refused:
        from_rest(body, header_length)
    assert message in str(refused.value)


def test_binary_bytes_and_bool_tensors_are_read() -> None:
    text = b"\x02\x00\x00\x00hi\x03\x00\x00\x00\xff\xfe!"
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "t",
                    "shape": [2, 1],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(text)},
                },
                {
                    "name": "b",
                    "shape": [2],
                    "datatype": "BOOL",
                    "parameters": {"binary_data_size": 2},
                },
                {
                    "name": "h",
                    "shape": [2],
                    "datatype": "FP16",
                    "parameters": {"binary_data_size": 4},
                },
            ]
        }
    ).encode()
    halves = np.array([1.5, -2], "<f2").tobytes()
    request = from_rest(header + text + b"\x01\x00" + halves, str(len(header)))
    t, b, h = (tensor.array for tensor in request.inputs)
    assert t.tolist() == [["hi"], [b"\xff\xfe!"]]
    assert b.tolist() == [True, False] and h.dtype == np.float16 and h.tolist() == [1.5, -2.0]
    with pytest.raises(BadInput, match="BOOL bytes must be 0 or 1"):
        tensors.from_raw(b"\x02", "BOOL", (1,), "b")
    with pytest.raises(BadInput, match="runs past the data"):
        tensors.from_raw(b"\x09\x00\x00\x00ab", "BYTES", (1,), "t")


def test_a_binary_body_received_in_chunks_is_read_in_place_from_aligned_memory() -> None:
    rows = np.arange(3000, dtype=np.float32).reshape(100, 30)
    tensor = {"name": "X", "shape": [100, 30], "datatype": "FP32"}
    header = json.dumps(
        {"inputs": [{**tensor, "parameters": {"binary_data_size": rows.nbytes}}], "id": "a"}
    ).encode()
    body = header + rows.tobytes()
    chunks = [body[at : at + 997] for at in range(0, len(body), 997)]
    for length in (len(header), len(header) + 1):  # an odd header, then a wrong length
        joined = placed(chunks, str(length))
        assert bytes(joined) == body
        start = np.frombuffer(joined, np.uint8).ctypes.data
        assert (start + length) % ALIGN == 0
    joined = placed(chunks, str(len(header)))
    array = from_rest(joined, str(len(header))).inputs[0].array
    assert array.tolist() == rows.tolist()
    assert np.shares_memory(array, np.frombuffer(joined, np.uint8))  # not copied
    for wrong in ("12x", "9" * 5000, "1\xb2", str(len(body) + 1)):
        with pytest.raises(BadInput, match="Inference-Header-Content-Length"):
            from_rest(placed(chunks, wrong), wrong)
    assert placed([body], str(len(header))) is body  # one chunk: as it came


@pytest.mark.parametrize("datatype", [d for d in tensors.DTYPES if d != "BYTES"])
def test_raw_round_trip_for_every_numeric_datatype(datatype: str) -> None:
    array = (
        np.arange(6).reshape(2, 3).astype(tensors.DTYPES[datatype]) % 2 == 1
        if datatype == "BOOL"
        else np.arange(6).reshape(2, 3).astype(tensors.DTYPES[datatype])
    )
    assert tensors.datatype_of(array.dtype) == datatype
    back = tensors.from_raw(tensors.to_raw(array), datatype, (2, 3), "x")
    assert back.dtype == array.dtype and back.tolist() == array.tolist()
    as_json = tensors.from_json(array.tolist(), datatype, (2, 3), "x")  # nested data
    assert as_json.tolist() == array.tolist()


def test_grpc_requests_refused_with_where() -> None:
    request = pb.ModelInferRequest(model_name="m")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 2])
    request.raw_input_contents.extend([b"\0" * 8, b"\0" * 8])
    with pytest.raises(BadInput, match="2 raw_input_contents for 1 inputs"):
        from_grpc(request, 0)
    typed = pb.ModelInferRequest(model_name="m")
    tensor = typed.inputs.add(name="x", datatype="INT8", shape=[2])
    tensor.contents.int_contents.extend([1, 300])
    with pytest.raises(BadInput, match="out of range for INT8"):
        from_grpc(typed, 0)
    half = pb.ModelInferRequest(model_name="m")
    half.inputs.add(name="x", datatype="FP16", shape=[1])
    with pytest.raises(BadInput, match="FP16 data must come in raw_input_contents"):
        from_grpc(half, 0)


def test_committed_grpc_module_matches_the_proto(tmp_path: Path) -> None:
    compiled = tmp_path / "proto.desc"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{V2}",
            f"--descriptor_set_out={compiled}",
            str(V2 / "grpc_predict_v2.proto"),
        ],
        check=True,
    )
    fresh = descriptor_pb2.FileDescriptorSet.FromString(compiled.read_bytes()).file[0]
    messages = list(fresh.message_type)
    while messages:  # protoc adds json_name to descriptor sets, not to gencode
        message = messages.pop()
        messages.extend(message.nested_type)
        for f in message.field:
            f.ClearField("json_name")
    committed = descriptor_pb2.FileDescriptorProto.FromString(pb.DESCRIPTOR.serialized_pb)
    assert committed == fresh, "run `make proto`: edge/v2/grpc_predict_v2_pb2.py is stale"
    assert [m.name for m in committed.service[0].method] == [
        "ServerLive",
        "ServerReady",
        "ModelReady",
        "ServerMetadata",
        "ModelMetadata",
        "ModelInfer",
    ]


def test_openapi_document_is_valid_and_lists_the_v2_routes() -> None:
    from openapi_spec_validator import validate

    from edge import openapi
    from edge.v2 import openapi as v2_openapi

    document = openapi.document(v2_openapi.PATHS)
    validate(document)
    assert {
        "/v2",
        "/v2/health/ready",
        "/v2/models/{model_name}/infer",
        "/v2/models/{model_name}/versions/{model_version}/ready",
    } <= set(document["paths"])


def test_grpc_port_setting() -> None:
    from edge.config import load_settings
    from edge.errors import ConfigError

    assert load_settings(environ={}).grpc_port == 8081
    assert load_settings(environ={"GRPC_PORT": "0"}).grpc_port == 0
    assert load_settings({"grpc_port": 9001}, environ={"GRPC_PORT": "0"}).grpc_port == 9001
    for bad in ("-1", "70000", "x"):
        with pytest.raises(ConfigError, match="GRPC_PORT"):
            load_settings(environ={"GRPC_PORT": bad})
