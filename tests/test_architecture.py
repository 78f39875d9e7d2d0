"""The layout the README and docs/development.md describe: data flows down the list of folders, no
import cycle among the package's modules, and imports inside functions only where they are
meant to be lazy (heavy libraries, and the public API's stages)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "mobiledeploy"
# a module may import modules of its own rank or lower; never higher
RANKS = [
    ("version", "errors", "limits", "inputs", "jsonout", "reports", "options", "option_checks", "stage_clock", "quiet"),
    ("manifest", "staging"),
    ("model",),
    ("data",),
    ("passes",),
    ("runtime",),
    ("export",),
    ("evaluation",),
    ("rounds",),
    ("pipeline",),
    ("sweeps",),
    ("cli",),
    ("__init__", "__main__"),
]


def _modules() -> dict[str, ast.Module]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        found[".".join(("mobiledeploy", *parts))] = ast.parse(path.read_text())
    return found


def _imports(name: str, tree: ast.Module, modules) -> list[tuple[str, bool]]:
    """(imported package module, whether the import is inside a function) for every import."""
    package = name.split(".")[:-1]
    in_functions = {id(node) for function in ast.walk(tree) if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef))
                    for node in ast.walk(function)}
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.ImportFrom) or not node.level and not (node.module or "").startswith("mobiledeploy"):
            continue
        base = package[: len(package) - node.level + 1] if node.level else []
        target = ".".join([*base, *([node.module] if node.module else [])]) if node.level else node.module
        targets = [f"{target}.{alias.name}" if f"{target}.{alias.name}" in modules or
                   f"{target}.{alias.name}.__init__" in modules else target for alias in node.names]
        for t in targets:
            t = t if t in modules else f"{t}.__init__" if f"{t}.__init__" in modules else t
            found.append((t, id(node) in in_functions))
    return found


def _rank(module: str) -> int:
    first = module.split(".")[1]
    return next(i for i, names in enumerate(RANKS) if first in names)


def test_no_import_cycle():
    modules = _modules()
    graph = {name: {t for t, _ in _imports(name, tree, modules) if t in modules and t != name}
             for name, tree in modules.items()}
    visiting, done, cycles = set(), set(), []

    def visit(node, path):
        visiting.add(node)
        for nxt in graph[node]:
            if nxt in visiting:
                cycles.append(path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt])
            elif nxt not in done:
                visit(nxt, path + [nxt])
        visiting.discard(node)
        done.add(node)

    for node in graph:
        if node not in done:
            visit(node, [node])
    assert not cycles, cycles


def test_data_flows_down_the_layout():
    modules = _modules()
    upward = [(name, target) for name, tree in modules.items() for target, _ in _imports(name, tree, modules)
              if target in modules and _rank(target) > _rank(name)]
    assert not upward, upward


def test_imports_inside_functions_are_only_lazy_ones():
    """The package's own modules are imported at the top, so the dependencies show; only the public
    API (whose stages the ARM worker must not import) and the CLI entry point import them lazily."""
    modules = _modules()
    inside = [(name, target) for name, tree in modules.items() for target, nested in _imports(name, tree, modules)
              if nested and target in modules and name != "mobiledeploy.__init__"]
    assert not inside, inside
