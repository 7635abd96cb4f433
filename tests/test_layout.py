"""The layout rules of cai/ (issue 11), checked with the standard library's `ast` so they stay true:

- no function over MAX_FUNCTION_LINES lines and no module over MAX_MODULE_LINES lines;
- no module reaches into another's privates: no import of a name starting with `_` from another
  cai module, and no `module._name` through an imported cai module;
- no import cycle among cai modules. Function-local imports count (they only hide a cycle), and
  importing `a.b.c` also runs the `__init__` of `a.b` (unless the importer is inside `a.b`).
  Imports under `if TYPE_CHECKING:` never run, so they make no edge.

And the tests read on their own: no test module imports another test module, and no helper or
fixture is written out in two of them (they live in tests/helpers.py and tests/conftest.py).

Each check is a function of a package (or tests) folder, so the tests at the bottom also run it on small
packages built in tmp_path, to show it finds what it should (it cannot pass by finding nothing).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

TESTS = Path(__file__).resolve().parent
CAI = TESTS.parent / "cai"
MAX_FUNCTION_LINES = 80
MAX_MODULE_LINES = 600


# --- Reading a package -------------------------------------------------------------------------


def package_modules(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file under the package folder `root`."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _runtime_nodes(tree: ast.AST):
    """Every node of the tree, except those under `if TYPE_CHECKING:` (they never run)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend(node.orelse)
        else:
            stack.extend(ast.iter_child_nodes(node))


@dataclass(frozen=True)
class Import:
    module: str
    """The dotted name imported from (absolute)."""
    names: tuple[str, ...]
    """The names of a `from ... import`, () for a plain `import`."""
    line: int


def imports(tree: ast.AST, name: str, is_package: bool) -> list[Import]:
    """The imports of module `name` that run, module-level and function-local alike."""
    out = []
    for node in _runtime_nodes(tree):
        if isinstance(node, ast.Import):
            out += [Import(a.name, (), node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = name.split(".") if is_package else name.split(".")[:-1]
                parts = parts[:len(parts) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            out.append(Import(base, tuple(a.name for a in node.names), node.lineno))
    return out


def _parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


# --- The checks --------------------------------------------------------------------------------


def long_functions(root: Path, limit: int = MAX_FUNCTION_LINES) -> list[str]:
    """`file:line name (N lines)` of every function or method longer than `limit` lines."""
    out = []
    for path in package_modules(root).values():
        for node in ast.walk(_parse(path)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > limit:
                    out.append(f"{path.relative_to(root.parent)}:{node.lineno} {node.name} ({n} lines)")
    return out


def long_modules(root: Path, limit: int = MAX_MODULE_LINES) -> list[str]:
    out = []
    for path in package_modules(root).values():
        n = len(path.read_text(encoding="utf-8").splitlines())
        if n > limit:
            out.append(f"{path.relative_to(root.parent)} ({n} lines)")
    return out


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_reaches(root: Path) -> list[str]:
    """Every import of a `_name` from another module of the package, and every `mod._name`
    read through a name bound to another module of the package."""
    mods = package_modules(root)
    out = []
    for name, path in mods.items():
        tree = _parse(path)
        where = path.relative_to(root.parent)
        bound: dict[str, str] = {}  # local name -> the package module it is bound to
        for node in _runtime_nodes(tree):
            if isinstance(node, ast.ImportFrom):
                (imp,) = imports(ast.Module([node], []), name, path.name == "__init__.py")
                if imp.module not in mods or imp.module == name:
                    continue
                for alias in node.names:
                    if _private(alias.name):
                        out.append(f"{where}:{node.lineno} imports {alias.name} from {imp.module}")
                    if f"{imp.module}.{alias.name}" in mods:
                        bound[alias.asname or alias.name] = f"{imp.module}.{alias.name}"
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name in mods and any(_private(part) for part in alias.name.split(".")):
                        out.append(f"{where}:{node.lineno} imports {alias.name}")
                    if alias.asname and alias.name in mods:
                        bound[alias.asname] = alias.name
                    elif not alias.asname:  # `import pkg.a` binds pkg; pkg.a._x reads a's private
                        bound.update({m: m for m in mods if m == alias.name or alias.name.startswith(m + ".")})
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and _private(node.attr):
                owner = _dotted(node.value)
                module = bound.get(owner, name) if owner else name
                if module != name:
                    out.append(f"{where}:{node.lineno} reads {owner}.{node.attr} of {module}")
    return out


def _dotted(node: ast.expr) -> str | None:
    """`a.b.c` for a chain of names and attributes, else None."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute) and (base := _dotted(node.value)) is not None:
        return f"{base}.{node.attr}"
    return None


def import_graph(root: Path) -> dict[str, dict[str, int]]:
    """module -> {module it depends on when imported: the line of the import}, within the package.

    `from p import n` depends on module p.n when there is one, else on p (the name is p's); it
    also runs p's `__init__`, as `import a.b.c` runs a's and a.b's. Those implied packages are
    edges too, except a package the importer is inside (it is already running by then)."""
    mods = package_modules(root)
    graph: dict[str, dict[str, int]] = {m: {} for m in mods}
    for name, path in mods.items():
        own = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        inside = {".".join(own[:i]) for i in range(1, len(own) + 1)}
        for imp in imports(_parse(path), name, path.name == "__init__.py"):
            parts = imp.module.split(".")
            implied = [".".join(parts[:i]) for i in range(1, len(parts) + (1 if imp.names else 0))]
            named = [f"{imp.module}.{n}" if f"{imp.module}.{n}" in mods else imp.module for n in imp.names]
            targets = [t for t in implied if t not in inside] + (named or [imp.module])
            for t in targets:
                if t in mods and t != name:
                    graph[name].setdefault(t, imp.line)
    return graph


def import_cycles(root: Path) -> list[str]:
    """Each cycle of the import graph (one per strongly connected component), as
    `a (a.py:3) -> b (b.py:7) -> a`."""
    graph = import_graph(root)
    mods = package_modules(root)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    components: list[list[str]] = []

    def connect(v: str) -> None:  # Tarjan's algorithm
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(component)

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return [_show_cycle(sorted(c), graph, mods, root) for c in components]


def _show_cycle(component: list[str], graph: dict[str, dict[str, int]], mods: dict[str, Path],
                root: Path) -> str:
    """The shortest cycle through the component's first module, each edge with the importing line."""
    inside, start = set(component), component[0]
    came_from: dict[str, str] = {}
    queue = [start]
    while start not in came_from:  # breadth first, back to the start (it is in a cycle)
        v = queue.pop(0)
        for w in sorted(graph[v]):
            if w in inside and w not in came_from:
                came_from[w] = v
                queue.append(w)
    path = [start]
    while len(path) == 1 or path[-1] != start:
        path.append(came_from[path[-1]])
    path.reverse()
    hops = [f"{a} ({mods[a].relative_to(root.parent)}:{graph[a][b]})" for a, b in zip(path, path[1:], strict=False)]
    return " -> ".join(hops + [start])


def cross_test_imports(folder: Path) -> list[str]:
    """Every import of one test module by another (helpers belong in helpers.py or conftest.py)."""
    names = {p.stem for p in folder.glob("test_*.py")}
    out = []
    for path in sorted(folder.glob("test_*.py")):
        for imp in imports(_parse(path), path.stem, False):
            if imp.module.split(".")[0] in names:
                out.append(f"{path.name}:{imp.line} imports {imp.module}")
    return out


def repeated_helpers(folder: Path) -> list[str]:
    """Top-level functions other than tests (helpers, fixtures) written the same way in two or
    more test modules."""
    seen: dict[str, list[str]] = {}
    for path in sorted(folder.glob("test_*.py")):
        for node in _parse(path).body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not node.name.startswith("test"):
                seen.setdefault(ast.dump(node), []).append(f"{path.name}:{node.lineno} {node.name}")
    return [" = ".join(places) for places in seen.values() if len(places) > 1]


# --- cai itself --------------------------------------------------------------------------------


def test_no_function_in_cai_is_over_80_lines():
    found = long_functions(CAI)
    assert not found, "split these functions:\n" + "\n".join(found)


def test_no_module_in_cai_is_over_600_lines():
    found = long_modules(CAI)
    assert not found, "split these modules:\n" + "\n".join(found)


def test_no_cai_module_imports_or_reads_another_modules_privates():
    found = private_reaches(CAI)
    assert not found, "make these names public, or move the code to their module:\n" + "\n".join(found)


def test_cai_has_no_import_cycle():
    found = import_cycles(CAI)
    assert not found, "import cycles (function-local imports count):\n" + "\n".join(found)


def test_the_checks_read_all_of_cai():
    mods = package_modules(CAI)
    assert {"cai", "cai.cli", "cai.engine", "cai.engine.base", "cai.constitution", "cai.reward"} <= set(mods)
    graph = import_graph(CAI)
    assert "cai.provenance" in graph["cai.checkpoint"]  # a function-local import
    assert "cai.engine.tokens" in graph["cai.engine.vllm"]


def test_no_test_module_imports_another():
    found = cross_test_imports(TESTS)
    assert not found, "move shared helpers to tests/helpers.py or conftest.py:\n" + "\n".join(found)


def test_no_helper_or_fixture_is_written_in_two_test_modules():
    found = repeated_helpers(TESTS)
    assert not found, "move each to tests/helpers.py (helpers) or conftest.py (fixtures):\n" + "\n".join(found)


# --- The checks find what they should (packages built in tmp_path) -----------------------------


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "pkg"
    for rel, text in {"__init__.py": "", **files}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def _function(name: str, lines: int) -> str:
    """A function of exactly `lines` lines."""
    return f"def {name}():\n" + "    x = 0\n" * (lines - 2) + "    return x\n"


def test_long_functions_lists_a_function_or_method_over_the_limit_and_no_other(tmp_path):
    method = "class C:\n" + "\n".join("    " + line for line in _function("m", 81).splitlines()) + "\n"
    root = _package(tmp_path, {"a.py": _function("short", 80) + _function("long", 81),
                               "sub/b.py": method})
    assert long_functions(root) == ["pkg/a.py:81 long (81 lines)", "pkg/sub/b.py:2 m (81 lines)"]


def test_long_modules_lists_a_module_over_the_limit_and_no_other(tmp_path):
    root = _package(tmp_path, {"a.py": "x = 1\n" * 600, "b.py": "x = 1\n" * 601})
    assert long_modules(root) == ["pkg/b.py (601 lines)"]


def test_private_reaches_finds_imports_and_reads_of_another_modules_privates(tmp_path):
    root = _package(tmp_path, {
        "a.py": "_hidden = 1\nshown = 2\n__all__ = []\n",
        "b.py": "from pkg.a import _hidden, shown, __all__\n",
        "c.py": "def f():\n    from .a import _hidden\n    return _hidden\n",
        "d.py": "from pkg import a\nimport pkg.a as aa\n\ndef f():\n    return a._hidden + aa._hidden + a.shown\n",
        "e.py": "_own = 1\n\ndef f():\n    return _own\n",
        "f.py": "import pkg.a\nimport pkg._priv\n\ndef f(obj):\n    return pkg.a._hidden + pkg.a.shown + obj._x\n",
        "_priv.py": "",
    })
    assert private_reaches(root) == [
        "pkg/b.py:1 imports _hidden from pkg.a",
        "pkg/c.py:2 imports _hidden from pkg.a",
        "pkg/d.py:5 reads a._hidden of pkg.a",
        "pkg/d.py:5 reads aa._hidden of pkg.a",
        "pkg/f.py:2 imports pkg._priv",
        "pkg/f.py:5 reads pkg.a._hidden of pkg.a",
    ]


def test_import_cycles_finds_a_cycle_hidden_in_a_function(tmp_path):
    root = _package(tmp_path, {
        "a.py": "from pkg.b import g\n",
        "b.py": "def g():\n    from pkg import a\n    return a\n",
        "c.py": "import pkg.a\n",
    })
    assert import_cycles(root) == ["pkg.a (pkg/a.py:1) -> pkg.b (pkg/b.py:2) -> pkg.a"]


def test_import_cycles_counts_the_package_init_an_import_runs(tmp_path):
    # pkg.user imports pkg.sub.model, which first runs pkg/sub/__init__.py, which imports
    # pkg.sub.tools, which imports pkg.user: a cycle, though no line names pkg.sub alone.
    root = _package(tmp_path, {
        "sub/__init__.py": "from pkg.sub.model import M\nfrom pkg.sub.tools import t\n",
        "sub/model.py": "class M: ...\n",
        "sub/tools.py": "from pkg.sub.model import M\nfrom pkg import user\n",
        "user.py": "from pkg.sub.model import M\n",
    })
    assert import_cycles(root) == [
        "pkg.sub (pkg/sub/__init__.py:2) -> pkg.sub.tools (pkg/sub/tools.py:2) -> pkg.user (pkg/user.py:1) -> pkg.sub"]


def test_import_cycles_accepts_an_acyclic_package_and_type_checking_imports(tmp_path):
    root = _package(tmp_path, {
        "sub/__init__.py": "from pkg.sub.model import M\n",
        "sub/model.py": "from pkg import base\n",  # its own package's __init__ is no edge
        "base.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.sub import M\n",
        "user.py": "from pkg.sub import M\nfrom pkg import base\n",
    })
    assert import_graph(root)["pkg.base"] == {}
    assert import_cycles(root) == []


def test_import_cycles_finds_a_submodule_that_imports_a_name_of_its_own_package(tmp_path):
    # `from pkg.sub import app` in pkg.sub.cmd needs pkg/sub/__init__.py, which imports pkg.sub.cmd;
    # `from pkg.sub import helpers` only needs the module pkg.sub.helpers.
    root = _package(tmp_path, {
        "sub/__init__.py": "app = 1\nfrom pkg.sub import cmd\n",
        "sub/cmd.py": "from pkg.sub import app, helpers\n",
        "sub/helpers.py": "",
    })
    assert import_graph(root)["pkg.sub.cmd"] == {"pkg.sub": 1, "pkg.sub.helpers": 1}
    assert import_cycles(root) == ["pkg.sub (pkg/sub/__init__.py:2) -> pkg.sub.cmd (pkg/sub/cmd.py:1) -> pkg.sub"]


def test_the_tests_checks_find_cross_imports_and_repeated_helpers(tmp_path):
    fixture = '@pytest.fixture(scope="module")\ndef one_thread():\n    yield\n'
    (tmp_path / "test_a.py").write_text("import pytest\n\n" + fixture + "\ndef make(x):\n    return x\n")
    (tmp_path / "test_b.py").write_text("import pytest\nfrom test_a import make\n\n" + fixture
                                        + "\ndef make(x):\n    return x + 1\n\ndef test_x():\n    assert make(1)\n")
    (tmp_path / "test_c.py").write_text("import sys\n\ndef test_y():\n    import test_a\n    assert test_a\n")
    (tmp_path / "helpers.py").write_text("def make(x):\n    return x\n")
    assert cross_test_imports(tmp_path) == ["test_b.py:2 imports test_a", "test_c.py:4 imports test_a"]
    assert repeated_helpers(tmp_path) == ["test_a.py:4 one_thread = test_b.py:5 one_thread"]
