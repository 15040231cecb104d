"""HTTP routes of the appliance, thin: parse, run the pipeline, encode, journal, answer.

A request is answered only after its rows are in the log journal (`edge.logbuffer`: safe from a
crash of the process once written, and from power loss once fsynced, every
`LOG_FSYNC_INTERVAL`). `STATUS` is the one place that knows the appliance's status codes.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.to_thread
import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from edge import codecs, memory, openapi
from edge.appliance import Appliance
from edge.errors import (
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
from edge.httpio import ErrorMapping, guarded, header_text, log_unexpected
from edge.inference_route import InferenceEndpoint
from edge.logquery import log_warnings, parse_log_query
from edge.v2 import openapi as v2_openapi
from edge.v2.rest import V2Endpoint
from edge.v2.service import V2Service

log = logging.getLogger("edge.server")

ENGINE, PLATFORM = "engine", "platform"
# The one place that knows the appliance's status codes (walked along each error's MRO).
STATUS = ErrorMapping(
    {
        NotFound: (404, PLATFORM),
        UnsupportedMediaType: (415, PLATFORM),
        NotAcceptable: (406, PLATFORM),
        PayloadTooLarge: (413, PLATFORM),
        RequestTimeout: (408, PLATFORM),
        RequestError: (400, ENGINE),
        NotReady: (503, ENGINE),
        LogBufferFull: (503, ENGINE),  # transient: the SDK retries 503
        LogBufferDiskFull: (507, ENGINE),
        LogBufferError: (500, ENGINE),
        PipelineError: (500, ENGINE),
        EdgeError: (500, ENGINE),
    }
)
PIPELINES = "/pipelines/"
V2 = "/v2"


def error_body(exc: BaseException) -> tuple[int, bytes]:
    """The seed's error body for `exc`; one that is not ours says only its class."""
    found = STATUS.lookup(exc)
    if found is None:
        code, source, message = 500, ENGINE, f"internal error ({type(exc).__name__})"
    else:
        (code, source), message = found, str(exc)
    body = {"error": message, "code": code, "status": "error", "source": source}
    return code, orjson.dumps(body)


def json_response(content: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(content), status, media_type="application/json")


def create_app(appliance: Appliance) -> Callable[..., Awaitable[None]]:
    metrics = appliance.metrics

    async def list_pipelines(request: Request) -> Response:
        entry: dict[str, Any] = {"id": appliance.pipeline_name, "status": str(appliance.state)}
        if appliance.pipeline is None and appliance.error is not None:
            entry["error"] = appliance.error  # the reason; the loader retries it
        return json_response({"pipelines": [entry]})

    async def list_models(request: Request) -> Response:
        models = []
        pipeline = appliance.pipeline
        if pipeline is not None:
            for name, info in pipeline.definition.models.items():
                runtime = pipeline.runtimes.get(name)
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

    async def live(request: Request) -> Response:
        return json_response({"status": "alive"})

    async def ready(request: Request) -> Response:
        if appliance.pipeline is None:
            body = {"status": str(appliance.state), "error": appliance.error}
            return json_response(body, 503)
        return json_response({"status": "ready", "pipeline": appliance.pipeline.name})

    async def health(request: Request) -> Response:
        return json_response(await anyio.to_thread.run_sync(appliance.health_report))

    async def metrics_route(request: Request) -> Response:
        if appliance.buffer is not None:
            metrics.buffer_stats(await anyio.to_thread.run_sync(appliance.buffer.stats))
        return Response(metrics.exposition(), media_type="text/plain; version=0.0.4")

    async def logs(request: Request) -> Response:
        buffer = appliance.buffer
        if buffer is None:
            raise NotFound("inference logging is off on this appliance (EDGE_LOGGING=false)")
        headers = request.headers
        query = parse_log_query(_params(request))
        arrow = codecs.wants_arrow(headers.get("accept", ""), headers.get("format", ""))
        pipeline = appliance.pipeline  # logs are the loaded version's unless asked otherwise
        where = query.row_filter(pipeline.definition.version if pipeline else None)
        (table, more), stats = await anyio.to_thread.run_sync(
            lambda: (
                buffer.query(query.limit, query.start_ms, query.end_ms, where),
                buffer.stats(),
            )
        )
        if query.partition is not None and query.partition != appliance.settings.partition:
            table, more = table.slice(0, 0), False  # one partition here: this edge's
        warnings = log_warnings(table, more)
        table = codecs.shape(table, query.shape)
        if arrow:
            body = codecs.encode_arrow(table)
        else:
            body = codecs.encode_records(table, None, query.shape.separator)
        response = Response(body, 200, media_type=codecs.media_type(arrow))
        # drop counters since the buffer was created, by reason (input/output values, rows)
        response.headers["x-edge-dropped"] = orjson.dumps(stats.get("dropped", {})).decode()
        for warning in warnings:
            response.headers.append("x-edge-warning", header_text(warning))
        return response

    def answer(request: Request, exc: Exception) -> Response:
        code, body = error_for(request.url.path, exc)
        return Response(body, code, media_type="application/json")

    def error_for(path: str, exc: Exception) -> tuple[int, bytes]:
        code, body = error_body(exc)
        if STATUS.lookup(exc) is None:
            log_unexpected(path, exc)
        elif code >= 500:
            log.error("path=%s error=%s", path, exc)
        return code, body

    async def no_route(request: Request, exc: Exception) -> Response:
        code, body = error_body(NotFound(f"no route {request.method} {request.url.path}"))
        return Response(body, code, media_type="application/json")

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await appliance.start()
        try:
            yield
        finally:
            await appliance.stop()

    spec = orjson.dumps(openapi.document(v2_openapi.PATHS))

    async def openapi_route(request: Request) -> Response:
        return Response(spec, media_type="application/json")

    endpoints = [
        ("/openapi.json", openapi_route, "GET"),
        ("/pipelines", list_pipelines, "GET"),
        ("/models", list_models, "GET"),
        ("/logs", logs, "GET"),
        ("/health", health, "GET"),
        ("/health/live", live, "GET"),
        ("/health/ready", ready, "GET"),
        ("/metrics", metrics_route, "GET"),
    ]
    routes = [Route(path, guarded(fn, answer), methods=[verb]) for path, fn, verb in endpoints]
    # answered by `infer` first; GET and the like get Starlette's 405, as JSON
    routes.append(Route("/pipelines/{name}", no_route, methods=["POST"]))
    router = Starlette(
        routes=routes, exception_handlers={404: no_route, 405: no_route}, lifespan=lifespan
    )
    infer = InferenceEndpoint(appliance, metrics, error_for)
    v2 = V2Endpoint(V2Service(appliance))  # the Open Inference Protocol, every /v2 route

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        """`POST /pipelines/{name}` straight to the inference endpoint, `/v2...` to the Open
        Inference Protocol's endpoint, the rest to Starlette."""
        if scope["type"] == "http":
            path: str = scope["path"]
            if scope["method"] == "POST":
                if path.startswith(PIPELINES) and "/" not in path[len(PIPELINES) :]:
                    await infer(scope, receive, send, path[len(PIPELINES) :])
                    if memory.large_request(scope):  # its freed memory back to the system
                        memory.release_soon()
                    return
            if path.startswith(V2) and (len(path) == len(V2) or path[len(V2)] == "/"):
                await v2(scope, receive, send)
                return
        await router(scope, receive, send)

    return app


def _params(request: Request) -> dict[str, list[str]]:
    query = request.query_params
    return {key: query.getlist(key) for key in query.keys()}
