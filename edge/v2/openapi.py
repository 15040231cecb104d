"""The Open Inference Protocol's REST routes in the appliance's OpenAPI document
(`edge.openapi.document(PATHS)`), so clients and the fuzz suite see them."""

from __future__ import annotations

from typing import Any

from edge.v2.tensors import DTYPES

ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {"type": "string", "description": "what is wrong, and where"}},
}
_PARAMETERS = {
    "type": "object",
    "additionalProperties": {"type": ["boolean", "number", "integer", "string"]},
}
_SHAPE = {"type": "array", "items": {"type": "integer", "minimum": 0}, "maxItems": 16}
_TENSOR = {
    "type": "object",
    "required": ["name", "shape", "datatype"],
    "properties": {
        "name": {"type": "string"},
        "shape": _SHAPE,
        "datatype": {"enum": list(DTYPES)},
        "parameters": _PARAMETERS,
        "data": {"description": "row-major elements, flat or nested"},
    },
}
REQUEST = {
    "type": "object",
    "required": ["inputs"],
    "properties": {
        "id": {"type": "string"},
        "parameters": _PARAMETERS,
        "inputs": {"type": "array", "minItems": 1, "items": _TENSOR},
        "outputs": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name"],
                "properties": {"name": {"type": "string"}, "parameters": _PARAMETERS},
            },
        },
    },
}
RESPONSE = {
    "type": "object",
    "required": ["model_name", "outputs"],
    "properties": {
        "model_name": {"type": "string"},
        "model_version": {"type": "string"},
        "id": {"type": "string"},
        "parameters": _PARAMETERS,
        "outputs": {"type": "array", "items": _TENSOR},
    },
}
_METADATA_TENSOR = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "datatype": {"type": "string"}, "shape": _SHAPE},
}
MODEL_METADATA = {
    "type": "object",
    "required": ["name", "platform", "inputs", "outputs"],
    "properties": {
        "name": {"type": "string"},
        "versions": {"type": "array", "items": {"type": "string"}},
        "platform": {"type": "string"},
        "inputs": {"type": "array", "items": _METADATA_TENSOR},
        "outputs": {"type": "array", "items": _METADATA_TENSOR},
    },
}
SERVER_METADATA = {
    "type": "object",
    "required": ["name", "version", "extensions"],
    "properties": {
        "name": {"type": "string"},
        "version": {"type": "string"},
        "extensions": {"type": "array", "items": {"type": "string"}},
    },
}


def _errors(*codes: int) -> dict[str, Any]:
    body = {"application/json": {"schema": ERROR}}
    return {str(code): {"description": "error", "content": body} for code in codes}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"200": {"description": "OK", "content": {"application/json": {"schema": schema}}}}


_READY = {
    "type": "object",
    "properties": {"live": {"const": True}, "ready": {"const": True}, "name": {"type": "string"}},
}
_EMPTY = _json(_READY)  # 200: true (the status says it; the body for KServe's client)
_NAME = {"name": "model_name", "in": "path", "required": True, "schema": {"type": "string"}}
_VERSION = {"name": "model_version", "in": "path", "required": True, "schema": {"type": "string"}}
_HEADER = {
    "name": "Inference-Header-Content-Length",
    "in": "header",
    "required": False,
    "schema": {"type": "integer", "minimum": 0},
    "description": "the binary tensor extension: the JSON header's length; raw tensors follow",
}
_INFER_BODY = {
    "required": True,
    "content": {
        "application/json": {"schema": REQUEST},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
    },
}
_INFER_OK = {
    "200": {
        "description": "outputs (JSON, or a JSON header and raw tensors)",
        "content": {
            "application/json": {"schema": RESPONSE},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


def _model_paths(prefix: str, parameters: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        prefix: {
            "get": {
                "summary": "model metadata (the pipeline is the model)",
                "parameters": parameters,
                "responses": {**_json(MODEL_METADATA), **_errors(404, 503)},
            }
        },
        f"{prefix}/ready": {
            "get": {
                "summary": "whether the model is ready",
                "parameters": parameters,
                "responses": {**_EMPTY, **_errors(404, 503)},
            }
        },
        f"{prefix}/infer": {
            "post": {
                "summary": "an inference (V2 JSON tensors, or the binary tensor extension)",
                "parameters": [*parameters, _HEADER],
                "requestBody": _INFER_BODY,
                "responses": {**_INFER_OK, **_errors(400, 404, 408, 413, 415, 503, 507)},
            }
        },
    }


PATHS: dict[str, Any] = {
    "/v2": {"get": {"summary": "server metadata", "responses": _json(SERVER_METADATA)}},
    "/v2/health/live": {"get": {"summary": "the server answers", "responses": _EMPTY}},
    "/v2/health/ready": {
        "get": {"summary": "the pipeline is loaded", "responses": {**_EMPTY, **_errors(503)}}
    },
    **_model_paths("/v2/models/{model_name}", [_NAME]),
    **_model_paths("/v2/models/{model_name}/versions/{model_version}", [_NAME, _VERSION]),
}
