"""The Open Inference Protocol's REST routes under `/v2`, a plain ASGI endpoint that
`edge.server` sends every `/v2` request to (as it sends `POST /pipelines/{name}` to the
seed's inference route):

    GET  /v2                                         server metadata
    GET  /v2/health/live, /v2/health/ready           200 ({"live"|"ready": true}), or 503
    GET  /v2/models/{name}[/versions/{v}]            model metadata
    GET  /v2/models/{name}[/versions/{v}]/ready      200, or 404 / 503
    POST /v2/models/{name}[/versions/{v}]/infer      inference (JSON, or the binary extension)

Errors are the protocol's `{"error": "<message>"}`, with the status `V2_STATUS` gives.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

from edge.errors import NotFound
from edge.httpio import log_unexpected, read_asgi_chunks
from edge.v2 import answer
from edge.v2.model import Outcome
from edge.v2.request import InferRequest, from_rest, placed
from edge.v2.service import V2Service
from edge.v2.small import Small, SmallPath
from edge.v2.status import V2_STATUS, MethodNotAllowed, UnsupportedEncoding

log = logging.getLogger("edge.v2")
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
HEADER_LENGTH = "inference-header-content-length"
_JSON = b"application/json"
_BINARY = b"application/octet-stream"
# the status says it (Triton's client reads only that); KServe's client reads these bodies
_LIVE, _READY = b'{"live":true}', b'{"ready":true}'


class V2Endpoint:
    def __init__(self, service: V2Service) -> None:
        self.service = service
        self.appliance = service.appliance

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        method, path = scope["method"], scope["path"]
        infer_name = None
        headers: list[tuple[bytes, bytes]] = []
        try:
            route = path[3:].strip("/").split("/") if len(path) > 3 else []
            if route and route[0] == "models" and len(route) >= 2:
                name, version, action = _model_route(route, path)
                if action == "infer":
                    infer_name = name
                    _method(method, "POST", path)
                    code, payload, headers = await self._infer(scope, receive, name, version)
                else:
                    _method(method, "GET", path)
                    code, payload = self._model_get(name, version, action)
            else:
                _method(method, "GET", path)
                code, payload = self._server_get(route, path)
            media = _BINARY if headers else _JSON
        except Exception as exc:
            code, payload = self._error(path, exc)
            media, headers = _JSON, []
        headers += [(b"content-type", media), (b"content-length", str(len(payload)).encode())]
        await send({"type": "http.response.start", "status": code, "headers": headers})
        await send({"type": "http.response.body", "body": payload})
        if infer_name is not None:
            label = self.service.known(infer_name)
            self.appliance.metrics.observe(label, code, time.perf_counter() - started)

    def _server_get(self, route: list[str], path: str) -> tuple[int, bytes]:
        if not route:
            return 200, orjson.dumps(self.service.server_metadata)
        if route == ["health", "live"]:
            return 200, _LIVE
        if route == ["health", "ready"]:
            self.appliance.serving()  # NotReady: 503 with the reason
            return 200, _READY
        raise NotFound(f"no route GET {path[:200]}")

    def _model_get(self, name: str, version: str | None, action: str) -> tuple[int, bytes]:
        model = self.service.model(name, version)
        if action == "ready":
            return 200, orjson.dumps({"name": model.name, "ready": True})
        return 200, orjson.dumps(model.metadata)

    async def _infer(
        self, scope: dict[str, Any], receive: Receive, name: str, version: str | None
    ) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        self.service.model(name, version)  # an unknown model is refused before the body
        header_length = None
        declared = ""
        for key, value in scope["headers"]:
            if key == b"content-length":
                declared = value.decode("latin-1")
            elif key == b"inference-header-content-length":
                header_length = value.decode("latin-1")
            elif key == b"content-encoding" and value.strip().lower() not in (b"", b"identity"):
                raise UnsupportedEncoding(
                    f"Content-Encoding {value.decode('latin-1')[:40]!r} is not supported; send "
                    f"the body uncompressed"
                )
        limit = self.appliance.settings.max_body_bytes
        chunks = await read_asgi_chunks(receive, declared, limit)
        small: Callable[[SmallPath], Small | None] | None = None
        if header_length is None:
            joined = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            body: bytes | memoryview = joined
            small = lambda path: path.rest(joined)  # noqa: E731
        else:
            body = placed(chunks, header_length)  # tensors aligned, read in place
        del chunks  # not held beside the body while the request waits and runs
        payload, length = await self.service.infer(
            name, version, lambda: from_rest(body, header_length), len(body), encode_rest, small
        )
        if length is None:
            return 200, payload, []
        return 200, payload, [(HEADER_LENGTH.encode(), str(length).encode())]

    def _error(self, path: str, exc: Exception) -> tuple[int, bytes]:
        found = V2_STATUS.lookup(exc)
        if found is None:
            log_unexpected(path, exc)
            return 500, orjson.dumps({"error": f"internal error ({type(exc).__name__})"})
        code = found[0]
        if code >= 500:
            log.error("path=%s error=%s", path[:200], exc)
        return code, orjson.dumps({"error": str(exc)})


def _model_route(route: list[str], path: str) -> tuple[str, str | None, str]:
    """(name, version or None, '' | 'ready' | 'infer') of a `/v2/models/...` path."""
    name, rest = route[1], route[2:]
    version = None
    if len(rest) >= 2 and rest[0] == "versions":
        version, rest = rest[1], rest[2:]
    if not name or version == "" or len(rest) > 1 or (rest and rest[0] not in ("ready", "infer")):
        raise NotFound(f"no route {path[:200]}")
    return name, version, rest[0] if rest else ""


def _method(method: str, allowed: str, path: str) -> None:
    if method != allowed and not (allowed == "GET" and method == "HEAD"):
        raise MethodNotAllowed(f"{method} {path[:200]} is not allowed; use {allowed}")


def encode_rest(request: InferRequest, outcome: Outcome) -> tuple[bytes, int | None]:
    """The response body, and the JSON header's length when binary tensors follow it."""
    model = outcome.model
    chosen = [(name, outcome.tensor(name), binary) for name, binary in outcome.selected(request)]
    return answer.rest(model.name, model.version, request.id, outcome.parameters, chosen)
