"""Build ``results/paper``, the paper's published numbers as a read-only results store.

    python scripts/paper_results.py           # (re)build results/paper from cfbench/comparison/tables-5-8.csv
    python scripts/paper_results.py --check   # exit 1 if results/paper differs from a fresh build

The store is derived from the CSV alone (cfbench.comparison.paper.write_paper_store: fixed run ids, dates and
part names), so a rebuild with the same pyarrow writes the same bytes, and ``--check`` compares
contents (every row and column) so it also passes under another pyarrow version. It is rebuilt in a
temp folder and swapped in, never appended to: the store is read-only for every cfbench command.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "results" / "paper"


def differences(a: Path, b: Path) -> list[str]:
    """What differs between two paper stores, table by table (empty when their contents agree)."""
    import pandas as pd

    from cfbench.store import ResultStore

    sa, sb = ResultStore(a), ResultStore(b)
    out = []
    for table in ("runs", "task_scores", "items"):
        fa, fb = sa.read_table(table), sb.read_table(table)
        fa = fa.drop(columns=["cfbench_version"], errors="ignore").reset_index(drop=True)
        fb = fb.drop(columns=["cfbench_version"], errors="ignore").reset_index(drop=True)
        try:
            pd.testing.assert_frame_equal(fa, fb)
        except AssertionError as exc:
            out.append(f"{table}: {str(exc).splitlines()[0]}")
    if sa.read_only != sb.read_only:
        out.append(f"_schema.json read_only: {sa.read_only!r} != {sb.read_only!r}")
    return out


def main(argv: list[str]) -> int:
    from cfbench.comparison.paper import write_paper_store

    check = "--check" in argv
    with tempfile.TemporaryDirectory(dir=OUT.parent if OUT.parent.is_dir() else None) as tmp:
        fresh = write_paper_store(Path(tmp) / "paper")
        if check:
            if not OUT.is_dir():
                print(f"{OUT} is missing: run python scripts/paper_results.py", file=sys.stderr)
                return 1
            diff = differences(OUT, fresh)
            for line in diff:
                print(f"{OUT} is stale: {line}", file=sys.stderr)
            if diff:
                print("rebuild it: python scripts/paper_results.py", file=sys.stderr)
                return 1
            print(f"{OUT} matches cfbench/comparison/tables-5-8.csv")
            return 0
        OUT.parent.mkdir(parents=True, exist_ok=True)
        old = Path(tmp) / "old"
        if OUT.exists():
            OUT.rename(old)
        shutil.move(str(fresh), OUT)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
