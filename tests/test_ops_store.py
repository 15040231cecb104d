"""Metadata store: versioned schema, hashed one-time join tokens, refusals, drop counts."""

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


def test_register_publish_is_idempotent_per_url(tmp_path: Path) -> None:
    store = Store(tmp_path / "ops.db")
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


def test_names_are_unique_until_removed(tmp_path: Path) -> None:
    store = Store(tmp_path / "ops.db")
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


def test_token_refusals_are_distinct(tmp_path: Path) -> None:
    store = Store(tmp_path / "ops.db")
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
    row = store._db.execute(
        "SELECT outcome FROM join_tokens WHERE token_sha256 = ?", (token_digest("late"),)
    ).fetchone()
    assert row[0] == "expired"


def test_the_same_device_retrying_a_lost_reply_gets_its_identity_again(tmp_path: Path) -> None:
    store = Store(tmp_path / "ops.db")
    store.add_edge("a", publish(store), [], token_digest("tok"), T0)
    first = _redeem(store, "tok", T0, key_fp="device-key")
    again = _redeem(store, "tok", T0 + 5, key_fp="device-key")
    assert first["id"] == again["id"]


def test_a_failed_issue_does_not_consume_the_token(tmp_path: Path) -> None:
    store = Store(tmp_path / "ops.db")
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


def test_drop_counters_are_exact_and_idempotent(tmp_path: Path) -> None:
    store = Store(tmp_path / "ops.db")
    edge = store.add_edge("a", publish(store), [], token_digest("t"), T0)
    store.record_drops(edge["id"], "epoch-1", {"input_values": 7, "rows": 2}, T0)
    store.record_drops(edge["id"], "epoch-1", {"input_values": 7, "rows": 2}, T0 + 1)  # resent
    store.record_drops(edge["id"], "epoch-1", {"input_values": 9}, T0 + 2)  # grew
    store.record_drops(edge["id"], "epoch-2", {"rows": 1}, T0 + 3)  # a new buffer file
    assert store.edge(edge["id"])["dropped"] == {"input_values": 9, "rows": 3}


def test_fingerprint_matches_between_csr_and_key() -> None:
    key = new_key()
    from ops_sync.identity import csr_public_key

    assert fingerprint(csr_public_key(make_csr(key, "x"))) == fingerprint(key.public_key())


def test_group_commit_fails_only_the_bad_batch(tmp_path: Path) -> None:
    from ops_sync.errors import StoreError
    from ops_sync.store import _Commit

    store = Store(tmp_path / "ops.db")
    edge = store.add_edge("a", publish(store), [], token_digest("t"), T0)

    def item(first: int, path: str) -> _Commit:
        f = {"pipeline": "p", "rows": 10, "min_time": 0, "max_time": 9, "path": path}
        return _Commit(edge["id"], "a", "ep", [(first, first + 9)], [f], T0)

    store.commit_batch(edge["id"], "a", "ep", [(1, 10)], [item(1, "/x/1").files[0]], T0)
    group = [item(11, "/x/2"), item(21, "/x/1"), item(31, "/x/3")]  # the middle reuses a path
    store._commit_group(group)
    assert [g.error is None for g in group] == [True, False, True]
    assert isinstance(group[1].error, StoreError) and all(g.done for g in group)
    assert store.synced_overlaps("a", "ep", 0, 100) == [(1, 20), (31, 40)]
    with pytest.raises(StoreError, match="cannot record"):
        store.commit_batch(edge["id"], "a", "ep", [(50, 59)], [item(50, "/x/3").files[0]], T0)
