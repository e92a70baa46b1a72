"""Count what the layering guards (docs/architecture.md): import cycles, deferred cfbench imports, long functions.

    python scripts/layering_report.py            # the cfbench importable from here (this checkout)
    PYTHONPATH=/path/to/other/checkout python scripts/layering_report.py   # another checkout

Prints one line per count. Cycles are strongly connected components of grimp's module graph, which
includes imports inside function bodies; "deferred" counts ``from cfbench… import`` / ``import
cfbench…`` statements inside functions of library code (everything but ``cli/`` and ``demo.py``).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import grimp


def sccs(graph: grimp.ImportGraph) -> list[list[str]]:
    """Components of more than one module (Tarjan, recursive: the package graph is small)."""
    sys.setrecursionlimit(10_000)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.find_modules_directly_imported_by(v):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for m in sorted(graph.modules):
        if m not in index:
            visit(m)
    return out


def _imports_cfbench(node: ast.AST) -> int:
    if isinstance(node, ast.ImportFrom):
        return int(node.level == 0 and (node.module or "").startswith("cfbench"))
    if isinstance(node, ast.Import):
        return int(any(a.name.startswith("cfbench") for a in node.names))
    return 0


def main() -> None:
    import cfbench

    root = Path(cfbench.__file__).parent
    deferred = 0
    long_functions: list[tuple[int, str]] = []
    largest = (0, "")
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root.parent).as_posix()
        text = path.read_text(encoding="utf-8")
        largest = max(largest, (len(text.splitlines()), rel))
        library = not (rel.startswith("cfbench/cli/") or rel == "cfbench/demo.py")
        for node in ast.walk(ast.parse(text)):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            n = node.end_lineno - node.lineno + 1
            if n > 80:
                long_functions.append((n, f"{rel}:{node.name}"))
            if library:
                for inner in ast.walk(node):
                    deferred += _imports_cfbench(inner)
    cycles = sccs(grimp.build_graph("cfbench", cache_dir=None))
    print(f"package: {root}")
    biggest = max(map(len, cycles), default=0)
    print(f"import cycles (incl. function-local imports): {len(cycles)}; largest {biggest} modules")
    for c in cycles:
        print(f"  {len(c)}: {', '.join(c)}")
    print(f"function-local cfbench imports in library code: {deferred}")
    print(f"functions over 80 lines: {len(long_functions)}")
    for n, name in sorted(long_functions, reverse=True):
        print(f"  {n:4d} {name}")
    print(f"largest file: {largest[1]} ({largest[0]} lines)")


if __name__ == "__main__":
    main()
