"""HTTP routes of the appliance, thin: parse, run the pipeline, encode, journal, answer.

A request is answered only after its rows are in the log journal (`edge.logbuffer`: safe from a
crash of the process once written, and from power loss once fsynced, every
`LOG_FSYNC_INTERVAL`). `STATUS` is the one place that knows the appliance's status codes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.to_thread
import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from edge import codecs, fastpath, openapi
from edge.appliance import Appliance
from edge.errors import (
    EdgeError,
    LogBufferError,
    NotAcceptable,
    NotFound,
    NotReady,
    PayloadTooLarge,
    PipelineError,
    RequestError,
    RequestTimeout,
    UnsupportedMediaType,
)
from edge.fastpath import FastInference
from edge.httpio import ErrorMapping, guarded, header_text, log_unexpected, read_body
from edge.logbuffer import LogBufferDiskFull, LogBufferFull
from edge.logquery import log_warnings, parse_log_query
from edge.metrics import Metrics
from edge.pipeline import Inference
from edge.result import ResultRows

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
INLINE_BYTES = 64 << 10  # smaller bodies run on the event loop: a thread hop costs more


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


def create_app(appliance: Appliance) -> Starlette:
    metrics = Metrics()

    async def list_pipelines(request: Request) -> Response:
        pipelines = []
        if appliance.pipeline is not None:
            pipelines.append({"id": appliance.pipeline.name, "status": str(appliance.state)})
        elif appliance.error is not None:
            pipelines.append({"id": "unknown", "status": str(appliance.state)})
        return json_response({"pipelines": pipelines})

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

    async def infer(request: Request) -> Response:
        name = request.path_params["name"]
        started = time.perf_counter()
        code = 500
        try:
            response = await _infer(request, name)
            code = 200
            return response
        except Exception as exc:
            code = STATUS.status(exc)
            raise
        finally:
            # an unknown name is labelled as such: clients must not grow the label set
            known = appliance.pipeline is not None and name == appliance.pipeline.name
            metrics.observe(name if known else "unknown", code, time.perf_counter() - started)

    async def _infer(request: Request, name: str) -> Response:
        pipeline = appliance.serving(name)
        headers = request.headers
        decode = codecs.request_decoder(headers.get("content-type", ""))
        want_arrow = codecs.wants_arrow(headers.get("accept", ""), headers.get("format", ""))
        shape = codecs.parse_shape(_params(request))  # a bad dataset is refused before the run
        body = await read_body(request, appliance.settings.max_body_bytes)
        if pipeline.fast is not None and decode is codecs.decode_records and not want_arrow:
            fast = pipeline.fast.run(body)
            if fast is not None:
                return await _answer_fast(name, fast, shape)

        def work() -> Inference:
            parse_started = time.perf_counter_ns()
            table = decode(body)
            return pipeline.run(table, time.perf_counter_ns() - parse_started)

        if len(body) <= INLINE_BYTES and pipeline.quick:
            inference = work()
        else:
            inference = await anyio.to_thread.run_sync(work, limiter=appliance.limiter)
        result = inference.table
        shown = codecs.shape(result, shape)
        # Journal the rows (large tables on a thread, while the answer is encoded); answer
        # only once they are written (LogBufferFull / LogBufferDiskFull become 503 / 507).
        buffer = appliance.buffer
        logged = buffer.submit(result) if buffer is not None else None

        def encode() -> bytes:
            if want_arrow:
                return codecs.encode_arrow(shown)
            return codecs.encode_records(
                shown, inference.record_info(pipeline.name), shape.separator
            )

        if result.num_rows < codecs.SMALL:
            payload = encode()
        else:
            payload = await anyio.to_thread.run_sync(encode)
        if logged is not None:
            await logged
        metrics.count_rows(name, result.num_rows)
        return Response(payload, 200, media_type=codecs.media_type(want_arrow))

    async def _answer_fast(name: str, inference: FastInference, shape: codecs.Shape) -> Response:
        buffer = appliance.buffer
        rows = inference.rows
        logged = buffer.submit(ResultRows.table([rows])) if buffer is not None else None
        payload = fastpath.encode(inference, shape)
        if logged is not None:
            await logged
        metrics.count_rows(name, rows.rows)
        return Response(payload, 200, media_type=codecs.JSON_TYPE)

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
        (table, more), stats = await anyio.to_thread.run_sync(
            lambda: (buffer.query(query.limit, query.start_ms, query.end_ms), buffer.stats())
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
        code, body = error_body(exc)
        if STATUS.lookup(exc) is None:
            log_unexpected(request, exc)
        elif code >= 500:
            log.error("path=%s error=%s", request.url.path, exc)
        return Response(body, code, media_type="application/json")

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

    spec = orjson.dumps(openapi.document())

    async def openapi_route(request: Request) -> Response:
        return Response(spec, media_type="application/json")

    endpoints = [
        ("/openapi.json", openapi_route, "GET"),
        ("/pipelines", list_pipelines, "GET"),
        ("/pipelines/{name}", infer, "POST"),
        ("/models", list_models, "GET"),
        ("/logs", logs, "GET"),
        ("/health", health, "GET"),
        ("/health/live", live, "GET"),
        ("/health/ready", ready, "GET"),
        ("/metrics", metrics_route, "GET"),
    ]
    routes = [Route(path, guarded(fn, answer), methods=[verb]) for path, fn, verb in endpoints]
    return Starlette(
        routes=routes, exception_handlers={404: no_route, 405: no_route}, lifespan=lifespan
    )


def _params(request: Request) -> dict[str, list[str]]:
    query = request.query_params
    return {key: query.getlist(key) for key in query.keys()}
