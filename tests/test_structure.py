"""The code's shape, as README's architecture section promises it."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _imports(path: Path) -> set[str]:
    """Every module `path` imports, at the top or inside a function."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_edge_never_imports_ops_sync() -> None:
    """ops_sync builds on edge; edge finds the ops center link through an entry point."""
    offenders = {
        str(path.relative_to(ROOT)): sorted(
            n for n in _imports(path) if n.split(".")[0] == "ops_sync"
        )
        for path in (ROOT / "edge").rglob("*.py")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_ops_center_link_is_registered_for_the_appliance() -> None:
    from edge.appliance import sync_plugin
    from ops_sync.link import OpsCenterLink

    assert isinstance(sync_plugin(), OpsCenterLink)
