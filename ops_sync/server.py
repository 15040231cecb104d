"""The ops center's HTTP routes: thin. Parse, call `OpsCenter` off the event loop, encode.

Routes (an explicit list, see `create_app`):

    GET    /healthz, /openapi.json                   no auth (liveness)
    GET    /readyz                                   no auth (metadata database and store)
    GET    /metrics                                  admin token (Prometheus)
    GET    /v1/publishes          POST /v1/publishes  admin token
    GET    /v1/edges              POST /v1/edges      admin token
    DELETE /v1/edges/{name}                           admin token
    POST   /v1/rollouts                              admin token (desired pipeline version)
    GET    /v1/pipelines/{pipeline}/logs             admin token (the seed's pipeline.logs)
    GET    /v1/pipelines/{pipeline}/logs/export      admin token (export_logs: NDJSON or Arrow)
    GET    /ui/..., POST /ui/...                     the dashboard (`ops_sync.ui`): a session
                                                     cookie from signing in, CSRF on POSTs
    GET    /v1/assays             POST /v1/assays     admin token (drift detection)
    GET    /v1/assays/{name}      DELETE              admin token
    POST   /v1/assays/{name}/run | pause | resume     admin token
    GET    /v1/assays/{name}/results | baseline       admin token (JSON, or Arrow)
    POST   /v1/edge/join                             join token (in the body)
    POST   /v1/edge/renew | heartbeat | logs         client certificate (mutual TLS)

The edge's certificate arrives in the ASGI TLS extension (`scope["extensions"]["tls"]
["client_cert_chain"]`), which `ops_sync.serve` fills from the TLS socket because uvicorn does
not. This module is the only one that knows the ops center's HTTP status codes (`STATUS`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, TypeVar

from anyio import to_thread
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from edge import codecs
from edge import errors as edge_errors
from edge.httpio import (
    ErrorMapping,
    Fields,
    header_text,
    log_unexpected,
    parse_json,
    read_body,
)
from edge.logquery import parse_log_query, parse_time
from ops_sync import errors, logs, openapi, protocol, ui
from ops_sync.assays.service import MAX_RESULTS, bins_table, results_table
from ops_sync.center import OpsCenter
from ops_sync.deltatable import Pending
from ops_sync.logstore import WAIT_LIMIT

T = TypeVar("T")
log = logging.getLogger("ops_sync.server")
MAX_BODY = protocol.MAX_BODY
JSON_LIMIT = 1 << 20
MAX_PEM = 16 << 10  # a CSR's PEM
MAX_PROPERTIES = 16 << 10  # an edge's additional_properties, as JSON
NDJSON = "application/x-ndjson"
PLATFORM = "platform"
METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"
READS_CODING = {protocol.ACCEPT_CODING_HEADER: protocol.BATCH_CODING}  # RFC 7694, to the agent
# The one place that knows the ops center's status codes (walked along each error's MRO).
STATUS = ErrorMapping(
    {
        errors.AdminAuthRequired: (401, PLATFORM),
        errors.CertificateRequired: (401, PLATFORM),
        errors.Refused: (403, PLATFORM),
        edge_errors.PayloadTooLarge: (413, PLATFORM),
        edge_errors.RequestTimeout: (408, PLATFORM),
        edge_errors.UnsupportedMediaType: (415, PLATFORM),
        edge_errors.NotAcceptable: (406, PLATFORM),
        edge_errors.RequestError: (400, PLATFORM),  # BadRequest is an edge BadInput
        errors.IdentityError: (400, PLATFORM),
        edge_errors.NotFound: (404, PLATFORM),
        errors.Conflict: (409, PLATFORM),
        errors.StoreError: (507, PLATFORM),
        edge_errors.EdgeError: (500, PLATFORM),
    }
)


def peer_certificate(request: Request) -> str | None:
    """The client's leaf certificate (PEM) from the ASGI TLS extension, if it sent one."""
    tls = request.scope.get("extensions", {}).get("tls") or {}
    chain = tls.get("client_cert_chain") or []
    return chain[0] if chain else None


def create_app(center: OpsCenter, max_body: int = MAX_BODY) -> Starlette:
    async def call(fn: Callable[..., T], *args: Any) -> T:
        return await to_thread.run_sync(partial(fn, *args))

    async def admin(request: Request) -> None:
        center.check_admin(request.headers.get("authorization"))

    async def edge(request: Request) -> dict[str, Any]:
        return await call(center.authenticate, peer_certificate(request))

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def ready(request: Request) -> Response:
        checks = await call(center.readiness)
        ok = all(v == "ok" for v in checks.values())
        return JSONResponse(
            {"status": "ready" if ok else "not ready", **checks}, 200 if ok else 503
        )

    async def metrics(request: Request) -> Response:
        await admin(request)
        body = await call(center.metrics.render)
        return Response(body, media_type=METRICS_TYPE)

    spec = json.dumps(openapi.document()).encode()

    async def openapi_route(request: Request) -> Response:
        return Response(spec, media_type="application/json")

    async def list_publishes(request: Request) -> Response:
        await admin(request)
        return JSONResponse({"publishes": await call(center.publishes)})

    async def register_publish(request: Request) -> Response:
        await admin(request)
        return JSONResponse(await call(center.publish, await _json(request)), 201)

    async def list_edges(request: Request) -> Response:
        await admin(request)
        query = request.query_params
        publish_id = _publish_id(query.get("publish_id"))
        edges = await call(center.list_edges, publish_id, query.get("pipeline") or None)
        return JSONResponse({"edges": edges})

    async def publish_edges(request: Request) -> Response:
        await admin(request)
        publish_id = _publish_id(request.path_params["id"])
        if not any(p["id"] == publish_id for p in await call(center.publishes)):
            raise errors.NotFound(f"no publish has id {publish_id}")
        return JSONResponse({"edges": await call(center.list_edges, publish_id)})

    async def add_edge(request: Request) -> Response:
        await admin(request)
        body = Fields(await _json(request), "add_edge", errors.BadRequest)
        name, url = body.text("name", max_len=63), body.text("pipeline_url")
        tags = body.strings("tags")
        extra = body.mapping("additional_properties")
        if extra is not None and len(json.dumps(extra)) > MAX_PROPERTIES:
            raise errors.BadRequest(f"add_edge: additional_properties over {MAX_PROPERTIES} bytes")
        return JSONResponse(await call(center.add_edge, name, url, tags, extra), 201)

    async def remove_edge(request: Request) -> Response:
        await admin(request)
        await call(center.remove_edge, request.path_params["name"])
        return Response(status_code=204)  # the seed's remove_edge returns nothing

    async def rollout(request: Request) -> Response:
        await admin(request)
        return JSONResponse(await call(center.rollout, await _json(request)))

    async def pipeline_logs(request: Request) -> Response:
        await admin(request)
        pipeline, query = await call(_log_query, center, request, logs.MAX_LIMIT)
        arrow = _wants_arrow(request)
        table, warnings = await call(logs.fetch, center.logs, pipeline, query)
        if arrow:
            return _file(await call(logs.to_arrow, table), codecs.ARROW_FILE_TYPE, warnings)
        body = await call(logs.to_records, table, query.shape.separator)
        return _file(body, codecs.JSON_TYPE, warnings)

    async def export_logs(request: Request) -> Response:
        await admin(request)
        pipeline, query = await call(_log_query, center, request, None)
        limit = request.query_params.get("data_size_limit", logs.DEFAULT_EXPORT_LIMIT)
        arrow = _wants_arrow(request)
        size = logs.parse_size(limit)
        body, warnings = await call(logs.export, center.logs, pipeline, query, arrow, size)
        return _file(body, codecs.ARROW_FILE_TYPE if arrow else NDJSON, warnings)

    async def create_assay(request: Request) -> Response:
        await admin(request)
        return JSONResponse(await call(center.assays.create, await _json(request)), 201)

    async def list_assays(request: Request) -> Response:
        await admin(request)
        return JSONResponse({"assays": await call(center.assays.all)})

    async def get_assay(request: Request) -> Response:
        await admin(request)
        return JSONResponse(await call(center.assays.get, request.path_params["name"]))

    async def delete_assay(request: Request) -> Response:
        await admin(request)
        await call(center.assays.delete, request.path_params["name"])
        return Response(status_code=204)

    async def run_assay(request: Request) -> Response:
        await admin(request)
        body = await _json(request)
        results = await call(center.assays.run, request.path_params["name"], body)
        return JSONResponse({"results": results})

    async def pause_assay(request: Request) -> Response:
        await admin(request)
        active = request.url.path.endswith("/resume")
        name = request.path_params["name"]
        return JSONResponse(await call(center.assays.set_active, name, active))

    async def assay_results(request: Request) -> Response:
        await admin(request)
        params = request.query_params
        start = _time_param(params.get("start"), "start")
        end = _time_param(params.get("end"), "end")
        limit = _limit(params.get("limit"))
        name = request.path_params["name"]
        results = await call(center.assays.results, name, start, end, limit)
        if _wants_arrow(request):
            table = await call(results_table, results)
            return _file(await call(logs.to_arrow, table), codecs.ARROW_FILE_TYPE, [])
        return JSONResponse({"results": results})

    async def assay_baseline(request: Request) -> Response:
        await admin(request)
        baseline = await call(center.assays.baseline, request.path_params["name"])
        if _wants_arrow(request):
            table = await call(bins_table, baseline)
            return _file(await call(logs.to_arrow, table), codecs.ARROW_FILE_TYPE, [])
        return JSONResponse(baseline)

    async def join(request: Request) -> Response:
        body = Fields(await _json(request), "join", errors.BadRequest)
        token = body.text("token", max_len=256)
        csr = body.text("csr", max_len=MAX_PEM, multiline=True)
        assert token is not None and csr is not None
        return JSONResponse(await call(center.join, token, csr.encode()))

    async def renew(request: Request) -> Response:
        who = await edge(request)
        csr = Fields(await _json(request), "renew", errors.BadRequest).text(
            "csr", max_len=MAX_PEM, multiline=True
        )
        assert csr is not None
        return JSONResponse(await call(center.renew, who, csr.encode()))

    async def heartbeat(request: Request) -> Response:
        who = await edge(request)
        reply = await call(center.heartbeat, who, await _json(request))
        return JSONResponse(reply, headers=READS_CODING)

    async def upload(request: Request) -> Response:
        who = await edge(request)
        batch = protocol.read_batch_range(request.headers)
        coding = request.headers.get(protocol.CODING_HEADER)
        body = await read_body(request, max_body, errors.PayloadTooLarge, errors.RequestTimeout)
        upload = await call(center.begin_upload, who, batch, body, coding, max_body)
        await committed(upload.item, WAIT_LIMIT)  # no worker thread held while the commit runs
        return JSONResponse(center.finish_upload(batch, upload), headers=READS_CODING)

    routes = [
        Route("/healthz", health, methods=["GET"]),
        Route("/openapi.json", openapi_route, methods=["GET"]),
        Route("/readyz", ready, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/v1/publishes", list_publishes, methods=["GET"]),
        Route("/v1/publishes", register_publish, methods=["POST"]),
        Route("/v1/publishes/{id}/edges", publish_edges, methods=["GET"]),
        Route("/v1/edges", list_edges, methods=["GET"]),
        Route("/v1/edges", add_edge, methods=["POST"]),
        Route("/v1/edges/{name}", remove_edge, methods=["DELETE"]),
        Route("/v1/rollouts", rollout, methods=["POST"]),
        Route("/v1/pipelines/{pipeline}/logs", pipeline_logs, methods=["GET"]),
        Route("/v1/pipelines/{pipeline}/logs/export", export_logs, methods=["GET"]),
        Route("/v1/assays", list_assays, methods=["GET"]),
        Route("/v1/assays", create_assay, methods=["POST"]),
        Route("/v1/assays/{name}", get_assay, methods=["GET"]),
        Route("/v1/assays/{name}", delete_assay, methods=["DELETE"]),
        Route("/v1/assays/{name}/run", run_assay, methods=["POST"]),
        Route("/v1/assays/{name}/pause", pause_assay, methods=["POST"]),
        Route("/v1/assays/{name}/resume", pause_assay, methods=["POST"]),
        Route("/v1/assays/{name}/results", assay_results, methods=["GET"]),
        Route("/v1/assays/{name}/baseline", assay_baseline, methods=["GET"]),
        Route(protocol.JOIN_PATH, join, methods=["POST"]),
        Route(protocol.RENEW_PATH, renew, methods=["POST"]),
        Route(protocol.HEARTBEAT_PATH, heartbeat, methods=["POST"]),
        Route(protocol.LOGS_PATH, upload, methods=["POST"]),
        ui.mount(center, STATUS.status, error_body),
    ]
    handlers: dict[Any, Callable[[Request, Any], Awaitable[Response]]] = {
        edge_errors.EdgeError: _our_error,
        HTTPException: _http_error,
        Exception: _unexpected,
    }
    return Starlette(routes=routes, exception_handlers=handlers)


def error_body(message: str, status: int, reason: str) -> dict[str, Any]:
    return {
        "error": message,
        "code": status,
        "status": "error",
        "source": PLATFORM,
        "reason": reason,
    }


async def _our_error(request: Request, exc: edge_errors.EdgeError) -> Response:
    status = STATUS.status(exc)
    if status >= 500:
        log.error("path=%s error=%s", request.url.path, exc)
    headers = READS_CODING if isinstance(exc, errors.UnsupportedCoding) else None  # RFC 7694
    return JSONResponse(error_body(str(exc), status, errors.reason(exc)), status, headers)


async def _http_error(request: Request, exc: HTTPException) -> Response:
    reason = "NotFound" if exc.status_code in (404, 405) else "BadRequest"
    message = f"{exc.detail} ({request.method} {request.url.path})"
    return JSONResponse(error_body(message, exc.status_code, reason), exc.status_code)


async def _unexpected(request: Request, exc: Exception) -> Response:
    log_unexpected(request.url.path, exc)
    return JSONResponse(error_body("internal error", 500, "InternalError"), 500)


def _publish_id(text: str | None) -> int | None:
    """A publish id from a path or query (None when absent); a 400 when not a number."""
    if text is None or text == "":
        return None
    if not text.isdigit() or len(text) > 18:
        raise errors.BadRequest(f"publish_id must be a publish's numerical id, not {text!r}")
    return int(text)


def _time_param(text: str | None, name: str) -> int | None:
    """An ISO 8601 date-time (or epoch ms) query parameter as epoch ms; None when absent."""
    if text is None or text == "":
        return None
    if len(text) > 64:
        raise errors.BadRequest(f"{name} must be an ISO 8601 date-time")
    return parse_time(text, name)


def _limit(text: str | None, default: int = 100) -> int:
    if text is None or text == "":
        return default
    if not (text.isascii() and text.isdigit() and len(text) <= 9) or not (
        1 <= int(text) <= MAX_RESULTS
    ):
        raise errors.BadRequest(f"limit must be a whole number from 1 to {MAX_RESULTS}")
    return int(text)


async def _json(request: Request) -> dict[str, Any]:
    raw = await read_body(request, JSON_LIMIT, errors.PayloadTooLarge, errors.RequestTimeout)
    body = parse_json(raw or b"{}", errors.BadRequest)
    if not isinstance(body, dict):
        raise errors.BadRequest("the body must be a JSON object")
    return body


def _log_query(
    center: OpsCenter, request: Request, max_limit: int | None
) -> tuple[str, logs.LogQuery]:
    pipeline = request.path_params["pipeline"]
    if not any(p["pipeline_name"] == pipeline for p in center.store.publishes()):
        raise errors.NotFound(f"no publish of pipeline {pipeline!r} is registered")
    params = request.query_params
    query = parse_log_query({key: params.getlist(key) for key in params.keys()}, max_limit)
    return pipeline, query


def _wants_arrow(request: Request) -> bool:
    """The appliance's negotiation (`Accept`, `format: arrow`), plus `?arrow=true`."""
    if request.query_params.get("arrow", "").lower() in ("1", "true", "yes"):
        return True
    headers = request.headers
    return codecs.wants_arrow(headers.get("accept", ""), headers.get("format", ""))


def _file(body: bytes, media_type: str, warnings: list[str]) -> Response:
    """A body with one `x-ops-warning` header per warning (the seed's sentences)."""
    response = Response(body, media_type=media_type)
    for warning in warnings:  # column names may be any Unicode; headers are latin-1, one line
        response.headers.append(protocol.WARNING_HEADER, header_text(warning))
    return response


async def committed(item: Pending, limit: float) -> None:
    """Wait up to `limit` seconds for `item`'s commit, on the event loop (the committer
    thread wakes it)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits any more
            loop.call_soon_threadsafe(_resolve, future)

    item.on_done(wake)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(future, limit)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
