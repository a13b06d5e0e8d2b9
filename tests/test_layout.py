"""The layout's contracts, read from the source with ``ast``: imports in one direction, no
import cycles, and one module that reads the environment.

Every import counts, at module level or inside a function, ``TYPE_CHECKING`` ones included:
a lazy import is still a door between two modules. Importing ``a.b.c`` from outside the
package ``a.b`` also runs ``a/b/__init__.py``, so that counts as importing ``a.b`` too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("hpo", "service")
# The composition root: the CLI starts the HTTP face (`hpo serve`, `hpo keys`, `hpo db`).
ENGINE_MAY_IMPORT_SERVICE = {"hpo.cli"}
SETTINGS_MODULE = "hpo.settings"


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def source_modules(root: Path = ROOT) -> dict[str, Path]:
    """Every module of the two packages (migrations' scripts are loaded by Alembic, not imported)."""
    return {
        module_name(path, root): path
        for package in PACKAGES
        for path in sorted((root / package).rglob("*.py"))
        if "migrations" not in path.relative_to(root).parts
    }


def imported_modules(name: str, path: Path, known: set[str]) -> set[str]:
    """The modules of ``known`` that module ``name`` (at ``path``) imports, anywhere in it."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()

    def add(target: str) -> None:
        while target and target not in known:  # `from a.b import name`: the module a.b
            target = target.rpartition(".")[0]
        if not target or target == name:
            return
        found.add(target)
        parent = target.rpartition(".")[0]
        while parent:  # a package's __init__ runs unless the importer is already inside it
            if parent in known and not (name == parent or name.startswith(parent + ".")):
                found.add(parent)
            parent = parent.rpartition(".")[0]

    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name if is_package else name.rpartition(".")[0]
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            for alias in node.names:
                add(f"{module}.{alias.name}")
    return found


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    modules = source_modules(root)
    known = set(modules)
    return {name: imported_modules(name, path, known) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
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
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_the_engine_does_not_import_the_http_face():
    wrong = {
        f"{name} -> {target}"
        for name, targets in import_graph().items()
        if name.startswith("hpo") and name not in ENGINE_MAY_IMPORT_SERVICE
        for target in targets
        if target.split(".")[0] == "service"
    }
    assert wrong == set()


def test_only_the_settings_read_the_environment():
    readers = set()
    for name, path in source_modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv")
                    and isinstance(node.value, ast.Name) and node.value.id == "os"):
                readers.add(name)
    assert readers - {SETTINGS_MODULE} == set()


@pytest.mark.parametrize("source, expected", [
    ({"a/__init__.py": "", "a/x.py": "from a import y", "a/y.py": "def f():\n    import a.x"}, [["a.x", "a.y"]]),
    ({"a/__init__.py": "from a import x", "a/x.py": "from . import y", "a/y.py": ""}, []),
    ({"a/__init__.py": "from a import x", "a/x.py": "", "b.py": "import a.x", "a/z.py": "import b"}, []),
    ({"a/__init__.py": "from a import x", "a/x.py": "import b", "b.py": "from a.z import f",
      "a/z.py": ""}, [["a", "a.x", "b"]]),
])
def test_the_cycle_check_finds_cycles(tmp_path, source, expected):
    """The check itself: lazy and relative imports, and a package's __init__ run from outside it."""
    for relative, text in source.items():
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text(text)
    modules = {module_name(p, tmp_path): p for p in sorted(tmp_path.rglob("*.py"))}
    graph = {name: imported_modules(name, path, set(modules)) for name, path in modules.items()}
    assert cycles(graph) == expected
