"""The built wheel works outside the source tree: tasks and suites ship inside the package.

An editable install finds ``task_configs/`` next to the package, which hid that the wheel had no
YAMLs at all. This builds the real wheel from a copy of the sources, unpacks it into a folder
outside the checkout and runs the real ``cfbench`` entry point from there (dependencies come from
the running venv; the editable cfbench is shadowed because ``PYTHONPATH`` precedes its finder).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TASKS = sorted(p.stem for p in (ROOT / "task_configs").glob("*.yaml"))
SUITES = sorted(p.stem for p in (ROOT / "task_configs" / "suites").glob("*.yaml"))


def _version() -> str:
    match = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M)
    assert match
    return match.group(1)


@pytest.fixture(scope="module")
def wheel_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel built from a copy of the sources (no build/ or egg-info written into the checkout)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "cfbench", src / "cfbench", symlinks=True, ignore=ignore)
    shutil.copytree(ROOT / "task_configs", src / "task_configs", ignore=ignore)
    cmd = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp / "dist"),
           str(src)]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=300)
    (wheel,) = (tmp / "dist").glob("cfbench-*.whl")
    site = tmp / "site"
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        zf.extractall(site)
    for task in TASKS:
        assert f"cfbench/task_configs/{task}.yaml" in names
    for suite in SUITES:
        assert f"cfbench/task_configs/suites/{suite}.yaml" in names
    return site


def _cfbench(site: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the wheel's ``cfbench`` console-script target from ``cwd`` (outside the checkout)."""
    env = {k: v for k, v in os.environ.items() if k not in ("CFBENCH_TASK_DIR", "PYTHONPATH")}
    env.update(PYTHONPATH=str(site), COLUMNS="200", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    code = ("import sys, cfbench; assert cfbench.__file__.startswith(sys.argv[1]), cfbench.__file__; "
            "sys.argv = ['cfbench', *sys.argv[2:]]; from cfbench.cli import main; main()")  # fmt: skip
    return subprocess.run([sys.executable, "-c", code, str(site), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)  # fmt: skip


def test_wheel_lists_all_tasks_of_both_suites(wheel_site: Path, tmp_path: Path) -> None:
    assert len(TASKS) >= 15 and {"paper", "offline"} <= set(SUITES)
    seen: set[str] = set()
    for suite in SUITES:
        proc = _cfbench(wheel_site, tmp_path, "tasks", "--suite", suite)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "cfbench tasks" in proc.stdout and f"suite {suite}" in proc.stdout
        seen |= {t for t in TASKS if re.search(rf"\b{t}\b", proc.stdout)}
    assert seen == set(TASKS)


def test_wheel_version(wheel_site: Path, tmp_path: Path) -> None:
    proc = _cfbench(wheel_site, tmp_path, "--version")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == f"cfbench {_version()}"
    import cfbench

    assert cfbench.__version__ == _version()


def test_wheel_has_the_paper_runs(wheel_site: Path, tmp_path: Path) -> None:
    """paper:NAME works from the wheel alone: the CSV is package data and the store is built into the cache."""
    assert (wheel_site / "cfbench" / "comparison" / "tables-5-8.csv").is_file()
    proc = _cfbench(wheel_site, tmp_path, "compare", "paper:llama2-7b-alpaca", "paper:llama2-7b-platypus-w-sam",
                    "--format", "csv", "--results", str(tmp_path / "mine"))  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert ",AVG,,,0.51919" in proc.stdout  # Table 2(a) Alpaca AVG 51.92, as a fraction
