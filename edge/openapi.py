"""`GET /openapi.json`: the appliance's routes described (OpenAPI 3.1), for clients and for the
fuzz tests, which call every route listed here with generated and mutated input."""

from __future__ import annotations

from typing import Any

from edge.codecs import ARROW_FILE_TYPE, ARROW_STREAM_TYPE

ERROR = {
    "type": "object",
    "required": ["error", "code", "status", "source"],
    "properties": {
        "error": {"type": "string", "description": "what is wrong, and where"},
        "code": {"type": "integer"},
        "status": {"const": "error"},
        "source": {"enum": ["engine", "platform"]},
    },
}
_LIST = {"type": "array", "items": {"type": "string"}}
SHAPE_PARAMETERS = [
    {"name": "dataset", "in": "query", "schema": _LIST, "description": "the seed's datasets"},
    {"name": "dataset[]", "in": "query", "schema": _LIST, "description": "the SDK's name"},
    {"name": "dataset_exclude", "in": "query", "schema": _LIST},
    {"name": "dataset.exclude[]", "in": "query", "schema": _LIST},
    {"name": "dataset.separator", "in": "query", "schema": {"type": "string"}},
]
LOG_PARAMETERS = [
    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1}},
    {"name": "start_datetime", "in": "query", "schema": {"type": "string"}},
    {"name": "end_datetime", "in": "query", "schema": {"type": "string"}},
    {"name": "partition", "in": "query", "schema": {"type": "string"}},
    *SHAPE_PARAMETERS,
]


def errors(*codes: int) -> dict[str, Any]:
    body = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    return {str(code): {"description": "error", "content": body} for code in codes}


def json_ok(schema: dict[str, Any] | None = None) -> dict[str, Any]:
    content = {"application/json": {"schema": schema or {"type": "object"}}}
    return {"200": {"description": "OK", "content": content}}


def table_ok() -> dict[str, Any]:
    content = {
        "application/json": {"schema": {"type": "array", "items": {"type": "object"}}},
        ARROW_FILE_TYPE: {"schema": {"type": "string", "format": "binary"}},
    }
    return {
        "200": {"description": "rows, as pandas-records JSON or an Arrow file", "content": content}
    }


def document(extra_paths: dict[str, Any] | None = None) -> dict[str, Any]:
    records = {"type": "array", "minItems": 1, "items": {"type": "object"}}
    binary = {"type": "string", "format": "binary"}
    paths: dict[str, Any] = {
        "/pipelines": {"get": {"summary": "the pipeline and its status", "responses": json_ok()}},
        "/pipelines/{name}": {
            "post": {
                "summary": "run an inference (one output row per input row)",
                "parameters": [
                    {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}},
                    *SHAPE_PARAMETERS,
                ],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json; format=pandas-records": {"schema": records},
                        ARROW_FILE_TYPE: {"schema": binary},
                        ARROW_STREAM_TYPE: {"schema": binary},
                    },
                },
                "responses": {**table_ok(), **errors(400, 404, 406, 408, 413, 415, 503, 507)},
            }
        },
        "/models": {"get": {"summary": "the pipeline's models", "responses": json_ok()}},
        "/logs": {
            "get": {
                "summary": "the device's inference log (the seed's pipeline.logs)",
                "parameters": LOG_PARAMETERS,
                "responses": {**table_ok(), **errors(400, 404, 406)},
            }
        },
        "/health": {"get": {"summary": "status, log buffer, sync", "responses": json_ok()}},
        "/health/live": {"get": {"summary": "the process answers", "responses": json_ok()}},
        "/health/ready": {
            "get": {
                "summary": "the pipeline is loaded",
                "responses": {**json_ok(), "503": {"description": "not loaded (yet)"}},
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "responses": {
                    "200": {
                        "description": "OK",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
        "/openapi.json": {"get": {"summary": "this document", "responses": json_ok()}},
        **(extra_paths or {}),
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "Edge inference appliance", "version": "1"},
        "paths": paths,
        "components": {"schemas": {"Error": ERROR}},
    }
