"""The ops center under generated and mutated input (schemathesis over its /openapi.json, and
hypothesis-made Arrow batches with hostile schemas): never a 5xx, always a JSON error body,
the server healthy afterwards, nothing written outside its data directory."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import given
from hypothesis import strategies as st

from ops_sync.identity import make_csr, new_key
from ops_sync.serve import with_tls_extension
from tests.fuzz_support import (
    SETTINGS,
    assert_answered,
    configure,
    files_outside,
    hostile_tables,
    ipc_stream,
    mutated,
)
from tests.test_ops_support import ADMIN, PIPELINE_URL, Ops, result_table

ROOT = Path(tempfile.mkdtemp(prefix="fuzz-ops-"))
OPS = Ops(ROOT / "data")
BUNDLE_TOKEN = OPS.add_edge("edge-a")["docker_run_variables"]["EDGE_BUNDLE"]
T0 = 1_790_000_000_000


def _joined() -> str:
    from ops_sync import protocol

    token = protocol.decode(BUNDLE_TOKEN)["JOIN_TOKEN"]
    return str(OPS.center.join(token, make_csr(new_key(), "fuzz"))["certificate"])


CERT = _joined()
APP = with_tls_extension(OPS.app, {"client_cert_chain": [CERT]})  # every call is the edge's
schema = configure(schemathesis.openapi.from_asgi("/openapi.json", APP))


@schema.parametrize()
def test_every_route_answers_generated_input_without_a_5xx(case: Any) -> None:
    response = case.call(headers={"authorization": f"Bearer {ADMIN}"})
    assert_answered(response, f"{case.method} {case.formatted_path}")


@schema.parametrize()
def test_every_route_answers_without_credentials_without_a_5xx(case: Any) -> None:
    response = case.call(app=OPS.app)  # no admin token, no certificate
    assert_answered(response, f"{case.method} {case.formatted_path}")


def upload(body: bytes, first: int = 1, last: int = 3) -> httpx.Response:
    async def call() -> httpx.Response:
        transport = httpx.ASGITransport(app=APP)
        async with httpx.AsyncClient(transport=transport, base_url="https://ops") as client:
            headers = {"x-sync-epoch": "fuzz", "x-sync-first-seq": str(first)}
            headers["x-sync-last-seq"] = str(last)
            return await client.post("/v1/edge/logs", content=body, headers=headers)

    return asyncio.run(call())


@SETTINGS
@given(hostile_tables())
def test_batches_with_hostile_schemas_are_refused_or_stored_never_a_5xx(table: Any) -> None:
    assert_answered(upload(ipc_stream(table)), "upload")


@SETTINGS
@given(mutated(ipc_stream(result_table(3, T0))))
def test_mutated_batches_are_refused_or_stored_never_a_5xx(body: bytes) -> None:
    assert_answered(upload(body), "upload")


@SETTINGS
@given(st.integers(-(2**70), 2**70), st.integers(-(2**70), 2**70))
def test_any_sequence_headers_are_refused_or_stored_never_a_5xx(first: int, last: int) -> None:
    assert_answered(upload(ipc_stream(result_table(3, T0)), first, last), "upload")


def test_afterwards_the_logs_read_and_nothing_was_written_outside_the_data_dir() -> None:
    async def read() -> httpx.Response:
        transport = httpx.ASGITransport(app=OPS.app)
        headers = {"authorization": f"Bearer {ADMIN}"}
        async with httpx.AsyncClient(transport=transport, base_url="https://ops") as client:
            assert (await client.get("/healthz")).status_code == 200
            return await client.get("/v1/pipelines/ccfraud/logs", headers=headers)

    reply = asyncio.run(read())
    assert reply.status_code == 200, reply.text
    assert files_outside(ROOT, ROOT / "data") == []
    assert PIPELINE_URL in {p["pipeline_url"] for p in OPS.center.publishes()}


@pytest.fixture(scope="module", autouse=True)
def _close() -> Any:
    yield
    OPS.center.close()
