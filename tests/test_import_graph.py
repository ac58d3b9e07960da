"""The project's import graph is acyclic and one-way (SPEC §3).

Every ``.py`` file under ``spikeformer/``, ``rules/`` and ``neuromorphic/`` is parsed with ``ast``
and walked whole, so imports inside functions (lazy imports) count like top-level ones: a
cycle closed by a lazy import still means neither module can be understood, tested or
replaced without the other. Imports under ``if TYPE_CHECKING:`` never execute and are skipped.

Nodes are modules; a package is its ``__init__.py``, named by the package (``neuromorphic.lava``).
Relative imports are resolved against the importing module's package. An import statement
gives these edges (importer -> imported), kept only when both ends are project modules:

1. ``import a.b.c`` -> ``a.b.c``; ``from a.b import c`` -> ``a.b.c`` when ``c`` is a submodule,
   else -> ``a.b`` (the name lives in ``a/b/__init__.py`` or ``a/b.py``).
2. Importing ``a.b.c`` also executes the ``__init__`` of ``a`` and of ``a.b``, so each of those
   ancestor packages gets an edge too, EXCEPT the importer's own ancestors: Python has
   started executing those before the importer's first line runs, so an import of them
   adds nothing (``neuromorphic/lava/run.py`` importing ``neuromorphic.ir`` runs no new
   ``__init__``).
3. No implicit edge from a submodule to its parent package. Only written imports count:
   ``from . import name`` where ``name`` is defined in the package ``__init__`` (not a
   submodule) is an explicit edge to the package, and together with the ``__init__``
   importing that submodule it IS a cycle (the module sees a half-initialised package).

So a package ``__init__`` that imports its own submodules (re-exports) is fine, a submodule
importing its siblings through ``from . import x`` is fine, and a submodule reaching back for
a name defined in its package ``__init__`` while that ``__init__`` imports it is reported.

Not seen by this test: imports by string (``importlib``, entry points) and Lava loading a
ProcessModel file by path (``neuromorphic/lava/*/models.py`` use absolute imports for that).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("spikeformer", "rules", "neuromorphic")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    """``{dotted name: file}`` for every module of the three packages."""
    return {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST):
    """Every Import/ImportFrom node in ``tree``, lazy ones included, ``if TYPE_CHECKING:`` bodies excluded."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            skip.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in skip:
            yield node


def _package_of(name: str, path: Path) -> str:
    """The package a relative import in module ``name`` is resolved against."""
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


def imported_names(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The absolute names module ``name`` imports, most specific first (rule 1), before filtering."""
    out: set[str] = set()
    for node in _imports(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
            continue
        if node.level:
            base = _package_of(name, path).split(".")
            base = base[:len(base) - (node.level - 1)] if node.level > 1 else base
            target = ".".join(base + ([node.module] if node.module else []))
        else:
            target = node.module or ""
        for alias in node.names:
            sub = f"{target}.{alias.name}"
            out.add(sub if sub in modules else target)
    return out


def import_graph() -> dict[str, set[str]]:
    """``{module: modules it imports}`` between project modules, by the rules in the docstring."""
    modules = project_modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        own_ancestors = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
        if path.name == "__init__.py":
            own_ancestors.add(name)
        edges: set[str] = set()
        for target in imported_names(name, path, modules):
            parts = target.split(".")
            for i in range(1, len(parts) + 1):  # the target and every ancestor package it executes (rule 2)
                mod = ".".join(parts[:i])
                if mod in modules and mod != name and (mod == target or mod not in own_ancestors):
                    edges.add(mod)
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as ``[a, b, ..., a]``, or None; depth-first with three colours."""
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_graph_sees_lazy_and_relative_imports():
    """The walker resolves the forms the project uses; a broken resolver would find no cycles at all."""
    graph = import_graph()
    assert "neuromorphic.ir" in graph["neuromorphic.lower"]           # from .ir import ...
    assert "neuromorphic.ir" in graph["neuromorphic.lava.run"]        # from ..ir import ...
    assert "spikeformer.errors" in graph["neuromorphic.lava"]         # absolute, in a package __init__
    assert "neuromorphic.lava.run" in graph["neuromorphic.backends"]  # lazy, inside a function
    assert "neuromorphic.lava" in graph["neuromorphic.backends"]      # ancestor package it executes (rule 2)
    assert "neuromorphic" not in graph["neuromorphic.backends"]       # its own ancestor (rule 2)
    assert "spikeformer.errors" in graph["neuromorphic.backends"]     # lazy, absolute


def test_resolver_on_every_import_form(tmp_path):
    source = ("from typing import TYPE_CHECKING\n"
              "if TYPE_CHECKING:\n    from ..ir import Graph\n"          # never executed: no edge
              "from . import run, require_lava\n"                        # a submodule; a name of the package
              "from .. import compare\n"
              "from ..simulate import run_graph\n"
              "def f():\n    import neuromorphic.lava.attention.process\n")
    (tmp_path / "probe.py").write_text(source)
    names = imported_names("neuromorphic.lava.probe", tmp_path / "probe.py", project_modules())
    assert names == {"typing", "neuromorphic.lava.run", "neuromorphic.lava", "neuromorphic.compare",
                     "neuromorphic.simulate", "neuromorphic.lava.attention.process"}


def test_find_cycle_reports_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_layering_is_one_way():
    """SPEC §3: ``spikeformer`` <- ``rules``, ``spikeformer`` <- ``neuromorphic``; nothing imports upward."""
    forbidden = {"spikeformer": ("rules", "neuromorphic"), "rules": ("neuromorphic",), "neuromorphic": ()}
    modules = project_modules()
    bad = sorted(f"{src} -> {dst}" for src, path in modules.items() for dst in imported_names(src, path, modules)
                 if dst.split(".")[0] in forbidden[src.split(".")[0]])
    assert not bad, "imports against SPEC §3 layering: " + ", ".join(bad)
