"""The package's import graph has no cycle, counting imports inside functions too (a cycle that only works
because ``fastrnn/__init__`` happened to import everything first breaks for the next module that moves), and
the C++ library loader imports nothing from the package."""

import ast
from pathlib import Path

import fastrnn

PACKAGE = Path(fastrnn.__file__).resolve().parent


def _imports(path: Path) -> set[str]:
    """The ``fastrnn.*`` modules a file imports anywhere in it (``from fastrnn import x`` counts as
    ``fastrnn.x`` when x is a module of the package)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found.update(n for n in names if n.startswith("fastrnn.") and (PACKAGE / f"{n[8:]}.py").exists())
    return found


def _graph() -> dict[str, set[str]]:
    return {f"fastrnn.{p.stem}": _imports(p) for p in PACKAGE.glob("*.py") if p.stem != "__init__"}


def test_the_package_import_graph_has_no_cycle():
    graph = _graph()
    state: dict[str, int] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(target):] + [target]))
            if target not in state:
                visit(target, path + [target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_the_cpp_loader_imports_nothing_from_the_package():
    assert _imports(PACKAGE / "_cpp.py") == set()
