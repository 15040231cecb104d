"""Versioned schema migrations: the one runner the log buffer's SQLite file
(`edge.logbuffer.schema`) and the ops center's database (`ops_sync.metadb`) both use.

A migration is `(version, name, script)`; a script is `;`-separated statements. A database
records each migration it has had in `_migrations(version, name, applied_at)`. Transactions
and locking are the caller's: the log buffer applies each migration in its own `BEGIN
IMMEDIATE`, the ops center all of them in one transaction under an advisory lock (replicas
that start together wait for each other).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

Migration = tuple[int, str, str]
Execute = Callable[[str, Sequence[Any]], Any]

CREATE_TABLE = (
    "CREATE TABLE IF NOT EXISTS _migrations"
    " (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
)


def pending(migrations: Sequence[Migration], applied: Iterable[int]) -> list[Migration]:
    """The migrations not yet applied, in version order."""
    done = set(applied)
    return sorted((m for m in migrations if m[0] not in done), key=lambda m: m[0])


def apply(execute: Execute, migration: Migration) -> None:
    """Run one migration's statements and record it (inside the caller's transaction)."""
    version, name, script = migration
    for statement in script.split(";"):
        if statement.strip():
            execute(statement, ())
    execute(
        "INSERT INTO _migrations (version, name, applied_at) VALUES (?, ?, ?)",
        (version, name, datetime.now(UTC).isoformat()),
    )
