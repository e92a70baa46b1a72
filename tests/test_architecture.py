"""The layering of docs/architecture.md holds: no import cycle (function-local imports included),
no function over 80 lines, and the package face loads every entry point it names.

The layer contract itself is `lint-imports` (pyproject.toml), run in CI's lint stage.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

import cfbench

PACKAGE = Path(cfbench.__file__).parent
MAX_LINES = 80


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = 0
    for root in sorted(graph.modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.find_modules_directly_imported_by(child)))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    m = stack.pop()
                    on_stack.discard(m)
                    comp.append(m)
                    if m == node:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def test_cycle_finder_finds_a_planted_cycle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The check below can fail: a cycle hidden in a function body is found."""
    pkg = tmp_path / "planted"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from planted import b\n")
    (pkg / "b.py").write_text("def f():\n    from planted import a  # deferred to dodge the cycle\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert _cycles(grimp.build_graph("planted", cache_dir=None)) == [["planted.a", "planted.b"]]


def test_no_import_cycle_even_through_function_local_imports() -> None:
    graph = grimp.build_graph("cfbench", cache_dir=None)
    assert _cycles(graph) == []


def _long_functions(root: Path) -> list[str]:
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_LINES:
                    found.append(f"{path.relative_to(root.parent)}:{node.lineno} {node.name} ({n} lines)")
    return found


def test_long_function_finder_counts_lines(tmp_path: Path) -> None:
    (tmp_path / "m.py").write_text("def f():\n" + "    x = 1\n" * MAX_LINES)
    assert _long_functions(tmp_path) == [f"{tmp_path.name}/m.py:1 f ({MAX_LINES + 1} lines)"]


def test_no_function_is_longer_than_80_lines() -> None:
    assert _long_functions(PACKAGE) == []


@pytest.mark.parametrize("name", [n for n in cfbench.__all__ if n != "__version__"])
def test_each_entry_point_loads_and_says_why(name: str) -> None:
    value = getattr(cfbench, name)
    assert callable(value) and inspect.getdoc(value), name


def test_import_cfbench_stays_light() -> None:
    """The face loads entry points on use: importing it pulls in neither torch nor pandas."""
    code = "import sys, cfbench; print(sorted(m for m in ('torch', 'pandas', 'transformers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_command_line_starts_without_the_numeric_stack() -> None:
    """`cfbench --help` stays fast: the CLI modules import the report, torch and pandas inside commands."""
    mods = "('torch', 'pandas', 'scipy', 'transformers', 'matplotlib')"
    code = f"import sys, cfbench.cli; print(sorted(m for m in {mods} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_every_package_says_what_it_owns() -> None:
    for init in sorted(PACKAGE.rglob("__init__.py")):
        module = importlib.import_module(".".join(init.parent.relative_to(PACKAGE.parent).parts))
        assert inspect.getdoc(module), f"{init} has no docstring"
