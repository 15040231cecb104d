"""Metadata store, on SQLite and on a real PostgreSQL (the same tests on both): versioned
schema, hashed one-time join tokens, refusals, drop counts, races between replicas."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from ops_sync.errors import Conflict, EdgeRemoved, TokenExpired, TokenUnknown, TokenUsed
from ops_sync.identity import fingerprint, make_csr, new_key
from ops_sync.protocol import token_digest
from ops_sync.store import MIGRATIONS, Store
from tests.test_ops_support import DAY, PIPELINE_URL, Ops

T0 = 1_800_000_000.0


def publish(store: Store) -> int:
    record = {"pipeline_name": "p", "pipeline_version": "v1", "pipeline_url": PIPELINE_URL}
    return int(store.register_publish(record, T0)["id"])


def test_schema_is_versioned_and_reopening_applies_nothing_twice(tmp_path: Path) -> None:
    store = Store(tmp_path / "ops.db")
    assert store.schema_version() == MIGRATIONS[-1][0]
    store.close()
    store = Store(tmp_path / "ops.db")
    rows = sqlite3.connect(tmp_path / "ops.db").execute("SELECT version FROM _migrations")
    assert [r[0] for r in rows] == [m[0] for m in MIGRATIONS]
    mode = sqlite3.connect(tmp_path / "ops.db").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_register_publish_is_idempotent_per_url(db_url: str) -> None:
    store = Store(db_url)
    assert publish(store) == publish(store)
    assert len(store.publishes()) == 1


def test_only_token_hashes_are_stored(tmp_path: Path) -> None:
    ops = Ops(tmp_path)
    record = ops.add_edge("edge-a")
    from ops_sync import protocol as bundle

    token = bundle.decode(record["docker_run_variables"]["EDGE_BUNDLE"])["JOIN_TOKEN"]
    ops.center.close()
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("ops.db*"))
    assert token.encode() not in raw
    assert token_digest(token).encode() in raw


def test_names_are_unique_until_removed(db_url: str) -> None:
    store = Store(db_url)
    pid = publish(store)
    first = store.add_edge("edge-a", pid, ["x"], token_digest("t1"), T0)
    with pytest.raises(Conflict, match="edge-a"):
        store.add_edge("edge-a", pid, [], token_digest("t2"), T0)
    store.remove_edge("edge-a", T0)
    second = store.add_edge("edge-a", pid, [], token_digest("t3"), T0)
    assert second["id"] != first["id"]
    assert [e["id"] for e in store.edges()] == [second["id"]]


def _redeem(store: Store, token: str, now: float, key_fp: str = "fp") -> dict:
    return store.redeem(token_digest(token), key_fp, now, lambda edge: edge)


def test_token_refusals_are_distinct(db_url: str) -> None:
    store = Store(db_url)
    pid = publish(store)
    store.add_edge("a", pid, [], token_digest("good"), T0)
    store.add_edge("b", pid, [], token_digest("late"), T0)
    store.add_edge("c", pid, [], token_digest("gone"), T0)
    store.remove_edge("c", T0)

    assert _redeem(store, "good", T0 + 60)["name"] == "a"
    with pytest.raises(TokenUsed, match="already redeemed"):
        _redeem(store, "good", T0 + 120, key_fp="another device")
    with pytest.raises(TokenUnknown, match="not known"):
        _redeem(store, "never-minted", T0)
    with pytest.raises(EdgeRemoved, match="removed"):
        _redeem(store, "gone", T0)
    with pytest.raises(TokenExpired, match="24 h"):
        _redeem(store, "late", T0 + DAY + 1)
    # The expired attempt used the token up: it stays refused as expired, never redeemable.
    with pytest.raises(TokenExpired):
        _redeem(store, "late", T0 + DAY + 2)
    row = store.db.reader().one(
        "SELECT outcome FROM join_tokens WHERE token_sha256 = ?", (token_digest("late"),)
    )
    assert row == {"outcome": "expired"}


def test_the_same_device_retrying_a_lost_reply_gets_its_identity_again(db_url: str) -> None:
    store = Store(db_url)
    store.add_edge("a", publish(store), [], token_digest("tok"), T0)
    first = _redeem(store, "tok", T0, key_fp="device-key")
    again = _redeem(store, "tok", T0 + 5, key_fp="device-key")
    assert first["id"] == again["id"]


def test_a_failed_issue_does_not_consume_the_token(db_url: str) -> None:
    store = Store(db_url)
    store.add_edge("a", publish(store), [], token_digest("tok"), T0)

    def broken(edge: dict) -> None:
        raise RuntimeError("signing failed")

    with pytest.raises(RuntimeError):
        store.redeem(token_digest("tok"), "fp", T0, broken)
    assert _redeem(store, "tok", T0)["name"] == "a"


def test_fifty_concurrent_redemptions_give_exactly_one_success(tmp_path: Path) -> None:
    ops = Ops(tmp_path)
    from ops_sync import protocol as bundle

    record = ops.add_edge("edge-race")
    token = bundle.decode(record["docker_run_variables"]["EDGE_BUNDLE"])["JOIN_TOKEN"]
    csrs = [make_csr(new_key(), f"device-{i}") for i in range(50)]
    barrier = threading.Barrier(50)
    outcomes: list[str] = []
    lock = threading.Lock()

    def attempt(csr: bytes) -> None:
        barrier.wait()
        try:
            ops.center.join(token, csr)
            result = "ok"
        except TokenUsed:
            result = "used"
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=attempt, args=(csr,)) for csr in csrs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(outcomes).count("ok") == 1
    assert outcomes.count("used") == 49


def test_drop_counters_are_exact_and_idempotent(db_url: str) -> None:
    store = Store(db_url)
    edge = store.add_edge("a", publish(store), [], token_digest("t"), T0)
    store.heartbeat(edge["id"], T0, {}, ("epoch-1", {"input_values": 7, "rows": 2}))
    store.heartbeat(edge["id"], T0 + 1, {}, ("epoch-1", {"input_values": 7, "rows": 2}))  # resent
    store.heartbeat(edge["id"], T0 + 2, {}, ("epoch-1", {"input_values": 9}))  # grew
    store.heartbeat(edge["id"], T0 + 3, {}, ("epoch-2", {"rows": 1}))  # a new buffer file
    assert store.edge(edge["id"])["dropped"] == {"input_values": 9, "rows": 3}


def test_fingerprint_matches_between_csr_and_key() -> None:
    key = new_key()
    from ops_sync.identity import csr_public_key

    assert fingerprint(csr_public_key(make_csr(key, "x"))) == fingerprint(key.public_key())


def test_replicas_racing_on_one_postgresql_redeem_once_and_enrol_a_name_once(postgres) -> None:
    url = postgres.fresh_database("store_race")
    replicas = [Store(url) for _ in range(3)]  # three processes' worth of connections
    pid = publish(replicas[0])
    replicas[0].add_edge("edge-race", pid, [], token_digest("race"), T0)
    barrier = threading.Barrier(30)
    outcomes: list[str] = []

    def redeem(i: int) -> None:
        barrier.wait()
        try:
            _redeem(replicas[i % 3], "race", T0 + 1, key_fp=f"device-{i}")
            outcomes.append("ok")
        except TokenUsed:
            outcomes.append("used")

    def enrol(i: int) -> None:
        try:
            replicas[i % 3].add_edge("twin", pid, [], token_digest(f"t{i}"), T0)
            outcomes.append("added")
        except Conflict:
            outcomes.append("taken")

    threads = [threading.Thread(target=redeem, args=(i,)) for i in range(30)]
    threads += [threading.Thread(target=enrol, args=(i,)) for i in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(outcomes).count("ok") == 1 and outcomes.count("used") == 29
    assert outcomes.count("added") == 1 and outcomes.count("taken") == 11
    assert sorted(e["name"] for e in replicas[2].edges()) == ["edge-race", "twin"]


def test_a_postgresql_password_never_reaches_an_error(postgres) -> None:
    from ops_sync.errors import StoreError
    from tests.fleet_support import PG_PASSWORD

    wrong = postgres.url.replace(PG_PASSWORD, PG_PASSWORD + "-wrong")
    with pytest.raises(StoreError) as raised:
        Store(wrong)
    assert PG_PASSWORD not in str(raised.value) and "***" in str(raised.value)
    assert "password authentication failed" in str(raised.value)
