"""The import graph points one way: no package of the repository imports itself in a circle, and puzzles
(the data foundation) imports nothing from fastnemo, the layer above it.

The graph is read from the source with ``ast``, so it sees every import, the ones inside functions included
(those run late and hide a cycle from a plain ``import``). With ``registry=True`` it also follows the module
names a registry hands to ``importlib`` as strings (``puzzles.categories.MODULES``). A module importing its
own parent package is not an edge: Python runs a package's ``__init__`` before any of its modules.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Packages whose graph must be a DAG
ACYCLIC = ["puzzles", "fastnemo"]


def package_modules(package: str) -> dict[str, Path]:
    """Dotted module name -> source file, for every module of ``package`` (its ``__init__`` as the package)."""
    out = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imported_names(module: str, path: Path, registry: bool = False) -> set[str]:
    """Every module name ``module`` imports anywhere in its body: ``import a.b`` gives a.b, ``from a import b``
    gives a.b and a (which of them is a module is the caller's business); with ``registry``, a string literal
    that looks like a dotted module name (an ``importlib`` target) gives itself."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against the importing module's package
                anchor = module.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join(anchor + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
        elif registry and _is_dotted_name(node):
            names.add(node.value)
    return names


def _is_dotted_name(node: ast.AST) -> bool:
    """A string literal shaped like a dotted module name ("puzzles.bits")."""
    value = node.value if isinstance(node, ast.Constant) else None
    return isinstance(value, str) and "." in value and all(part.isidentifier() for part in value.split("."))


def import_graph(packages: list[str], registry: bool = False) -> dict[str, set[str]]:
    """Module -> the modules of ``packages`` it imports (a parent package it sits in is not counted)."""
    mods: dict[str, Path] = {}
    for package in packages:
        mods.update(package_modules(package))
    graph = {}
    for module, path in mods.items():
        targets = {name for name in imported_names(module, path, registry) if name in mods}
        graph[module] = {t for t in targets if t != module and not module.startswith(t + ".")}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_cycle_finder_finds_a_cycle_through_a_function_level_import(tmp_path, monkeypatch):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg.b import f\n")
    (pkg / "b.py").write_text("def f():\n    from pkg import c\n")
    (pkg / "c.py").write_text("import importlib\nM = importlib.import_module('pkg.a')\n")
    (pkg / "d.py").write_text("from . import a\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert import_graph(["pkg"])["pkg.d"] == {"pkg.a"}
    assert cycles(import_graph(["pkg"])) == []  # the string is no import statement
    assert cycles(import_graph(["pkg"], registry=True)) == [["pkg.a", "pkg.b", "pkg.c"]]
    (pkg / "c.py").write_text("def g():\n    import pkg.a\n")
    assert cycles(import_graph(["pkg"])) == [["pkg.a", "pkg.b", "pkg.c"]]


@pytest.mark.parametrize("package", ACYCLIC)
def test_no_import_cycle(package):
    found = cycles(import_graph([package]))
    assert not found, "import cycles (each a set of modules that reach each other): " + "; ".join(
        " <-> ".join(c) for c in found
    )


def test_no_import_cycle_through_the_category_registry():
    assert cycles(import_graph(["puzzles"], registry=True)) == []


def test_puzzles_imports_nothing_from_fastnemo():
    upward = {
        (module, name)
        for module, path in package_modules("puzzles").items()
        for name in imported_names(module, path)
        if name.split(".")[0] == "fastnemo"
    }
    assert not upward, f"puzzles imports from fastnemo (the layer above): {sorted(upward)}"
