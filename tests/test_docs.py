"""docs/cli.md is the generated CLI reference: it must match what ``scripts/cli_reference.py`` prints now."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_cli_reference_is_up_to_date() -> None:
    proc = subprocess.run([sys.executable, "scripts/cli_reference.py", "--check"], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_readme_has_no_help_dumps_and_links_the_reference() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "docs/cli.md" in readme
    assert "╭─ Options" not in readme and len(readme) <= 12_000


# What a repository path may start with when a doc names it from the repository root.
REPO_PREFIX = r"(?:cfbench|tests|benchmarks|scripts|docs|task_configs|\.ci|\.github|results)/"
# A root path (or ``../``-relative one) in prose or code: not the tail of a longer path or URL; stops at
# anything a path here never contains, so ``tests/x.py::test_y``, ``a.py:12`` and ``x.py.`` end at ``.py``.
PATH_TOKEN = re.compile(r"(?<![\w/.~-])((?:\.\./)*" + REPO_PREFIX + r"[\w./*-]*)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)
LINK = re.compile(r"\]\(([^)\s]+)\)")
EXTERNAL = re.compile(r"^(?:[a-z][\w+.-]*:|#)")  # https:, mailto:, or an anchor on the same page
PLACEHOLDER = re.compile(r"^[A-Z][A-Z_]+(?:\.\w+)?$")  # NAME.yaml, DIR: a reader's value, not a file


def named_paths(text: str, folder: Path) -> list[tuple[str, Path]]:
    """Every repository path a Markdown ``text`` in ``folder`` names, as (written, resolved).

    Links resolve against the doc's folder (how a renderer follows them); path tokens in prose and inline
    code against the root (``../`` ones against the folder). Inside fenced blocks only files (a name with an
    extension) outside ``results/`` count: the blocks also name outputs that a command is about to write.
    """
    prose = FENCE.sub("", text)
    found = [(t, folder / t.split("#")[0]) for t in LINK.findall(prose) if not EXTERNAL.match(t)]
    tokens = [(t, False) for t in PATH_TOKEN.findall(LINK.sub("]", prose))]
    tokens += [(t, True) for block in FENCE.findall(text) for t in PATH_TOKEN.findall(block)]
    for token, fenced in tokens:
        token = token.rstrip(".")
        if fenced and (token.startswith("results/") or not re.search(r"\.\w+$", token)):
            continue
        if any(PLACEHOLDER.match(part) for part in token.split("/")):
            continue
        found.append((token, (folder if token.startswith("../") else ROOT) / token))
    return found


def exists(path: Path) -> bool:
    """The path exists, or (for a glob such as ``docs/bench/scoring-*.json``) matches at least one file."""
    if not any(c in str(path) for c in "*?["):
        return path.exists()
    return any(ROOT.glob(str(path.resolve().relative_to(ROOT.resolve()))))


def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_docs_name_only_paths_that_exist() -> None:
    """A doc that names a moved or deleted file (link, inline code, prose or a command) fails here."""
    missing = [
        f"{doc.relative_to(ROOT)}: {written}"
        for doc in doc_files()
        for written, path in named_paths(doc.read_text(encoding="utf-8"), doc.parent)
        if not exists(path)
    ]
    assert not missing, "docs name paths that do not exist:\n" + "\n".join(missing)


def test_path_check_catches_moved_files_and_ignores_the_rest() -> None:
    """The checker is real: each way of naming a file is caught; URLs, outputs and placeholders are not files."""
    text = (
        "See `cfbench/report/no_such.py`, [x](../cfbench/nope.py), [y](nope.md#a), tests/test_nope.py::test_a.\n"
        "Results: `results/`, [web](https://example.org/cfbench/x.py), [here](#anchor), `docs/bench/scoring-*.json`,\n"
        "`task_configs/suites/NAME.yaml`, docs/cli.md: and `cfbench/errors.py:12` (see `tests/test_docs.py`).\n"
        "```bash\npython benchmarks/no_such.py --json results/out.json --out docs/\n```\n"
    )
    named = named_paths(text, ROOT / "docs")
    missing = sorted(written for written, path in named if not exists(path))
    assert missing == ["../cfbench/nope.py", "benchmarks/no_such.py", "cfbench/report/no_such.py", "nope.md#a",
                       "tests/test_nope.py"]  # fmt: skip
    assert {w for w, _ in named} >= {"results/", "docs/bench/scoring-*.json", "docs/cli.md", "tests/test_docs.py"}
