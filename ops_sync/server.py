"""The ops center's HTTP routes: thin. Parse, call `OpsCenter` off the event loop, encode.

Routes (an explicit list, see `create_app`):

    GET    /healthz                                  no auth
    GET    /v1/publishes          POST /v1/publishes  admin token
    GET    /v1/edges              POST /v1/edges      admin token
    DELETE /v1/edges/{name}                           admin token
    GET    /v1/pipelines/{pipeline}/logs             admin token (the seed's pipeline.logs)
    GET    /v1/pipelines/{pipeline}/logs/export      admin token (export_logs: NDJSON or Arrow)
    POST   /v1/edge/join                             join token (in the body)
    POST   /v1/edge/renew | heartbeat | logs         client certificate (mutual TLS)

The edge's certificate arrives in the ASGI TLS extension (`scope["extensions"]["tls"]
["client_cert_chain"]`), which `ops_sync.serve` fills from the TLS socket because uvicorn does
not. This module is the only one that knows HTTP status codes (`STATUS`).
"""

from __future__ import annotations

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

from edge.httpio import header_text, read_body
from ops_sync import errors, logs
from ops_sync.center import OpsCenter

T = TypeVar("T")
log = logging.getLogger("ops_sync.server")
MAX_BODY = 64 << 20
JSON_LIMIT = 1 << 20
ARROW_FILE = "application/vnd.apache.arrow.file"
RECORDS = "application/json; format=pandas-records"
NDJSON = "application/x-ndjson"
WARNING_HEADER = "x-ops-warning"
STATUS: dict[type[Exception], int] = {
    errors.AdminAuthRequired: 401,
    errors.CertificateRequired: 401,
    errors.Refused: 403,
    errors.PayloadTooLarge: 413,
    errors.BadRequest: 400,
    errors.IdentityError: 400,
    errors.NotFound: 404,
    errors.Conflict: 409,
    errors.StoreError: 507,
    errors.SyncError: 500,
}


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

    async def list_publishes(request: Request) -> Response:
        await admin(request)
        return JSONResponse({"publishes": await call(center.publishes)})

    async def register_publish(request: Request) -> Response:
        await admin(request)
        return JSONResponse(await call(center.register_publish, await _json(request)), 201)

    async def list_edges(request: Request) -> Response:
        await admin(request)
        return JSONResponse({"edges": await call(center.list_edges)})

    async def add_edge(request: Request) -> Response:
        await admin(request)
        body = await _json(request)
        name, url, tags = body.get("name"), body.get("pipeline_url"), body.get("tags") or []
        if not isinstance(name, str) or not isinstance(url, str) or not isinstance(tags, list):
            raise errors.BadRequest("add_edge needs name, pipeline_url (strings), tags (a list)")
        return JSONResponse(await call(center.add_edge, name, url, [str(t) for t in tags]), 201)

    async def remove_edge(request: Request) -> Response:
        await admin(request)
        return JSONResponse(await call(center.remove_edge, request.path_params["name"]))

    async def pipeline_logs(request: Request) -> Response:
        await admin(request)
        query = await call(_log_query, center, request)
        table, warnings = await call(logs.fetch, center.logs, query)
        if _wants_arrow(request):
            return _file(await call(logs.to_arrow, table), ARROW_FILE, warnings)
        return _file(await call(logs.to_records, table, query.separator), RECORDS, warnings)

    async def export_logs(request: Request) -> Response:
        await admin(request)
        query = await call(_log_query, center, request)
        limit = request.query_params.get("data_size_limit", logs.DEFAULT_EXPORT_LIMIT)
        arrow = _wants_arrow(request)
        body, warnings = await call(logs.export, center.logs, query, arrow, logs.parse_size(limit))
        return _file(body, ARROW_FILE if arrow else NDJSON, warnings)

    async def join(request: Request) -> Response:
        body = await _json(request)
        token, csr = body.get("token"), body.get("csr")
        if not isinstance(token, str) or not isinstance(csr, str):
            raise errors.BadRequest("join needs token and csr (PEM) as strings")
        return JSONResponse(await call(center.join, token, csr.encode()))

    async def renew(request: Request) -> Response:
        who = await edge(request)
        csr = (await _json(request)).get("csr")
        if not isinstance(csr, str):
            raise errors.BadRequest("renew needs csr (PEM) as a string")
        return JSONResponse(await call(center.renew, who, csr.encode()))

    async def heartbeat(request: Request) -> Response:
        who = await edge(request)
        return JSONResponse(await call(center.heartbeat, who, await _json(request)))

    async def upload(request: Request) -> Response:
        who = await edge(request)
        headers = request.headers
        try:
            first, last = int(headers["x-sync-first-seq"]), int(headers["x-sync-last-seq"])
            epoch = headers["x-sync-epoch"]
        except (KeyError, ValueError):
            raise errors.BadRequest(
                "a batch needs headers x-sync-epoch, x-sync-first-seq, x-sync-last-seq"
            ) from None
        body = await read_body(request, max_body, errors.PayloadTooLarge)
        return JSONResponse(await call(center.upload, who, epoch, first, last, body))

    routes = [
        Route("/healthz", health, methods=["GET"]),
        Route("/v1/publishes", list_publishes, methods=["GET"]),
        Route("/v1/publishes", register_publish, methods=["POST"]),
        Route("/v1/edges", list_edges, methods=["GET"]),
        Route("/v1/edges", add_edge, methods=["POST"]),
        Route("/v1/edges/{name}", remove_edge, methods=["DELETE"]),
        Route("/v1/pipelines/{pipeline}/logs", pipeline_logs, methods=["GET"]),
        Route("/v1/pipelines/{pipeline}/logs/export", export_logs, methods=["GET"]),
        Route("/v1/edge/join", join, methods=["POST"]),
        Route("/v1/edge/renew", renew, methods=["POST"]),
        Route("/v1/edge/heartbeat", heartbeat, methods=["POST"]),
        Route("/v1/edge/logs", upload, methods=["POST"]),
    ]
    handlers: dict[Any, Callable[[Request, Any], Awaitable[Response]]] = {
        errors.SyncError: _sync_error,
        HTTPException: _http_error,
        Exception: _unexpected,
    }
    return Starlette(routes=routes, exception_handlers=handlers)


def error_body(message: str, status: int, reason: str) -> dict[str, Any]:
    return {
        "error": message,
        "code": status,
        "status": "error",
        "source": "platform",
        "reason": reason,
    }


async def _sync_error(request: Request, exc: errors.SyncError) -> Response:
    status = next(STATUS[cls] for cls in type(exc).__mro__ if cls in STATUS)
    return JSONResponse(error_body(str(exc), status, type(exc).__name__), status)


async def _http_error(request: Request, exc: HTTPException) -> Response:
    reason = "PayloadTooLarge" if exc.status_code == 413 else "HTTPError"
    message = f"{exc.detail} ({request.method} {request.url.path})"
    return JSONResponse(error_body(message, exc.status_code, reason), exc.status_code)


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.error("unexpected error method=%s path=%s", request.method, request.url.path, exc_info=exc)
    return JSONResponse(error_body("internal error", 500, "InternalError"), 500)


async def _json(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(await read_body(request, JSON_LIMIT, errors.PayloadTooLarge) or b"{}")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise errors.BadRequest(f"the body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise errors.BadRequest("the body must be a JSON object")
    return body


def _log_query(center: OpsCenter, request: Request) -> logs.LogQuery:
    pipeline = request.path_params["pipeline"]
    if not any(p["pipeline_name"] == pipeline for p in center.store.publishes()):
        raise errors.NotFound(f"no publish of pipeline {pipeline!r} is registered")
    params = request.query_params
    return logs.parse_query(pipeline, {key: params.getlist(key) for key in params.keys()})


def _wants_arrow(request: Request) -> bool:
    if request.query_params.get("arrow", "").lower() in ("1", "true", "yes"):
        return True
    return "arrow" in request.headers.get("accept", "") or request.headers.get("format") == "arrow"


def _file(body: bytes, media_type: str, warnings: list[str]) -> Response:
    """A body with one `x-ops-warning` header per warning (the seed's sentences)."""
    response = Response(body, media_type=media_type)
    for warning in warnings:  # column names may be any Unicode; headers are latin-1, one line
        response.headers.append(WARNING_HEADER, header_text(warning))
    return response
