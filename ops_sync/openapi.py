"""`GET /openapi.json`: the ops center's routes described (OpenAPI 3.1), for clients and for the
fuzz tests, which call every route listed here with generated and mutated input."""

from __future__ import annotations

from typing import Any

from edge.codecs import ARROW_FILE_TYPE
from edge.openapi import LOG_PARAMETERS, json_ok, table_ok
from ops_sync import protocol

ERROR = {
    "type": "object",
    "required": ["error", "code", "status", "source", "reason"],
    "properties": {
        "error": {"type": "string"},
        "code": {"type": "integer"},
        "status": {"const": "error"},
        "source": {"const": "platform"},
        "reason": {"type": "string", "description": "the ops_sync.errors class"},
    },
}
ADMIN: list[dict[str, list[str]]] = [{"admin": []}]
EDGE: list[dict[str, list[str]]] = [{"edge": []}]
_TEXT = {"type": "string"}
# Routes this document leaves out, by prefix, and why (a test checks every other route is in).
UNDOCUMENTED = {
    "/ui": "the dashboard (ops_sync.ui): HTML pages and forms for a browser, and the JSON they "
    "poll, behind a sign-in session cookie and CSRF tokens rather than the admin token; not an "
    "API for clients (README: The dashboard)",
}


def _errors(*codes: int) -> dict[str, Any]:
    body = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    return {str(code): {"description": "error", "content": body} for code in codes}


def _json_body(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    schema = {"type": "object", "properties": properties, "required": required}
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def document() -> dict[str, Any]:
    pipeline = {"name": "pipeline", "in": "path", "required": True, "schema": _TEXT}
    publish = {
        "pipeline_url": _TEXT,
        "pipeline_name": _TEXT,
        "pipeline_version": _TEXT,
        "engine_url": _TEXT,
        "engine_config": {"type": "object"},
        "helm": {"type": "object"},
        "workspace_id": _TEXT,
        "created_by": _TEXT,
        "manifest_digest": _TEXT,
    }
    rollout = {
        "pipeline_url": _TEXT,
        "edge": _TEXT,
        "tag": _TEXT,
        "percent": {"type": "integer", "minimum": 1, "maximum": 100},
    }
    tags = {"type": "array", "items": _TEXT}
    seq = {"type": "string", "pattern": "^[0-9]+$"}
    batch_headers = [
        {"name": protocol.EPOCH_HEADER, "in": "header", "required": True, "schema": _TEXT},
        {"name": protocol.FIRST_SEQ_HEADER, "in": "header", "required": True, "schema": seq},
        {"name": protocol.LAST_SEQ_HEADER, "in": "header", "required": True, "schema": seq},
        {
            "name": protocol.CODING_HEADER,
            "in": "header",
            "required": False,
            "description": "zstd: the IPC stream is one zstd frame that records its size",
            "schema": {"type": "string", "enum": [protocol.BATCH_CODING, "identity"]},
        },
    ]
    binary = {"type": "string", "format": "binary"}
    reads_coding = {
        "200": {
            **json_ok()["200"],
            "headers": {
                protocol.ACCEPT_CODING_HEADER: {
                    "description": "the batch coding this ops center reads (RFC 7694)",
                    "schema": _TEXT,
                }
            },
        }
    }
    paths = {
        "/healthz": {"get": {"summary": "the process answers", "responses": json_ok()}},
        "/openapi.json": {"get": {"summary": "this document", "responses": json_ok()}},
        "/readyz": {
            "get": {
                "summary": "the metadata database and the log store answer",
                "responses": {**json_ok(), "503": {"description": "not ready"}},
            }
        },
        "/metrics": {
            "get": {
                "security": ADMIN,
                "summary": "Prometheus metrics",
                "responses": {
                    "200": {"description": "metrics", "content": {"text/plain": {}}},
                    **_errors(401),
                },
            }
        },
        "/v1/publishes": {
            "get": {"security": ADMIN, "responses": {**json_ok(), **_errors(401)}},
            "post": {
                "security": ADMIN,
                "requestBody": _json_body(publish, ["pipeline_url"]),
                "responses": {"201": {"description": "registered"}, **_errors(400, 401, 413)},
            },
        },
        "/v1/publishes/{id}/edges": {
            "get": {
                "security": ADMIN,
                "summary": "the enrolled edges of one publish",
                "parameters": [_path("id", {"type": "integer"})],
                "responses": {**json_ok(), **_errors(400, 401, 404)},
            }
        },
        "/v1/edges": {
            "get": {
                "security": ADMIN,
                "summary": "enrolled edges: all, one publish's, or one pipeline's publishes'",
                "parameters": [
                    {"name": "publish_id", "in": "query", "schema": {"type": "integer"}},
                    {"name": "pipeline", "in": "query", "schema": _TEXT},
                ],
                "responses": {**json_ok(), **_errors(400, 401)},
            },
            "post": {
                "security": ADMIN,
                "requestBody": _json_body(
                    {
                        "name": _TEXT,
                        "pipeline_url": _TEXT,
                        "tags": tags,
                        "additional_properties": {"type": "object"},
                    },
                    ["name", "pipeline_url"],
                ),
                "responses": {"201": {"description": "added"}, **_errors(400, 401, 409, 413)},
            },
        },
        "/v1/rollouts": {
            "post": {
                "security": ADMIN,
                "summary": "set the desired pipeline version (a registered publish's URL) of one "
                "edge or of a tag's edges (a stable percent of them, by hash of the edge id)",
                "requestBody": _json_body(rollout, ["pipeline_url"]),
                "responses": {**json_ok(), **_errors(400, 401, 404, 413)},
            }
        },
        "/v1/edges/{name}": {
            "delete": {
                "security": ADMIN,
                "summary": "revoke an edge; nothing is returned (the seed's remove_edge)",
                "parameters": [_path("name", _TEXT)],
                "responses": {"204": {"description": "removed"}, **_errors(401, 404)},
            }
        },
        "/v1/pipelines/{pipeline}/logs": {
            "get": {
                "security": ADMIN,
                "parameters": [pipeline, *LOG_PARAMETERS],
                "responses": {**table_ok(), **_errors(400, 401, 404, 406)},
            }
        },
        "/v1/pipelines/{pipeline}/logs/export": {
            "get": {
                "security": ADMIN,
                "parameters": [
                    pipeline,
                    *LOG_PARAMETERS,
                    {"name": "data_size_limit", "in": "query", "schema": _TEXT},
                ],
                "responses": {"200": {"description": "NDJSON or Arrow"}, **_errors(400, 401, 404)},
            }
        },
        **_assay_paths(),
        protocol.JOIN_PATH: {
            "post": {
                "summary": "redeem a one-time join token for a certificate",
                "requestBody": _json_body({"token": _TEXT, "csr": _TEXT}, ["token", "csr"]),
                "responses": {**json_ok(), **_errors(400, 403, 413)},
            }
        },
        protocol.RENEW_PATH: {
            "post": {
                "security": EDGE,
                "requestBody": _json_body({"csr": _TEXT}, ["csr"]),
                "responses": {**json_ok(), **_errors(400, 401, 403)},
            }
        },
        protocol.HEARTBEAT_PATH: {
            "post": {
                "security": EDGE,
                "requestBody": _json_body({"health": {"type": "object"}, "buffer": {}}, []),
                "responses": {**reads_coding, **_errors(400, 401, 403)},
            }
        },
        protocol.LOGS_PATH: {
            "post": {
                "security": EDGE,
                "summary": "one log batch, stored exactly once; the reply is the ack",
                "parameters": batch_headers,
                "requestBody": {
                    "required": True,
                    "content": {protocol.BATCH_TYPE: {"schema": binary}},
                },
                "responses": {**reads_coding, **_errors(400, 401, 403, 408, 413, 415, 507)},
            }
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "Ops center", "version": "1"},
        "x-undocumented": UNDOCUMENTED,
        "paths": paths,
        "components": {
            "schemas": {"Error": ERROR},
            "securitySchemes": {
                "admin": {"type": "http", "scheme": "bearer"},
                "edge": {"type": "mutualTLS", "description": "the certificate from the join"},
            },
        },
    }


def _path(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": schema}


def _assay_paths() -> dict[str, Any]:
    """The assay routes (`ops_sync.assays`); definitions as `ops_sync.assays.definition`."""
    name = _path("name", _TEXT)
    number = {"type": "number"}
    when = {"type": "string", "description": "ISO 8601 date-time"}
    duration = {"description": "'90s', '5m', '24h', '7d', seconds, or {'minutes': 5}"}
    numbers = {"type": "array", "items": number}
    definition = {
        "name": _TEXT,
        "pipeline": _TEXT,
        "column": {"type": "string", "description": "an in.* or out.* column"},
        "index": {"type": "integer", "minimum": 0},
        "iopath": {"type": "string", "description": "the seed's 'output variable 0'"},
        "model_name": _TEXT,
        "baseline": {
            "type": "object",
            "description": "{start, end} of synced logs, or {values}",
            "properties": {"start": when, "end": when, "values": numbers},
        },
        "window": {
            "type": "object",
            "properties": {"width": duration, "interval": duration, "start": when},
        },
        "partition": {"type": "string", "description": "one edge's rows (default: all)"},
        "metric": {"enum": ["psi", "maxdiff", "sumdiff"]},
        "threshold": number,
        "warning_threshold": number,
        "num_bins": {"type": "integer", "minimum": 1, "maximum": 1000},
        "bin_mode": {"enum": ["quantile", "equal", "provided"]},
        "edges": numbers,
        "bin_weights": numbers,
        "aggregation": {"enum": ["density", "cumulative"]},
    }
    query = [
        {"name": "start", "in": "query", "schema": when},
        {"name": "end", "in": "query", "schema": when},
        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1}},
    ]
    one: dict[str, Any] = {"security": ADMIN, "parameters": [name]}
    arrow = {"schema": {"type": "string", "format": "binary"}}
    content = {"application/json": {"schema": {"type": "object"}}, ARROW_FILE_TYPE: arrow}
    json_or_arrow = {"200": {"description": "JSON, or an Arrow file", "content": content}}
    switch = {**one, "responses": {**json_ok(), **_errors(401, 404)}}
    return {
        "/v1/assays": {
            "get": {
                "security": ADMIN,
                "summary": "every assay",
                "responses": {**json_ok(), **_errors(401)},
            },
            "post": {
                "security": ADMIN,
                "summary": "create an assay (its baseline is summarized now)",
                "requestBody": _json_body(definition, ["name", "pipeline", "baseline"]),
                "responses": {"201": {"description": "created"}, **_errors(400, 401, 404, 409)},
            },
        },
        "/v1/assays/{name}": {
            "get": {**one, "responses": {**json_ok(), **_errors(401, 404)}},
            "delete": {
                **one,
                "summary": "delete an assay and its results",
                "responses": {"204": {"description": "deleted"}, **_errors(401, 404)},
            },
        },
        "/v1/assays/{name}/run": {
            "post": {
                **one,
                "summary": "interactive run over start..end (stored as results too)",
                "requestBody": _json_body({"start": when, "end": when}, []),
                "responses": {**json_ok(), **_errors(400, 401, 404)},
            }
        },
        "/v1/assays/{name}/pause": {"post": {**switch, "summary": "stop scheduled runs"}},
        "/v1/assays/{name}/resume": {"post": {**switch, "summary": "resume scheduled runs"}},
        "/v1/assays/{name}/results": {
            "get": {
                "security": ADMIN,
                "summary": "results, newest window first (JSON, or Arrow by Accept)",
                "parameters": [name, *query],
                "responses": {**json_or_arrow, **_errors(400, 401, 404, 406)},
            }
        },
        "/v1/assays/{name}/baseline": {
            "get": {
                **one,
                "summary": "the seed's baseline_stats and baseline_bins (bins as Arrow by Accept)",
                "responses": {**json_or_arrow, **_errors(401, 404, 406)},
            }
        },
    }
