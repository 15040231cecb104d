"""The dashboard's routes under /ui/ (mounted by `ops_sync.server`; see `ops_sync.ui`).

Every page but sign-in needs a session (`ops_sync.ui.session`): without one, pages redirect
to /ui/signin and the JSON feeds answer 401. Every POST needs its form's CSRF token (403
without). Errors from the ops center become an HTML page with the status `status_of` (the
server's mapping) gives; JSON feeds answer the server's JSON error body.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from anyio import to_thread
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from edge import codecs
from edge import errors as edge_errors
from edge.logquery import parse_log_query
from ops_sync import errors, logs
from ops_sync.center import OpsCenter
from ops_sync.ui import data, pages
from ops_sync.ui import session as sessions
from ops_sync.ui.session import SESSION_COOKIE, SIGNIN_COOKIE, Sessions, read_form, same
from ops_sync.ui.snippets import all_for

T = TypeVar("T")
STATIC = Path(__file__).resolve().parent / "static"
PAGE_ROWS = 1000  # the log viewer shows at most this many rows; downloads take more
HEADERS = {
    "content-security-policy": "default-src 'self'; img-src 'self' data:; "
    "frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
}


Handler = Callable[[Request, str], Awaitable[Response]]
StatusOf = Callable[[Exception], int]
ErrorBody = Callable[[str, int, str], dict[str, Any]]


def page(html: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(html, status, headers=HEADERS)


def chart_minutes(request: Request) -> int:
    """The `minutes` an edge's charts span (1-1440, default 60), else a 400 naming it."""
    minutes = request.query_params.get("minutes", "60")
    if not minutes.isdigit() or not 1 <= int(minutes) <= 24 * 60:
        raise errors.BadRequest(f"minutes must be 1 to 1440, not {minutes[:20]!r}")
    return int(minutes)


def mount(
    center: OpsCenter,
    status_of: StatusOf,
    error_body: ErrorBody,
) -> Mount:
    store = Sessions(center.store.db)

    async def call(fn: Callable[..., T], *args: Any) -> T:
        return await to_thread.run_sync(partial(fn, *args))

    def signed_in(handler: Handler, feed: bool = False) -> Callable[[Request], Awaitable[Response]]:
        """`handler(request, csrf)` for a request with a live session; POSTs also need the
        form's `csrf` (checked by `checked_form`)."""

        async def wrapped(request: Request) -> Response:
            sid = sessions.session_id(request)
            if not sid or not await call(store.valid, sid, center.clock()):
                if feed:
                    return JSONResponse(error_body("sign in first", 401, "SignInRequired"), 401)
                if request.method != "GET":
                    return page(pages.error(401, "Your session ended: sign in again.", None), 401)
                return RedirectResponse("/ui/signin", 303, headers=HEADERS)
            csrf = sessions.csrf_for(sid)
            try:
                return await handler(request, csrf)
            except edge_errors.EdgeError as exc:
                status = status_of(exc)
                if feed:
                    return JSONResponse(error_body(str(exc), status, errors.reason(exc)), status)
                return page(pages.error(status, str(exc), csrf), status)

        return wrapped

    async def checked_form(request: Request, csrf: str) -> dict[str, str]:
        form = await read_form(request)
        if not same(form.get("csrf"), csrf):
            raise errors.Refused("the form's CSRF token is missing or wrong: reload the page")
        return form

    # -- sign in / out ---------------------------------------------------------------------
    async def signin_form(request: Request) -> Response:
        token = secrets.token_urlsafe(24)
        response = page(pages.signin(token))
        sessions.set_cookie(response, SIGNIN_COOKIE, token, sessions.SIGNIN_TTL)
        return response

    async def signin(request: Request) -> Response:
        try:
            form = await read_form(request)
        except edge_errors.EdgeError as exc:
            return page(pages.error(status_of(exc), str(exc), None), status_of(exc))
        expected = request.cookies.get(SIGNIN_COOKIE)
        if not same(form.get("csrf"), expected):
            message = "The sign-in form's CSRF token is missing or wrong: reload the page."
            return page(pages.error(403, message, None), 403)
        try:
            center.check_admin("Bearer " + form.get("token", ""))
        except errors.AdminAuthRequired:
            return page(pages.signin(str(expected), "That is not the admin token."), 401)
        sid = await call(store.start, center.clock())
        response = RedirectResponse("/ui/", 303, headers=HEADERS)
        sessions.set_cookie(response, SESSION_COOKIE, sid, int(sessions.SESSION_TTL))
        response.delete_cookie(
            SIGNIN_COOKIE, path="/", secure=True, httponly=True, samesite="strict"
        )
        return response

    async def signout(request: Request, csrf: str) -> Response:
        await checked_form(request, csrf)
        sid = sessions.session_id(request)
        if sid:
            await call(store.end, sid)
        response = RedirectResponse("/ui/signin", 303, headers=HEADERS)
        response.delete_cookie(
            SESSION_COOKIE, path="/", secure=True, httponly=True, samesite="strict"
        )
        return response

    # -- fleet and edges -------------------------------------------------------------------
    async def fleet(request: Request, csrf: str) -> Response:
        rows = await call(data.fleet, center)
        removed = request.query_params.get("removed")
        notice = f"Edge {removed} removed." if removed else None
        return page(pages.fleet(rows, csrf, notice))

    async def fleet_feed(request: Request, csrf: str) -> Response:
        return JSONResponse({"edges": await call(data.fleet, center)}, headers=HEADERS)

    async def edge(request: Request, csrf: str) -> Response:
        found = await call(data.find_edge, center, request.path_params["name"])
        minutes = chart_minutes(request)
        beats = await call(data.heartbeats.latest, center.store.db)
        row = data.fleet_row(found, beats.get(found["id"]), center.clock())
        recent = await call(data.recent_logs, center, found)
        return page(pages.edge(found, row, recent, csrf, minutes))

    async def edge_series(request: Request, csrf: str) -> Response:
        found = await call(data.find_edge, center, request.path_params["name"])
        body = await call(data.series, center, found, chart_minutes(request))
        return JSONResponse(body, headers=HEADERS)

    async def new_edge_form(request: Request, csrf: str) -> Response:
        return page(pages.add_edge(await call(center.publishes), csrf, None, {}))

    async def new_edge(request: Request, csrf: str) -> Response:
        form = await checked_form(request, csrf)
        name = form.get("name", "").strip()
        tags = [t.strip() for t in form.get("tags", "").split(",") if t.strip()]
        try:
            added = await call(center.add_edge, name, form.get("pipeline_url", ""), tags)
        except (errors.BadRequest, errors.Conflict, errors.NotFound) as exc:
            html = pages.add_edge(await call(center.publishes), csrf, str(exc), form)
            return page(html, status_of(exc))
        bundle = added["docker_run_variables"]["EDGE_BUNDLE"]
        return page(pages.added(name, bundle, all_for(name, added), csrf), 201)

    async def remove_form(request: Request, csrf: str) -> Response:
        found = await call(data.find_edge, center, request.path_params["name"])
        return page(pages.remove_edge(found["name"], csrf))

    async def remove(request: Request, csrf: str) -> Response:
        await checked_form(request, csrf)
        name = request.path_params["name"]
        await call(center.remove_edge, name)
        return RedirectResponse(f"/ui/?removed={name}", 303, headers=HEADERS)

    # -- logs ------------------------------------------------------------------------------
    def log_query(params: dict[str, str], max_limit: int | None) -> tuple[str, logs.LogQuery]:
        pipeline = params.get("pipeline", "")
        if not any(p["pipeline_name"] == pipeline for p in center.store.publishes()):
            raise errors.NotFound(f"no publish of pipeline {pipeline[:80]!r} is registered")
        query: dict[str, list[str]] = {"limit": [params.get("limit") or "100"]}
        if params.get("start") or params.get("end"):
            query["start_datetime"] = [params.get("start", "")]
            query["end_datetime"] = [params.get("end", "")]
        if params.get("edge"):
            query["partition"] = [params["edge"]]
        datasets = [d.strip() for d in params.get("dataset", "").split(",") if d.strip()]
        if datasets:
            query["dataset"] = datasets
        return pipeline, parse_log_query(query, max_limit)

    async def log_viewer(request: Request, csrf: str) -> Response:
        pipelines = sorted({p["pipeline_name"] for p in await call(center.publishes)})
        edges = sorted(e["name"] for e in await call(center.list_edges))
        form = {k: v[:200] for k, v in request.query_params.items()}
        form.setdefault("pipeline", pipelines[0] if pipelines else "")
        result, problem, status = None, None, 200
        warnings: list[str] = []
        if pipelines and "pipeline" in request.query_params:
            try:
                pipeline, query = await call(log_query, form, PAGE_ROWS)
                table, warnings = await call(logs.fetch, center.logs, pipeline, query)
                records = json.loads(await call(logs.to_records, table, "."))
                columns = list(dict.fromkeys(k for r in records[:50] for k in r))
                rows = [{k: _cell(v) for k, v in r.items()} for r in records]
                result = (columns, rows)
            except edge_errors.EdgeError as exc:
                problem, status = str(exc), status_of(exc)
        html = pages.log_viewer(form, pipelines, edges, result, warnings, problem, csrf)
        return page(html, status)

    async def log_download(request: Request, csrf: str) -> Response:
        params = dict(request.query_params)
        arrow = params.pop("format", "ndjson") == "arrow"
        pipeline, query = await call(log_query, params, None)
        size = logs.parse_size(logs.DEFAULT_EXPORT_LIMIT)
        body, _ = await call(logs.export, center.logs, pipeline, query, arrow, size)
        kind, suffix = (
            (codecs.ARROW_FILE_TYPE, "arrow") if arrow else ("application/x-ndjson", "ndjson")
        )
        disposition = f'attachment; filename="{pipeline}-logs.{suffix}"'
        return Response(
            body, media_type=kind, headers={**HEADERS, "content-disposition": disposition}
        )

    # -- assays ----------------------------------------------------------------------------
    async def assay_list(request: Request, csrf: str) -> Response:
        return page(pages.assays(await call(center.assays.all), csrf))

    async def assay_page(request: Request, csrf: str) -> Response:
        name = request.path_params["name"]
        found = await call(center.assays.get, name)
        results = await call(center.assays.results, name, None, None, 500)
        ran = request.query_params.get("ran", "")
        notice = f"The assay ran over {ran} windows." if ran.isdigit() else None
        return page(pages.assay(found, results, csrf, {}, notice))

    async def assay_run(request: Request, csrf: str) -> Response:
        form = await checked_form(request, csrf)
        name = request.path_params["name"]
        start, end = form.get("start", ""), form.get("end", "")
        if not start or not end:
            raise errors.BadRequest("an assay run needs both From and To")
        try:
            results = await call(center.assays.run, name, {"start": start, "end": end})
        except errors.BadRequest as exc:
            found = await call(center.assays.get, name)
            previous = await call(center.assays.results, name, None, None, 500)
            return page(pages.assay(found, previous, csrf, form, None, str(exc)), 400)
        return RedirectResponse(f"/ui/assays/{name}?ran={len(results)}", 303, headers=HEADERS)

    async def assay_results(request: Request, csrf: str) -> Response:
        limit = request.query_params.get("limit", "500")
        if not limit.isdigit() or not 1 <= int(limit) <= 5000:
            raise errors.BadRequest(f"limit must be 1 to 5000, not {limit[:20]!r}")
        name = request.path_params["name"]
        found = await call(center.assays.results, name, None, None, int(limit))
        return JSONResponse({"results": found}, headers=HEADERS)

    routes = [
        Route("/", signed_in(fleet), methods=["GET"]),
        Route("/assays", signed_in(assay_list), methods=["GET"]),
        Route("/assays/{name}", signed_in(assay_page), methods=["GET"]),
        Route("/assays/{name}/run", signed_in(assay_run), methods=["POST"]),
        Route("/api/assays/{name}/results", signed_in(assay_results, feed=True), methods=["GET"]),
        Route("/signin", signin_form, methods=["GET"]),
        Route("/signin", signin, methods=["POST"]),
        Route("/signout", signed_in(signout), methods=["POST"]),
        Route("/edges/new", signed_in(new_edge_form), methods=["GET"]),
        Route("/edges/new", signed_in(new_edge), methods=["POST"]),
        Route("/edges/{name}", signed_in(edge), methods=["GET"]),
        Route("/edges/{name}/remove", signed_in(remove_form), methods=["GET"]),
        Route("/edges/{name}/remove", signed_in(remove), methods=["POST"]),
        Route("/logs", signed_in(log_viewer), methods=["GET"]),
        Route("/logs/download", signed_in(log_download), methods=["GET"]),
        Route("/api/fleet", signed_in(fleet_feed, feed=True), methods=["GET"]),
        Route("/api/edges/{name}/series", signed_in(edge_series, feed=True), methods=["GET"]),
        Mount("/static", StaticFiles(directory=STATIC), name="ui-static"),
    ]
    return Mount("/ui", routes=routes)


def _cell(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return data.clip(text)
