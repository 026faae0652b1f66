"""The architecture's checkable rules, read from the sources with ``ast`` (nothing is imported or run).

* no import circle among flowkit's own modules (``flowkit/**`` and ``plugins/**``), counting imports
  made only for type checking and imports inside functions;
* no module under ``plugins/`` imports ``flowkit.engine`` (plugins see the contract only);
* no file under ``flowkit/`` is over 500 lines;
* one module under ``flowkit/`` writes ``status.json`` (calls ``write_status``).

Each rule is also run on a planted violation, so a finder that finds nothing is caught.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 500
#: The one module that may call ``write_status`` (the run's status keeper).
STATUS_WRITER = "flowkit.engine.status"


# ---------------------------------------------------------------------------------------------------
# Reading the sources
# ---------------------------------------------------------------------------------------------------


def module_files(root: Path = ROOT) -> dict[str, Path]:
    """Every module of flowkit and of the bundled plugins, by dotted name (``plugins/`` is a path root)."""
    found: dict[str, Path] = {}
    for base, top in ((root, root / "flowkit"), (root / "plugins", root / "plugins")):
        for path in sorted(top.rglob("*.py")):
            parts = list(path.relative_to(base).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def imported_modules(name: str, tree: ast.AST, is_package: bool, known: Iterable[str]) -> set[str]:
    """The modules of ``known`` that module ``name`` imports anywhere in ``tree`` (top level,
    ``if TYPE_CHECKING:``, in functions). ``from a import b`` is an import of module ``a.b`` where
    there is one (a package's submodule), else of ``a``; relative imports are resolved against
    ``name``. ``import a.b.c`` is an import of ``a.b.c`` only: that it runs the packages' ``__init__``
    on the way is how packages work, not a dependency of the importer's making."""
    known = set(known)
    package = name if is_package else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
    found.discard(name)
    return found & known


def import_graph(modules: Mapping[str, str], packages: Iterable[str] = ()) -> dict[str, set[str]]:
    """``{module: the modules of ``modules`` it imports}``, from each module's source text."""
    packages = set(packages)
    return {
        name: imported_modules(name, ast.parse(source), name in packages, modules)
        for name, source in modules.items()
    }


def source_graph(root: Path = ROOT) -> dict[str, set[str]]:
    files = module_files(root)
    packages = {name for name, path in files.items() if path.name == "__init__.py"}
    return import_graph({name: path.read_text() for name, path in files.items()}, packages)


def circles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """The import circles of ``graph``: each strongly connected component of more than one module
    (Tarjan's algorithm), as a sorted list of its modules."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def describe_circle(graph: Mapping[str, set[str]], members: list[str]) -> str:
    """The edges inside one circle, ``a -> b`` each."""
    inside = set(members)
    edges = [f"{a} -> {b}" for a in members for b in sorted(graph[a] & inside)]
    return "; ".join(edges)


def engine_imports(graph: Mapping[str, set[str]]) -> list[str]:
    """``plugin module -> flowkit.engine...`` for each import of the engine by a module outside flowkit."""
    return [
        f"{name} -> {target}"
        for name, targets in sorted(graph.items())
        if not name.startswith("flowkit.") and name != "flowkit"
        for target in sorted(targets)
        if target == "flowkit.engine" or target.startswith("flowkit.engine.")
    ]


def too_long(path: Path, root: Path = ROOT) -> str | None:
    """What is wrong with ``path``'s length, ``None`` when it has at most :data:`MAX_LINES` lines."""
    lines = len(path.read_text().splitlines())
    if lines <= MAX_LINES:
        return None
    return f"{path.relative_to(root).as_posix()} has {lines} lines (at most {MAX_LINES}): split it by job"


def status_writers(modules: Mapping[str, str]) -> list[str]:
    """The modules that call ``write_status`` (as a name or an attribute)."""
    writers = []
    for name, source in sorted(modules.items()):
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Call):
                func = node.func
                called = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
                if called == "write_status":
                    writers.append(name)
                    break
    return writers


# ---------------------------------------------------------------------------------------------------
# The rules on flowkit's sources
# ---------------------------------------------------------------------------------------------------


def test_no_import_circle():
    graph = source_graph()
    found = circles(graph)
    assert not found, "import circles (type-only and function-local imports count):\n" + "\n".join(
        describe_circle(graph, members) for members in found
    )


def test_no_plugin_imports_the_engine():
    offending = engine_imports(source_graph())
    assert not offending, "plugins import engine internals (use flowkit.host or the contract):\n" + "\n".join(
        offending
    )


def _flowkit_files() -> list[object]:
    relatives = [path.relative_to(ROOT).as_posix() for path in sorted((ROOT / "flowkit").rglob("*.py"))]
    return [pytest.param(relative, id=relative) for relative in relatives]


@pytest.mark.parametrize("relative", _flowkit_files())
def test_no_file_over_500_lines(relative):
    problem = too_long(ROOT / relative)
    assert problem is None, problem


def test_one_writer_of_the_status_file():
    files = module_files()
    sources = {name: path.read_text() for name, path in files.items() if name.startswith("flowkit.")}
    writers = status_writers(sources)
    assert writers == [STATUS_WRITER], (
        f"status.json must be written by {STATUS_WRITER} alone; write_status is called in: "
        + ", ".join(str(files[name].relative_to(ROOT)) for name in writers)
    )


# ---------------------------------------------------------------------------------------------------
# The finders on planted violations
# ---------------------------------------------------------------------------------------------------

PLANTED = {
    "pkg": "",
    "pkg.records": "from pkg import leaf\n",
    "pkg.leaf": "X = 1\n",
    # a circle made only of a type-only import and a function-local relative import
    "pkg.build": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.guide import G\n",
    "pkg.guide": "def f():\n    from . import build\n",
    "plug": "",
    "plug.impl": "import pkg.leaf\nfrom pkg import records\n",
}


def test_the_circle_finder_finds_type_only_and_local_circles():
    graph = import_graph(PLANTED, packages={"pkg", "plug"})
    assert graph["pkg.guide"] == {"pkg.build"}
    assert graph["plug.impl"] == {"pkg.leaf", "pkg.records"}
    assert circles(graph) == [["pkg.build", "pkg.guide"]]
    described = describe_circle(graph, ["pkg.build", "pkg.guide"])
    assert described == "pkg.build -> pkg.guide; pkg.guide -> pkg.build"


def test_the_circle_finder_passes_a_graph_without_circles():
    acyclic = dict(PLANTED, **{"pkg.guide": "X = 2\n"})
    assert circles(import_graph(acyclic, packages={"pkg", "plug"})) == []


def test_the_engine_import_finder_names_the_edge():
    planted = {
        "flowkit": "",
        "flowkit.engine": "",
        "flowkit.engine.limits": "",
        "flowkit.engine.run": "from flowkit.engine import limits\n",
        "flowkit_devices.backends": "def f():\n    from flowkit.engine.limits import cpu_memory_available\n",
    }
    graph = import_graph(planted, packages={"flowkit", "flowkit.engine"})
    assert engine_imports(graph) == ["flowkit_devices.backends -> flowkit.engine.limits"]


def test_the_status_writer_finder_finds_names_and_attributes():
    planted = {
        "a": "from x import write_status\nwrite_status(d, 'done')\n",
        "b": "import x\ndef f():\n    x.write_status(d, 'failed')\n",
        "c": "def write_status(d, state):\n    pass\n",
    }
    assert status_writers(planted) == ["a", "b"]


def test_the_line_limit_catches_a_long_file(tmp_path):
    long, short = tmp_path / "long.py", tmp_path / "short.py"
    long.write_text("x = 1\n" * (MAX_LINES + 1))
    short.write_text("x = 1\n" * MAX_LINES)
    assert too_long(long, tmp_path) == "long.py has 501 lines (at most 500): split it by job"
    assert too_long(short, tmp_path) is None
