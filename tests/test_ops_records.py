"""The seed's publish and edge records at the ops center (issue 16, item 11): `cpus`,
`memory`, `pipeline_version_id`, `additional_properties` on edges; `remove_edge` returns
nothing; edges per publish; publishes with `created_by`, `created_at` / `updated_at` and a
deployment config override; and the metadata migration that brings older databases along."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from ops_sync.client import AdminClient
from ops_sync.metadb import Database
from ops_sync.store import MIGRATIONS, Store
from tests.test_ops_support import ADMIN, PIPELINE_URL, Ops

OTHER_URL = "127.0.0.1:5000/edge/pipelines/ccfraud:9d0c4a54-5d55-4bd8-9b3a-0b9e0d2d2b11"
IRIS_URL = "127.0.0.1:5000/edge/pipelines/iris:1f0e2a8c-3c4d-4e5f-8a9b-0c1d2e3f4a5b"
SEED_CONFIG = {
    "engine": {
        "resources": {
            "limits": {"cpu": 0.5, "memory": "900Mi"},
            "requests": {"cpu": 0.5, "memory": "900Mi"},
        }
    },
    "engineAux": {"images": {}},
    "enginelb": {},
}


def call(ops: Ops, method: str, path: str, **kw: Any) -> Any:
    async def go() -> Any:
        async with ops.admin_client() as client:
            return await client.request(method, path, **kw)

    return asyncio.run(go())


def register(ops: Ops, url: str = PIPELINE_URL, **fields: Any) -> dict[str, Any]:
    reply = call(ops, "POST", "/v1/publishes", json={"pipeline_url": url, **fields})
    assert reply.status_code == 201, reply.text
    result: dict[str, Any] = reply.json()
    return result


def test_add_edge_and_list_edges_carry_the_seeds_edge_fields(tmp_path: Path) -> None:
    ops = Ops(tmp_path)
    publish = register(ops, engine_config=SEED_CONFIG, created_by="mlops@example.com")
    body = {
        "name": "edge-a",
        "pipeline_url": PIPELINE_URL,
        "tags": ["dc1"],
        "additional_properties": {"site": "plant-3"},
    }
    record = call(ops, "POST", "/v1/edges", json=body).json()
    # the publish record: the seed's Add Edge Returns table
    assert record["id"] == publish["id"] and record["created_by"] == "mlops@example.com"
    assert record["pipeline_version_id"] == publish["pipeline_version_id"] == 1
    assert record["pipeline_version_name"] == PIPELINE_URL.rsplit(":", 1)[1]
    assert record["engine_config"] == SEED_CONFIG and record["created_at"]
    assert record["updated_at"] == record["created_at"]
    edge = record["edge"]
    assert (edge["cpus"], edge["memory"]) == (0.5, "900Mi")
    assert edge["pipeline_version_id"] == 1 and edge["publish_id"] == publish["id"]
    assert edge["additional_properties"] == {"site": "plant-3"}
    (listed,) = call(ops, "GET", "/v1/edges").json()["edges"]
    for key in ("id", "name", "tags", "cpus", "memory", "pipeline_version_id", "spiffe_id"):
        assert listed[key] == edge[key]
    assert listed["additional_properties"] == {"site": "plant-3"}
    # an edge added without properties or a known engine config: {} and nulls, not absent
    ops.center.add_edge("edge-b", IRIS_URL, [])
    by_name = {e["name"]: e for e in call(ops, "GET", "/v1/edges").json()["edges"]}
    assert by_name["edge-b"]["additional_properties"] == {}
    assert (by_name["edge-b"]["cpus"], by_name["edge-b"]["memory"]) == (None, None)
    assert by_name["edge-b"]["pipeline_version_id"] == 2


def test_remove_edge_returns_nothing(tmp_path: Path) -> None:
    ops = Ops(tmp_path)
    ops.add_edge("edge-a")
    reply = call(ops, "DELETE", "/v1/edges/edge-a")
    assert reply.status_code == 204 and reply.content == b""
    assert call(ops, "GET", "/v1/edges").json()["edges"] == []
    again = call(ops, "DELETE", "/v1/edges/edge-a")
    assert again.status_code == 404 and "edge-a" in again.json()["error"]


def test_the_admin_client_remove_edge_returns_none(tmp_path: Path) -> None:
    import httpx

    ops = Ops(tmp_path)
    ops.add_edge("edge-a")
    transport = _SyncASGI(ops)
    with AdminClient("https://ops", ADMIN, transport=transport) as client:
        assert client.remove_edge("edge-a") is None
        assert client.list_edges() == []
    assert isinstance(transport, httpx.BaseTransport)


def test_edges_are_listed_per_publish_and_per_pipeline(tmp_path: Path) -> None:
    ops = Ops(tmp_path)
    first = ops.add_edge("edge-a")
    second = ops.add_edge("edge-b", OTHER_URL)
    ops.add_edge("edge-c", IRIS_URL)

    def names(path: str, **params: Any) -> list[str]:
        reply = call(ops, "GET", path, params=params)
        assert reply.status_code == 200, reply.text
        return [e["name"] for e in reply.json()["edges"]]

    assert names("/v1/edges") == ["edge-a", "edge-b", "edge-c"]
    assert names("/v1/edges", publish_id=first["id"]) == ["edge-a"]
    assert names(f"/v1/publishes/{second['id']}/edges") == ["edge-b"]
    assert names("/v1/edges", pipeline="ccfraud") == ["edge-a", "edge-b"]
    assert call(ops, "GET", "/v1/publishes/999/edges").status_code == 404
    assert call(ops, "GET", "/v1/edges", params={"publish_id": "x"}).status_code == 400
    # two publishes of ccfraud's two versions: their own pipeline_version_ids
    assert (first["pipeline_version_id"], second["pipeline_version_id"]) == (1, 2)


def test_a_deployment_config_override_updates_the_publish_record(tmp_path: Path) -> None:
    ops = Ops(tmp_path)
    first = register(ops, engine_config={"engine": {"resources": {"limits": {"cpu": 1.0}}}})
    ops.clock.advance(60)
    again = register(ops, engine_config=SEED_CONFIG)
    assert again["id"] == first["id"] and again["engine_config"] == SEED_CONFIG
    assert again["created_at"] == first["created_at"] and again["created_by"] == "admin"
    assert again["updated_at"] > first["updated_at"]
    ops.clock.advance(60)
    same = register(ops)  # no engine config: the record stands as it is
    assert same["engine_config"] == SEED_CONFIG and same["updated_at"] == again["updated_at"]
    (listed,) = call(ops, "GET", "/v1/publishes").json()["publishes"]
    for key in ("created_by", "created_at", "updated_at", "pipeline_version_id"):
        assert listed[key] == same[key]


def test_an_existing_database_upgrades_and_keeps_its_records(db_url: str) -> None:
    """A database made by the previous release (migrations 1-3) with publishes and edges."""
    old = Database(db_url)
    old.migrate([m for m in MIGRATIONS if m[0] <= 3])
    with old.tx() as db:
        for url, version in ((PIPELINE_URL, "v1"), (OTHER_URL, "v1"), (IRIS_URL, "v9")):
            name = "iris" if url == IRIS_URL else "ccfraud"
            db.execute(
                "INSERT INTO publishes (pipeline_name, pipeline_version, pipeline_url,"
                " engine_config, workspace_id, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, '1', 10, 10)",
                (name, version, url, json.dumps(SEED_CONFIG)),
            )
        row = db.one("SELECT id FROM publishes WHERE pipeline_url = ?", (PIPELINE_URL,))
        assert row is not None
        db.execute(
            "INSERT INTO edges (id, name, publish_id, tags, created_at)"
            " VALUES ('e-1', 'edge-a', ?, '[]', 10)",
            (row["id"],),
        )
    old.close()

    store = Store(db_url)
    assert store.schema_version() == MIGRATIONS[-1][0] >= 4
    (edge,) = store.edges()
    assert edge["additional_properties"] == {} and edge["pipeline_version_id"] is not None
    publishes = {p["pipeline_url"]: p for p in store.publishes()}
    assert {p["created_by"] for p in publishes.values()} == {"admin"}
    # one pipeline version, two URLs (a mirror): one id; another version: another id
    ids = {url: p["pipeline_version_id"] for url, p in publishes.items()}
    assert ids[PIPELINE_URL] == ids[OTHER_URL] != ids[IRIS_URL]
    new = store.register_publish(
        {"pipeline_name": "iris", "pipeline_version": "v10", "pipeline_url": IRIS_URL + "0"}, 20
    )
    assert new["pipeline_version_id"] == max(ids.values()) + 1
    store.close()
    assert Store(db_url).schema_version() == MIGRATIONS[-1][0]  # reopening applies nothing


class _SyncASGI:
    """A synchronous httpx transport over the ops center's ASGI app (one loop per call)."""

    def __new__(cls, ops: Ops) -> Any:
        import httpx

        class Transport(httpx.BaseTransport):
            def handle_request(self, request: httpx.Request) -> httpx.Response:
                async def go() -> httpx.Response:
                    inner = httpx.ASGITransport(app=ops.app)
                    response = await inner.handle_async_request(request)
                    body = await response.aread()
                    return httpx.Response(
                        response.status_code, headers=response.headers, content=body
                    )

                return asyncio.run(go())

        return Transport()
