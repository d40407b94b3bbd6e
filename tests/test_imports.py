"""The package's structure: the library imports nothing above it, nothing imports in a circle.

``auxtransfer`` is the library; ``auxtransfer.lightning`` an integration of it;
``auxtransfer.experiments`` and ``auxtransfer.report`` the paper's reference application
on top of it. Imports point from the application to the library only, and the report
reads run folders without the training engine. The graph is read from the source with
``ast`` (every import, at module level or inside a function), so an import made late to
dodge a cycle still counts.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "auxtransfer"
APPLICATION = ("auxtransfer.experiments", "auxtransfer.report")
INTEGRATIONS = ("auxtransfer.lightning",)
#: The application's modules the report may read: the run folder's format and settings.
REPORT_READS = ("auxtransfer.experiments.rundir", "auxtransfer.experiments.settings")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _parents(name: str) -> list[str]:
    """``a.b.c`` imports ``a`` and ``a.b`` first."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def import_graph(root: Path = SRC / PACKAGE) -> dict[str, set[str]]:
    """Every module of the package and the package modules it imports (with the packages
    that importing them runs), relative imports resolved."""
    modules = {_module_name(p): p for p in root.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    stem = ".".join(base + ([node.module] if node.module else []))
                else:
                    stem = node.module or ""
                targets = [stem]
                # `from . import x` and `from .pkg import module` import modules too.
                targets += [f"{stem}.{alias.name}" for alias in node.names]
            for target in targets:
                found.update(p for p in _parents(target) if p in modules)
        found.discard(name)
        graph[name] = found
    return graph


def _within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def layer_of(name: str) -> str:
    if _within(name, APPLICATION):
        return "application"
    if _within(name, INTEGRATIONS):
        return "integration"
    return "library"


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Imports from the library into an integration or the application, from an
    integration into the application, and from the report into the training engine."""
    rank = {"library": 0, "integration": 1, "application": 2}
    found = []
    for name, targets in graph.items():
        for target in sorted(targets):
            if target == PACKAGE:
                continue  # importing any submodule runs the package's __init__
            if rank[layer_of(target)] > rank[layer_of(name)] or (
                _within(name, ("auxtransfer.report",))
                and _within(target, ("auxtransfer.experiments",))
                and target != "auxtransfer.experiments"
                and target not in REPORT_READS
            ):
                found.append(f"{name} -> {target}")
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Import cycles (strongly connected components of more than one module, by Tarjan's
    algorithm), each as its sorted modules. A package's ``__init__`` importing its own
    submodules, which import the package back, is how Python packages work: those edges
    (submodule -> its own parent package) are left out."""
    edges = {
        name: {t for t in targets if not name.startswith(t + ".")}
        for name, targets in graph.items()
    }
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(edges[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        node = todo.pop()
        if node not in seen:
            seen.add(node)
            todo.extend(graph[node])
    return seen


def test_the_library_imports_nothing_above_it_and_nothing_imports_in_a_circle() -> None:
    graph = import_graph()
    assert "auxtransfer.freezing" in graph and "auxtransfer.experiments.cli" in graph
    assert upward_imports(graph) == []
    assert cycles(graph) == []


def test_the_report_reads_run_folders_without_the_training_engine() -> None:
    graph = import_graph()
    reached = {n for n in reachable(graph, "auxtransfer.report") if layer_of(n) == "application"}
    engine = {n for n in reached if _within(n, ("auxtransfer.experiments",))}
    assert engine <= {"auxtransfer.experiments", *REPORT_READS}, sorted(engine)


def test_the_checks_catch_an_upward_import_and_a_cycle(tmp_path: Path) -> None:
    # The same walk over a made-up package with both faults: it must see them.
    root = tmp_path / "auxtransfer"
    (root / "experiments").mkdir(parents=True)
    (root / "__init__.py").write_text("from .heads import Head\n")
    (root / "heads.py").write_text("from .classifier import find\n")
    (root / "classifier.py").write_text("def find():\n    from .heads import Head\n")
    (root / "experiments" / "__init__.py").write_text("")
    (root / "experiments" / "train.py").write_text("import auxtransfer.heads\n")
    (root / "data.py").write_text("from .experiments import train\n")
    graph = {k.replace(str(tmp_path), ""): v for k, v in _graph_at(tmp_path).items()}
    assert upward_imports(graph) == [
        "auxtransfer.data -> auxtransfer.experiments",
        "auxtransfer.data -> auxtransfer.experiments.train",
    ]
    assert cycles(graph) == [["auxtransfer.classifier", "auxtransfer.heads"]]


def _graph_at(src: Path) -> dict[str, set[str]]:
    global SRC
    saved, SRC = SRC, src
    try:
        return import_graph(src / PACKAGE)
    finally:
        SRC = saved


ENGINE = tuple(
    f"auxtransfer.experiments.{m}"
    for m in (
        "train",
        "loop",
        "graphs",
        "batches",
        "checkpoint",
        "transfer",
        "execute",
        "processes",
    )
)


@pytest.mark.parametrize(
    ("statement", "forbidden"),
    [
        ("import auxtransfer", APPLICATION + INTEGRATIONS),
        ("import auxtransfer.report, auxtransfer.report.__main__", ENGINE),
        # Building, checking and listing a plan (the examples' --list) trains nothing.
        ("import auxtransfer.experiments.protocols, auxtransfer.experiments.cli", ENGINE),
    ],
)
def test_importing_loads_no_module_above_it(statement: str, forbidden: tuple[str, ...]) -> None:
    code = f"{statement}, sys; print('\\n'.join(sorted(sys.modules)))"
    loaded = subprocess.run(
        [sys.executable, "-c", f"import sys; {code}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert "auxtransfer" in loaded
    assert [m for m in loaded if _within(m, forbidden)] == []
