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


MAX_MODULE_LINES = 600
MAX_CLASS_LINES = 400


def _sources() -> list[Path]:
    """The project's own modules (protoc's generated stubs are not ours to split)."""
    return [
        path
        for package in ("edge", "ops_sync", "mac")
        for path in sorted((ROOT / package).rglob("*.py"))
        if "_pb2" not in path.name
    ]


def test_no_module_is_over_600_lines() -> None:
    """A newcomer reads a module in one sitting: past 600 lines it holds two concerns."""
    long = {
        str(path.relative_to(ROOT)): n
        for path in _sources()
        if (n := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert long == {}


def test_no_class_is_over_400_lines() -> None:
    """The 1,400-line log buffer class is what this check keeps from coming back."""
    long = {}
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ClassDef) and node.end_lineno is not None:
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_CLASS_LINES:
                    long[f"{path.relative_to(ROOT)}:{node.name}"] = lines
    assert long == {}


def test_the_size_checks_see_the_code() -> None:
    """The checks above read every package: an empty walk would pass them all."""
    names = {str(path.relative_to(ROOT)) for path in _sources()}
    assert {"edge/server.py", "edge/logbuffer/writer.py", "ops_sync/center.py"} <= names
    assert not any("_pb2" in name for name in names)
