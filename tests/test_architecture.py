"""The layers of docs/architecture.md hold: ``_core`` imports nothing above it, and no module imports form a cycle.

The imports are read from the source (every ``import`` statement, those inside functions included), so a
lazy import cannot hide a dependency that the map does not allow.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "nichekd"

# What each part of the package may import (besides itself): the map of docs/architecture.md.
ALLOWED = {
    "_core": set(),
    "io": {"_core"},
    "models": {"_core"},
    "datasets": {"_core", "io"},
    "pp": {"_core", "io", "models"},
    "tl": {"_core", "io", "models", "pp"},
    "pl": {"_core", "io", "tl"},
    "demo": {"__init__", "_core", "io", "datasets", "pp", "tl", "pl", "models"},
    "__init__": {"_core", "io", "datasets", "models", "pp", "tl", "pl"},
}


def _module_name(path: Path) -> str:
    parts = ["nichekd", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, *, top_level_only: bool = False) -> set[str]:
    """The nichekd modules ``path`` imports (``from . import x`` resolved to ``nichekd.<pkg>.x``)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    out: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if not module.startswith("nichekd"):
                continue
            submodules = {f"{module}.{a.name}" for a in node.names} if module else set()
            out.update(m for m in submodules if _exists(m))
            if node.module and _exists(module):
                out.add(module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("nichekd"))
    return out - {name}


def _exists(module: str) -> bool:
    rel = Path(*module.split(".")[1:])
    return (PACKAGE / rel).with_suffix(".py").is_file() or (PACKAGE / rel / "__init__.py").is_file()


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_layers_import_only_what_the_map_allows():
    bad = []
    for path in _sources():
        here = _part(_module_name(path))
        for module in _imports(path):
            there = _part(module)
            if there != here and there not in ALLOWED[here]:
                bad.append(f"{_module_name(path)} imports {module} ({here} -> {there})")
    assert not bad, "Imports that break the layers of docs/architecture.md:\n" + "\n".join(bad)


def test_core_imports_nothing_above_it():
    for path in (PACKAGE / "_core").glob("*.py"):
        above = {m for m in _imports(path) if _part(m) != "_core"}
        assert not above, f"{path.name} imports {sorted(above)}"


def test_no_import_cycle():
    """Module-level imports form no cycle (a cycle makes import order matter and hides a missing layer)."""
    graph = {_module_name(p): {m for m in _imports(p, top_level_only=True) if _exists(m)} for p in _sources()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if dep.startswith(node + "."):
                continue  # a package importing its own submodule
            if state.get(dep) == 1 and not node.startswith(dep + "."):
                cycle = stack[stack.index(dep) :] + [dep]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_architecture_doc_lists_every_core_module():
    doc = (PACKAGE.parent / "docs" / "architecture.md").read_text()
    for path in (PACKAGE / "_core").glob("*.py"):
        if path.stem != "__init__":
            assert f"`{path.stem}`" in doc, f"docs/architecture.md does not describe _core/{path.name}"


def test_import_does_not_load_torch():
    code = "import sys, nichekd; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", "import nichekd imports torch; import it where a model runs"
