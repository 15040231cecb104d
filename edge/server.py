"""HTTP routes of the appliance, thin: parse, run the pipeline, encode, log, answer.

This is the one module that knows HTTP status codes (`STATUS` below). A request is answered
only after its rows are committed to the inference log buffer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.to_thread
import orjson
import pyarrow as pa
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from edge import codecs
from edge.errors import (
    BadInput,
    EdgeError,
    LogBufferError,
    NotAcceptable,
    NotFound,
    NotReady,
    PayloadTooLarge,
    PipelineError,
    RequestError,
    UnsupportedMediaType,
)
from edge.httpio import header_text, read_body
from edge.logbuffer import LogBufferDiskFull, LogBufferFull
from edge.logquery import log_warnings, parse_time
from edge.pipeline import Inference, Pipeline

log = logging.getLogger("edge.server")

# Most specific first; the first match wins. Nothing else in the code base picks a status.
STATUS: list[tuple[type[Exception], int, str]] = [
    (NotFound, 404, "platform"),
    (UnsupportedMediaType, 415, "platform"),
    (NotAcceptable, 406, "platform"),
    (PayloadTooLarge, 413, "platform"),
    (BadInput, 400, "engine"),
    (RequestError, 400, "engine"),
    (NotReady, 503, "engine"),
    (LogBufferFull, 503, "engine"),  # transient: the SDK retries 503
    (LogBufferDiskFull, 507, "engine"),
    (LogBufferError, 500, "engine"),
    (PipelineError, 500, "engine"),
    (EdgeError, 500, "engine"),
]
INLINE_BYTES = 64 << 10  # smaller bodies run on the event loop: a thread hop costs more
MAX_LOG_LIMIT = 100_000


@dataclass
class AppState:
    """What the routes read; `pipeline` is None until loading finished."""

    max_body_bytes: int = 64 << 20
    pipeline: Pipeline | None = None
    status: str = "Loading"  # Loading | Running | Error
    error: str | None = None
    buffer: Any = None  # edge.logbuffer.LogBuffer when logging is on
    agent: Any = None  # ops_sync.agent.SyncAgent when a bundle is set
    limiter: anyio.CapacityLimiter = field(default_factory=lambda: anyio.CapacityLimiter(1))
    started: float = field(default_factory=time.time)
    on_startup: list[Callable[[], Any]] = field(default_factory=list)
    on_shutdown: list[Callable[[], Any]] = field(default_factory=list)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "edge_inference_requests",
            "Inference requests",
            ["pipeline", "code"],
            registry=self.registry,
        )
        self.rows = Counter(
            "edge_inference_rows", "Rows inferred", ["pipeline"], registry=self.registry
        )
        self.latency = Histogram(
            "edge_inference_seconds",
            "Inference request time",
            ["pipeline"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5),
            registry=self.registry,
        )
        self.buffer = Gauge(
            "edge_log_buffer", "Log buffer figures", ["figure"], registry=self.registry
        )
        self.dropped = Gauge(
            "edge_log_buffer_dropped",
            "Log rows/columns dropped by reason",
            ["reason"],
            registry=self.registry,
        )
        self._children: dict[tuple[str, ...], Any] = {}

    def observe(self, pipeline: str, code: int, seconds: float) -> None:
        self._child(self.requests, "requests", pipeline, str(code)).inc()
        self._child(self.latency, "latency", pipeline).observe(seconds)

    def count_rows(self, pipeline: str, rows: int) -> None:
        self._child(self.rows, "rows", pipeline).inc(rows)

    def _child(self, metric: Any, *key: str) -> Any:
        """`labels()` costs about 10 us a call: keep each labelled child."""
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*key[1:])
        return child


def error_body(exc: Exception) -> tuple[int, bytes]:
    code, source, message = 500, "engine", f"internal error ({type(exc).__name__})"
    for kind, status, origin in STATUS:
        if isinstance(exc, kind):
            code, source, message = status, origin, str(exc)
            break
    body = {"error": message, "code": code, "status": "error", "source": source}
    return code, orjson.dumps(body)


def json_response(content: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(content), status, media_type="application/json")


def create_app(state: AppState) -> Starlette:
    metrics = Metrics()

    def pipeline_or_raise(name: str | None = None) -> Pipeline:
        if state.pipeline is None:
            if state.status == "Error":
                raise NotReady(f"the pipeline failed to load: {state.error}")
            raise NotReady("the pipeline is still loading; retry shortly")
        if name is not None and name != state.pipeline.name:
            raise NotFound(
                f"no pipeline named {name!r}; this appliance serves {state.pipeline.name!r}"
            )
        return state.pipeline

    async def list_pipelines(request: Request) -> Response:
        pipelines = []
        if state.pipeline is not None:
            pipelines.append({"id": state.pipeline.name, "status": state.status})
        elif state.status == "Error":
            pipelines.append({"id": "unknown", "status": "Error"})
        return json_response({"pipelines": pipelines})

    async def list_models(request: Request) -> Response:
        models = []
        if state.pipeline is not None:
            for name, info in state.pipeline.definition.models.items():
                runtime = state.pipeline.runtimes.get(name)
                models.append(
                    {
                        "name": info.name,
                        "sha": info.sha256,
                        "status": "Running" if runtime else "Error",
                        "version": info.version,
                        "runtime": info.runtime,
                        **(runtime.describe() if runtime else {}),
                    }
                )
        return json_response({"models": models})

    async def infer(request: Request) -> Response:
        name = request.path_params["name"]
        started = time.perf_counter()
        code = 500
        try:
            response = await _infer(request, name)
            code = 200
            return response
        except EdgeError as exc:
            code = error_body(exc)[0]
            raise
        finally:
            # an unknown name is labelled as such: clients must not grow the label set
            known = state.pipeline is not None and name == state.pipeline.name
            metrics.observe(name if known else "unknown", code, time.perf_counter() - started)

    async def _infer(request: Request, name: str) -> Response:
        pipeline = pipeline_or_raise(name)
        content_type = request.headers.get("content-type", "")
        kind = content_type.split(";")[0].strip().lower()
        if kind in ("application/json", ""):
            decode: Callable[[bytes], pa.Table] = codecs.decode_records
        elif kind in (codecs.ARROW_FILE_TYPE, codecs.ARROW_STREAM_TYPE):
            decode = codecs.decode_arrow
        else:
            raise UnsupportedMediaType(
                f"Content-Type {content_type!r} is not supported; send "
                f"'{codecs.JSON_TYPE}' or '{codecs.ARROW_FILE_TYPE}'"
            )
        want_arrow = _wants_arrow(request)
        query = request.query_params
        dataset = query.getlist("dataset") + query.getlist("dataset[]")
        exclude = query.getlist("dataset_exclude") + query.getlist("dataset.exclude[]")
        separator = query.get("dataset.separator") or query.get("dataset_separator")
        body = await read_body(request, state.max_body_bytes)

        def work() -> tuple[Inference, pa.Table]:
            parse_started = time.perf_counter_ns()
            table = decode(body)
            inference = pipeline.run(table, time.perf_counter_ns() - parse_started)
            return inference, inference.table

        if len(body) <= INLINE_BYTES and pipeline.quick:
            inference, result = work()
        else:
            inference, result = await anyio.to_thread.run_sync(work, limiter=state.limiter)
        shown = codecs.select_datasets(result, dataset or None, exclude or None)  # may be a 400
        # Journal the rows (large tables on a thread, while the answer is encoded); answer
        # only once they are written (LogBufferFull / LogBufferDiskFull become 503 / 507).
        logged = state.buffer.submit(result) if state.buffer is not None else None

        def encode() -> bytes:
            if want_arrow:
                return codecs.encode_arrow(shown)
            info = codecs.RecordInfo(
                pipeline_name=pipeline.name,
                model_name=inference.last_model.name,
                model_version=inference.last_model.version,
                elapsed=inference.elapsed,
                check_failures=inference.check_failures,
                shadow_data=inference.shadow_data,
            )
            return codecs.encode_records(shown, info, separator)

        if result.num_rows < codecs.SMALL:
            payload = encode()
        else:
            payload = await anyio.to_thread.run_sync(encode)
        if logged is not None:
            await logged
        metrics.count_rows(name, result.num_rows)
        media = codecs.ARROW_FILE_TYPE if want_arrow else codecs.JSON_TYPE
        return Response(payload, 200, media_type=media)

    async def live(request: Request) -> Response:
        return json_response({"status": "alive"})

    async def ready(request: Request) -> Response:
        if state.pipeline is None:
            return json_response({"status": state.status, "error": state.error}, 503)
        return json_response({"status": "ready", "pipeline": state.pipeline.name})

    async def health(request: Request) -> Response:
        return json_response(await anyio.to_thread.run_sync(health_report, state))

    async def metrics_route(request: Request) -> Response:
        if state.buffer is not None:
            stats = await anyio.to_thread.run_sync(state.buffer.stats)
            for figure in ("rows", "bytes"):
                if isinstance(stats.get(figure), int | float):
                    metrics.buffer.labels(figure).set(stats[figure])
            for reason, count in (stats.get("dropped") or {}).items():
                metrics.dropped.labels(reason).set(count)
        return Response(generate_latest(metrics.registry), media_type="text/plain; version=0.0.4")

    async def logs(request: Request) -> Response:
        if state.buffer is None:
            raise NotFound("inference logging is off on this appliance (EDGE_LOGGING=false)")
        query = request.query_params
        try:
            limit = int(query.get("limit", "100"))
        except ValueError:
            limit = -1
        if not 0 <= limit <= MAX_LOG_LIMIT:
            raise BadInput(
                f"limit must be a whole number from 0 to {MAX_LOG_LIMIT}, not "
                f"{query.get('limit')!r}; read more with start_datetime / end_datetime"
            )
        start = _when(query.get("start_datetime") or query.get("start"), "start_datetime")
        end = _when(query.get("end_datetime") or query.get("end"), "end_datetime")
        if (start is None) != (end is None):
            raise BadInput("give both start_datetime and end_datetime, or neither")
        (table, more), stats = await anyio.to_thread.run_sync(
            lambda: (state.buffer.query(limit=limit, start=start, end=end), state.buffer.stats())
        )
        warnings = log_warnings(table, more)
        table = codecs.select_datasets(
            table,
            query.getlist("dataset") + query.getlist("dataset[]") or None,  # the seed: `*`
            query.getlist("dataset_exclude") + query.getlist("dataset.exclude[]") or None,
        )
        if _wants_arrow(request):
            body, media = codecs.encode_arrow(table), codecs.ARROW_FILE_TYPE
        else:
            separator = query.get("dataset.separator") or query.get("dataset_separator")
            body, media = codecs.encode_records(table, None, separator), codecs.JSON_TYPE
        response = Response(body, 200, media_type=media)
        # drop counters since the buffer was created, by reason (input/output values, rows)
        response.headers["x-edge-dropped"] = orjson.dumps(stats.get("dropped", {})).decode()
        for warning in warnings:
            response.headers.append("x-edge-warning", header_text(warning))
        return response

    async def handle_error(request: Request, exc: Exception) -> Response:
        code, body = error_body(exc)
        if code >= 500:
            log.error(
                "path=%s error=%s", request.url.path, exc, exc_info=not isinstance(exc, EdgeError)
            )
        return Response(body, code, media_type="application/json")

    async def not_found(request: Request, exc: Exception) -> Response:
        code, body = error_body(NotFound(f"no route {request.method} {request.url.path}"))
        return Response(body, code, media_type="application/json")

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        for hook in state.on_startup:
            result = hook()
            if asyncio.iscoroutine(result):
                await result
        try:
            yield
        finally:
            for hook in state.on_shutdown:
                result = hook()
                if asyncio.iscoroutine(result):
                    await result

    routes = [
        Route("/pipelines", list_pipelines, methods=["GET"]),
        Route("/pipelines/{name}", infer, methods=["POST"]),
        Route("/models", list_models, methods=["GET"]),
        Route("/logs", logs, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/health/live", live, methods=["GET"]),
        Route("/health/ready", ready, methods=["GET"]),
        Route("/metrics", metrics_route, methods=["GET"]),
    ]
    return Starlette(
        routes=routes,
        # EdgeError: answered and done; Exception: a bug, answered, then logged by uvicorn
        exception_handlers={
            404: not_found,
            405: not_found,
            EdgeError: handle_error,
            Exception: handle_error,
        },
        lifespan=lifespan,
    )


def health_report(state: AppState) -> dict[str, Any]:
    report: dict[str, Any] = {
        "status": state.status,
        "pipeline": state.pipeline.name if state.pipeline else None,
        "pipeline_version": state.pipeline.definition.version if state.pipeline else None,
        "error": state.error,
        "uptime_s": round(time.time() - state.started, 1),
    }
    if state.buffer is not None:
        report["log_buffer"] = state.buffer.stats()
    if state.agent is not None:
        report["sync"] = state.agent.status()
    return report


def _wants_arrow(request: Request) -> bool:
    accept = request.headers.get("accept", "")
    if request.headers.get("format", "").lower() == "arrow":
        return True
    if codecs.ARROW_FILE_TYPE in accept or codecs.ARROW_STREAM_TYPE in accept:
        return True
    if accept and not any(t in accept for t in ("application/json", "*/*", "application/*")):
        raise NotAcceptable(
            f"Accept {accept!r} is not supported; ask for '{codecs.JSON_TYPE}' or "
            f"'{codecs.ARROW_FILE_TYPE}'"
        )
    return False


def _when(text: str | None, name: str) -> int | None:
    if not text:
        return None
    try:
        return parse_time(text, name)
    except ValueError as exc:
        raise BadInput(str(exc)) from None
