"""edge.server (with edge.inference_route and edge.appliance): the appliance's HTTP app in process,
through httpx.ASGITransport. Every route's answer and status; every error as the seed's body
`{"error", "code", "status", "source"}` with the status of its class; content negotiation; a
request refused before the model runs (proved by a step that counts its runs); `/pipelines`
and readiness while loading and after a load failure; the request metrics.

A real server (uvicorn on a socket) is started only by the end-to-end tests."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import shutil
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import numpy as np
import pyarrow as pa
import pytest
from prometheus_client.parser import text_string_to_metric_families

from edge import appliance as appliance_module
from edge.appliance import Appliance, LoadState, load_pipeline
from edge.config import Settings
from edge.errors import (
    BadInput,
    ConfigError,
    EdgeError,
    LogBufferDiskFull,
    LogBufferError,
    LogBufferFull,
    NotAcceptable,
    NotFound,
    NotReady,
    PayloadTooLarge,
    PipelineError,
    RequestError,
    RequestTimeout,
    UnsupportedMediaType,
)
from edge.logbuffer import LogBuffer
from edge.pipeline import Pipeline
from edge.publish import publish
from edge.server import create_app
from tests.models import iris, onnx_classifier, write_files

JSON_TYPE = "application/json; format=pandas-records"
ARROW_FILE = "application/vnd.apache.arrow.file"
ARROW_STREAM = "application/vnd.apache.arrow.stream"
JSON = {"content-type": JSON_TYPE}
FEATURES, LABELS, _ = iris()
App = Callable[..., Any]

COUNTING_STEP = """
    import pathlib

    RUNS = pathlib.Path({runs!r})


    def wallaroo_json(data):
        with RUNS.open("a") as runs:  # one line per run of the pipeline's first step
            runs.write("ran\\n")
        return data
"""


@dataclass
class Served:
    """The module's pipelines, loaded once: `iris` (one ONNX model) and `counted` (a Python
    step that writes a line to `runs` each time it runs, then the same model)."""

    pipelines: dict[str, Pipeline]
    urls: dict[str, str]
    model: Any  # the fitted scikit-learn estimator
    model_sha: str
    runs: Path

    def run_count(self) -> int:
        return len(self.runs.read_text().splitlines()) if self.runs.exists() else 0


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    from sklearn.linear_model import LogisticRegression

    folder = tmp_path_factory.mktemp("server")
    model = onnx_classifier(
        LogisticRegression(max_iter=300), FEATURES, LABELS, folder / "models/iris.onnx"
    )
    runs = folder / "runs.txt"
    write_files(folder, {"steps/count.py": COUNTING_STEP.format(runs=str(runs))})
    specs = {
        "iris": "name: iris\nsteps:\n  - model: logistic\n    file: models/iris.onnx\n",
        "counted": (
            "name: counted\nsteps:\n  - python: count\n    file: steps/count.py\n"
            "  - model: logistic\n    file: models/iris.onnx\n"
        ),
    }
    pipelines, urls = {}, {}
    for name, text in specs.items():
        (folder / f"{name}.yaml").write_text(text)
        published, _ = publish(folder / f"{name}.yaml", layout=folder / name, progress=False)
        urls[name] = published.pipeline_url
        settings = Settings(
            pipeline_url=urls[name], persist_dir=folder / f"persist-{name}", partition="edge-1"
        )
        pipelines[name] = load_pipeline(settings, echo=lambda line: None)
    sha = hashlib.sha256((folder / "models/iris.onnx").read_bytes()).hexdigest()
    yield Served(pipelines, urls, model, sha, runs)
    for pipeline in pipelines.values():
        pipeline.close()


@pytest.fixture
def make_app(served: Served, tmp_path: Path) -> Iterator[Callable[..., tuple[Appliance, App]]]:
    """An appliance serving one of the module's pipelines (with its own log buffer), and its app."""
    buffers: list[LogBuffer] = []

    def make(name: str = "iris", logging: bool = True, **settings: Any) -> tuple[Appliance, App]:
        settings.setdefault("grpc_port", 0)  # tests run side by side: no fixed port
        config = Settings(
            pipeline_url=served.urls[name], persist_dir=tmp_path, partition="edge-1", **settings
        )
        buffer = None
        if logging:
            buffer = LogBuffer(tmp_path / f"logbuffer-{len(buffers)}.db")
            buffer.start()
            buffers.append(buffer)
        appliance = Appliance(
            config, buffer=buffer, pipeline=served.pipelines[name], state=LoadState.RUNNING
        )
        return appliance, create_app(appliance)

    yield make
    for buffer in buffers:
        buffer.close()


async def _request(app: App, method: str, path: str, **kwargs: Any) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://edge") as client:
        return await client.request(method, path, **kwargs)


def call(app: App, method: str, path: str, **kwargs: Any) -> httpx.Response:
    return asyncio.run(_request(app, method, path, **kwargs))


def infer(app: App, rows: Any, name: str = "iris", **kwargs: Any) -> httpx.Response:
    headers = {**JSON, **kwargs.pop("headers", {})}
    body = rows if isinstance(rows, bytes | str) else json.dumps(rows)
    return call(app, "POST", f"/pipelines/{name}", content=body, headers=headers, **kwargs)


def tensor_rows(features: np.ndarray) -> list[dict[str, Any]]:
    return [{"tensor": row} for row in features.tolist()]


def arrow_file(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def arrow_stream(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def tensor_table(features: np.ndarray) -> pa.Table:
    flat = pa.array(features.reshape(-1))
    return pa.table({"tensor": pa.FixedSizeListArray.from_arrays(flat, features.shape[1])})


def assert_error(reply: httpx.Response, status: int, source: str, words: str = "") -> None:
    """The seed's error body, which Wallaroo's SDK reads."""
    assert reply.status_code == status, reply.text
    assert reply.headers["content-type"] == "application/json"
    body = reply.json()
    assert set(body) == {"error", "code", "status", "source"}
    assert body["code"] == status and body["status"] == "error" and body["source"] == source
    assert isinstance(body["error"], str) and body["error"]
    assert words in body["error"], body["error"]


# ---------------------------------------------------------------------------- the routes


def test_listing_models_and_health_of_a_running_appliance(make_app: Any, served: Served) -> None:
    appliance, app = make_app()
    assert call(app, "GET", "/pipelines").json() == {
        "pipelines": [{"id": "iris", "status": "Running"}]
    }
    (model,) = call(app, "GET", "/models").json()["models"]
    info = served.pipelines["iris"].definition.models["logistic"]
    assert model == {
        "name": "logistic",
        "sha": served.model_sha,
        "status": "Running",
        "version": info.version,
        "runtime": "onnx",
        "provider": "CPUExecutionProvider",
    }
    assert call(app, "GET", "/health/live").json() == {"status": "alive"}
    ready = call(app, "GET", "/health/ready")
    assert ready.status_code == 200 and ready.json() == {"status": "ready", "pipeline": "iris"}
    health = call(app, "GET", "/health").json()
    assert health["status"] == "Running" and health["pipeline"] == "iris"
    assert health["pipeline_version"] == served.pipelines["iris"].definition.version
    assert health["error"] is None and health["uptime_s"] >= 0
    assert health["log_buffer"]["rows"] == 0
    document = call(app, "GET", "/openapi.json").json()
    assert {"/pipelines", "/pipelines/{name}", "/logs", "/metrics"} <= set(document["paths"])


@pytest.mark.parametrize("count", [1, 3, 100], ids=["one-row", "few-rows", "100-rows"])
def test_records_in_records_out_match_the_model(make_app: Any, served: Served, count: int) -> None:
    _, app = make_app()
    features = FEATURES[np.linspace(0, 149, count).astype(int)]
    reply = infer(app, tensor_rows(features))
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"] == JSON_TYPE
    records = reply.json()
    assert [r["out"]["label"] for r in records] == served.model.predict(features).tolist()
    np.testing.assert_allclose(
        [r["out"]["probabilities"] for r in records],
        served.model.predict_proba(features),
        rtol=1e-5,
        atol=1e-6,
    )
    assert records[0]["pipeline_name"] == "iris" and records[0]["model_name"] == "logistic"
    assert isinstance(records[0]["time"], int)
    assert set(records[0]) >= {"in", "out", "anomaly", "check_failures", "outputs", "elapsed"}


@pytest.mark.parametrize("body_type", [ARROW_FILE, ARROW_STREAM])
@pytest.mark.parametrize("ask", [{"accept": ARROW_FILE}, {"format": "arrow"}], ids=str)
def test_arrow_in_and_out(
    make_app: Any, served: Served, body_type: str, ask: dict[str, str]
) -> None:
    _, app = make_app()
    features = FEATURES[:7]
    pack = arrow_file if body_type == ARROW_FILE else arrow_stream
    reply = call(
        app,
        "POST",
        "/pipelines/iris",
        content=pack(tensor_table(features)),
        headers={"content-type": body_type, **ask},
    )
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"] == ARROW_FILE
    table = pa.ipc.open_file(pa.py_buffer(reply.content)).read_all()
    assert table.column_names[:4] == ["time", "in.tensor", "out.label", "out.probabilities"]
    assert table.column("out.label").to_pylist() == served.model.predict(features).tolist()


@pytest.mark.parametrize("full", [False, True])
@pytest.mark.parametrize("company", ["alone", "request", "model", "budget", "fsync"])
def test_a_large_arrow_request_is_answered_only_once_its_rows_are_logged(
    make_app: Any,
    served: Served,
    full: bool,
    company: str,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    """A body past 64 KiB runs on a worker thread (decode, run, journal, encode), or on the
    event loop when nothing else could want the loop or a model run meanwhile (no other
    request in flight, no model on a worker, a budget of one run, no fsync before each
    answer): its rows are in the journal when it is answered, and a full journal is a 503
    without an answer."""
    appliance, app = make_app()
    features = np.resize(FEATURES, (6000, FEATURES.shape[1]))
    body = arrow_file(tensor_table(features))
    assert len(body) > 64 << 10
    if company == "fsync":  # every answer waits for the journal's fsync
        appliance.buffer = LogBuffer(tmp_path / "synced.db", fsync_interval=0)
        appliance.buffer.start()
        request.addfinalizer(appliance.buffer.close)
    buffer = appliance.buffer
    real = buffer.log_answered
    threads: list[threading.Thread] = []

    def log_answered(table: pa.Table) -> Any:
        threads.append(threading.current_thread())
        if full:
            raise LogBufferFull("the writer queue is full")
        return real(table)

    buffer.log_answered = log_answered  # type: ignore[method-assign]
    before = buffer._journal.last_seq
    headers = {"content-type": ARROW_FILE, "accept": ARROW_FILE}
    pipeline = appliance.pipeline

    async def post() -> httpx.Response:
        if company == "model":  # the budget's one run is out, and back in 0.2 s
            limiter = appliance.limiter = anyio.CapacityLimiter(1)
            limiter.acquire_on_behalf_of_nowait("a model run on a worker")
            asyncio.get_running_loop().call_later(
                0.2, limiter.release_on_behalf_of, "a model run on a worker"
            )
        elif company == "budget":
            appliance.limiter = anyio.CapacityLimiter(2)
        return await _request(app, "POST", "/pipelines/iris", content=body, headers=headers)

    if company == "request":
        pipeline.enter()  # another request holds the pipeline meanwhile
    try:
        reply = asyncio.run(post())
    finally:
        if company == "request":
            pipeline.leave()
    assert len(threads) == 1
    assert (threads[0] is threading.main_thread()) == (company == "alone")
    if full:
        assert_error(reply, 503, "engine", "the writer queue is full")
        assert buffer._journal.last_seq == before
        return
    assert reply.status_code == 200, reply.text
    assert buffer._journal.last_seq == before + len(features)  # journaled before the answer
    table = pa.ipc.open_file(pa.py_buffer(reply.content)).read_all()
    assert table.column("out.label").to_pylist() == served.model.predict(features).tolist()
    logs = call(app, "GET", "/logs", params={"limit": "7000", "dataset": "out"})
    assert [r["out"]["label"] for r in logs.json()][::-1] == table["out.label"].to_pylist()


@pytest.mark.parametrize(
    "accept", ["", "*/*", "application/json", JSON_TYPE, "text/html, application/*;q=0.5"]
)
def test_json_is_answered_to_any_accept_that_takes_it(make_app: Any, accept: str) -> None:
    _, app = make_app()
    headers = {"accept": accept} if accept else {}
    reply = infer(app, tensor_rows(FEATURES[:1]), headers=headers)
    assert reply.status_code == 200 and reply.headers["content-type"] == JSON_TYPE


def test_a_body_without_a_content_type_is_read_as_records(make_app: Any) -> None:
    _, app = make_app()
    body = json.dumps(tensor_rows(FEATURES[:2]))
    reply = call(app, "POST", "/pipelines/iris", content=body, headers={"content-type": ""})
    assert reply.status_code == 200 and len(reply.json()) == 2


def test_content_negotiation_refusals(make_app: Any) -> None:
    _, app = make_app()
    rows = tensor_rows(FEATURES[:1])
    assert_error(infer(app, rows, headers={"accept": "text/html"}), 406, "platform", "text/html")
    refused = infer(app, "a,b\n1,2\n", headers={"content-type": "text/csv"})
    assert_error(refused, 415, "platform", "Content-Type 'text/csv' is not supported")
    logs = call(app, "GET", "/logs", headers={"accept": "text/html"})
    assert_error(logs, 406, "platform", "Accept 'text/html' is not supported")


BAD_INPUTS = [
    ("ragged", [{"tensor": [1.0] * 4}, {"tensor": [1.0] * 3}], JSON, 400, "ragged"),
    ("mixed", [{"tensor": [1.0] * 3 + ["a"]}], JSON, 400, "'tensor'"),
    ("width", [{"tensor": [1.0] * 12}], JSON, 400, "expects 4"),
    ("malformed", '[{"tensor": [1.0,', JSON, 400, "malformed"),
    ("not-records", '{"tensor": [1.0]}', JSON, 400, "list of row objects"),
    ("empty", "[]", JSON, 400, "no rows"),
    ("null", [{"tensor": None}], JSON, 400, "null"),
    ("wrong-columns", [{"a": [1.0] * 4, "b": [1.0] * 4}], JSON, 400, "'X'"),
    ("text", [{"tensor": ["a", "b", "c", "d"]}], JSON, 400, "text"),
    ("bad-arrow", "not arrow at all", {"content-type": ARROW_FILE}, 400, "Arrow"),
    ("media-type", "x", {"content-type": "text/csv"}, 415, "text/csv"),
]


@pytest.mark.parametrize(
    "case,body,headers,status,words", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS]
)
def test_bad_input_is_a_clear_4xx(
    make_app: Any, case: str, body: Any, headers: dict[str, str], status: int, words: str
) -> None:
    _, app = make_app()
    source = "engine" if status == 400 else "platform"
    assert_error(infer(app, body, headers=headers), status, source, words)
    assert infer(app, tensor_rows(FEATURES[:1])).status_code == 200  # and it still serves


def test_unknown_pipelines_and_routes_are_404(make_app: Any) -> None:
    _, app = make_app()
    rows = tensor_rows(FEATURES[:1])
    assert_error(infer(app, rows, name="nope"), 404, "platform", "no pipeline named 'nope'")
    assert_error(call(app, "GET", "/nope"), 404, "platform", "no route GET /nope")
    assert_error(call(app, "GET", "/pipelines/iris"), 404, "platform", "no route GET")
    assert_error(call(app, "DELETE", "/models"), 404, "platform", "no route DELETE /models")
    assert_error(infer(app, rows, name="iris/extra"), 404, "platform", "no route POST")


# ---------------------------------------------------------------------------- refused early


@pytest.mark.parametrize(
    "params,headers,status,words",
    [
        ({"dataset": "bogus"}, {}, 400, "unknown dataset 'bogus'"),
        ({"dataset[]": "*", "dataset.exclude[]": "inputs"}, {}, 400, "unknown dataset 'inputs'"),
        ({"dataset_exclude": "../x"}, {}, 400, "unknown dataset"),
        ({}, {"accept": "text/html"}, 406, "Accept"),
        ({}, {"content-type": "text/csv"}, 415, "Content-Type"),
        ({}, {"content-length": "5000000"}, 413, "exceeds the limit"),
    ],
    ids=["dataset", "sdk-exclude", "dataset-exclude", "accept", "content-type", "too-large"],
)
def test_a_request_refused_never_runs_the_pipeline(
    make_app: Any,
    served: Served,
    params: dict[str, str],
    headers: dict[str, str],
    status: int,
    words: str,
) -> None:
    appliance, app = make_app("counted", max_body_bytes=1 << 20)
    before = served.run_count()
    body = json.dumps(tensor_rows(FEATURES[:2]))
    if "content-length" in headers:  # declared past the limit: refused before it is read
        reply = asyncio.run(raw_post(app, "/pipelines/counted", headers))
    else:
        reply = infer(app, body, name="counted", params=params, headers=headers)
    assert reply.status_code == status, reply.text
    assert words in reply.json()["error"]
    assert served.run_count() == before  # the first step never ran
    assert call(app, "GET", "/logs").json() == []  # and nothing was logged
    # the same request without the fault runs the step once
    assert infer(app, body, name="counted").status_code == 200
    assert served.run_count() == before + 1


async def raw_post(app: App, path: str, headers: dict[str, str]) -> httpx.Response:
    """A POST whose body is never sent: `receive` fails the test if the app reads it."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        raise AssertionError("the body was read")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [(k.encode(), v.encode()) for k, v in {**JSON, **headers}.items()],
        "http_version": "1.1",
        "scheme": "http",
        "server": ("edge", 80),
        "client": ("127.0.0.1", 1),
        "root_path": "",
    }
    await app(scope, receive, send)
    start, body = sent
    return httpx.Response(
        start["status"],
        headers=[(k.decode(), v.decode()) for k, v in start["headers"]],
        content=body["body"],
    )


def test_a_streamed_body_past_the_limit_is_refused(make_app: Any) -> None:
    _, app = make_app(max_body_bytes=1000)
    row = b'{"tensor": [1.0, 2.0, 3.0, 4.0]},'
    chunks = [b"[" + row * 20, row * 20, b'{"tensor": [1, 2, 3, 4]}]']  # 1,400 bytes

    async def stream() -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield chunk

    reply = call(app, "POST", "/pipelines/iris", content=stream(), headers=JSON)
    assert "content-length" not in reply.request.headers  # chunked: no length to refuse early
    assert_error(reply, 413, "platform", "request body exceeds the limit of 1000 bytes")
    assert infer(app, b"[" + row * 20 + b'{"tensor": [1, 2, 3, 4]}]').status_code == 200


ERRORS = [
    (BadInput("column 'x': bad"), 400, "engine"),
    (RequestError("odd request"), 400, "engine"),
    (NotFound("no such thing"), 404, "platform"),
    (UnsupportedMediaType("not this type"), 415, "platform"),
    (NotAcceptable("not that format"), 406, "platform"),
    (PayloadTooLarge("too big"), 413, "platform"),
    (RequestTimeout("too slow"), 408, "platform"),
    (NotReady("still loading"), 503, "engine"),
    (LogBufferFull("queue full"), 503, "engine"),  # transient: the SDK retries a 503
    (LogBufferDiskFull("disk full"), 507, "engine"),
    (LogBufferError("closed"), 500, "engine"),
    (PipelineError("model failed", step="m"), 500, "engine"),
    (ConfigError("bad setting"), 500, "engine"),
    (EdgeError("ours"), 500, "engine"),
]


@pytest.mark.parametrize("route", ["inference", "starlette"])
@pytest.mark.parametrize("exc,status,source", ERRORS, ids=[type(e[0]).__name__ for e in ERRORS])
def test_every_error_class_has_its_status_and_the_seeds_body(
    make_app: Any,
    monkeypatch: pytest.MonkeyPatch,
    route: str,
    exc: Exception,
    status: int,
    source: str,
) -> None:
    """Raised inside the inference endpoint (plain ASGI) and inside a Starlette route: one
    mapping, one body."""
    appliance, app = make_app()

    def fail(*args: Any) -> Any:
        raise exc

    if route == "inference":
        monkeypatch.setattr(appliance, "serving", fail)
        reply = infer(app, tensor_rows(FEATURES[:1]))
    else:
        monkeypatch.setattr(appliance, "health_report", fail)
        reply = call(app, "GET", "/health")
    assert_error(reply, status, source)
    assert reply.json()["error"] == str(exc)


@pytest.mark.parametrize("route", ["inference", "starlette"])
def test_an_unexpected_error_is_a_500_that_tells_nothing_and_is_logged_once(
    make_app: Any,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    route: str,
) -> None:
    appliance, app = make_app()

    def fail(*args: Any) -> Any:
        raise KeyError("secret internals")

    with caplog.at_level(logging.INFO):
        if route == "inference":
            monkeypatch.setattr(appliance, "serving", fail)
            reply = infer(app, tensor_rows(FEATURES[:1]))
        else:
            monkeypatch.setattr(appliance, "health_report", fail)
            reply = call(app, "GET", "/health")
    assert_error(reply, 500, "engine", "internal error (KeyError)")
    assert "secret" not in reply.text
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info is not None
    assert "error=KeyError" in errors[0].getMessage()


def test_ours_are_logged_once_when_5xx_and_not_at_all_when_4xx(
    make_app: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    appliance, app = make_app()
    with caplog.at_level(logging.INFO):
        assert infer(app, "[]").status_code == 400
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]

        def fail(*args: Any) -> Any:
            raise PipelineError("model failed", step="m")

        monkeypatch.setattr(appliance, "serving", fail)
        assert infer(app, tensor_rows(FEATURES[:1])).status_code == 500
    (error,) = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert "step 'm': model failed" in error.getMessage() and error.exc_info is None


# ---------------------------------------------------------------------------- loading


async def settled(appliance: Appliance) -> None:
    """Wait for the loader thread to finish, one way or the other."""
    deadline = time.monotonic() + 60
    while appliance.state is LoadState.LOADING:
        assert time.monotonic() < deadline, "the pipeline never finished loading"
        await asyncio.sleep(0.01)


def test_while_loading_then_running(
    served: Served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = threading.Event()

    def slow_load(settings: Settings) -> Pipeline:
        assert gate.wait(60)
        return load_pipeline(settings, echo=lambda line: None)

    monkeypatch.setattr(appliance_module, "load_pipeline", slow_load)
    settings = Settings(pipeline_url=served.urls["iris"], persist_dir=tmp_path, grpc_port=0)
    appliance = Appliance(settings)
    app = create_app(appliance)

    async def scenario() -> dict[str, httpx.Response]:
        await appliance.start()
        try:
            seen = {
                "pipelines": await _request(app, "GET", "/pipelines"),
                "ready": await _request(app, "GET", "/health/ready"),
                "live": await _request(app, "GET", "/health/live"),
                "health": await _request(app, "GET", "/health"),
                "infer": await _request(
                    app, "POST", "/pipelines/iris", json=tensor_rows(FEATURES[:1])
                ),
                "models": await _request(app, "GET", "/models"),
            }
            gate.set()
            await settled(appliance)
            seen["pipelines after"] = await _request(app, "GET", "/pipelines")
            seen["ready after"] = await _request(app, "GET", "/health/ready")
            seen["infer after"] = await _request(
                app, "POST", "/pipelines/iris", json=tensor_rows(FEATURES[:1])
            )
            return seen
        finally:
            gate.set()
            await appliance.stop()

    seen = asyncio.run(scenario())
    # listed while loading, named from the URL (the layout's tag annotation), not yet Running
    assert seen["pipelines"].json() == {"pipelines": [{"id": "iris", "status": "Loading"}]}
    assert seen["ready"].status_code == 503
    assert seen["ready"].json() == {"status": "Loading", "error": None}
    assert seen["live"].status_code == 200
    assert seen["health"].json()["status"] == "Loading"
    assert_error(seen["infer"], 503, "engine", "still loading")  # the SDK retries a 503
    assert seen["models"].json() == {"models": []}
    assert seen["pipelines after"].json() == {"pipelines": [{"id": "iris", "status": "Running"}]}
    assert seen["ready after"].status_code == 200
    assert seen["infer after"].status_code == 200


def test_a_load_failure_is_retried_until_it_loads(
    served: Served, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """No exit on a failed load: `/pipelines` says Error with the reason, readiness is 503, the
    loader retries (a log line each time, no secret) and serves once the pipeline appears."""
    layout, _, tag = served.urls["iris"].removeprefix("oci-layout:").rpartition(":")
    late = tmp_path / "late-layout"
    fatal: list[Exception] = []
    settings = Settings(
        pipeline_url=f"oci-layout:{late}:{tag}",
        persist_dir=tmp_path / "persist",
        oci_password="s3cret-in-no-log",
        pull_retry_max=0.05,
        grpc_port=0,
    )
    appliance = Appliance(settings, on_fatal=fatal.append)
    app = create_app(appliance)

    async def scenario() -> dict[str, httpx.Response]:
        await appliance.start()
        try:
            deadline = time.monotonic() + 30
            while appliance.load_attempts < 3:  # failed, and tried again, twice
                assert time.monotonic() < deadline, "the loader did not retry"
                await asyncio.sleep(0.01)
            seen = {
                "pipelines": await _request(app, "GET", "/pipelines"),
                "ready": await _request(app, "GET", "/health/ready"),
                "health": await _request(app, "GET", "/health"),
                "live": await _request(app, "GET", "/health/live"),
                "infer": await _request(app, "POST", "/pipelines/iris", json=[{"x": 1}]),
            }
            shutil.copytree(layout, late)  # the registry comes back
            while appliance.state is not LoadState.RUNNING:
                assert time.monotonic() < deadline, "the retried load never succeeded"
                await asyncio.sleep(0.01)
            seen["pipelines after"] = await _request(app, "GET", "/pipelines")
            seen["ready after"] = await _request(app, "GET", "/health/ready")
            seen["infer after"] = await _request(
                app, "POST", "/pipelines/iris", json=tensor_rows(FEATURES[:1])
            )
            return seen
        finally:
            await appliance.stop()

    with caplog.at_level(logging.WARNING, logger="edge"):
        seen = asyncio.run(scenario())
    assert not fatal and not appliance.failed  # the CLI is not told to stop
    reason = seen["ready"].json()["error"]
    assert "late-layout" in reason
    assert seen["pipelines"].json() == {
        "pipelines": [{"id": "unknown", "status": "Error", "error": reason}]
    }
    assert seen["ready"].status_code == 503
    assert seen["ready"].json() == {"status": "Error", "error": reason}
    assert seen["health"].json()["load_attempts"] >= 3
    assert seen["live"].status_code == 200
    assert_error(seen["infer"], 503, "engine", f"the pipeline failed to load: {reason}")
    retries = [r.getMessage() for r in caplog.records if "pipeline load failed" in r.getMessage()]
    assert len(retries) >= 3 and "(attempt 1), retrying in" in retries[0]
    assert all("s3cret-in-no-log" not in line for line in retries)
    assert seen["pipelines after"].json() == {"pipelines": [{"id": "iris", "status": "Running"}]}
    assert seen["ready after"].status_code == 200
    assert seen["infer after"].status_code == 200
    assert appliance.error is None


def test_backoff_doubles_to_its_cap_with_jitter() -> None:
    backoff = appliance_module.Backoff(first=1.0, cap=60.0)
    waits = [backoff.next() for _ in range(12)]
    for wait, step in zip(waits, [1, 2, 4, 8, 16, 32, 60, 60, 60, 60, 60, 60], strict=True):
        assert step / 2 <= wait <= step
    assert len(set(waits)) > 1  # jittered


def test_an_invalid_pipeline_url_still_ends_the_start(tmp_path: Path) -> None:
    """No retry fixes a malformed PIPELINE_URL: a ConfigError before serving (exit status 2)."""
    with pytest.raises(ConfigError, match="PIPELINE_URL is not valid"):
        Appliance.from_settings(Settings(pipeline_url="not a url", persist_dir=tmp_path))


def test_a_secret_in_a_load_error_is_masked(tmp_path: Path) -> None:
    appliance = Appliance(Settings(pipeline_url="x", oci_password="hunter2", edge_bundle="QUJD"))
    assert appliance.redact("auth hunter2 failed for QUJD") == "auth *** failed for ***"


# ---------------------------------------------------------------------------- metrics and logs


def samples(app: App) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    reply = call(app, "GET", "/metrics")
    assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/plain")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(reply.text)
        for s in family.samples
    }


def test_metrics_count_requests_by_pipeline_and_status_and_rows(make_app: Any) -> None:
    _, app = make_app()
    assert infer(app, tensor_rows(FEATURES[:1])).status_code == 200
    assert infer(app, tensor_rows(FEATURES[:4])).status_code == 200
    assert infer(app, "[]").status_code == 400
    assert infer(app, tensor_rows(FEATURES[:1]), name="nope").status_code == 404
    assert infer(app, tensor_rows(FEATURES[:1]), name="other").status_code == 404
    assert len(call(app, "GET", "/logs").json()) == 5  # and the buffer has stored the rows
    seen = samples(app)
    requests = "edge_inference_requests_total"
    assert seen[(requests, (("code", "200"), ("pipeline", "iris")))] == 2
    assert seen[(requests, (("code", "400"), ("pipeline", "iris")))] == 1
    # unknown names share one label: clients cannot grow the label set
    assert seen[(requests, (("code", "404"), ("pipeline", "unknown")))] == 2
    assert seen[("edge_inference_rows_total", (("pipeline", "iris"),))] == 5
    assert seen[("edge_inference_seconds_count", (("pipeline", "iris"),))] == 3
    assert seen[("edge_log_buffer", (("figure", "rows"),))] == 5


def test_logs_return_what_was_answered(make_app: Any) -> None:
    _, app = make_app()
    for count in (1, 2):
        assert infer(app, tensor_rows(FEATURES[:count])).status_code == 200
    logs = call(app, "GET", "/logs")
    assert logs.status_code == 200 and logs.headers["content-type"] == JSON_TYPE
    records = logs.json()
    assert [r["in"]["tensor"] for r in records] == [
        pytest.approx(row) for row in FEATURES[[1, 0, 0]].tolist()
    ]  # newest first
    assert "metadata" not in records[0]  # the seed's default datasets
    dropped = json.loads(logs.headers["x-edge-dropped"])  # counters by reason, since created
    assert dropped == {"input_values": 0, "output_values": 0, "rows": 0}
    assert "x-edge-warning" not in logs.headers
    one = call(app, "GET", "/logs", params={"limit": "1", "dataset": "metadata"})
    assert one.headers["x-edge-warning"] == (
        "Warning: There are more logs available. Please set a larger limit or request a file "
        "using export_logs."
    )
    assert one.json()[0]["metadata"]["partition"] == "edge-1"
    arrow = call(app, "GET", "/logs", params={"dataset": "out"}, headers={"accept": ARROW_FILE})
    table = pa.ipc.open_file(pa.py_buffer(arrow.content)).read_all()
    assert table.num_rows == 3 and table.column_names == ["out.label", "out.probabilities"]
    assert call(app, "GET", "/logs", params={"partition": "edge-1"}).json() == records
    assert call(app, "GET", "/logs", params={"partition": "edge-2"}).json() == []


@pytest.mark.parametrize(
    "params,words",
    [
        ({"limit": "0"}, "limit must be at least 1"),
        ({"limit": "100001"}, "Log requests are limited to around 100k in size."),
        ({"start_datetime": "2024-01-01T00:00:00"}, "give both, or neither"),
        ({"dataset": "bogus"}, "unknown dataset 'bogus'"),
    ],
)
def test_bad_log_queries_are_400(make_app: Any, params: dict[str, str], words: str) -> None:
    _, app = make_app()
    assert_error(call(app, "GET", "/logs", params=params), 400, "engine", words)


def test_logs_when_logging_is_off(make_app: Any) -> None:
    _, app = make_app(logging=False)
    assert infer(app, tensor_rows(FEATURES[:1])).status_code == 200  # still answers
    assert_error(call(app, "GET", "/logs"), 404, "platform", "EDGE_LOGGING=false")
    assert call(app, "GET", "/metrics").status_code == 200


def logged_rows(version: str, anomalies: list[int], t0_ms: int) -> pa.Table:
    """Rows as the pipeline logs them, of `version`, with these anomaly counts."""
    n = len(anomalies)
    return pa.table(
        {
            "time": pa.array(range(t0_ms, t0_ms + n), pa.int64()).cast(
                pa.timestamp("ms", tz="UTC")
            ),
            "in.x": pa.array([float(i) for i in range(n)]),
            "anomaly.count": pa.array(anomalies, pa.uint32()),
            "metadata.pipeline_version": pa.array([version] * n),
        }
    )


def test_logs_are_the_loaded_versions_and_filter_by_validity(make_app: Any) -> None:
    """The seed's logs are segmented by pipeline version (newest first, the loaded version's
    rows; a time range or `pipeline_version` reaches others) and `valid=false` keeps the
    rows where a validation flagged an anomaly (`valid=true` the others)."""
    appliance, app = make_app()
    current = appliance.pipeline.definition.version
    now = int(time.time() * 1000)
    appliance.buffer.log(logged_rows("old-version", [0, 1, 0], now - 60_000))
    appliance.buffer.log(logged_rows(current, [0, 2, 0, 1], now))

    def xs(**params: str) -> list[tuple[float, int]]:
        reply = call(app, "GET", "/logs", params={"dataset": ["in", "anomaly"], **params})
        assert reply.status_code == 200, reply.text
        return [(r["in"]["x"], r["anomaly"]["count"]) for r in reply.json()]

    assert xs() == [(3.0, 1), (2.0, 0), (1.0, 2), (0.0, 0)]  # reverse order of insertion
    assert xs(valid="false") == [(3.0, 1), (1.0, 2)]
    assert xs(valid="true") == [(2.0, 0), (0.0, 0)]
    assert xs(pipeline_version="old-version", valid="false") == [(1.0, 1)]
    both = {"start_datetime": str(now - 120_000), "end_datetime": str(now + 60_000)}
    assert len(xs(**both)) == 7  # a time range spans versions, oldest first
    assert xs(**both, valid="false") == [(1.0, 1), (1.0, 2), (3.0, 1)]
    assert_error(call(app, "GET", "/logs", params={"valid": "maybe"}), 400, "engine", "valid")
