"""The import direction is one way: mind_recall (settings, wire formats, shared CLI arguments) -> model ->
worker (serving) -> producers -> cli (the command line, the demo). A module may import its own layer and the
ones below, never one above; imports inside functions count too (they hid 34 cross-package imports)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LAYERS = ["mind_recall", "model", "worker", "producers", "cli"]


def _imports(path: Path) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
    return out


def violations() -> list[str]:
    rank = {pkg: n for n, pkg in enumerate(LAYERS)}
    found = []
    for pkg in LAYERS:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            for line, module in _imports(path):
                top = module.split(".")[0]
                if top in rank and rank[top] > rank[pkg]:
                    found.append(f"{path.relative_to(ROOT)}:{line}: {pkg} imports {module} (a layer above)")
    return found


def test_every_package_imports_only_its_own_layer_and_those_below() -> None:
    assert violations() == []


def test_the_check_sees_imports_inside_functions(tmp_path: Path) -> None:
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from worker.store import ItemStore\n    import cli.main\n")
    assert [m for _, m in _imports(f)] == ["worker.store", "cli.main"]


def test_every_package_is_in_a_layer() -> None:
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")}
    assert packages <= set(LAYERS) | {"tests", "bench"}, packages - set(LAYERS)
