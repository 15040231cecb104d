"""The ops center's HTTP API in process: admin auth, join refusals, identity from the
certificate, the 7-day rule on an injected clock, uploads and the logs API."""

from __future__ import annotations

import asyncio
import io
import json
import threading
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from edge import logquery
from edge.codecs import Shape
from edge.logquery import TOO_LARGE
from ops_sync import logs
from ops_sync import protocol as bundle
from ops_sync.center import OpsCenter
from ops_sync.deltatable import TableWriter
from ops_sync.identity import CertificateAuthority, cert_pem, load_cert, make_csr, new_key
from ops_sync.protocol import BatchRange, encode_batch
from ops_sync.server import create_app
from tests.test_ops_support import ADMIN, DAY, PIPELINE_URL, Ops, result_table

T0 = 1_790_000_000_000


@pytest.fixture()
def ops(tmp_path: Path) -> Ops:
    return Ops(tmp_path)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def admin(ops: Ops, method: str, path: str, token: str | None = ADMIN, **kw: Any) -> Any:
    async with ops.admin_client(token) as client:
        return await client.request(method, path, **kw)


async def edge_call(ops: Ops, cert: str | None, path: str, **kw: Any) -> Any:
    async with ops.edge_client(cert) as client:
        return await client.post(path, **kw)


def add_edge(ops: Ops, name: str) -> str:
    """Add an edge over the admin API; return its join token."""
    reply = run(admin(ops, "POST", "/v1/edges", json={"name": name, "pipeline_url": PIPELINE_URL}))
    assert reply.status_code == 201, reply.text
    return bundle.decode(reply.json()["docker_run_variables"]["EDGE_BUNDLE"])["JOIN_TOKEN"]


def join(ops: Ops, token: str, key: Any = None) -> Any:
    csr = make_csr(key or new_key(), "device").decode()
    return run(edge_call(ops, None, "/v1/edge/join", json={"token": token, "csr": csr}))


def upload(ops: Ops, cert: str, first: int, table: pa.Table, epoch: str = "ep1") -> Any:
    headers = BatchRange(epoch, first, first + table.num_rows - 1).headers()
    return run(edge_call(ops, cert, "/v1/edge/logs", content=encode_batch(table), headers=headers))


def joined_edge(ops: Ops, name: str) -> str:
    reply = join(ops, add_edge(ops, name))
    assert reply.status_code == 200, reply.text
    return str(reply.json()["certificate"])


# -- admin ------------------------------------------------------------------------------------
def test_admin_api_needs_the_admin_token(ops: Ops) -> None:
    for token in (None, "wrong", ADMIN + "x", ""):
        reply = run(admin(ops, "GET", "/v1/edges", token=token))
        assert reply.status_code == 401
        assert reply.json()["reason"] == "AdminAuthRequired"
        assert ADMIN not in reply.text
    assert run(admin(ops, "GET", "/v1/edges")).json() == {"edges": []}


def test_add_edge_returns_the_publish_record_with_a_bundle(ops: Ops) -> None:
    body = {"name": "edge-a", "pipeline_url": PIPELINE_URL, "tags": ["dc1"]}
    record = run(admin(ops, "POST", "/v1/edges", json=body)).json()
    assert record["pipeline_url"] == PIPELINE_URL and record["status"] == "Published"
    values = bundle.decode(record["docker_run_variables"]["EDGE_BUNDLE"])
    assert values["EDGE_NAME"] == "edge-a" and values["OPSCENTER_HOST"] == "127.0.0.1:8443"
    assert values["PIPELINE_URL"] == PIPELINE_URL and values["BUNDLE_VERSION"] == "1"
    assert bundle.ca_pem(values) == ops.center.ca.pem
    again = run(admin(ops, "POST", "/v1/edges", json=body))
    assert again.status_code == 409 and again.json()["reason"] == "Conflict"
    (edge,) = run(admin(ops, "GET", "/v1/edges")).json()["edges"]
    assert edge["name"] == "edge-a" and edge["tags"] == ["dc1"]
    assert edge["pipeline_version"] == "3b49fba8-94d8-4fca-aecc-c75257fd16c6"
    assert edge["spiffe_id"] == f"spiffe://ops-sync.local/ns/deployments/edge/{edge['id']}"
    assert edge["credentials"] == "not joined" and edge["last_seen"] is None
    publishes = run(admin(ops, "GET", "/v1/publishes")).json()["publishes"]
    assert [p["pipeline_name"] for p in publishes] == ["ccfraud"]


def test_bad_admin_input_is_a_clear_4xx(ops: Ops) -> None:
    reply = run(admin(ops, "POST", "/v1/edges", content=b"{not json"))
    assert reply.status_code == 400 and "not valid JSON" in reply.json()["error"]
    reply = run(admin(ops, "POST", "/v1/edges", json={"name": "a/b", "pipeline_url": "x"}))
    assert reply.status_code == 400
    reply = run(admin(ops, "DELETE", "/v1/edges/nobody"))
    assert reply.status_code == 404 and reply.json()["reason"] == "NotFound"
    reply = run(admin(ops, "GET", "/v1/nowhere"))
    assert reply.status_code == 404 and reply.json()["status"] == "error"


# -- join ---------------------------------------------------------------------------------------
def test_join_refusals_are_distinct_and_never_echo_the_token(ops: Ops) -> None:
    token = add_edge(ops, "edge-a")
    assert join(ops, token).status_code == 200
    stale = add_edge(ops, "edge-late")
    removed = add_edge(ops, "edge-gone")
    run(admin(ops, "DELETE", "/v1/edges/edge-gone"))
    cases = {"TokenUsed": token, "TokenUnknown": "no-such-token", "EdgeRemoved": removed}
    for reason, tok in cases.items():
        reply = join(ops, tok)
        assert (reply.status_code, reply.json()["reason"]) == (403, reason)
        assert tok not in reply.text
    ops.clock.advance(DAY + 1)
    for _ in range(2):  # the expired attempt consumes the token; it stays "expired"
        reply = join(ops, stale)
        assert (reply.status_code, reply.json()["reason"]) == (403, "TokenExpired")
        assert "24 h" in reply.json()["error"] and stale not in reply.text


def test_join_returns_a_certificate_for_the_csr_key(ops: Ops) -> None:
    key = new_key()
    reply = join(ops, add_edge(ops, "edge-a"), key).json()
    cert = ops.center.ca.verify_edge(load_cert(reply["certificate"].encode()))
    assert (
        cert.edge_id == reply["edge_id"] and reply["ca_certificate"] == ops.center.ca.pem.decode()
    )
    (edge,) = run(admin(ops, "GET", "/v1/edges")).json()["edges"]
    assert edge["credentials"] == "valid" and edge["last_seen"] is not None


# -- identity after the join --------------------------------------------------------------------
def test_edge_calls_need_a_certificate_of_ours(ops: Ops, tmp_path: Path) -> None:
    joined_edge(ops, "edge-a")
    reply = run(edge_call(ops, None, "/v1/edge/heartbeat", json={}))
    assert (reply.status_code, reply.json()["reason"]) == (401, "CertificateRequired")
    other = CertificateAuthority.load_or_create(
        tmp_path / "o.crt", tmp_path / "o.key", "ops-sync.local", ops.clock()
    )
    edge_id = run(admin(ops, "GET", "/v1/edges")).json()["edges"][0]["id"]
    forged = cert_pem(other.issue_edge(make_csr(new_key(), "x"), edge_id, ops.clock())).decode()
    reply = run(edge_call(ops, forged, "/v1/edge/heartbeat", json={}))
    assert reply.status_code == 401 and "not issued by this ops center" in reply.json()["error"]


def test_an_edge_cannot_write_another_edges_logs(ops: Ops) -> None:
    cert_a = joined_edge(ops, "edge-a")
    joined_edge(ops, "edge-b")
    forged_rows = result_table(5, T0, partition="edge-b")  # payload claims edge-b
    assert upload(ops, cert_a, 1, forged_rows).json()["stored"] == 5
    table, _ = logs.fetch(ops.center.logs, "ccfraud", logs.LogQuery(partition="edge-b"))
    assert table.num_rows == 0
    query = logs.LogQuery(shape=Shape(dataset=("time", "metadata")), partition="edge-a")
    table, _ = logs.fetch(ops.center.logs, "ccfraud", query)
    assert table.num_rows == 5
    assert set(table.column("metadata.partition").to_pylist()) == {"edge-a"}


def test_silent_for_more_than_seven_days_is_refused_and_renewal_keeps_it_alive(ops: Ops) -> None:
    key = new_key()
    cert = join(ops, add_edge(ops, "edge-a"), key).json()["certificate"]
    ops.clock.advance(4 * DAY)
    renewed = run(edge_call(ops, cert, "/v1/edge/renew", json={"csr": make_csr(key, "d").decode()}))
    assert renewed.status_code == 200
    other_key = run(
        edge_call(ops, cert, "/v1/edge/renew", json={"csr": make_csr(new_key(), "d").decode()})
    )
    assert other_key.status_code == 400 and "key of the presented" in other_key.json()["error"]
    new_cert = renewed.json()["certificate"]
    ops.clock.advance(6 * DAY)  # 10 days after the join, 6 after the last contact
    assert run(edge_call(ops, new_cert, "/v1/edge/heartbeat", json={})).status_code == 200
    ops.clock.advance(7 * DAY + 60)
    reply = run(edge_call(ops, new_cert, "/v1/edge/heartbeat", json={}))
    assert (reply.status_code, reply.json()["reason"]) == (403, "CredentialsExpired")
    assert "new bundle" in reply.json()["error"]
    (edge,) = run(admin(ops, "GET", "/v1/edges")).json()["edges"]
    assert edge["credentials"] == "expired"


def test_a_removed_edge_is_refused(ops: Ops) -> None:
    cert = joined_edge(ops, "edge-a")
    run(admin(ops, "DELETE", "/v1/edges/edge-a"))
    reply = upload(ops, cert, 1, result_table(2, T0))
    assert (reply.status_code, reply.json()["reason"]) == (403, "EdgeRemoved")
    joined_edge(ops, "edge-a")  # the same name again: a new bundle, the old cert still refused
    reply = upload(ops, cert, 1, result_table(2, T0))
    assert reply.json()["reason"] == "EdgeRemoved"


def test_heartbeat_health_and_exact_drop_counts_show_in_list_edges(ops: Ops) -> None:
    cert = joined_edge(ops, "edge-a")
    report = {
        "health": {"pipelines": [{"id": "ccfraud", "status": "Running"}]},
        "buffer": {"epoch": "ep1", "unsynced_rows": 12, "dropped": {"input_values": 3, "rows": 0}},
    }
    assert run(edge_call(ops, cert, "/v1/edge/heartbeat", json=report)).status_code == 200
    report["buffer"]["dropped"] = {"input_values": 5, "rows": 1}
    run(edge_call(ops, cert, "/v1/edge/heartbeat", json=report))
    (edge,) = run(admin(ops, "GET", "/v1/edges")).json()["edges"]
    assert edge["dropped"] == {"input_values": 5, "rows": 1}
    assert edge["health"]["health"]["pipelines"][0]["status"] == "Running"
    assert edge["health"]["buffer"]["unsynced_rows"] == 12


def test_a_heartbeat_is_recorded_whole_or_not_at_all(ops: Ops) -> None:
    cert = joined_edge(ops, "edge-a")
    report = {"health": {"n": 1}, "buffer": {"epoch": "ep1", "dropped": {"rows": 1}}}
    assert run(edge_call(ops, cert, "/v1/edge/heartbeat", json=report)).status_code == 200
    with ops.center.store.db.tx() as tx:  # the dashboard's history can no longer be written
        tx.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON edge_heartbeats"
            " BEGIN SELECT RAISE(ABORT, 'history refused'); END"
        )
    report = {"health": {"n": 2}, "buffer": {"epoch": "ep1", "dropped": {"rows": 5}}}
    reply = run(edge_call(ops, cert, "/v1/edge/heartbeat", json=report))
    assert (reply.status_code, reply.json()["reason"]) == (507, "StoreError")
    (edge,) = run(admin(ops, "GET", "/v1/edges")).json()["edges"]
    assert edge["dropped"] == {"rows": 1}  # neither the counters nor the health half-kept
    assert edge["health"]["health"] == {"n": 1}


def test_upload_validation(ops: Ops) -> None:
    cert = joined_edge(ops, "edge-a")
    reply = run(edge_call(ops, cert, "/v1/edge/logs", content=b"x"))
    assert reply.status_code == 400 and "x-sync-epoch" in reply.json()["error"]
    headers = {"x-sync-epoch": "e", "x-sync-first-seq": "1", "x-sync-last-seq": "1"}
    reply = run(edge_call(ops, cert, "/v1/edge/logs", content=b"not arrow", headers=headers))
    assert reply.status_code == 400 and "Arrow IPC" in reply.json()["error"]
    small = Ops(ops.root / "small")
    small.app = create_app(small.center, max_body=1000)
    cert = joined_edge(small, "edge-a")
    reply = upload(small, cert, 1, result_table(500, T0))
    assert reply.status_code == 413 and reply.json()["reason"] == "PayloadTooLarge"


def test_uploads_waiting_for_their_commit_hold_no_worker_thread(
    ops: Ops, monkeypatch: pytest.MonkeyPatch
) -> None:
    """60 uploads wait on one held commit (more than anyio's 40 worker threads) while an admin
    call that needs a thread still answers; once the commit goes through, every upload is
    acked with its rows stored."""
    cert = joined_edge(ops, "edge-a")
    gate, commit = threading.Event(), TableWriter.commit

    def held(self: TableWriter, *args: Any, **kwargs: Any) -> Any:
        gate.wait(60)
        return commit(self, *args, **kwargs)

    monkeypatch.setattr(TableWriter, "commit", held)
    body = encode_batch(result_table(5, T0))

    def headers(i: int) -> dict[str, str]:
        return BatchRange(f"ep{i}", 1, 5).headers()

    async def scenario() -> tuple[Any, list[Any]]:
        async with ops.edge_client(cert) as client:
            posts = [
                client.post("/v1/edge/logs", content=body, headers=headers(i)) for i in range(60)
            ]
            uploads = [asyncio.ensure_future(p) for p in posts]
            await asyncio.sleep(2)
            try:
                listed = await asyncio.wait_for(admin(ops, "GET", "/v1/edges"), 10)
            finally:
                gate.set()
            return listed, await asyncio.gather(*uploads)

    listed, replies = run(scenario())
    assert listed.status_code == 200 and listed.json()["edges"][0]["name"] == "edge-a"
    assert [r.status_code for r in replies] == [200] * 60
    assert sum(r.json()["stored"] for r in replies) == 300


# -- logs API -----------------------------------------------------------------------------------
def logs_call(ops: Ops, arrow: bool = False, export: bool = False, **params: Any) -> Any:
    headers = {"accept": "application/vnd.apache.arrow.file"} if arrow else {}
    path = "/v1/pipelines/ccfraud/logs" + ("/export" if export else "")
    return run(admin(ops, "GET", path, params=params, headers=headers))


def warnings(reply: Any) -> list[str]:
    return list(reply.headers.get_list("x-ops-warning"))


@pytest.fixture()
def loaded(ops: Ops) -> Ops:
    cert_a, cert_b = joined_edge(ops, "edge-a"), joined_edge(ops, "edge-b")
    upload(ops, cert_a, 1, result_table(150, T0, dropped=True))  # times T0 .. T0+149
    upload(ops, cert_b, 1, result_table(30, T0 + 1000))  # times T0+1000 .. T0+1029
    return ops


def test_logs_default_limit_newest_first_with_the_seed_warning(loaded: Ops) -> None:
    reply = logs_call(loaded)
    records = reply.json()
    assert len(records) == 100
    assert [r["time"] for r in records[:3]] == [T0 + 1029, T0 + 1028, T0 + 1027]
    assert logs.MORE_LOGS in warnings(reply)
    assert logs.MORE_LOGS == (
        "Warning: There are more logs available. Please set a larger limit or request a file "
        "using export_logs."
    )
    assert set(records[0]) == {"time", "in", "out", "anomaly"}  # dataset "*"


def test_logs_start_and_end_go_together_and_give_chronological_order(loaded: Ops) -> None:
    reply = logs_call(loaded, start_datetime=str(T0))
    assert reply.status_code == 400 and "together" in reply.json()["error"]
    reply = logs_call(loaded, start_datetime=str(T0 + 10), end_datetime=str(T0 + 1005), limit=500)
    times = [r["time"] for r in reply.json()]
    assert times == sorted(times) and times[0] == T0 + 10 and times[-1] == T0 + 1005
    assert logs.MORE_LOGS not in warnings(reply)
    iso = logs_call(
        loaded, start_datetime="2026-09-21T00:00:00Z", end_datetime="2026-09-23T00:00:00+00:00"
    )
    assert iso.status_code == 200


def test_logs_arrow_shapes_and_partition_filter(loaded: Ops) -> None:
    reply = logs_call(
        loaded, arrow=True, dataset=["time", "metadata"], partition="edge-a", limit=1000
    )
    table = pa.ipc.open_file(io.BytesIO(reply.content)).read_all()
    assert table.num_rows == 150
    assert table.schema.field("time").type == pa.int64()
    assert table.schema.field("metadata.dropped").type == pa.list_(pa.string())
    assert table.column("metadata.dropped").null_count == 0
    assert set(table.column("metadata.partition").to_pylist()) == {"edge-a"}
    assert not any(c.startswith("in.") or c.startswith("_") for c in table.column_names)
    dropped = logquery.DROPPED_COLUMNS.format(columns="in.tensor")
    assert dropped in warnings(reply)
    assert dropped.startswith("The inference log is above the allowable limit")


def test_logs_flat_keys_with_a_separator_and_excludes(loaded: Ops) -> None:
    reply = logs_call(loaded, **{"dataset.separator": ".", "dataset_exclude": "in", "limit": 2})
    record = reply.json()[0]
    assert "out.dense_1" in record and "anomaly.count" in record
    assert not any(key.startswith("in") for key in record)


def test_logs_refusals(loaded: Ops) -> None:
    assert logs_call(loaded, limit=0).status_code == 400
    reply = logs_call(loaded, limit=100_001)
    assert reply.status_code == 400 and reply.json()["error"] == TOO_LARGE
    reply = run(admin(loaded, "GET", "/v1/pipelines/nope/logs"))
    assert reply.status_code == 404
    reply = logs_call(loaded, start_datetime="yesterday", end_datetime="today")
    assert reply.status_code == 400 and "ISO 8601" in reply.json()["error"]


def test_export_ndjson_and_arrow_with_a_size_limit(loaded: Ops) -> None:
    reply = logs_call(loaded, export=True, limit=1000)
    lines = reply.content.decode().splitlines()
    assert len(lines) == 180 and "in.tensor" in json.loads(lines[-1])
    assert reply.headers["content-type"].startswith("application/x-ndjson")
    reply = logs_call(loaded, export=True, limit=100)
    assert logs.MORE_EXPORT in warnings(reply)
    reply = logs_call(loaded, export=True, limit=1000, data_size_limit="4 KiB")
    assert len(reply.content) <= 4096 and reply.content
    assert any("data_size_limit" in w for w in warnings(reply))
    reply = logs_call(loaded, export=True, arrow=True, limit=1000)
    assert pa.ipc.open_file(io.BytesIO(reply.content)).read_all().num_rows == 180
    assert logs_call(loaded, export=True, data_size_limit="lots").status_code == 400


def test_parse_size_accepts_the_seed_units() -> None:
    assert logs.parse_size("10 MiB") == logs.parse_size("10MiB") == 10 << 20
    assert logs.parse_size("100MB") == 100_000_000
    assert logs.parse_size("2 GiB") == 2 << 30


def test_the_trust_domain_changes_without_re_enrolling_edges(tmp_path: Path) -> None:
    """An ops center restarted with another trust domain (accepting the former one) still
    authenticates the edges it enrolled; their renewal and `list_edges` carry the new id."""
    first = Ops(tmp_path)
    token = bundle.decode(first.add_edge("edge-a")["docker_run_variables"]["EDGE_BUNDLE"])
    joined = first.join(token["JOIN_TOKEN"])
    assert joined.spiffe_id == f"spiffe://ops-sync.local/ns/deployments/edge/{joined.edge_id}"
    first.center.close()
    center = OpsCenter(
        tmp_path,
        ADMIN,
        "127.0.0.1:8443",
        trust_domain="wallaroo.ai",
        accepted_domains=("ops-sync.local",),
        commit_interval=0.0,
    )
    try:
        edge = center.authenticate(joined.cert)
        renewed = center.renew(edge, make_csr(joined.key, "x"))
        want = f"spiffe://wallaroo.ai/ns/deployments/edge/{joined.edge_id}"
        assert renewed["spiffe_id"] == want
        assert center.authenticate(renewed["certificate"])["id"] == joined.edge_id
        assert [e["spiffe_id"] for e in center.list_edges()] == [want]
    finally:
        center.close()


def with_version(table: pa.Table, version: str, anomalies: list[int]) -> pa.Table:
    index = table.schema.get_field_index("metadata.pipeline_version")
    table = table.set_column(
        index, "metadata.pipeline_version", pa.array([version] * table.num_rows)
    )
    index = table.schema.get_field_index("anomaly.count")
    return table.set_column(index, "anomaly.count", pa.array(anomalies, pa.uint32()))


def test_logs_are_the_current_versions_and_filter_by_validity(ops: Ops) -> None:
    """As on the device: without a time range, the newest row's pipeline version only
    (`pipeline_version` picks another); `valid=false` keeps rows with an anomaly."""
    v1 = "3b49fba8-94d8-4fca-aecc-c75257fd16c6"
    v2 = "0a1b2c3d-94d8-4fca-aecc-c75257fd16c6"
    ops.center.register_publish({"pipeline_url": PIPELINE_URL.replace(v1, v2)})
    cert = joined_edge(ops, "edge-a")
    assert upload(ops, cert, 1, with_version(result_table(5, T0), v1, [0, 1, 0, 0, 2])).is_success
    assert upload(ops, cert, 6, with_version(result_table(3, T0 + 100), v2, [1, 0, 0])).is_success

    def rows(**params: Any) -> list[tuple[int, int]]:
        reply = logs_call(ops, dataset=["time", "anomaly"], **params)
        assert reply.status_code == 200, reply.text
        return [(r["time"] - T0, r["anomaly"]["count"]) for r in reply.json()]

    assert rows() == [(102, 0), (101, 0), (100, 1)]
    assert rows(valid="false") == [(100, 1)]
    assert rows(valid="true") == [(102, 0), (101, 0)]
    assert rows(pipeline_version=v1, valid="false") == [(4, 2), (1, 1)]
    both = {"start_datetime": str(T0), "end_datetime": str(T0 + 1000)}
    assert len(rows(**both)) == 8
    assert rows(**both, valid="false") == [(1, 1), (4, 2), (100, 1)]
    assert logs_call(ops, valid="maybe").status_code == 400


def test_the_openapi_document_is_valid_and_lists_every_route(ops: Ops) -> None:
    """Clients and the fuzz tests know the routes from /openapi.json: none may be missing."""
    from openapi_spec_validator import validate
    from starlette.routing import Route

    document = run(admin(ops, "GET", "/openapi.json")).json()
    validate(document)
    listed = {(path, method.upper()) for path, item in document["paths"].items() for method in item}
    served = {
        (route.path, method)
        for route in ops.app.routes
        if isinstance(route, Route)
        for method in route.methods or ()
        if method != "HEAD"
    }
    assert served - listed == set()


def test_batches_are_read_as_one_zstd_frame_or_with_compressed_buffers(ops: Ops) -> None:
    """The agent's body (one zstd frame, `Content-Encoding: zstd`) and the one every ops
    center reads (buffers compressed inside the IPC stream, no coding) store the same rows;
    the edge's replies say the ops center reads the frame (RFC 7694's Accept-Encoding)."""
    cert = joined_edge(ops, "edge-a")
    framed = upload(ops, cert, 1, result_table(20, T0))
    assert framed.status_code == 200 and framed.json()["stored"] == 20
    assert framed.headers["accept-encoding"] == "zstd"
    body = encode_batch(result_table(20, T0 + 20), None)
    assert len(encode_batch(result_table(20, T0 + 20))) < len(body)
    plain = run(
        edge_call(
            ops,
            cert,
            "/v1/edge/logs",
            content=body,
            headers=BatchRange("ep1", 21, 40).headers(None),
        )
    )
    assert plain.status_code == 200 and plain.json()["stored"] == 20
    beat = run(edge_call(ops, cert, "/v1/edge/heartbeat", json={}))
    assert beat.status_code == 200 and beat.headers["accept-encoding"] == "zstd"
    got, _, _ = ops.center.logs.read("ccfraud", None, None, None, 100)
    assert sorted(got.column("time").cast("int64").to_pylist()) == list(range(T0, T0 + 40))


def test_a_version_published_after_an_edge_began_uploading_is_accepted(ops: Ops) -> None:
    """The ops center keeps the versions it has seen published (publishes are never deleted)
    and asks its database again for one it has not: a version registered later, on any
    replica, is accepted at once; one never registered stays refused."""
    cert = joined_edge(ops, "edge-a")
    assert upload(ops, cert, 1, result_table(2, T0)).json()["stored"] == 2
    newer = result_table(2, T0 + 2)
    index = newer.schema.get_field_index("metadata.pipeline_version")
    newer = newer.set_column(index, "metadata.pipeline_version", pa.array(["v-next"] * 2))
    refused = upload(ops, cert, 3, newer)
    assert refused.status_code == 400 and "not a published version" in refused.json()["error"]
    url = PIPELINE_URL.rsplit(":", 1)[0] + ":v-next"
    assert run(admin(ops, "POST", "/v1/publishes", json={"pipeline_url": url})).status_code == 201
    assert upload(ops, cert, 3, newer).json()["stored"] == 2
