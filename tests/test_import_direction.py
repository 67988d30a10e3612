"""Dependencies point one way: ``pipeline, cli → bench → export, training → core → kernels → errors``, and no
module imports one that imports it back (docs/design.md §2).

Every import statement of every source file is read with ``ast`` (function-level imports included: a
lazy import is still a dependency), resolved to the installed module name, and checked against the layer
order below. The core may reach the exported runtimes only by name (``scoring.SCORER_BACKENDS`` holds
strings that ``load_scorer`` imports), never by an import statement.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# repository folder -> the package it installs as (pyproject.toml [tool.setuptools.package-dir])
FOLDERS = {
    "zreward_deploy": "zreward_deploy",
    "kernels": "zreward_deploy.kernels",
    "export": "zreward_deploy.export",
    "training": "zreward_deploy.training",
    "bench": "zreward_deploy.bench",
}
# (layer, rank): a module may import modules of a lower rank, or of its own layer; never a higher rank.
# export and training share a rank but are separate layers: neither imports the other.
LAYERS = [
    ("zreward_deploy.cli", "app", 6),
    ("zreward_deploy.commands", "app", 6),
    ("zreward_deploy.pipeline", "pipeline", 5),
    ("zreward_deploy.bench", "bench", 4),
    ("zreward_deploy.export", "export", 3),
    ("zreward_deploy.training", "training", 3),
    ("zreward_deploy.kernels", "kernels", 1),
    ("zreward_deploy.errors", "errors", 0),
    ("zreward_deploy", "core", 2),  # everything else in the package
]


def layer_of(module: str) -> tuple[str, int]:
    for prefix, name, rank in LAYERS:
        if module == prefix or module.startswith(prefix + "."):
            return name, rank
    raise AssertionError(f"{module} is in no layer")


def source_modules() -> dict[str, Path]:
    modules = {}
    for folder, package in FOLDERS.items():
        for path in (ROOT / folder).rglob("*.py"):
            rel = path.relative_to(ROOT / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            modules[".".join([package, *parts])] = path
    return modules


def imports_of(module: str, path: Path, known: set[str]) -> set[str]:
    """The project modules ``module`` imports anywhere in its file (resolved, submodules preferred)."""
    is_package = path.name == "__init__.py"
    package = module if is_package else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            names = [f"{prefix}.{alias.name}" for alias in node.names] + [prefix]
        else:
            continue
        for name in names:
            # the longest known module that the name is or lies in (``from .x import y``: y may be a module)
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module:
                found.add(name)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = source_modules()
    known = set(modules)
    return {m: imports_of(m, p, known) - {"zreward_deploy"} for m, p in modules.items()}


def test_the_graph_is_read():
    # a guard for the checks below: the reader finds the edges we know exist
    graph = import_graph()
    assert "zreward_deploy.kernels.score_head" in graph["zreward_deploy.modeling"]
    assert "zreward_deploy.export.contract" in graph["zreward_deploy.export.ort"]
    assert len(graph) > 60


def test_dependencies_point_one_way():
    wrong = []
    for module, targets in sorted(import_graph().items()):
        name, rank = layer_of(module)
        for target in sorted(targets):
            target_name, target_rank = layer_of(target)
            if target_rank > rank or (target_rank == rank and target_name != name):
                wrong.append(f"{module} ({name}) imports {target} ({target_name})")
    assert not wrong, "imports against the layer order:\n" + "\n".join(wrong)


def test_no_import_cycles():
    graph = import_graph()
    # Tarjan's strongly connected components; any component of two or more modules is a cycle
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
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
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)
