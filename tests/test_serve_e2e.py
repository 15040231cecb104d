"""End to end: publish to a real registry (and a local layout), serve with a real `edge serve`
process, and check what a user sees on every endpoint."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from unittest.mock import ANY

import httpx
import numpy as np
import onnxruntime as ort
import pandas as pd
import pyarrow as pa
import pytest

from tests.conftest import Edge, Registry, free_port, publish, wait_for

JSON = {"Content-Type": "application/json; format=pandas-records"}
ARROW = "application/vnd.apache.arrow.file"
SEED_FIELDS = {
    "check_failures",
    "elapsed",
    "model_name",
    "model_version",
    "original_data",
    "outputs",
    "pipeline_name",
    "shadow_data",
    "time",
}


def rows(example: Path, n: int) -> np.ndarray:
    return np.load(example / "data/10k-rows.npy")[:n]


def raw_ort(example: Path, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    session = ort.InferenceSession(str(example / "models/breast-cancer.onnx"))
    label, probabilities = session.run(None, {"X": features.astype(np.float32)})
    return label, probabilities


def arrow_body(features: np.ndarray) -> bytes:
    column = pa.FixedSizeListArray.from_arrays(pa.array(features.reshape(-1)), features.shape[1])
    table = pa.table({"tensor": column})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


@pytest.fixture(scope="module")
def published(registry: Registry, example: Path) -> dict:
    return publish(example / "pipeline.yaml", registry=registry)


@pytest.fixture(scope="module")
def served(registry: Registry, published: dict, tmp_path_factory: pytest.TempPathFactory):
    env = {k: v for k, v in os.environ.items() if not k.startswith("OCI_") and k != "EDGE_BUNDLE"}
    env.update(
        PIPELINE_URL=published["pipeline_url"],
        OCI_USERNAME=registry.username,
        OCI_PASSWORD=registry.password,
        OCI_REGISTRY=registry.host,
        CONFIG_CPUS="1",
        MAX_BODY_BYTES=str(8 << 20),
    )
    edge = Edge(free_port(), tmp_path_factory.mktemp("served") / "persist", env).start()
    yield edge
    edge.stop()


def test_publish_prints_seed_fields_and_pushes_a_chart(registry: Registry, example: Path) -> None:
    env = dict(os.environ, OCI_USERNAME=registry.username, OCI_PASSWORD=registry.password)
    command = [sys.executable, "-m", "edge", "publish", str(example / "pipeline.yaml")]
    command += ["--registry", registry.host, "--repository", "edge-tests"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    fields = dict(line.split("  ", 1) for line in done.stdout.splitlines() if "  " in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    for label in (
        "ID",
        "Pipeline Version",
        "Status",
        "Engine URL",
        "Pipeline URL",
        "Helm Chart URL",
        "Helm Chart Reference",
        "Helm Chart Version",
        "Engine Config",
    ):
        assert fields.get(label), label
    version = fields["Pipeline Version"]
    assert fields["Pipeline URL"] == f"{registry.host}/edge-tests/pipelines/breast-cancer:{version}"
    assert fields["Helm Chart URL"] == f"oci://{registry.host}/edge-tests/charts/breast-cancer"
    assert fields["Helm Chart Version"] == f"0.0.1-{version}"
    assert registry.password not in done.stdout + done.stderr
    chart = httpx.get(
        f"http://{registry.host}/v2/edge-tests/charts/breast-cancer/manifests/0.0.1-{version}",
        auth=(registry.username, registry.password),
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
    )
    assert chart.status_code == 200
    assert fields["Helm Chart Reference"].endswith(chart.headers["docker-content-digest"])
    layer = chart.json()["layers"][0]
    assert layer["mediaType"] == "application/vnd.cncf.helm.chart.content.v1.tar+gzip"


def test_startup_lines_and_listing(served, published: dict, example: Path) -> None:
    out = served.output()
    for line in (
        "Fetching manifest and config for pipeline: " + published["pipeline_url"],
        "Fetching model layers",
        "  name: breast-cancer",
        "  runtime: onnx",
        "Fetched",
        "Starting engine",
    ):
        assert line in out
    assert httpx.get(f"{served.url}/pipelines").json() == {
        "pipelines": [{"id": "breast-cancer", "status": "Running"}]
    }
    models = httpx.get(f"{served.url}/models").json()["models"]
    sha = hashlib.sha256((example / "models/breast-cancer.onnx").read_bytes()).hexdigest()
    assert [(m["name"], m["sha"], m["status"]) for m in models] == [
        ("breast-cancer", sha, "Running")
    ]
    assert len(models[0]["version"]) == 36
    assert httpx.get(f"{served.url}/health/live").status_code == 200
    assert httpx.get(f"{served.url}/health/ready").status_code == 200
    assert "edge_inference_requests" in httpx.get(f"{served.url}/metrics").text


@pytest.mark.parametrize("n", [1, 5, 200])
def test_records_json_matches_onnxruntime(served, example: Path, n: int) -> None:
    features = rows(example, n)
    body = json.dumps([{"tensor": r} for r in features.tolist()])
    reply = httpx.post(f"{served.url}/pipelines/breast-cancer", content=body, headers=JSON)
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"].startswith("application/json")
    records = reply.json()
    assert len(records) == n
    assert SEED_FIELDS <= set(records[0])
    frame = pd.json_normalize(records)
    for column in ("time", "in.tensor", "out.label", "out.probabilities", "anomaly.count"):
        assert column in frame.columns
    assert frame["time"].dtype == np.int64
    label, probabilities = raw_ort(example, features)
    np.testing.assert_array_equal(frame["out.label"].to_numpy(), label)
    np.testing.assert_allclose(np.stack(frame["out.probabilities"]), probabilities, rtol=1e-6)
    assert records[0]["outputs"][0] == {"Int64": {"data": [int(label[0])], "dim": [1], "v": 1}}
    assert records[0]["outputs"][1]["Float"]["dim"] == [1, 2]
    assert records[0]["pipeline_name"] == "breast-cancer"
    assert len(records[0]["elapsed"]) == 2


def test_arrow_in_and_out(served, example: Path) -> None:
    features = rows(example, 1000)
    reply = httpx.post(
        f"{served.url}/pipelines/breast-cancer",
        content=arrow_body(features),
        headers={"Content-Type": ARROW, "Accept": ARROW},
    )
    assert reply.status_code == 200, reply.text
    table = pa.ipc.open_file(pa.py_buffer(reply.content)).read_all()
    assert table.column_names[:4] == ["time", "in.tensor", "out.label", "out.probabilities"]
    assert "anomaly.count" in table.column_names
    assert table.schema.field("time").type == pa.timestamp("ms")  # the seed's Arrow type
    label, probabilities = raw_ort(example, features)
    np.testing.assert_array_equal(table.column("out.label").to_numpy(), label)
    np.testing.assert_allclose(
        np.stack(table.column("out.probabilities").to_numpy(zero_copy_only=False)),
        probabilities,
        rtol=1e-6,
    )


def test_serving_logging_past_the_cap_and_reading_logs_never_load_pandas(
    registry: Registry, published: dict, example: Path, start_edge
) -> None:
    """pandas costs ~48 MiB resident and ~0.35 s to import; only Python steps need it (they
    hand users' code a DataFrame). pyarrow imports it when given a Python value (`pa.array`,
    `pa.scalar`, `to_numpy`), which the request path, the log buffer's trims past its cap and
    the logs reader avoid."""
    edge = start_edge(published["pipeline_url"], registry, env={"LOG_BUFFER_BYTES": str(4 << 20)})
    url = f"{edge.url}/pipelines/breast-cancer"
    features = rows(example, 10_000)
    one = json.dumps([{"tensor": features[0].tolist()}])
    assert httpx.post(url, content=one, headers=JSON).status_code == 200
    many = json.dumps([{"tensor": r} for r in features.tolist()])
    assert httpx.post(url, content=many, headers=JSON, timeout=60).status_code == 200
    arrow = {"Content-Type": ARROW, "Accept": ARROW}
    for _ in range(4):  # 10,000 rows each: past the cap, the oldest lose their inputs
        reply = httpx.post(url, content=arrow_body(features), headers=arrow, timeout=60)
        assert reply.status_code == 200, reply.text
    tensor = {"name": "tensor", "shape": [2, 30], "datatype": "FP32"}
    v2 = {"inputs": [{**tensor, "data": features[:2].reshape(-1).tolist()}]}
    assert httpx.post(f"{edge.url}/v2/models/breast-cancer/infer", json=v2).status_code == 200

    def dropped_inputs() -> bool:
        text = httpx.get(f"{edge.url}/metrics").text
        return 'edge_log_buffer_dropped{reason="input_values"} 0.0' not in text

    wait_for(dropped_inputs, 10, "a trim past the cap")
    version = published["pipeline_version"]
    for query in ("?limit=5", "?valid=false", f"?pipeline_version={version}"):
        reply = httpx.get(f"{edge.url}/logs{query}")
        assert reply.status_code == 200, reply.text
    assert edge.process is not None
    assert "pandas/_libs" not in Path(f"/proc/{edge.process.pid}/maps").read_text()


@pytest.mark.parametrize(
    "steps",
    [
        # rows split by key between two models: per-row model columns, rows put back in order
        "  - random_split:\n      hash_key: key\n      models:\n"
        "        - {weight: 1, model: a, file: models/breast-cancer.onnx,"
        " tensor_fields: [tensor]}\n"
        "        - {weight: 1, model: b, file: models/breast-cancer.onnx,"
        " tensor_fields: [tensor]}\n",
        # a challenger's outputs logged beside the champion's
        "  - shadow:\n"
        "      champion: {model: a, file: models/breast-cancer.onnx, tensor_fields: [tensor]}\n"
        "      challengers:\n"
        "        - {model: b, file: models/breast-cancer.onnx, tensor_fields: [tensor]}\n",
    ],
    ids=["split", "shadow"],
)
def test_split_and_shadow_pipelines_never_load_pandas(
    example: Path, tmp_path: Path, start_edge, steps: str
) -> None:
    shutil.copytree(example / "models", tmp_path / "models")
    spec = tmp_path / "pipeline.yaml"
    spec.write_text("name: mixed\nsteps:\n" + steps)
    edge = start_edge(publish(spec, layout=tmp_path / "layout")["pipeline_url"])
    features = rows(example, 50)
    rows_sent = [
        {"tensor": r, "key": i / 50, "id": f"r{i}"} for i, r in enumerate(features.tolist())
    ]
    body = json.dumps(rows_sent)  # `id`: a text column, passed through to the log
    reply = httpx.post(f"{edge.url}/pipelines/mixed", content=body, headers=JSON)
    assert reply.status_code == 200, reply.text
    assert len(reply.json()) == 50
    arrow = {"Content-Type": JSON["Content-Type"], "Accept": ARROW}
    reply = httpx.post(f"{edge.url}/pipelines/mixed", content=body, headers=arrow)
    assert reply.status_code == 200, reply.text
    assert pa.ipc.open_file(pa.py_buffer(reply.content)).read_all().num_rows == 50
    for accept in ("application/json", ARROW):
        assert httpx.get(f"{edge.url}/logs?limit=100", headers={"Accept": accept}).is_success
    assert edge.process is not None
    assert "pandas/_libs" not in Path(f"/proc/{edge.process.pid}/maps").read_text()


def test_wallaroo_sdk_wire_format(served, example: Path) -> None:
    """What Wallaroo's own SDK sends: flat keys with dataset.separator, `format: arrow`."""
    features = rows(example, 3)
    body = json.dumps([{"tensor": r} for r in features.tolist()])
    reply = httpx.post(
        f"{served.url}/pipelines/breast-cancer",
        params=[("dataset[]", "*"), ("dataset.exclude[]", "metadata"), ("dataset.separator", ".")],
        content=body,
        headers=JSON,
    )
    assert reply.status_code == 200
    frame = pd.DataFrame.from_records(reply.json())
    assert {"time", "in.tensor", "out.label", "out.probabilities", "anomaly.count"} <= set(
        frame.columns
    )
    assert not any(c.startswith("metadata") for c in frame.columns)
    reply = httpx.post(
        f"{served.url}/pipelines/breast-cancer",
        content=arrow_body(features),
        headers={"Content-Type": ARROW, "format": "arrow"},
    )
    table = pa.ipc.open_file(pa.py_buffer(reply.content)).read_all()
    assert table.num_rows == 3


def test_dataset_selection(served, example: Path) -> None:
    body = json.dumps([{"tensor": rows(example, 1)[0].tolist()}])
    url = f"{served.url}/pipelines/breast-cancer"
    only_out = httpx.post(url, params={"dataset": "out"}, content=body, headers=JSON).json()[0]
    assert "out" in only_out and "in" not in only_out and "anomaly" not in only_out
    meta = httpx.post(
        url, params=[("dataset", "*"), ("dataset", "metadata")], content=body, headers=JSON
    ).json()[0]
    assert meta["metadata"]["pipeline_version"]
    assert meta["metadata"]["dropped"] == []
    assert len(meta["metadata"]["elapsed"]) == 2
    no_in = httpx.post(url, params={"dataset_exclude": "in"}, content=body, headers=JSON).json()
    assert "in" not in no_in[0] and "out" in no_in[0]


def test_a_body_over_the_limit_is_refused_and_the_server_serves_on(served, example: Path) -> None:
    """Over a real socket: 12 MB refused with the seed's 413 body, then the next request on a
    new connection is answered (bad input, unknown names and Accept: tests/test_server.py)."""
    body = json.dumps([{"tensor": rows(example, 1)[0].tolist()}])
    big = b"[" + b'{"tensor": [1.0]},' * (600_000) + b'{"tensor": [1.0]}]'
    too_big = httpx.post(f"{served.url}/pipelines/breast-cancer", content=big, headers=JSON)
    assert too_big.status_code == 413
    error = too_big.json()
    assert error["code"] == 413 and error["status"] == "error" and error["source"] == "platform"
    assert "limit" in error["error"]
    ok = httpx.post(f"{served.url}/pipelines/breast-cancer", content=body, headers=JSON)
    assert ok.status_code == 200


def test_batch_config_single(registry: Registry, example: Path, tmp_path: Path, start_edge) -> None:
    spec = tmp_path / "single.yaml"
    shutil.copytree(example / "models", tmp_path / "models")
    spec.write_text(
        "name: single-row\nsteps:\n  - model: single\n    file: models/breast-cancer.onnx\n"
        "    batch_config: single\n    tensor_fields: [features]\n"
    )
    url = publish(spec, registry=registry)["pipeline_url"]
    edge = start_edge(url, registry)
    features = rows(example, 2)
    two = json.dumps([{"features": r, "other": 1} for r in features.tolist()])
    reply = httpx.post(f"{edge.url}/pipelines/single-row", content=two, headers=JSON)
    assert reply.status_code == 400 and "single" in reply.json()["error"]
    one = json.dumps([{"features": features[0].tolist(), "other": 1}])
    reply = httpx.post(f"{edge.url}/pipelines/single-row", content=one, headers=JSON)
    assert reply.status_code == 200, reply.text


def test_tampered_blob_is_refused(
    registry: Registry, example: Path, tmp_path: Path, start_edge
) -> None:
    published_ = publish(example / "pipeline.yaml", registry=registry)
    manifest = httpx.get(
        f"http://{registry.host}/v2/edge-tests/pipelines/breast-cancer/manifests/"
        f"{published_['pipeline_version']}",
        auth=(registry.username, registry.password),
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
    ).json()
    model_blob = registry.blob_path(manifest["layers"][0]["digest"])
    original = model_blob.read_bytes()
    try:
        model_blob.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
        edge = start_edge(
            published_["pipeline_url"], registry, wait_ready=False, env={"PULL_RETRY_MAX": "1"}
        )
        entry = edge.load_error()  # refused, not loaded; the server stays up and retries
        assert "digest" in entry["error"]
        assert entry == {"id": "breast-cancer", "status": "Error", "error": ANY}
    finally:
        model_blob.write_bytes(original)
    wait_for(lambda: ready(edge), 60, "the retried pull of the repaired blob")
    assert edge.process is not None and edge.process.poll() is None
    assert "digest" in edge.output()
    assert registry.password not in edge.output()


def test_offline_restart_serves_cache(
    registry: Registry, example: Path, tmp_path: Path, start_edge
) -> None:
    url = publish(example / "pipeline.yaml", registry=registry)["pipeline_url"]
    persist = tmp_path / "persist"
    first = start_edge(url, registry, persist=persist)
    first.stop()
    registry.stop()
    try:
        second = start_edge(url, registry, persist=persist)
        assert "serving the cached copy" in second.output()
        body = json.dumps([{"tensor": rows(example, 1)[0].tolist()}])
        assert (
            httpx.post(
                f"{second.url}/pipelines/breast-cancer", content=body, headers=JSON
            ).status_code
            == 200
        )
        second.stop()
    finally:
        registry.start()


def test_first_start_before_the_registry_is_up_retries_until_it_is(
    registry: Registry, example: Path, tmp_path: Path, start_edge
) -> None:
    """A device often boots before its network: with no cache and the registry down, the
    server stays up (Error with the reason, readiness 503), retries with a log line each time,
    and serves once the registry answers."""
    url = publish(example / "pipeline.yaml", registry=registry)["pipeline_url"]
    registry.stop()
    try:
        edge = start_edge(url, registry, wait_ready=False, env={"PULL_RETRY_MAX": "1"})
        entry = edge.load_error()
        assert entry["id"] == "breast-cancer" and entry["status"] == "Error"
        assert "no cached copy" in entry["error"]
        assert httpx.get(f"{edge.url}/health/ready").status_code == 503
        wait_for(lambda: edge.output().count("pipeline load failed") >= 2, 30, "a second retry")
        assert edge.process is not None and edge.process.poll() is None
    finally:
        registry.start()
    wait_for(lambda: ready(edge), 60, "the pull once the registry is up")
    assert httpx.get(f"{edge.url}/pipelines").json() == {
        "pipelines": [{"id": "breast-cancer", "status": "Running"}]
    }
    body = json.dumps([{"tensor": rows(example, 1)[0].tolist()}])
    reply = httpx.post(f"{edge.url}/pipelines/breast-cancer", content=body, headers=JSON)
    assert reply.status_code == 200, reply.text
    output = edge.output()
    assert "pipeline load failed (attempt 1), retrying in" in output
    assert registry.password not in output


def test_an_invalid_pipeline_url_exits(start_edge) -> None:
    """What no retry can fix still ends the start, naming the variable (exit status 2)."""
    edge = start_edge("no-registry-here", wait_ready=False)
    assert edge.wait_exit(60) == 2
    assert "PIPELINE_URL is not valid" in edge.output()


def ready(edge: Edge) -> bool:
    try:
        return httpx.get(f"{edge.url}/health/ready", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def _responses(sock: socket.socket, count: int) -> list[bytes]:
    """`count` whole HTTP responses read off one connection in order (each a head, then a
    body of its content-length; consecutive answers may share a segment)."""
    data, answers = b"", []
    while len(answers) < count:
        while b"\r\n\r\n" not in data:
            data += _received(sock)
        head, _, data = data.partition(b"\r\n\r\n")
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        while len(data) < length:
            data += _received(sock)
        answers.append(head + b"\r\n\r\n" + data[:length])
        data = data[length:]
    assert data == b"", "bytes after the last answer"
    return answers


def _received(sock: socket.socket) -> bytes:
    data = sock.recv(65536)
    assert data, "the server closed the connection before the answers were whole"
    return data


def test_served_answers_arrive_whole_and_in_order_on_one_connection(served: Edge) -> None:
    body = b'[{"tensor": [' + b", ".join([b"1.0"] * 30) + b"]}]"
    inference = (
        b"POST /pipelines/breast-cancer HTTP/1.1\r\nhost: x\r\n"
        b"content-type: application/json; format=pandas-records\r\n"
        b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    listing = b"GET /pipelines HTTP/1.1\r\nhost: x\r\n\r\n"
    with socket.create_connection(("127.0.0.1", served.port), timeout=30) as sock:
        sock.sendall(inference)
        first = sock.recv(65536)  # a small answer is one write: head and body arrive together
        assert first.startswith(b"HTTP/1.1 200") and first.endswith(b"}]")
        sock.sendall(inference + listing + inference)  # pipelined
        answers = _responses(sock, 3)
    assert [a.split(b"\r\n", 1)[0] for a in answers] == [b"HTTP/1.1 200 OK"] * 3
    assert b'"pipeline_name":"breast-cancer"' in answers[0]
    assert answers[1].endswith(b'{"pipelines":[{"id":"breast-cancer","status":"Running"}]}')
    assert b'"pipeline_name":"breast-cancer"' in answers[2]
