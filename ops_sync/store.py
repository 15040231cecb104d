"""Ops center metadata in SQLite: publishes, edges, hashed join tokens, sync state, log files.

The schema is versioned (`_migrations`, one row per applied step) rather than re-created on
every open. Every write is one explicit `BEGIN IMMEDIATE` transaction on one connection behind
a lock, in WAL mode with `synchronous=FULL`: an acknowledged batch survives power loss.

Join tokens are stored only as sha256 hashes (they are 256-bit random, so a fast hash is
enough). Redeeming one checks and consumes it in the same transaction as the certificate is
issued, so fifty concurrent redemptions give exactly one success.

Dedup state: `synced_ranges` holds the sequence ranges already stored per (edge name, buffer
epoch), coalesced so a well-behaved edge has one row per epoch. It is keyed by the edge *name*
(the partition) with the edge id beside it: an edge removed and added again under the same name
(new id, new bundle, same device and buffer) must not store its backlog twice. Nothing here
expires.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from ops_sync.errors import (
    Conflict,
    EdgeRemoved,
    NotFound,
    StoreError,
    TokenExpired,
    TokenUnknown,
    TokenUsed,
)

T = TypeVar("T")
TOKEN_TTL = 24 * 3600.0
MIGRATIONS: list[tuple[int, str, str]] = [
    (
        1,
        "initial",
        """
        CREATE TABLE publishes (
            id INTEGER PRIMARY KEY, pipeline_name TEXT NOT NULL, pipeline_version TEXT NOT NULL,
            pipeline_url TEXT NOT NULL UNIQUE, engine_url TEXT, helm TEXT, engine_config TEXT,
            workspace_id TEXT NOT NULL, created_at REAL NOT NULL, updated_at REAL NOT NULL);
        CREATE TABLE edges (
            id TEXT PRIMARY KEY, name TEXT NOT NULL,
            publish_id INTEGER NOT NULL REFERENCES publishes(id), tags TEXT NOT NULL,
            created_at REAL NOT NULL, removed_at REAL, joined_at REAL, last_seen REAL,
            key_fingerprint TEXT, cert_not_after REAL, health TEXT);
        CREATE UNIQUE INDEX edges_enrolled_name ON edges(name) WHERE removed_at IS NULL;
        CREATE TABLE join_tokens (
            token_sha256 TEXT PRIMARY KEY, edge_id TEXT NOT NULL REFERENCES edges(id),
            minted_at REAL NOT NULL, expires_at REAL NOT NULL, consumed_at REAL, outcome TEXT,
            key_fingerprint TEXT);
        CREATE TABLE synced_ranges (
            partition TEXT NOT NULL, epoch TEXT NOT NULL, first_seq INTEGER NOT NULL,
            last_seq INTEGER NOT NULL, edge_id TEXT NOT NULL,
            PRIMARY KEY (partition, epoch, first_seq)) WITHOUT ROWID;
        CREATE TABLE log_files (
            id INTEGER PRIMARY KEY, pipeline TEXT NOT NULL, partition TEXT NOT NULL,
            edge_id TEXT NOT NULL, epoch TEXT NOT NULL, rows INTEGER NOT NULL,
            min_time INTEGER NOT NULL, max_time INTEGER NOT NULL, path TEXT NOT NULL UNIQUE,
            received_at REAL NOT NULL);
        CREATE INDEX log_files_by_pipeline ON log_files(pipeline, partition, max_time);
        CREATE TABLE edge_drops (
            edge_id TEXT NOT NULL, epoch TEXT NOT NULL, reason TEXT NOT NULL,
            count INTEGER NOT NULL, updated_at REAL NOT NULL,
            PRIMARY KEY (edge_id, epoch, reason));
        """,
    ),
    (
        2,
        "log schema per pipeline version",
        """
        CREATE TABLE log_schemas (
            pipeline TEXT NOT NULL, pipeline_version TEXT NOT NULL, schema BLOB NOT NULL,
            updated_at REAL NOT NULL, PRIMARY KEY (pipeline, pipeline_version)) WITHOUT ROWID;
        """,
    ),
]


class Store:
    """The ops center's metadata database: one writer connection behind a lock, and one
    read connection per thread (WAL readers never wait for a writer's fsync)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.RLock()
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._pending: list[_Commit] = []
        self._pending_lock = threading.Lock()
        self._db = self._connect()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._migrate()

    def _connect(self) -> sqlite3.Connection:
        try:
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA foreign_keys=ON")
            db.execute("PRAGMA busy_timeout=10000")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the metadata database {self.path}: {exc}") from exc
        return db

    def _reader(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = self._local.db = self._connect()
            with self._lock:
                self._readers.append(db)
        return db

    def close(self) -> None:
        with self._lock:
            self._db.close()
            for reader in self._readers:
                reader.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:  # a failed COMMIT may have rolled back already
                    self._db.execute("ROLLBACK")
                raise

    def _migrate(self) -> None:
        with self._tx() as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS _migrations"
                " (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
            )
        done = {row[0] for row in self._db.execute("SELECT version FROM _migrations")}
        for version, name, script in MIGRATIONS:
            if version in done:
                continue
            with self._tx() as db:
                for statement in script.split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute(
                    "INSERT INTO _migrations VALUES (?, ?, datetime('now'))", (version, name)
                )

    def schema_version(self) -> int:
        row = self._reader().execute("SELECT max(version) FROM _migrations").fetchone()
        return int(row[0] or 0)

    # -- publishes -------------------------------------------------------------------------
    def register_publish(self, record: dict[str, Any], now: float) -> dict[str, Any]:
        """Insert a publish, or return the one already registered for its pipeline URL."""
        with self._tx() as db:
            row = db.execute(
                "SELECT * FROM publishes WHERE pipeline_url = ?", (record["pipeline_url"],)
            ).fetchone()
            if row is None:
                db.execute(
                    "INSERT INTO publishes (pipeline_name, pipeline_version, pipeline_url,"
                    " engine_url, helm, engine_config, workspace_id, created_at, updated_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        record["pipeline_name"],
                        record["pipeline_version"],
                        record["pipeline_url"],
                        record.get("engine_url"),
                        json.dumps(record.get("helm")),
                        json.dumps(record.get("engine_config")),
                        str(record.get("workspace_id") or "1"),
                        now,
                        now,
                    ),
                )
                row = db.execute(
                    "SELECT * FROM publishes WHERE pipeline_url = ?", (record["pipeline_url"],)
                ).fetchone()
        return _publish(row)

    def publishes(self) -> list[dict[str, Any]]:
        rows = self._reader().execute("SELECT * FROM publishes ORDER BY id").fetchall()
        return [_publish(row) for row in rows]

    def publish_by_url(self, pipeline_url: str) -> dict[str, Any]:
        row = (
            self._reader()
            .execute("SELECT * FROM publishes WHERE pipeline_url = ?", (pipeline_url,))
            .fetchone()
        )
        if row is None:
            raise NotFound(f"no publish is registered for {pipeline_url}")
        return _publish(row)

    # -- edges -----------------------------------------------------------------------------
    def add_edge(
        self, name: str, publish_id: int, tags: list[str], token_sha256: str, now: float
    ) -> dict[str, Any]:
        edge_id = str(uuid.uuid4())
        with self._tx() as db:
            taken = db.execute(
                "SELECT 1 FROM edges WHERE name = ? AND removed_at IS NULL", (name,)
            ).fetchone()
            if taken:
                raise Conflict(f"an edge named {name!r} exists; remove it first to mint anew")
            db.execute(
                "INSERT INTO edges (id, name, publish_id, tags, created_at) VALUES (?, ?, ?, ?, ?)",
                (edge_id, name, publish_id, json.dumps(tags), now),
            )
            db.execute(
                "INSERT INTO join_tokens (token_sha256, edge_id, minted_at, expires_at)"
                " VALUES (?, ?, ?, ?)",
                (token_sha256, edge_id, now, now + TOKEN_TTL),
            )
        return self.edge(edge_id)

    def remove_edge(self, name: str, now: float) -> dict[str, Any]:
        with self._tx() as db:
            row = db.execute(
                "SELECT id FROM edges WHERE name = ? AND removed_at IS NULL", (name,)
            ).fetchone()
            if row is None:
                raise NotFound(f"no enrolled edge is named {name!r}")
            db.execute("UPDATE edges SET removed_at = ? WHERE id = ?", (now, row["id"]))
        return self.edge(row["id"])

    def edge(self, edge_id: str) -> dict[str, Any]:
        db = self._reader()
        row = db.execute(_EDGE_SELECT + " WHERE e.id = ?", (edge_id,)).fetchone()
        if row is None:
            raise NotFound(f"no edge has id {edge_id}")
        return _edge(db, row)

    def edges(self) -> list[dict[str, Any]]:
        db = self._reader()
        rows = db.execute(
            _EDGE_SELECT + " WHERE e.removed_at IS NULL ORDER BY e.created_at"
        ).fetchall()
        return [_edge(db, row) for row in rows]

    def redeem(
        self, token_sha256: str, key_fingerprint: str, now: float, issue: Callable[[dict], T]
    ) -> T:
        """Consume a join token and run `issue(edge)` in the same transaction.

        A retry by the device that already redeemed the token (same key, the response was lost)
        gets its certificate again; anyone else gets `TokenUsed`. An expired attempt consumes.
        """
        refusal: TokenExpired | None = None
        with self._tx() as db:
            token = db.execute(
                "SELECT * FROM join_tokens WHERE token_sha256 = ?", (token_sha256,)
            ).fetchone()
            if token is None:
                raise TokenUnknown(
                    "the join token is not known to this ops center; check OPSCENTER_HOST, or "
                    "add the edge again for a new bundle"
                )
            edge = db.execute("SELECT * FROM edges WHERE id = ?", (token["edge_id"],)).fetchone()
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
        with self._tx() as db:
            db.execute(
                "UPDATE edges SET last_seen = ?, health = coalesce(?, health),"
                " cert_not_after = coalesce(?, cert_not_after) WHERE id = ?",
                (now, json.dumps(health) if health is not None else None, cert_not_after, edge_id),
            )

    def record_drops(self, edge_id: str, epoch: str, dropped: dict[str, int], now: float) -> None:
        """Store the edge's cumulative drop counters for one buffer epoch (exact, monotonic)."""
        with self._tx() as db:
            for reason, count in dropped.items():
                db.execute(
                    "INSERT INTO edge_drops VALUES (?, ?, ?, ?, ?)"
                    " ON CONFLICT (edge_id, epoch, reason) DO UPDATE SET"
                    " count = max(count, excluded.count), updated_at = excluded.updated_at",
                    (edge_id, epoch, str(reason), int(count), now),
                )

    # -- sync state and log files ----------------------------------------------------------
    def synced_overlaps(
        self, partition: str, epoch: str, first: int, last: int
    ) -> list[tuple[int, int]]:
        rows = (
            self._reader()
            .execute(
                "SELECT first_seq, last_seq FROM synced_ranges WHERE partition = ? AND epoch = ?"
                " AND first_seq <= ? AND last_seq >= ?",
                (partition, epoch, last, first),
            )
            .fetchall()
        )
        return [(int(a), int(b)) for a, b in rows]

    def commit_batch(
        self,
        edge_id: str,
        partition: str,
        epoch: str,
        ranges: list[tuple[int, int]],
        files: list[dict[str, Any]],
        now: float,
    ) -> None:
        """Record stored sequence ranges and their Parquet files; durable on return.

        Group commit: batches arriving while another commit is in its fsync queue up, and the
        next thread to take the write lock commits all of them in one transaction. If that
        transaction fails, each batch is retried alone so one bad batch fails only itself."""
        mine = _Commit(edge_id, partition, epoch, ranges, files, now)
        with self._pending_lock:
            self._pending.append(mine)
        with self._lock:
            if not mine.done:  # else an earlier thread's group commit took it along
                with self._pending_lock:
                    group, self._pending = self._pending, []
                try:
                    self._commit_group(group)
                finally:
                    for item in group:
                        if not item.done:
                            item.done = True
                            item.error = item.error or StoreError("the log batch was not recorded")
        if mine.error is not None:
            raise mine.error

    def _commit_group(self, group: list[_Commit]) -> None:
        try:
            with self._tx() as db:
                for item in group:
                    item.apply(db)
        except Exception:
            for item in group:  # one at a time, so a bad batch fails only itself
                try:
                    with self._tx() as db:
                        item.apply(db)
                except Exception as exc:
                    item.error = StoreError(f"cannot record a log batch: {exc}")
                item.done = True
        for item in group:
            item.done = True

    def log_files(
        self,
        pipeline: str,
        partition: str | None = None,
        start_ms: int | None = None,
        end_ms: int | None = None,
    ) -> list[dict[str, Any]]:
        sql = "SELECT * FROM log_files WHERE pipeline = ?"
        args: list[Any] = [pipeline]
        if partition is not None:
            sql += " AND partition = ?"
            args.append(partition)
        if start_ms is not None and end_ms is not None:
            sql += " AND max_time >= ? AND min_time <= ?"
            args += [start_ms, end_ms]
        rows = self._reader().execute(sql + " ORDER BY id", args).fetchall()
        return [dict(row) for row in rows]

    def pipeline_versions(self, pipeline: str) -> set[str]:
        """Every version of `pipeline` a publish was registered for."""
        rows = self._reader().execute(
            "SELECT pipeline_version FROM publishes WHERE pipeline_name = ?", (pipeline,)
        )
        return {row[0] for row in rows}

    def agree_log_schema(
        self,
        pipeline: str,
        version: str,
        agree: Callable[[bytes | None], bytes | None],
        now: float,
    ) -> None:
        """Run `agree(stored schema or None)` in one write transaction; store what it returns
        (None: unchanged). `agree` raises to refuse the batch."""
        with self._tx() as db:
            row = db.execute(
                "SELECT schema FROM log_schemas WHERE pipeline = ? AND pipeline_version = ?",
                (pipeline, version),
            ).fetchone()
            new = agree(bytes(row[0]) if row else None)
            if new is not None:
                db.execute(
                    "INSERT INTO log_schemas VALUES (?, ?, ?, ?) ON CONFLICT"
                    " (pipeline, pipeline_version) DO UPDATE SET schema = excluded.schema,"
                    " updated_at = excluded.updated_at",
                    (pipeline, version, new, now),
                )

    def file_paths(self) -> set[str]:
        return {row[0] for row in self._reader().execute("SELECT path FROM log_files")}


_EXPIRED = "the join token expired (tokens live 24 h); add the edge again for a new bundle"
_EDGE_SELECT = (
    "SELECT e.*, p.pipeline_name, p.pipeline_version, p.pipeline_url"
    " FROM edges e JOIN publishes p ON p.id = e.publish_id"
)


def _edge(db: sqlite3.Connection, row: sqlite3.Row) -> dict[str, Any]:
    edge = dict(row)
    edge["tags"] = json.loads(edge["tags"])
    edge["health"] = json.loads(edge["health"]) if edge["health"] else None
    drops = db.execute(
        "SELECT reason, sum(count) FROM edge_drops WHERE edge_id = ? GROUP BY reason",
        (edge["id"],),
    ).fetchall()
    edge["dropped"] = {reason: int(count) for reason, count in drops}
    return edge


@dataclass
class _Commit:
    """One batch's metadata waiting for a group commit."""

    edge_id: str
    partition: str
    epoch: str
    ranges: list[tuple[int, int]]
    files: list[dict[str, Any]]
    now: float
    done: bool = False
    error: StoreError | None = None

    def apply(self, db: sqlite3.Connection) -> None:
        for first, last in self.ranges:
            _insert_range(db, self.partition, self.epoch, first, last, self.edge_id)
        for f in self.files:
            db.execute(
                "INSERT INTO log_files (pipeline, partition, edge_id, epoch, rows, min_time,"
                " max_time, path, received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    f["pipeline"],
                    self.partition,
                    self.edge_id,
                    self.epoch,
                    f["rows"],
                    f["min_time"],
                    f["max_time"],
                    f["path"],
                    self.now,
                ),
            )
        db.execute("UPDATE edges SET last_seen = ? WHERE id = ?", (self.now, self.edge_id))


def _insert_range(
    db: sqlite3.Connection, partition: str, epoch: str, first: int, last: int, edge_id: str
) -> None:
    """Add [first, last] to the synced ranges, merging with neighbours it touches."""
    key = (partition, epoch)
    right = db.execute(
        "SELECT last_seq FROM synced_ranges WHERE partition = ? AND epoch = ? AND first_seq = ?",
        (*key, last + 1),
    ).fetchone()
    if right is not None:
        db.execute(
            "DELETE FROM synced_ranges WHERE partition = ? AND epoch = ? AND first_seq = ?",
            (*key, last + 1),
        )
        last = int(right[0])
    left = db.execute(
        "SELECT first_seq FROM synced_ranges WHERE partition = ? AND epoch = ? AND last_seq = ?",
        (*key, first - 1),
    ).fetchone()
    if left is not None:
        db.execute(
            "UPDATE synced_ranges SET last_seq = ?, edge_id = ?"
            " WHERE partition = ? AND epoch = ? AND first_seq = ?",
            (last, edge_id, *key, left[0]),
        )
    else:
        db.execute("INSERT INTO synced_ranges VALUES (?, ?, ?, ?, ?)", (*key, first, last, edge_id))


def _publish(row: sqlite3.Row) -> dict[str, Any]:
    record = dict(row)
    for key in ("helm", "engine_config"):
        record[key] = json.loads(record[key]) if record[key] else None
    return record
