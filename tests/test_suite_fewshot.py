"""Per-task few-shot counts in a suite file: ``--num-fewshot`` > suite ``fewshot:`` > the task YAML's own.

The paper's OpenCompass MMLU is 5-shot while its other tasks are 0-shot, which one global
``--num-fewshot`` cannot express. The count is part of each task's cache key, so results scored
with different counts never mix, and the run records the count it used per task.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from cfbench.engine import plan_evaluation
from cfbench.errors import CfbenchError
from cfbench.tasks.registry import load_suite, task_dir


@pytest.fixture
def task_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "tasks"
    shutil.copytree(task_dir(), root)
    monkeypatch.setenv("CFBENCH_TASK_DIR", str(root))
    from cfbench.tasks import registry

    for fn in vars(registry).values():  # task configs are cached per root; start clean
        if hasattr(fn, "cache_clear"):
            fn.cache_clear()
    return root


def _suite(root: Path, name: str, body: str) -> None:
    (root / "suites" / f"{name}.yaml").write_text(
        f"suite: {name}\ncategories:\n  Exams: [arc_challenge]\n  Reasoning: [copa]\n{body}", encoding="utf-8"
    )


def test_suite_count_overrides_the_task_and_the_flag_overrides_both(task_root: Path, tiny_model: Path, tmp_path: Path):
    _suite(task_root, "fs", "fewshot:\n  arc_challenge: 2\n")
    kw = {"suite": "fs", "limit": 2, "results": tmp_path / "r"}
    plan = plan_evaluation(str(tiny_model), **kw)
    shots = {tp.name: tp.num_fewshot for tp in plan.tasks}
    assert shots == {"arc_challenge": 2, "copa": 0}
    arc = next(tp for tp in plan.tasks if tp.name == "arc_challenge")
    # two exemplars, each ending in its answer, precede the question
    assert arc.instances[0].requests[0].context.count("Answer:") == 3

    zero = plan_evaluation(str(tiny_model), num_fewshot=0, **kw)
    assert {tp.name: tp.num_fewshot for tp in zero.tasks} == {"arc_challenge": 0, "copa": 0}
    key = {tp.name: tp.cache_key for tp in plan.tasks}
    key0 = {tp.name: tp.cache_key for tp in zero.tasks}
    assert key["arc_challenge"] != key0["arc_challenge"]  # a 2-shot cache is never reused for 0-shot
    assert key["copa"] == key0["copa"]


def test_fewshot_changes_the_suite_hash(task_root: Path) -> None:
    _suite(task_root, "a", "")
    _suite(task_root, "b", "fewshot:\n  arc_challenge: 2\n")
    assert load_suite("a", task_root).suite_hash(task_root) != load_suite("b", task_root).suite_hash(task_root)
    assert load_suite("b", task_root).fewshot == {"arc_challenge": 2}


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ("fewshot: 5\n", "must be a mapping"),
        ("fewshot:\n  arc_challenge: -1\n", "not a non-negative integer"),
        ("fewshot:\n  arc_challenge: two\n", "not a non-negative integer"),
        ("fewshot:\n  hellaswag: 1\n", "not in the suite"),
        ("fewshot:\n  copa: 1\n", "needs a fewshot_split"),
    ],
)
def test_bad_fewshot_entries_are_refused_in_one_line(task_root: Path, body: str, needle: str) -> None:
    _suite(task_root, "bad", body)
    with pytest.raises(CfbenchError, match=needle) as exc:
        load_suite("bad", task_root)
    assert "\n" not in str(exc.value)


def test_paper_suite_states_the_papers_5_shot_mmlu() -> None:
    suite = load_suite("paper")
    assert suite.shots("oc_mmlu", 0) == 5
    assert suite.shots("oc_mmlu", 0, override=0) == 0
