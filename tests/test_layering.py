"""Imports run one way (docs/design.md): every package imports only from the layers below it, never from a peer or
a layer above, and no module takes part in an import cycle. Read from the source, imports inside functions too."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "scan_lightning"
# bottom to top; a package imports from the layers before its own, peers in one layer never from each other
LAYERS = [
    ("utils",),
    ("models", "data"),
    ("losses", "cost"),
    ("policy",),
    ("runtime",),
    ("export",),
    ("evaluation",),
    ("reporting",),
    ("training",),
    ("serving",),
    ("cli",),
]
# top-level entry modules (python -m scan_lightning.<entry>) and the deprecation shims of old import paths
TOP = ("__init__", "train", "evaluate", "describe", "module", "inference", "callbacks")
RANK = {package: rank for rank, layer in enumerate(LAYERS) for package in layer}
NO_TRAINING_FRAMEWORK = ("models", "losses", "cost", "policy", "runtime", "export", "evaluation")
FRAMEWORKS = ("pytorch_lightning", "lightning", "hydra")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside functions (``from a import b``: ``a.b`` when it is a
    module, else ``a``)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                names.add(sub if sub in MODULES else node.module)
    return names


def top_package(module: str) -> str:
    """``scan_lightning.policy.cache`` -> ``policy``; a top-level module -> its own name."""
    return module.split(".")[1] if module.count(".") else "__init__"


def test_every_package_has_a_layer():
    packages = {p.parent.name for p in PACKAGE.glob("*/__init__.py")} | {p.stem for p in PACKAGE.glob("*.py")}
    packages.discard("conf")
    assert packages - set(RANK) - set(TOP) == set()
    assert set(RANK) <= packages


@pytest.mark.parametrize("package", sorted(RANK))
def test_a_package_imports_only_from_the_layers_below(package):
    files = [p for m, p in MODULES.items() if top_package(m) == package and not p.name == "__main__.py"]
    assert files
    broken = {}
    for f in files:
        for m in imported_modules(f):
            if not m.startswith("scan_lightning."):
                if package in NO_TRAINING_FRAMEWORK and m.split(".")[0] in FRAMEWORKS:
                    broken.setdefault(f.name, []).append(m)
                continue
            other = top_package(m)
            if other != package and (other not in RANK or RANK[other] >= RANK[package]):
                broken.setdefault(f.name, []).append(m)
    assert not broken, broken


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), or a module importing itself."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph.get(v, ()):
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def import_graph() -> dict[str, set[str]]:
    return {m: {i for i in imported_modules(p) if i in MODULES} for m, p in MODULES.items()}


def test_no_import_cycle():
    assert cycles(import_graph()) == []


def test_the_cycle_finder_finds_a_cycle_hidden_in_a_function():
    graph = import_graph()
    graph["scan_lightning.policy.cache"].add("scan_lightning.evaluation.pipeline")   # evaluation reaches policy
    found = cycles(graph)
    assert any("scan_lightning.policy.cache" in c and "scan_lightning.evaluation.pipeline" in c for c in found)


@pytest.mark.parametrize("package", NO_TRAINING_FRAMEWORK)
def test_the_network_its_costs_policy_and_deployment_need_no_training_framework(package):
    """Followed through every project module they import (utils included), these packages reach no
    pytorch_lightning, lightning or hydra import (``export/__main__.py``, the command, aside)."""
    graph = import_graph()
    seen, todo = set(), [m for m, p in MODULES.items() if top_package(m) == package and p.name != "__main__.py"]
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo += graph[m]
    reached = {m: sorted(i for i in imported_modules(MODULES[m]) if i.split(".")[0] in FRAMEWORKS) for m in seen}
    assert not {m: v for m, v in reached.items() if v}
