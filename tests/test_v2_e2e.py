"""The Open Inference Protocol against a real `edge serve`, with Triton's own clients
(`tritonclient.http`, `tritonclient.grpc`, unchanged) and raw requests: health, metadata,
inference in binary and JSON with outputs selected, refusals with their messages, and every
row read back through `/logs`.

Two pipelines: the example (one ONNX model: the fast path) and an iris chain (Python step,
ONNX, Python step, validations: `Pipeline.run`), several inputs and text outputs.
"""

from __future__ import annotations

import json
import os
import struct
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from hypothesis import given, settings
from hypothesis import strategies as st
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from edge.v2.tensors import DTYPES
from tests.conftest import Edge, free_port, publish
from tests.fuzz_support import EXAMPLES, SETTINGS
from tests.models import iris, onnx_classifier, write_files

MODEL = "breast-cancer"
CLIENTS = ("http", "grpc")


class Served:
    def __init__(self, edge: Edge, grpc_port: int, version: str) -> None:
        self.edge, self.grpc_port, self.version = edge, grpc_port, version

    def client(self, kind: str) -> Any:
        if kind == "http":
            return thttp.InferenceServerClient(f"127.0.0.1:{self.edge.port}")
        return tgrpc.InferenceServerClient(f"127.0.0.1:{self.grpc_port}")


def _serve(url: str, persist: Path) -> tuple[Edge, int]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OCI_")}
    env.pop("EDGE_BUNDLE", None)
    grpc_port = free_port()
    env.update(PIPELINE_URL=url, CONFIG_CPUS="1", GRPC_PORT=str(grpc_port))
    return Edge(free_port(), persist, env).start(), grpc_port


@pytest.fixture(scope="module")
def served(example: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    base = tmp_path_factory.mktemp("v2")
    published = publish(example / "pipeline.yaml", layout=base / "layout")
    edge, grpc_port = _serve(published["pipeline_url"], base / "persist")
    yield Served(edge, grpc_port, published["pipeline_version"])
    edge.stop()


@pytest.fixture(scope="module")
def rows(example: Path) -> np.ndarray:
    return np.load(example / "data/10k-rows.npy")[:5]


@pytest.fixture(scope="module")
def expected(example: Path, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    session = ort.InferenceSession(str(example / "models/breast-cancer.onnx"))
    label, probabilities = session.run(None, {"X": rows})
    return label, probabilities


def _input(kind: str, name: str, array: np.ndarray, datatype: str, binary: bool = True) -> Any:
    module: Any = thttp if kind == "http" else tgrpc
    tensor = module.InferInput(name, list(array.shape), datatype)
    if kind == "http":
        tensor.set_data_from_numpy(array, binary_data=binary)
    else:
        tensor.set_data_from_numpy(array)
    return tensor


def _output(kind: str, name: str, binary: bool = True) -> Any:
    if kind == "http":
        return thttp.InferRequestedOutput(name, binary_data=binary)
    return tgrpc.InferRequestedOutput(name)


@pytest.mark.parametrize("kind", CLIENTS)
def test_health_and_metadata(served: Served, kind: str) -> None:
    client = served.client(kind)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(MODEL)
    assert client.is_model_ready(MODEL, served.version)
    assert not client.is_model_ready("no-such-model")
    assert not client.is_model_ready(MODEL, "not-the-version")
    if kind == "http":
        meta = client.get_model_metadata(MODEL)
        server = client.get_server_metadata()
    else:
        meta = client.get_model_metadata(MODEL, as_json=True)
        server = client.get_server_metadata(as_json=True)
        for tensor in meta["inputs"] + meta["outputs"]:  # protobuf's JSON: int64 as text
            tensor["shape"] = [int(d) for d in tensor["shape"]]
    assert "binary_tensor_data" in server["extensions"]
    assert meta["name"] == MODEL and meta["versions"] == [served.version]
    assert meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"] == [{"name": "X", "datatype": "FP32", "shape": [-1, 30]}]
    assert meta["outputs"] == [
        {"name": "label", "datatype": "INT64", "shape": [-1]},
        {"name": "probabilities", "datatype": "FP32", "shape": [-1, 2]},
    ]


@pytest.mark.parametrize(
    ("kind", "binary"), [("http", True), ("http", False), ("grpc", True)], ids=str
)
def test_infer_equals_onnxruntime(
    served: Served, kind: str, binary: bool, rows: np.ndarray, expected: Any
) -> None:
    client = served.client(kind)
    tensor = _input(kind, "X", rows, "FP32", binary)
    answer = client.infer(MODEL, [tensor], request_id="req-17")
    assert answer.as_numpy("label").tolist() == expected[0].tolist()
    np.testing.assert_allclose(answer.as_numpy("probabilities"), expected[1], rtol=1e-6)
    response = answer.get_response(as_json=True) if kind == "grpc" else answer.get_response()
    assert response["id"] == "req-17" and response["model_version"] == served.version
    assert response["parameters"]["anomaly.count"] in (0, {"int64_param": "0"})
    chosen = client.infer(MODEL, [tensor], outputs=[_output(kind, "probabilities", binary)])
    assert chosen.as_numpy("label") is None
    np.testing.assert_allclose(chosen.as_numpy("probabilities"), expected[1], rtol=1e-6)


@pytest.mark.parametrize("kind", CLIENTS)
def test_wrong_datatype_shape_or_output_refused_with_its_message(
    served: Served, kind: str, rows: np.ndarray
) -> None:
    client = served.client(kind)
    cases = [
        (
            _input(kind, "X", rows.astype(np.float64), "FP64"),
            None,
            "datatype FP64, but the model takes FP32",
        ),
        (
            _input(kind, "X", rows[:, :29], "FP32"),
            None,
            "shape [5,29], but the model takes [-1,30]",
        ),
        (_input(kind, "X", rows, "FP32"), [_output(kind, "nope")], "unknown output 'nope'"),
    ]
    for tensor, outputs, message in cases:
        with pytest.raises(InferenceServerException) as refused:
            client.infer(MODEL, [tensor], outputs=outputs)
        assert message in refused.value.message()
        assert refused.value.status() in ("400", "StatusCode.INVALID_ARGUMENT")
    with pytest.raises(InferenceServerException) as unknown:
        client.infer("other-model", [_input(kind, "X", rows, "FP32")])
    assert "no model named 'other-model'" in unknown.value.message()


def test_rest_without_the_client(served: Served, rows: np.ndarray, expected: Any) -> None:
    base = f"{served.edge.url}/v2/models/{MODEL}"
    nested = {
        "inputs": [{"name": "X", "shape": [5, 30], "datatype": "FP32", "data": rows.tolist()}]
    }
    flat = {"inputs": [{**nested["inputs"][0], "data": rows.ravel().tolist()}], "id": "f"}
    for body in (nested, flat):
        reply = httpx.post(f"{base}/versions/{served.version}/infer", json=body)
        assert reply.status_code == 200, reply.text
        outputs = {o["name"]: o for o in reply.json()["outputs"]}
        assert outputs["label"]["data"] == expected[0].tolist()
        assert outputs["probabilities"]["shape"] == [5, 2]
    assert reply.json()["id"] == "f"
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "X",
                    "shape": [5, 30],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": rows.nbytes + 4},
                }
            ]
        }
    ).encode()
    refusals = [
        (
            header + rows.tobytes(),
            {"Inference-Header-Content-Length": str(len(header))},
            "binary_data_size 604 runs past the body",
        ),
        (
            header + rows.tobytes(),
            {"Inference-Header-Content-Length": "99999"},
            "must be a whole number from 1 to the body's",
        ),
        (header + rows.tobytes(), {}, "not valid JSON"),
        (
            json.dumps(
                {"inputs": [{"name": "X", "shape": [5, 30], "datatype": "FP32", "data": [1.5]}]}
            ).encode(),
            {},
            "data holds 1 elements; shape [5,30] needs 150",
        ),
        (
            json.dumps(
                {
                    "inputs": [
                        {"name": "X", "shape": [1, 30], "datatype": "INT64", "data": [0.5] * 30}
                    ]
                }
            ).encode(),
            {},
            "INT64 data must hold whole numbers only",
        ),
    ]
    for body, headers, message in refusals:
        reply = httpx.post(f"{base}/infer", content=body, headers=headers)
        assert reply.status_code == 400 and message in reply.json()["error"], reply.text
        assert list(reply.json()) == ["error"]
    assert httpx.get(f"{base}/infer").status_code == 405
    assert httpx.get(f"{served.edge.url}/v2/models/other").json()["error"].startswith("no model")
    assert httpx.get(f"{served.edge.url}/v2/nowhere").status_code == 404


def test_grpc_typed_contents_without_raw(served: Served, rows: np.ndarray, expected: Any) -> None:
    """A client that sends `contents` (KServe's own, for one) gets the same answer."""
    request = service_pb2.ModelInferRequest(model_name=MODEL)
    tensor = request.inputs.add(name="X", datatype="FP32", shape=list(rows.shape))
    tensor.contents.fp32_contents.extend(rows.ravel().tolist())
    with grpc.insecure_channel(f"127.0.0.1:{served.grpc_port}") as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        answer = stub.ModelInfer(request, timeout=10)
        names = [o.name for o in answer.outputs]
        label = np.frombuffer(answer.raw_output_contents[names.index("label")], "<i8")
        assert label.tolist() == expected[0].tolist()
        with pytest.raises(grpc.RpcError) as broken:
            stub.ModelInfer(service_pb2.ModelInferRequest(model_name=MODEL), timeout=10)
        assert broken.value.code() == grpc.StatusCode.INVALID_ARGUMENT


# the bytes an element of each datatype takes (BF16: one the appliance refuses)
WIDTHS = {name: t.itemsize for name, t in DTYPES.items() if name != "BYTES"} | {"BF16": 2}
TYPED = {  # a typed `contents` field, and a value for it that its datatype holds at its edge
    "FP32": ("fp32_contents", float("nan")),
    "FP64": ("fp64_contents", 1e300),
    "INT32": ("int_contents", -(2**31)),
    "INT64": ("int64_contents", 2**63 - 1),
    "UINT32": ("uint_contents", 2**32 - 1),
    "UINT64": ("uint64_contents", 2**64 - 1),
    "BOOL": ("bool_contents", True),
    "BYTES": ("bytes_contents", b"\xff\xfe"),
}


def _set_parameter(parameter: Any, draw: Any) -> None:
    field, value = draw(
        st.sampled_from(
            [
                ("bool_param", True),
                ("int64_param", -1),
                ("int64_param", 2**63 - 1),
                ("uint64_param", 2**64 - 1),
                ("string_param", "\x00"),
                ("double_param", float("nan")),
            ]
        )
    )
    setattr(parameter, field, value)


def _hostile_edit(request: Any, draw: Any) -> None:
    """One change to a valid one-row request: a field a client may get wrong or forge."""
    if not request.inputs:
        request.model_version = draw(st.sampled_from(["", "1", "\x00"]))
        return
    tensor = request.inputs[0]
    edit = draw(st.integers(0, 11))
    if edit == 0:  # any datatype, with data of that type's size for the shape
        kind = draw(st.sampled_from([*WIDTHS, "BYTES", "fp32", ""]))
        tensor.datatype = kind
        data = draw(st.binary(min_size=0, max_size=8)) * 30
        request.raw_input_contents[:] = [data[: 30 * WIDTHS.get(kind, 1)]]
    elif edit == 1:  # typed contents instead of raw, of any type and a near-miss count
        kind = draw(st.sampled_from(list(TYPED)))
        field, value = TYPED[kind]
        tensor.datatype = draw(st.sampled_from([kind, "FP32"]))
        del request.raw_input_contents[:]
        getattr(tensor.contents, field).extend([value] * draw(st.sampled_from([29, 30, 31])))
    elif edit == 2:
        shapes = [[1, 30, 1], [30], [0, 30], [-1, 30], [1, -30], [2**40, 30], [1, 2**62], [3, 10]]
        tensor.shape[:] = draw(st.sampled_from(shapes))
    elif edit == 3:  # raw contents cut short, or one too many
        if draw(st.booleans()):
            raw = request.raw_input_contents[0] if request.raw_input_contents else b""
            request.raw_input_contents[:1] = [raw[: draw(st.integers(0, 119))]]
        else:
            request.raw_input_contents.append(b"x" * 120)
    elif edit == 4:  # a second input: the same name again, or one the model does not take
        extra = request.inputs.add(name=draw(st.sampled_from(["X", "Y"])), datatype="FP32")
        extra.shape[:] = [1, 30]
        request.raw_input_contents.append(b"\0" * 120)
    elif edit == 5:
        output = request.outputs.add(name=draw(st.sampled_from(["label", "nope", "X", ""])))
        _set_parameter(output.parameters[draw(st.sampled_from(["binary_data", "x"]))], draw)
    elif edit == 6:
        names = ["binary_data_output", "sequence_id", "priority", ""]
        _set_parameter(request.parameters[draw(st.sampled_from(names))], draw)
    elif edit == 7:
        names = ["binary_data_size", "shared_memory_region"]
        _set_parameter(tensor.parameters[draw(st.sampled_from(names))], draw)
    elif edit == 8:
        tensor.name = draw(st.sampled_from(["", "X\x00", "in.X", "x" * 300]))
    elif edit == 9:  # BYTES with length prefixes that run past the data, or none at all
        tensor.datatype = "BYTES"
        prefixes = [b"\x04\x00\x00\x00abc", b"\xff\xff\xff\xff", b"\x03\x00\x00\x001.5" * 30]
        request.raw_input_contents[:1] = [draw(st.sampled_from(prefixes))]
    elif edit == 10:
        request.id = draw(st.sampled_from(["\x00", "x" * 100_000]))
    else:
        del request.inputs[:]


@given(st.data())
@settings(SETTINGS, max_examples=8 * EXAMPLES)
def test_mutated_grpc_requests_get_their_code_never_internal(served: Served, data: Any) -> None:
    """Hostile `ModelInferRequest`s (each field a client may get wrong, and random bytes):
    answered, or refused with INVALID_ARGUMENT / NOT_FOUND and a message; never INTERNAL."""
    request = service_pb2.ModelInferRequest(model_name=MODEL)
    request.inputs.add(name="X", datatype="FP32", shape=[1, 30])
    request.raw_input_contents.append(np.arange(30, dtype=np.float32).tobytes())
    for _ in range(data.draw(st.integers(1, 3))):
        _hostile_edit(request, data.draw)
    body = request.SerializeToString()
    if data.draw(st.integers(0, 4)) == 0:  # and now and then a byte or two of noise
        noisy = bytearray(body)
        for at in data.draw(st.lists(st.integers(0, len(body) - 1), min_size=1, max_size=2)):
            noisy[at] = data.draw(st.integers(0, 255))
        body = bytes(noisy)
    with grpc.insecure_channel(f"127.0.0.1:{served.grpc_port}") as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        try:
            call(body, timeout=30)
        except grpc.RpcError as refused:
            code = refused.code()
            assert code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND), (
                f"{code}: {refused.details()}"
            )
            assert refused.details(), code


def test_after_the_hostile_requests_grpc_still_answers(served: Served, rows: np.ndarray) -> None:
    client = served.client("grpc")
    assert client.is_server_live() and client.is_server_ready()
    answer = client.infer(MODEL, [_input("grpc", "X", rows[:1], "FP32")])
    assert answer.as_numpy("label").shape == (1,)


def test_every_row_is_logged_with_the_seed_shape(served: Served, rows: np.ndarray) -> None:
    before = _logged(served)
    for kind in CLIENTS:
        served.client(kind).infer(MODEL, [_input(kind, "X", rows[:2], "FP32")])
    query = {"limit": 1000, "dataset": "*,metadata"}
    logged = httpx.get(f"{served.edge.url}/logs", params=query).json()
    assert len(logged) == before + 4
    newest = logged[0]
    assert newest["in"]["X"] == pytest.approx(rows[1].tolist(), rel=1e-6)
    assert set(newest["out"]) == {"label", "probabilities"}
    assert newest["anomaly"]["count"] == 0
    assert newest["metadata"]["pipeline_version"] == served.version
    assert newest["metadata"]["last_model"] == json.dumps(
        {"model_name": MODEL, "model_sha": newest_sha(served)}
    )


def newest_sha(served: Served) -> str:
    return str(httpx.get(f"{served.edge.url}/models").json()["models"][0]["sha"])


def _logged(served: Served) -> int:
    return len(httpx.get(f"{served.edge.url}/logs", params={"limit": 1000}).json())


# ---------------------------------------------------------------------- the general path

PRE = """
    import numpy as np

    FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]

    def wallaroo_json(data):
        if "fault" in data.columns and data["fault"].iloc[0] == "raise":
            raise ValueError("asked to fail")
        return {"tensor": data[FEATURES].to_numpy(dtype="float32")}
"""
POST = """
    import numpy as np

    SPECIES = {species!r}

    def wallaroo_json(data):
        return {{"species": [SPECIES[int(label)] for label in data["label"]]}}
"""
SPEC = """
    name: iris-chain
    steps:
      - python: pre
        file: steps/pre.py
      - model: logistic
        file: models/logistic.onnx
      - python: post
        file: steps/post.py
    validations:
      wide: pl.col("in.sepal_width") > 3.5
"""


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Served, Any, list[str]]]:
    from sklearn.linear_model import LogisticRegression

    folder = tmp_path_factory.mktemp("iris-chain")
    features, labels, species = iris()
    model = onnx_classifier(
        LogisticRegression(max_iter=2000), features, labels, folder / "models/logistic.onnx"
    )
    write_files(folder / "steps", {"pre.py": PRE, "post.py": POST.format(species=species)})
    (folder / "pipeline.yaml").write_text(textwrap.dedent(SPEC))
    published = publish(folder / "pipeline.yaml", layout=folder / "layout")
    edge, grpc_port = _serve(published["pipeline_url"], folder / "persist")
    yield Served(edge, grpc_port, published["pipeline_version"]), model, species
    edge.stop()


@pytest.mark.parametrize("kind", CLIENTS)
def test_chain_with_validations_text_and_several_inputs(chain: Any, kind: str) -> None:
    served, model, species = chain
    features = iris()[0][[0, 15, 50, 100]].astype(np.float64)  # row 15: sepal width 4.4
    names = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
    client = served.client(kind)
    meta = client.get_model_metadata("iris-chain", **({} if kind == "http" else {"as_json": True}))
    assert meta["platform"] == "ensemble"
    inputs = [_input(kind, n, features[:, i].copy(), "FP64") for i, n in enumerate(names)]
    inputs.append(_input(kind, "note", np.array([b"a", b"b", b"c", b"d"], dtype=object), "BYTES"))
    answer = client.infer("iris-chain", inputs)
    want = [species[int(i)] for i in model.predict(features.astype(np.float32))]
    assert [s.decode() for s in answer.as_numpy("species")] == want
    parameters = answer.get_response(**({} if kind == "http" else {"as_json": True}))["parameters"]
    flagged = parameters["anomaly.wide"]
    assert flagged in (1, {"int64_param": "1"})
    fault = np.array([b"raise"] * 4, dtype=object)
    with pytest.raises(InferenceServerException) as failed:
        client.infer("iris-chain", [*inputs[:4], _input(kind, "fault", fault, "BYTES")])
    assert "asked to fail" in failed.value.message()
    logged = httpx.get(f"{served.edge.url}/logs", params={"limit": 4}).json()
    assert [r["out"]["species"] for r in reversed(logged)] == want
    assert [r["in"]["note"] for r in reversed(logged)] == ["a", "b", "c", "d"]
    assert [r["anomaly"]["wide"] for r in reversed(logged)] == [False, True, False, False]


def test_bytes_binary_layout_is_length_prefixed(chain: Any) -> None:
    """BYTES outputs in binary: each element behind a 4-byte little-endian length."""
    served = chain[0]
    features = iris()[0][:2]
    names = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
    header = {
        "inputs": [
            {"name": n, "shape": [2], "datatype": "FP64", "data": features[:, i].tolist()}
            for i, n in enumerate(names)
        ],
        "outputs": [{"name": "species", "parameters": {"binary_data": True}}],
    }
    reply = httpx.post(f"{served.edge.url}/v2/models/iris-chain/infer", json=header)
    assert reply.status_code == 200, reply.text
    length = int(reply.headers["inference-header-content-length"])
    doc = json.loads(reply.content[:length])
    raw = reply.content[length:]
    assert doc["outputs"][0]["parameters"]["binary_data_size"] == len(raw)
    (first,) = struct.unpack_from("<I", raw)
    assert raw[4 : 4 + first] == b"setosa"


# ---------------------------------------------------------------------- KServe's own client

# KServe's client pins pandas<3, which the appliance is not: `make setup` installs it in a venv
# of its own from tests/kserve-requirements.txt (a test never reaches PyPI)
KSERVE_PYTHON = Path(__file__).resolve().parent.parent / ".venv-kserve" / "bin" / "python"
KSERVE_SCRIPT = """
import asyncio, json, sys
import numpy as np
from kserve import InferenceGRPCClient, InferenceRESTClient, InferInput, InferRequest, RESTConfig

http, grpc_address, rows = sys.argv[1], sys.argv[2], np.load(sys.argv[3])


async def main():
    seen = {}
    rest = InferenceRESTClient(RESTConfig(protocol="v2"))
    seen["live"] = await rest.is_server_live(http)
    seen["ready"] = await rest.is_model_ready(http, "breast-cancer")
    for binary in (False, True):
        tensor = InferInput("X", list(rows.shape), "FP32")
        tensor.set_data_from_numpy(rows, binary_data=binary)
        request = InferRequest(model_name="breast-cancer", infer_inputs=[tensor], request_id="k")
        answer = await rest.infer(http, request, model_name="breast-cancer")
        outputs = {o.name: o.as_numpy().tolist() for o in answer.outputs}
        seen[f"rest_binary_{binary}"] = [answer.id, outputs["label"], outputs["probabilities"]]
    await rest.close()
    client = InferenceGRPCClient(grpc_address)
    seen["grpc_ready"] = await client.is_model_ready("breast-cancer")
    tensor = InferInput("X", list(rows.shape), "FP32")
    tensor.set_data_from_numpy(rows)
    answer = await client.infer(InferRequest(model_name="breast-cancer", infer_inputs=[tensor]))
    outputs = {o.name: o.as_numpy().tolist() for o in answer.outputs}
    seen["grpc"] = [answer.id, outputs["label"], outputs["probabilities"]]
    await client.close()
    print(json.dumps(seen))


asyncio.run(main())
"""


def test_kserve_client_rest_and_grpc(
    served: Served, rows: np.ndarray, expected: Any, tmp_path: Path
) -> None:
    import subprocess

    if not KSERVE_PYTHON.exists():
        pytest.fail(f"{KSERVE_PYTHON} is missing: `make setup` installs KServe's client there")
    python = str(KSERVE_PYTHON)
    np.save(tmp_path / "rows.npy", rows)
    (tmp_path / "client.py").write_text(KSERVE_SCRIPT)
    address = f"127.0.0.1:{served.grpc_port}"
    ran = subprocess.run(
        [python, str(tmp_path / "client.py"), served.edge.url, address, str(tmp_path / "rows.npy")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ran.returncode == 0, ran.stderr[-2000:]
    seen = json.loads(ran.stdout)
    assert seen["live"] is True and seen["ready"] is True and seen["grpc_ready"] is True
    for key in ("rest_binary_False", "rest_binary_True", "grpc"):
        _, label, probabilities = seen[key]
        assert label == expected[0].tolist(), key
        np.testing.assert_allclose(probabilities, expected[1], rtol=1e-6)
    assert seen["rest_binary_True"][0] == "k"


def test_grpc_port_in_use_stops_the_start_and_sigterm_closes_it(
    example: Path, tmp_path: Path
) -> None:
    import signal
    import socket

    published = publish(example / "pipeline.yaml", layout=tmp_path / "layout")
    edge, grpc_port = _serve(published["pipeline_url"], tmp_path / "persist")
    assert tgrpc.InferenceServerClient(f"127.0.0.1:{grpc_port}").is_server_ready()
    env = dict(edge.env)  # a second appliance asking for the same gRPC port
    second = Edge(free_port(), tmp_path / "persist-2", env).start(wait_ready=False)
    assert second.wait_exit(60) == 2
    assert "GRPC_PORT" in second.output() and f"127.0.0.1:{grpc_port}" in second.output()
    edge.stop(signal.SIGTERM)
    # uvicorn re-raises the signal after its graceful shutdown (a hang would be SIGKILLed: -9)
    assert edge.process is not None and edge.process.returncode == 0  # a requested stop
    with socket.socket() as probe:  # the port is free again
        probe.bind(("127.0.0.1", grpc_port))
