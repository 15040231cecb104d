"""Rollout in the ops center: which edges a rollout picks, and each edge's desired, running and
rollout state as `GET /v1/edges` shows them.

A rollout sets the *desired* publish of the edges it picks (`Store.set_desired`); each edge
learns it from its next heartbeat's reply and reports back, in its heartbeat's health, what it
*runs* and how its last attempt went. Nothing here is stored beyond the desired publish: the
state is derived from the two, so it cannot drift from what the edge says.

- `--edge NAME` picks that enrolled edge; `--tag TAG` every enrolled edge with the tag, and
  `--percent N` of those: an edge is in when `sha256(edge id)`'s first 8 bytes, as a number,
  modulo 100 is below N. The subset depends on the edge id alone, so raising N only adds
  edges, and a rollback with the same N reaches the same canaries.
- state: `none` (no rollout asked), `current` (it runs the desired URL), `failed` (its last
  attempt at the desired URL failed; it retries with backoff and says why), else `pending`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from typing import Any

from ops_sync.errors import BadRequest, NotFound

MAX_TEXT = 1024  # what an edge reports is cut to this (reasons, URLs)
LATEST = 2**33  # epoch seconds (the year 2242): a later `updated_at` an edge reports is ignored


def in_percent(edge_id: str, percent: int) -> bool:
    """Is the edge among the stable `percent` of its tag (by hash of its id)?"""
    point = int.from_bytes(hashlib.sha256(edge_id.encode()).digest()[:8], "big") % 100
    return point < percent


def choose(
    edges: list[dict[str, Any]], edge: str | None, tag: str | None, percent: int | None
) -> list[dict[str, Any]]:
    """The enrolled edges a rollout reaches (see the module); a 4xx naming what is wrong."""
    if (edge is None) == (tag is None):
        raise BadRequest("rollout: give exactly one of edge (a name) or tag")
    if percent is not None and tag is None:
        raise BadRequest("rollout: percent picks a share of a tag's edges; give tag with it")
    if edge is not None:
        chosen = [e for e in edges if e["name"] == edge]
        if not chosen:
            raise NotFound(f"rollout: no enrolled edge is named {edge!r}")
        return chosen
    tagged = [e for e in edges if tag in e["tags"]]
    if not tagged:
        raise NotFound(f"rollout: no enrolled edge has tag {tag!r}")
    return [e for e in tagged if in_percent(e["id"], 100 if percent is None else percent)]


def desired_view(edge: dict[str, Any]) -> dict[str, Any] | None:
    if edge.get("desired_url") is None:
        return None
    return {
        "pipeline_url": edge["desired_url"],
        "pipeline_version": edge["desired_version"],
        "digest": edge["desired_digest"],
        "set_at": _iso(edge["desired_set_at"]),
    }


def views(edge: dict[str, Any]) -> dict[str, Any]:
    """`desired`, `running` and `rollout` of an edge record (`Store.edge`)."""
    reported = _reported(edge.get("health"))
    running = _running(reported.get("running"))
    attempt = reported.get("rollout")
    attempt = attempt if isinstance(attempt, dict) else {}
    desired = desired_view(edge)
    rollout: dict[str, Any] = {"state": "none", "reason": None, "attempts": 0}
    updated = edge["created_at"]
    if desired is not None:
        url = desired["pipeline_url"]
        updated = edge["desired_set_at"]
        mine = attempt.get("pipeline_url") == url  # the edge's report is about this URL
        attempts = _count(attempt.get("attempts")) if mine else 0
        reason = _text(attempt.get("reason")) if mine else None
        if running is not None and running["pipeline_url"] == url:
            rollout = {"state": "current", "reason": None, "attempts": attempts}
        elif mine and attempt.get("state") == "failed":
            rollout = {"state": "failed", "reason": reason, "attempts": attempts}
        else:
            rollout = {"state": "pending", "reason": reason, "attempts": attempts}
        reported_at = attempt.get("updated_at") if mine else None
        if isinstance(reported_at, int | float) and updated < reported_at < LATEST:
            updated = float(reported_at)
    rollout["updated_at"] = _iso(updated)
    return {"desired": desired, "running": running, "rollout": rollout}


def _reported(health: Any) -> dict[str, Any]:
    """The appliance's health report inside the stored heartbeat."""
    inner = health.get("health") if isinstance(health, dict) else None
    return inner if isinstance(inner, dict) else {}


def _running(value: Any) -> dict[str, Any] | None:
    if not isinstance(value, dict) or not isinstance(value.get("pipeline_url"), str):
        return None
    return {key: _text(value.get(key)) for key in ("pipeline_url", "pipeline_version", "digest")}


def _text(value: Any) -> str | None:
    return value[:MAX_TEXT] if isinstance(value, str) else None


def _count(value: Any) -> int:
    return value if isinstance(value, int) and 0 <= value < 2**62 else 0


def _iso(seconds: float | None) -> str | None:
    return dt.datetime.fromtimestamp(seconds, dt.UTC).isoformat() if seconds else None
