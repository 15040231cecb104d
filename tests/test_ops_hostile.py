"""Hostile input at the ops center, one test per defect found by an attacker's read of it:
every answer is a 4xx with a JSON error naming what is wrong, nothing is written outside the
data directory, and no accepted batch can make a pipeline's logs unreadable."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pytest
import zstandard

from ops_sync import protocol
from ops_sync.identity import make_csr, new_key
from ops_sync.protocol import encode_batch
from tests.test_ops_server import T0, add_edge, admin, edge_call, joined_edge, run, upload
from tests.test_ops_support import PIPELINE_URL, Ops, result_table

VERSION = PIPELINE_URL.rsplit(":", 1)[1]


@pytest.fixture()
def ops(tmp_path: Path) -> Ops:
    return Ops(tmp_path / "data")


def refused(reply: httpx.Response, status: int = 400, says: str = "") -> dict[str, Any]:
    assert reply.status_code == status, reply.text
    body: dict[str, Any] = reply.json()
    assert body["status"] == "error" and body["code"] == status and body["reason"]
    assert says in body["error"], body["error"]
    return body


def raw_join(ops: Ops, body: bytes) -> httpx.Response:
    headers = {"content-type": "application/json"}
    return run(edge_call(ops, None, "/v1/edge/join", content=body, headers=headers))


# -- 1. unauthenticated join bodies -------------------------------------------------------
def test_deeply_nested_or_huge_number_join_bodies_are_400(ops: Ops) -> None:
    refused(raw_join(ops, b"[" * 100_000), says="not valid JSON")
    refused(raw_join(ops, b'{"token": ' + b"9" * 5000 + b', "csr": "x"}'), says="not valid JSON")


def test_a_lone_surrogate_in_the_token_or_csr_is_400(ops: Ops) -> None:
    token = add_edge(ops, "edge-a")
    csr = make_csr(new_key(), "device").decode().replace("\n", "\\n")
    refused(raw_join(ops, b'{"token": "\\ud800", "csr": "x"}'), says="not valid JSON")
    body = '{"token": "' + token + '", "csr": "' + csr + '\\udfff"}'
    refused(raw_join(ops, body.encode()), says="not valid JSON")
    # the real token still joins afterwards: nothing was consumed
    joined = run(
        edge_call(
            ops,
            None,
            "/v1/edge/join",
            json={"token": token, "csr": make_csr(new_key(), "d").decode()},
        )
    )
    assert joined.status_code == 200


# -- 2. numbers out of range from a valid edge --------------------------------------------
@pytest.mark.parametrize("first", [2**63, 2**63 - 1, 10**30, -1, 0])
def test_sequence_numbers_outside_int64_are_400(ops: Ops, first: int) -> None:
    cert = joined_edge(ops, "edge-a")
    headers = {"x-sync-epoch": "ep", "x-sync-first-seq": str(first), "x-sync-last-seq": str(first)}
    body = encode_batch(result_table(1, T0), None)  # headers as written: no Content-Encoding
    reply = run(edge_call(ops, cert, "/v1/edge/logs", content=body, headers=headers))
    refused(reply, says="x-sync" if first < 0 or first > 2**64 else "first_seq")


def test_the_largest_sequence_number_is_stored_once(ops: Ops) -> None:
    cert = joined_edge(ops, "edge-a")
    top = protocol.MAX_SEQ
    assert upload(ops, cert, top, result_table(1, T0)).json()["stored"] == 1
    assert upload(ops, cert, top, result_table(1, T0)).json()["duplicates"] == 1


def test_a_heartbeat_drop_counter_past_int64_is_400(ops: Ops) -> None:
    cert = joined_edge(ops, "edge-a")
    report = {"buffer": {"epoch": "ep", "dropped": {"rows": 2**70}}}
    reply = run(edge_call(ops, cert, "/v1/edge/heartbeat", json=report))
    refused(reply, says="dropped 'rows'")
    fine = {"buffer": {"epoch": "ep", "dropped": {"rows": 3}}}
    assert run(edge_call(ops, cert, "/v1/edge/heartbeat", json=fine)).status_code == 200


# -- 3. a null time ------------------------------------------------------------------------
def test_a_batch_with_a_null_time_is_400(ops: Ops) -> None:
    cert = joined_edge(ops, "edge-a")
    table = result_table(3, T0)
    times = pa.array([T0, None, T0 + 2], pa.int64()).cast(table.schema.field("time").type)
    table = table.set_column(0, "time", times)
    refused(upload(ops, cert, 1, table), says="`time` column has nulls")


# -- 4. a batch that would poison everyone's logs ----------------------------------------------
@pytest.mark.parametrize("name", ["_file", "_row", "_seq", "date", "partition", "in/../x"])
def test_columns_that_are_not_result_columns_are_400(ops: Ops, name: str) -> None:
    cert = joined_edge(ops, "edge-a")
    table = result_table(2, T0).append_column(name, pa.array([1, 2]))
    refused(upload(ops, cert, 1, table), says="is not a result column")
    assert logs_of(ops).status_code == 200


def test_a_column_changing_type_within_a_version_is_400_and_logs_stay_readable(
    ops: Ops,
) -> None:
    cert_a, cert_b = joined_edge(ops, "edge-a"), joined_edge(ops, "edge-b")
    assert upload(ops, cert_a, 1, result_table(4, T0)).json()["stored"] == 4
    poisoned = result_table(2, T0 + 10)
    poisoned = poisoned.set_column(1, "in.tensor", pa.array(["a", "b"]))
    refused(upload(ops, cert_b, 1, poisoned), says="logs it as list<item: float>")
    # the same kind in another width is stored as the version's type
    wider = result_table(2, T0 + 20)
    wider = wider.set_column(1, "in.tensor", wider.column(1).cast(pa.list_(pa.float64())))
    assert upload(ops, cert_b, 1, wider).json()["stored"] == 2
    reply = logs_of(ops)
    assert reply.status_code == 200 and len(reply.json()) == 6


def test_a_forged_pipeline_version_is_400(ops: Ops) -> None:
    cert = joined_edge(ops, "edge-a")
    table = result_table(2, T0)
    index = table.schema.get_field_index("metadata.pipeline_version")
    forged = table.set_column(index, "metadata.pipeline_version", pa.array(["nope", "nope"]))
    refused(upload(ops, cert, 1, forged), says="not a published version")


# -- 5. names --------------------------------------------------------------------------------
def test_an_edge_name_with_a_trailing_newline_is_400(ops: Ops) -> None:
    body = {"name": "edge-a\n", "pipeline_url": PIPELINE_URL}
    refused(run(admin(ops, "POST", "/v1/edges", json=body)), says="edge-a")
    assert run(admin(ops, "GET", "/v1/edges")).json() == {"edges": []}


@pytest.mark.parametrize("name", ["../../../../x", "a\x00b", "UPPER", "x" * 64, "-a"])
def test_a_publish_with_an_invalid_pipeline_name_is_400(
    ops: Ops, tmp_path: Path, name: str
) -> None:
    body = {"pipeline_url": "r.example/x/y:1", "pipeline_name": name, "pipeline_version": "1"}
    refused(run(admin(ops, "POST", "/v1/publishes", json=body)))
    assert run(admin(ops, "GET", "/v1/publishes")).json() == {"publishes": []}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # nothing outside


# -- 6. a pipeline URL that cannot go into a bundle -----------------------------------------
def test_a_pipeline_url_with_a_space_is_400_and_leaves_no_edge(ops: Ops) -> None:
    body = {"name": "edge-a", "pipeline_url": PIPELINE_URL + " x"}
    refused(run(admin(ops, "POST", "/v1/edges", json=body)), says="pipeline_url")
    assert run(admin(ops, "GET", "/v1/edges")).json() == {"edges": []}
    assert add_edge(ops, "edge-a")  # the retry with a good URL is not a 409


# -- 7. logs query ------------------------------------------------------------------------
@pytest.mark.parametrize(
    "params", [{"dataset": "../../x"}, {"dataset_exclude": "nope"}, {"limit": "1e3"}]
)
def test_bad_logs_query_parameters_are_400(ops: Ops, params: dict[str, str]) -> None:
    joined_edge(ops, "edge-a")
    refused(logs_of(ops, **params))


def logs_of(ops: Ops, **params: str) -> httpx.Response:
    return run(admin(ops, "GET", "/v1/pipelines/ccfraud/logs", params=params))


# -- 8. a batch's Content-Encoding ------------------------------------------------------------
def _framed(data: bytes, **options: Any) -> bytes:
    return zstandard.ZstdCompressor(**options).compress(data)


_IPC = encode_batch(result_table(3, T0), None)
_FRAME = _framed(encode_batch(result_table(3, T0), None))
BODIES: dict[str, Callable[[], bytes]] = {
    "other-coding": lambda: _IPC,
    "not-zstd": lambda: b"not zstd",
    "no-size": lambda: _framed(b"x" * 100, write_content_size=False),
    "bomb": lambda: _framed(bytes(65 << 20)),  # 2 kB on the wire
    "understated": lambda: _FRAME[:5] + bytes([_FRAME[5] - 1]) + _FRAME[6:],
    "trailing": lambda: _FRAME + b"tail",
    "truncated": lambda: _FRAME[:-3],
    "not-arrow": lambda: _framed(b"not arrow"),
}


@pytest.mark.parametrize(
    ("body", "coding", "status", "reason", "says"),
    [
        ("other-coding", "gzip", 415, "UnsupportedCoding", "'gzip' is not read here; send zstd"),
        ("not-zstd", "zstd", 400, "BadRequest", "not a zstd frame"),
        ("no-size", "zstd", 400, "BadRequest", "record its decoded size"),
        ("bomb", "zstd", 413, "PayloadTooLarge", "decodes to 68157440 bytes; at most 67108864"),
        ("understated", "zstd", 400, "BadRequest", "zstd frame cannot be read"),
        ("trailing", "zstd", 400, "BadRequest", "unused data"),
        ("truncated", "zstd", 400, "BadRequest", "zstd frame cannot be read"),
        ("not-arrow", "zstd", 400, "BadRequest", "Arrow IPC"),
    ],
)
def test_a_batch_body_that_does_not_decode_is_4xx_and_stores_nothing(
    ops: Ops, body: str, coding: str, status: int, reason: str, says: str
) -> None:
    cert = joined_edge(ops, "edge-a")
    headers = {**protocol.BatchRange("ep", 1, 3).headers(None), "content-encoding": coding}
    reply = run(edge_call(ops, cert, "/v1/edge/logs", content=BODIES[body](), headers=headers))
    assert refused(reply, status=status, says=says)["reason"] == reason
    if status == 415:  # RFC 7694: what it reads instead
        assert reply.headers["accept-encoding"] == "zstd"
    headers["content-encoding"] = "zstd"
    good = run(edge_call(ops, cert, "/v1/edge/logs", content=_FRAME, headers=headers))
    assert good.status_code == 200 and good.json()["stored"] == 3  # none stored before it
