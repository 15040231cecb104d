"""The appliance under generated and mutated input (schemathesis over its /openapi.json, and
hypothesis-made JSON and Arrow bodies for the inference route): never a 5xx, always the seed's
JSON error body, the server healthy afterwards, nothing written outside its persist dir."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pyarrow as pa
import pytest
import schemathesis
from hypothesis import given
from hypothesis import strategies as st

from edge.appliance import Appliance, LoadState, load_pipeline
from edge.config import load_settings
from edge.logbuffer import LogBuffer
from edge.server import create_app
from tests.conftest import REPO, publish
from tests.fuzz_support import (
    SETTINGS,
    assert_answered,
    configure,
    files_outside,
    hostile_tables,
    ipc_file,
    mutated,
)

ROOT = Path(tempfile.mkdtemp(prefix="fuzz-edge-"))


def _appliance() -> Appliance:
    folder = ROOT / "example"
    folder.mkdir()
    shutil.copy(REPO / "examples/breast-cancer/pipeline.yaml", folder / "pipeline.yaml")
    make_model = REPO / "examples/breast-cancer/make_model.py"
    subprocess.run([sys.executable, str(make_model), str(folder)], check=True, capture_output=True)
    url = publish(folder / "pipeline.yaml", layout=ROOT / "layout")["pipeline_url"]
    persist = ROOT / "persist"
    settings = load_settings({"pipeline_url": url, "persist_dir": persist, "partition": "fuzz"})
    buffer = LogBuffer(persist / "logbuffer.db")
    buffer.start()
    pipeline = load_pipeline(settings, echo=lambda line: None)
    return Appliance(settings, buffer=buffer, pipeline=pipeline, state=LoadState.RUNNING)


APPLIANCE = _appliance()
assert APPLIANCE.pipeline is not None
VERSION = APPLIANCE.pipeline.definition.version
SERVER = create_app(APPLIANCE)


async def APP(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The server, its parts already started here: a lifespan only acknowledged (schemathesis
    runs one around loading the schema, which would close the log buffer after it)."""
    if scope["type"] != "lifespan":
        return await SERVER(scope, receive, send)
    while True:
        message = await receive()
        await send({"type": message["type"] + ".complete"})
        if message["type"] == "lifespan.shutdown":
            return


schema = configure(schemathesis.openapi.from_asgi("/openapi.json", APP))
ROW = np.load(ROOT / "example/data/10k-rows.npy")[0].tolist()


@schema.parametrize()
def test_every_route_answers_generated_input_without_a_5xx(case: Any) -> None:
    if case.path == "/pipelines/{name}" and case.path_parameters:
        case.path_parameters["name"] = "breast-cancer"  # past the name, into the body
    if case.path.startswith("/v2/models/") and case.path_parameters:
        case.path_parameters["model_name"] = "breast-cancer"  # the V2 routes too
        if "model_version" in case.path_parameters:
            case.path_parameters["model_version"] = VERSION
    response = case.call()
    assert_answered(response, f"{case.method} {case.formatted_path}")


def infer(body: bytes, content_type: str, params: Any = None) -> httpx.Response:
    async def call() -> httpx.Response:
        transport = httpx.ASGITransport(app=APP)
        async with httpx.AsyncClient(transport=transport, base_url="http://edge") as client:
            headers = {"content-type": content_type}
            path = "/pipelines/breast-cancer"
            return await client.post(path, content=body, headers=headers, params=params)

    return asyncio.run(call())


JSON_VALUES = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**70), 2**70),
        st.floats(allow_nan=False),
        st.text(max_size=8),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@SETTINGS
@given(st.lists(st.dictionaries(st.sampled_from(["tensor", "x", ""]), JSON_VALUES), max_size=3))
def test_generated_records_are_answered_or_refused_never_a_5xx(rows: list[Any]) -> None:
    body = json.dumps(rows).encode()
    assert_answered(infer(body, "application/json; format=pandas-records"), "records")


@SETTINGS
@given(st.lists(st.floats(width=32) | st.integers(-(2**40), 2**40) | st.none(), max_size=40))
def test_near_miss_tensors_are_answered_or_refused_never_a_5xx(values: list[Any]) -> None:
    body = json.dumps([{"tensor": values}]).encode()
    assert_answered(infer(body, "application/json; format=pandas-records"), "records")


@SETTINGS
@given(mutated(json.dumps([{"tensor": ROW}]).encode()))
def test_mutated_records_are_answered_or_refused_never_a_5xx(body: bytes) -> None:
    assert_answered(infer(body, "application/json; format=pandas-records"), "records")


@SETTINGS
@given(hostile_tables(rows=2))
def test_arrow_tables_with_hostile_schemas_never_a_5xx(table: pa.Table) -> None:
    assert_answered(infer(ipc_file(table), "application/vnd.apache.arrow.file"), "arrow")


@SETTINGS
@given(mutated(ipc_file(pa.table({"tensor": pa.array([ROW], pa.list_(pa.float32()))}))))
def test_mutated_arrow_files_never_a_5xx(body: bytes) -> None:
    assert_answered(infer(body, "application/vnd.apache.arrow.file"), "arrow")


QUERY_NAMES = ["dataset", "dataset[]", "dataset_exclude", "dataset.exclude[]", "dataset.separator"]


@SETTINGS
@given(
    st.lists(st.tuples(st.sampled_from(QUERY_NAMES) | st.text(max_size=6), st.text(max_size=12)))
)
def test_any_query_parameters_never_a_5xx(params: list[tuple[str, str]]) -> None:
    body = json.dumps([{"tensor": ROW}]).encode()
    assert_answered(infer(body, "application/json", params), "query")


def v2_infer(body: bytes, header_length: int | str | None) -> httpx.Response:
    async def call() -> httpx.Response:
        transport = httpx.ASGITransport(app=APP)
        async with httpx.AsyncClient(transport=transport, base_url="http://edge") as client:
            headers = {}
            if header_length is not None:
                headers["Inference-Header-Content-Length"] = str(header_length)
            path = "/v2/models/breast-cancer/infer"
            return await client.post(path, content=body, headers=headers)

    return asyncio.run(call())


V2_HEADER = json.dumps(
    {
        "inputs": [
            {"name": "X", "shape": [1, 30], "datatype": "FP32"},
            {"name": "t", "shape": [1, 2], "datatype": "BYTES"},
        ],
        "outputs": [{"name": "label", "parameters": {"binary_data": True}}],
    }
).encode()
V2_RAW = np.asarray([ROW], np.float32).tobytes()
V2_TEXT = b"\x02\x00\x00\x00ab\x01\x00\x00\x00c"


def _binary_body() -> tuple[bytes, int]:
    header = json.loads(V2_HEADER)
    header["inputs"][0]["parameters"] = {"binary_data_size": len(V2_RAW)}
    header["inputs"][1]["parameters"] = {"binary_data_size": len(V2_TEXT)}
    encoded = json.dumps(header).encode()
    return encoded + V2_RAW + V2_TEXT, len(encoded)


@SETTINGS
@given(
    mutated(
        json.dumps(
            {"inputs": [{"name": "X", "shape": [1, 30], "datatype": "FP32", "data": ROW}]}
        ).encode()
    )
)
def test_mutated_v2_json_never_a_5xx(body: bytes) -> None:
    assert_answered(v2_infer(body, None), "v2 json")


@SETTINGS
@given(
    mutated(_binary_body()[0]),
    st.just(_binary_body()[1]) | st.integers(-2, 1200) | st.text("0123456789 +-x", max_size=6),
)
def test_mutated_v2_binary_bodies_and_header_lengths_never_a_5xx(
    body: bytes, header_length: int | str
) -> None:
    assert_answered(v2_infer(body, header_length), "v2 binary")


def test_every_route_the_document_lists_answers_a_valid_request() -> None:
    """/openapi.json is a valid OpenAPI document, and each route it lists answers 200."""
    from openapi_spec_validator import validate

    v2_body = {"inputs": [{"name": "X", "shape": [1, 30], "datatype": "FP32", "data": ROW}]}
    bodies = {
        "/pipelines/{name}": (json.dumps([{"tensor": ROW}]).encode(), {}),
        "/v2/models/{model_name}/infer": (json.dumps(v2_body).encode(), {}),
        "/v2/models/{model_name}/versions/{model_version}/infer": _binary_body(),
    }

    async def call() -> list[tuple[str, int]]:
        transport = httpx.ASGITransport(app=APP)
        async with httpx.AsyncClient(transport=transport, base_url="http://edge") as client:
            document = (await client.get("/openapi.json")).json()
            validate(document)
            answers = []
            for path, operations in document["paths"].items():
                url = path.format(
                    name="breast-cancer", model_name="breast-cancer", model_version=VERSION
                )
                for method in operations:
                    if method == "get":
                        reply = await client.get(url)
                    else:
                        body, extra = bodies[path]
                        headers = {}
                        if isinstance(extra, int):
                            headers["Inference-Header-Content-Length"] = str(extra)
                        reply = await client.post(url, content=body, headers=headers)
                    answers.append((f"{method} {path}", reply.status_code))
            return answers

    answers = asyncio.run(call())
    assert len(answers) == 18  # the seed API, logs, health, metrics, this document; V2
    assert [a for a in answers if a[1] != 200] == []


def test_afterwards_it_answers_and_logs_and_wrote_only_its_persist_dir() -> None:
    body = json.dumps([{"tensor": ROW}]).encode()
    assert infer(body, "application/json").status_code == 200
    assert APPLIANCE.buffer is not None
    logged, _ = APPLIANCE.buffer.query(limit=1)  # waits for the rows logged so far
    assert logged.num_rows == 1
    for folder in ("layout", "example"):  # made by this test: only the server's writes count
        shutil.rmtree(ROOT / folder)
    assert files_outside(ROOT, ROOT / "persist") == []


@pytest.fixture(scope="module", autouse=True)
def _close() -> Any:
    yield
    assert APPLIANCE.pipeline is not None and APPLIANCE.buffer is not None
    APPLIANCE.pipeline.close()
    APPLIANCE.buffer.close()
