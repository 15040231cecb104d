"""Ops center metadata: publishes, edges, hashed join tokens, drop counts, log schemas, leases
(and the assays' tables, which `ops_sync.assays.records` reads and writes).

One schema for SQLite (the embedded default) and PostgreSQL (`--metadata postgresql://...`),
versioned (`_migrations`, one row per applied step) rather than re-created on every open;
`ops_sync.metadb` owns connections, transactions and the dialect words in braces. Every write
is one explicit transaction. A read-then-write that must be exclusive across replicas locks
what it reads (`{for_update}`) or a named advisory lock (`Tx.lock`): SQLite's writers are
serialized anyway.

Join tokens are stored only as sha256 hashes (they are 256-bit random, so a fast hash is
enough). Redeeming one checks and consumes it in the same transaction as the certificate is
issued, so fifty concurrent redemptions give exactly one success, on any number of replicas.

The log rows themselves, and their dedup state (a high-water mark per edge and buffer epoch),
live in the Delta tables (`ops_sync.logstore`), committed together. What is here about logs:
each pipeline version's log schema and which of the pipeline's tables (its schema
*generation*) it writes to; `synced_ranges` is the Parquet store's dedup state, kept so an
upgraded ops center does not store a resent batch again.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from ops_sync import heartbeats
from ops_sync.errors import (
    Conflict,
    EdgeRemoved,
    NotFound,
    TokenExpired,
    TokenUnknown,
    TokenUsed,
)
from ops_sync.metadb import Database, Reads, Tx, UniqueViolation

T = TypeVar("T")
TOKEN_TTL = 24 * 3600.0
MIGRATIONS: list[tuple[int, str, str]] = [
    (
        1,
        "initial",
        """
        CREATE TABLE publishes (
            id {id}, pipeline_name TEXT NOT NULL, pipeline_version TEXT NOT NULL,
            pipeline_url TEXT NOT NULL UNIQUE, engine_url TEXT, helm TEXT, engine_config TEXT,
            workspace_id TEXT NOT NULL, created_at {real} NOT NULL, updated_at {real} NOT NULL);
        CREATE TABLE edges (
            id TEXT PRIMARY KEY, name TEXT NOT NULL,
            publish_id INTEGER NOT NULL REFERENCES publishes(id), tags TEXT NOT NULL,
            created_at {real} NOT NULL, removed_at {real}, joined_at {real}, last_seen {real},
            key_fingerprint TEXT, cert_not_after {real}, health TEXT);
        CREATE UNIQUE INDEX edges_enrolled_name ON edges(name) WHERE removed_at IS NULL;
        CREATE TABLE join_tokens (
            token_sha256 TEXT PRIMARY KEY, edge_id TEXT NOT NULL REFERENCES edges(id),
            minted_at {real} NOT NULL, expires_at {real} NOT NULL, consumed_at {real},
            outcome TEXT, key_fingerprint TEXT);
        CREATE TABLE synced_ranges (
            partition TEXT NOT NULL, epoch TEXT NOT NULL, first_seq BIGINT NOT NULL,
            last_seq BIGINT NOT NULL, edge_id TEXT NOT NULL,
            PRIMARY KEY (partition, epoch, first_seq)) {norowid};
        CREATE TABLE log_files (
            id {id}, pipeline TEXT NOT NULL, partition TEXT NOT NULL,
            edge_id TEXT NOT NULL, epoch TEXT NOT NULL, rows INTEGER NOT NULL,
            min_time BIGINT NOT NULL, max_time BIGINT NOT NULL, path TEXT NOT NULL UNIQUE,
            received_at {real} NOT NULL);
        CREATE INDEX log_files_by_pipeline ON log_files(pipeline, partition, max_time);
        CREATE TABLE edge_drops (
            edge_id TEXT NOT NULL, epoch TEXT NOT NULL, reason TEXT NOT NULL,
            count BIGINT NOT NULL, updated_at {real} NOT NULL,
            PRIMARY KEY (edge_id, epoch, reason));
        """,
    ),
    (
        2,
        "log schema per pipeline version",
        """
        CREATE TABLE log_schemas (
            pipeline TEXT NOT NULL, pipeline_version TEXT NOT NULL, schema {blob} NOT NULL,
            updated_at {real} NOT NULL, PRIMARY KEY (pipeline, pipeline_version)) {norowid};
        """,
    ),
    (
        3,
        "logs in Delta tables: schema generations, leases; the Parquet file list goes",
        """
        ALTER TABLE log_schemas ADD COLUMN generation INTEGER NOT NULL DEFAULT 1;
        CREATE TABLE log_tables (
            pipeline TEXT NOT NULL, generation INTEGER NOT NULL, schema {blob} NOT NULL,
            updated_at {real} NOT NULL, PRIMARY KEY (pipeline, generation)) {norowid};
        CREATE TABLE leases (
            name TEXT PRIMARY KEY, owner TEXT NOT NULL, expires_at {real} NOT NULL) {norowid};
        DROP TABLE log_files;
        """,
    ),
    (
        4,
        "the seed's publish and edge records: created_by, pipeline_version_id, edge properties",
        """
        ALTER TABLE publishes ADD COLUMN created_by TEXT NOT NULL DEFAULT 'admin';
        ALTER TABLE publishes ADD COLUMN pipeline_version_id BIGINT;
        UPDATE publishes SET pipeline_version_id = (
            SELECT min(q.id) FROM publishes q WHERE q.pipeline_name = publishes.pipeline_name
            AND q.pipeline_version = publishes.pipeline_version);
        ALTER TABLE edges ADD COLUMN additional_properties TEXT NOT NULL DEFAULT '{}';
        """,
    ),
    (
        5,
        "rollout: a publish's manifest digest, each edge's desired publish",
        """
        ALTER TABLE publishes ADD COLUMN manifest_digest TEXT;
        ALTER TABLE edges ADD COLUMN desired_publish_id BIGINT REFERENCES publishes(id);
        ALTER TABLE edges ADD COLUMN desired_set_at {real};
        """,
    ),
    (
        6,
        "dashboard: sign-in sessions (sha256 of the id only), a bounded heartbeat history",
        """
        CREATE TABLE ui_sessions (
            id_sha256 TEXT PRIMARY KEY, created_at {real} NOT NULL,
            expires_at {real} NOT NULL) {norowid};
        CREATE TABLE edge_heartbeats (
            edge_id TEXT NOT NULL, at {real} NOT NULL, buffer_rows BIGINT,
            unsynced_rows BIGINT, sync_lag {real}, PRIMARY KEY (edge_id, at)) {norowid};
        """,
    ),
    (
        7,
        "assays (drift detection) and their results",
        """
        CREATE TABLE assays (
            id {id}, name TEXT NOT NULL UNIQUE, pipeline TEXT NOT NULL, definition TEXT NOT NULL,
            baseline TEXT NOT NULL, active INTEGER NOT NULL, created_at {real} NOT NULL,
            updated_at {real} NOT NULL, last_run {real}, next_window BIGINT NOT NULL);
        CREATE TABLE assay_results (
            assay_id BIGINT NOT NULL, window_start BIGINT NOT NULL, window_end BIGINT NOT NULL,
            analyzed_at {real} NOT NULL, alert INTEGER NOT NULL, warning INTEGER NOT NULL,
            result TEXT NOT NULL, PRIMARY KEY (assay_id, window_start, window_end)) {norowid};
        """,
    ),
]


class Store:
    """The ops center's metadata database, by URL (a path for SQLite, or postgresql://)."""

    def __init__(self, url: str | Path) -> None:
        self.db = Database(str(url))
        self.db.migrate(MIGRATIONS)

    def close(self) -> None:
        self.db.close()

    def ping(self) -> None:
        self.db.ping()

    def _reader(self) -> Reads:
        return self.db.reader()

    def schema_version(self) -> int:
        row = self._reader().one("SELECT max(version) AS v FROM _migrations")
        return int((row or {}).get("v") or 0)

    # -- publishes -------------------------------------------------------------------------
    def register_publish(self, record: dict[str, Any], now: float) -> dict[str, Any]:
        """Insert a publish, or return the one already registered for its pipeline URL.

        A publish registered again with another engine config (the seed's deployment config
        override at publish) keeps its id and `created_*` and takes the new config and
        `updated_at`. Every publish of one pipeline version shares its `pipeline_version_id`.
        """
        config = json.dumps(record.get("engine_config"))
        url = record["pipeline_url"]
        with self.db.tx() as db:
            db.lock("ops_sync.pipeline_version_id")  # numbered once across replicas
            row = db.one("SELECT * FROM publishes WHERE pipeline_url = ? {for_update}", (url,))
            if row is None:
                found = db.one(
                    "SELECT min(pipeline_version_id) AS v FROM publishes"
                    " WHERE pipeline_name = ? AND pipeline_version = ?",
                    (record["pipeline_name"], record["pipeline_version"]),
                )
                version_id = (found or {}).get("v")
                if version_id is None:
                    top = db.one("SELECT max(pipeline_version_id) AS v FROM publishes")
                    version_id = int((top or {}).get("v") or 0) + 1
                db.execute(
                    "INSERT INTO publishes (pipeline_name, pipeline_version, pipeline_url,"
                    " engine_url, helm, engine_config, workspace_id, created_at, updated_at,"
                    " created_by, pipeline_version_id, manifest_digest)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        record["pipeline_name"],
                        record["pipeline_version"],
                        url,
                        record.get("engine_url"),
                        json.dumps(record.get("helm")),
                        config,
                        str(record.get("workspace_id") or "1"),
                        now,
                        now,
                        str(record.get("created_by") or "admin"),
                        version_id,
                        record.get("manifest_digest"),
                    ),
                )
            elif record.get("engine_config") is not None and row["engine_config"] != config:
                db.execute(
                    "UPDATE publishes SET engine_config = ?, updated_at = ? WHERE id = ?",
                    (config, now, row["id"]),
                )
            if row is not None and record.get("manifest_digest") and not row["manifest_digest"]:
                db.execute(  # registered before its digest was known (`publishes --register`)
                    "UPDATE publishes SET manifest_digest = ? WHERE id = ?",
                    (record["manifest_digest"], row["id"]),
                )
            row = db.one("SELECT * FROM publishes WHERE pipeline_url = ?", (url,))
        assert row is not None
        return _publish(row)

    def publishes(self) -> list[dict[str, Any]]:
        return [_publish(row) for row in self._reader().all("SELECT * FROM publishes ORDER BY id")]

    def publish_by_url(self, pipeline_url: str) -> dict[str, Any]:
        row = self._reader().one("SELECT * FROM publishes WHERE pipeline_url = ?", (pipeline_url,))
        if row is None:
            raise NotFound(f"no publish is registered for {pipeline_url}")
        return _publish(row)

    def pipeline_versions(self, pipeline: str) -> set[str]:
        """Every version of `pipeline` a publish was registered for."""
        rows = self._reader().all(
            "SELECT pipeline_version FROM publishes WHERE pipeline_name = ?", (pipeline,)
        )
        return {row["pipeline_version"] for row in rows}

    # -- edges -----------------------------------------------------------------------------
    def add_edge(
        self,
        name: str,
        publish_id: int,
        tags: list[str],
        token_sha256: str,
        now: float,
        additional_properties: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        edge_id = str(uuid.uuid4())
        taken = Conflict(f"an edge named {name!r} exists; remove it first to mint anew")
        try:
            with self.db.tx() as db:
                if db.one(
                    "SELECT 1 AS x FROM edges WHERE name = ? AND removed_at IS NULL", (name,)
                ):
                    raise taken
                db.execute(
                    "INSERT INTO edges (id, name, publish_id, tags, created_at,"
                    " additional_properties) VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        edge_id,
                        name,
                        publish_id,
                        json.dumps(tags),
                        now,
                        json.dumps(additional_properties or {}),
                    ),
                )
                db.execute(
                    "INSERT INTO join_tokens (token_sha256, edge_id, minted_at, expires_at)"
                    " VALUES (?, ?, ?, ?)",
                    (token_sha256, edge_id, now, now + TOKEN_TTL),
                )
        except UniqueViolation:  # another replica enrolled the name at the same moment
            raise taken from None
        return self.edge(edge_id)

    def remove_edge(self, name: str, now: float) -> dict[str, Any]:
        with self.db.tx() as db:
            row = db.one(
                "SELECT id FROM edges WHERE name = ? AND removed_at IS NULL {for_update}", (name,)
            )
            if row is None:
                raise NotFound(f"no enrolled edge is named {name!r}")
            db.execute("UPDATE edges SET removed_at = ? WHERE id = ?", (now, row["id"]))
        return self.edge(row["id"])

    def edge(self, edge_id: str) -> dict[str, Any]:
        db = self._reader()
        row = db.one(_EDGE_SELECT + " WHERE e.id = ?", (edge_id,))
        if row is None:
            raise NotFound(f"no edge has id {edge_id}")
        return _edge(db, row)

    def edges(
        self, publish_id: int | None = None, pipeline: str | None = None
    ) -> list[dict[str, Any]]:
        """Enrolled edges, of one publish or one pipeline's publishes when asked."""
        db = self._reader()
        where, args = " WHERE e.removed_at IS NULL", list[Any]()
        if publish_id is not None:
            where, args = where + " AND e.publish_id = ?", [publish_id]
        if pipeline is not None:
            where, args = where + " AND p.pipeline_name = ?", [*args, pipeline]
        rows = db.all(_EDGE_SELECT + where + " ORDER BY e.created_at", args)
        return [_edge(db, row) for row in rows]

    def set_desired(self, edge_ids: list[str], publish_id: int, now: float) -> None:
        """Make publish `publish_id` the version these edges should run (one transaction)."""
        with self.db.tx() as db:
            for edge_id in sorted(edge_ids):  # one lock order for every replica
                db.execute(
                    "UPDATE edges SET desired_publish_id = ?, desired_set_at = ?"
                    " WHERE id = ? AND removed_at IS NULL",
                    (publish_id, now, edge_id),
                )

    def redeem(
        self, token_sha256: str, key_fingerprint: str, now: float, issue: Callable[[dict], T]
    ) -> T:
        """Consume a join token and run `issue(edge)` in the same transaction.

        A retry by the device that already redeemed the token (same key, the response was lost)
        gets its certificate again; anyone else gets `TokenUsed`. An expired attempt consumes.
        """
        refusal: TokenExpired | None = None
        with self.db.tx() as db:
            token = db.one(
                "SELECT * FROM join_tokens WHERE token_sha256 = ? {for_update}", (token_sha256,)
            )
            if token is None:
                raise TokenUnknown(
                    "the join token is not known to this ops center; check OPSCENTER_HOST, or "
                    "add the edge again for a new bundle"
                )
            edge = db.one("SELECT * FROM edges WHERE id = ?", (token["edge_id"],))
            assert edge is not None
            if edge["removed_at"] is not None:
                raise EdgeRemoved(f"edge {edge['name']!r} was removed; add it again for a bundle")
            if token["consumed_at"] is not None:
                if token["outcome"] == "expired":
                    raise TokenExpired(_EXPIRED)
                if token["key_fingerprint"] != key_fingerprint:
                    raise TokenUsed(
                        "the join token was already redeemed (a bundle joins one device once); "
                        "if this device lost its persist volume, add the edge again for a new "
                        "bundle"
                    )
            elif now > token["expires_at"]:
                refusal = TokenExpired(_EXPIRED)  # raised after the commit: the attempt consumes
                db.execute(
                    "UPDATE join_tokens SET consumed_at = ?, outcome = 'expired'"
                    " WHERE token_sha256 = ?",
                    (now, token_sha256),
                )
            else:
                db.execute(
                    "UPDATE join_tokens SET consumed_at = ?, outcome = 'redeemed',"
                    " key_fingerprint = ? WHERE token_sha256 = ?",
                    (now, key_fingerprint, token_sha256),
                )
            if refusal is None:
                result = issue(dict(edge))
                db.execute(
                    "UPDATE edges SET joined_at = coalesce(joined_at, ?), last_seen = ?,"
                    " key_fingerprint = ? WHERE id = ?",
                    (now, now, key_fingerprint, edge["id"]),
                )
        if refusal is not None:
            raise refusal
        return result

    def touch(
        self,
        edge_id: str,
        now: float,
        health: dict[str, Any] | None = None,
        cert_not_after: float | None = None,
    ) -> None:
        """Record a contact (and optionally the reported health or a renewed certificate)."""
        with self.db.tx() as db:
            _touch(db, edge_id, now, health, cert_not_after)

    def heartbeat(
        self,
        edge_id: str,
        now: float,
        report: dict[str, Any],
        drops: tuple[str, dict[str, int]] | None = None,
    ) -> None:
        """One heartbeat in one transaction: the contact and the reported health, the
        cumulative drop counters of a buffer epoch (`drops`: epoch, counters; exact and
        monotonic) and the dashboard's history row (`heartbeats.record`)."""
        with self.db.tx() as db:
            _touch(db, edge_id, now, report)  # the edge's row first, as touch_many locks it
            if drops is not None:
                epoch, dropped = drops
                for reason, count in dropped.items():
                    db.execute(
                        "INSERT INTO edge_drops VALUES (?, ?, ?, ?, ?)"
                        " ON CONFLICT (edge_id, epoch, reason) DO UPDATE SET"
                        " count = {greatest}(edge_drops.count, excluded.count),"
                        " updated_at = excluded.updated_at",
                        (edge_id, epoch, str(reason), int(count), now),
                    )
            heartbeats.record(db, edge_id, report, now)

    def touch_many(self, edge_ids: Iterable[str], now: float) -> None:
        """Record a contact for many edges in one transaction (after a log commit)."""
        ids = sorted(set(edge_ids))  # one lock order for every replica
        if not ids:
            return
        with self.db.tx() as db:
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                marks = ", ".join("?" * len(chunk))
                db.execute(
                    f"UPDATE edges SET last_seen = ? WHERE id IN ({marks}) AND"
                    " (last_seen IS NULL OR last_seen < ?)",
                    (now, *chunk, now),
                )

    # -- logs: schemas, tables, legacy dedup state, leases ---------------------------------
    def agree_log_schema(
        self,
        pipeline: str,
        version: str,
        agree: Callable[[dict[str, Any] | None, dict[int, bytes]], dict[str, Any] | None],
        now: float,
    ) -> None:
        """Run `agree(version's row or None, {generation: table schema})` holding the
        pipeline's schema lock, and store what it returns: None (unchanged) or
        {"schema", "generation", "table_schema"} (the version's schema, its table generation
        and that table's schema). `agree` raises to refuse the batch."""
        with self.db.tx() as db:
            db.lock(f"ops_sync.log_schema:{pipeline}")
            row = db.one(
                "SELECT schema, generation FROM log_schemas"
                " WHERE pipeline = ? AND pipeline_version = ?",
                (pipeline, version),
            )
            tables = {
                int(t["generation"]): bytes(t["schema"])
                for t in db.all(
                    "SELECT generation, schema FROM log_tables WHERE pipeline = ?", (pipeline,)
                )
            }
            stored = None if row is None else {**row, "schema": bytes(row["schema"])}
            new = agree(stored, tables)
            if new is None:
                return
            db.execute(
                "INSERT INTO log_schemas (pipeline, pipeline_version, schema, updated_at,"
                " generation) VALUES (?, ?, ?, ?, ?) ON CONFLICT (pipeline, pipeline_version)"
                " DO UPDATE SET schema = excluded.schema, updated_at = excluded.updated_at,"
                " generation = excluded.generation",
                (pipeline, version, new["schema"], now, new["generation"]),
            )
            db.execute(
                "INSERT INTO log_tables VALUES (?, ?, ?, ?) ON CONFLICT (pipeline, generation)"
                " DO UPDATE SET schema = excluded.schema, updated_at = excluded.updated_at",
                (pipeline, new["generation"], new["table_schema"], now),
            )

    def log_tables(self, pipeline: str) -> dict[int, bytes]:
        """{generation: table schema} of every log table `pipeline` has."""
        rows = self._reader().all(
            "SELECT generation, schema FROM log_tables WHERE pipeline = ?", (pipeline,)
        )
        return {int(r["generation"]): bytes(r["schema"]) for r in rows}

    def all_log_tables(self) -> list[tuple[str, int]]:
        rows = self._reader().all("SELECT pipeline, generation FROM log_tables ORDER BY 1, 2")
        return [(r["pipeline"], int(r["generation"])) for r in rows]

    def legacy_high_water(self, partition: str, epoch: str) -> int | None:
        """The highest sequence the Parquet store (before the Delta tables) recorded."""
        row = self._reader().one(
            "SELECT max(last_seq) AS hwm FROM synced_ranges WHERE partition = ? AND epoch = ?",
            (partition, epoch),
        )
        return None if row is None or row["hwm"] is None else int(row["hwm"])

    def take_lease(self, name: str, owner: str, now: float, seconds: float) -> bool:
        """Hold lease `name` for `seconds` if it is free, expired or already `owner`'s."""
        with self.db.tx() as db:
            db.lock(f"ops_sync.lease:{name}")
            row = db.one("SELECT owner, expires_at FROM leases WHERE name = ?", (name,))
            if row is not None and row["owner"] != owner and row["expires_at"] > now:
                return False
            db.execute(
                "INSERT INTO leases VALUES (?, ?, ?) ON CONFLICT (name) DO UPDATE SET"
                " owner = excluded.owner, expires_at = excluded.expires_at",
                (name, owner, now + seconds),
            )
        return True


_EXPIRED = "the join token expired (tokens live 24 h); add the edge again for a new bundle"
_EDGE_SELECT = (
    "SELECT e.*, p.pipeline_name, p.pipeline_version, p.pipeline_url, p.pipeline_version_id,"
    " p.engine_config, d.pipeline_url AS desired_url, d.pipeline_version AS desired_version,"
    " d.manifest_digest AS desired_digest"
    " FROM edges e JOIN publishes p ON p.id = e.publish_id"
    " LEFT JOIN publishes d ON d.id = e.desired_publish_id"
)


def _edge(db: Tx | Reads, row: dict[str, Any]) -> dict[str, Any]:
    edge = dict(row)
    edge["tags"] = json.loads(edge["tags"])
    edge["additional_properties"] = json.loads(edge["additional_properties"] or "{}")
    edge["engine_config"] = json.loads(edge["engine_config"]) if edge["engine_config"] else None
    edge["health"] = json.loads(edge["health"]) if edge["health"] else None
    drops = db.all(
        "SELECT reason, sum(count) AS n FROM edge_drops WHERE edge_id = ? GROUP BY reason",
        (edge["id"],),
    )
    edge["dropped"] = {d["reason"]: int(d["n"]) for d in drops}
    return edge


def _publish(row: dict[str, Any]) -> dict[str, Any]:
    record = dict(row)
    for key in ("helm", "engine_config"):
        record[key] = json.loads(record[key]) if record[key] else None
    return record


def _touch(
    db: Tx,
    edge_id: str,
    now: float,
    health: dict[str, Any] | None = None,
    cert_not_after: float | None = None,
) -> None:
    db.execute(
        "UPDATE edges SET last_seen = ?, health = coalesce(?, health),"
        " cert_not_after = coalesce(?, cert_not_after) WHERE id = ?",
        (now, json.dumps(health) if health is not None else None, cert_not_after, edge_id),
    )
