"""A Holm family with one test (issue 19: "Bad input gets one line. Examples: … a family with one test").

Comparing one task (``cfbench compare --tasks boolq``) is a legitimate request, so it is not refused;
but Holm over one test adjusts nothing, and a legend that says "significant by the Holm-adjusted p"
would read as a correction that never happened. Every format says so in one line (JSON
``holm_lines``, CSV ``holm_m``), and a scope that *is* one task's value is one test, not three.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pytest
from rich.console import Console

from cfbench.report import build_report
from cfbench.report.html import to_html
from cfbench.report.render import holm_lines, report_to_dict, to_csv, to_markdown, to_rich

LINE = "Holm: one test in its family, so Holm adjusts nothing and its star is at raw α=0.05: "


def _frame(run: str, task: str, scores: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame({"run": run, "task": task, "doc_id": np.arange(len(scores)), "score": scores, "subset": None})


def _items(tasks: list[str], forgotten: int = 12) -> pd.DataFrame:
    frames = []
    for t in tasks:
        base = np.r_[np.ones(100), np.zeros(100)]
        tuned = base.copy()
        tuned[:forgotten] = 0
        frames += [_frame("base", t, base), _frame("tuned", t, tuned)]
    return pd.concat(frames, ignore_index=True)


def _rich_text(report) -> str:  # type: ignore[no-untyped-def]
    console = Console(width=120, record=True, color_system=None, file=io.StringIO())
    console.print(to_rich(report))
    return console.export_text()


def test_one_task_comparison_says_once_in_every_format_that_holm_adjusted_nothing() -> None:
    report = build_report("base", ["tuned"], {"Reasoning": ["boolq"]}, items=_items(["boolq"]), seed=0)
    cmp = report.vs_base("tuned")
    row = cmp.task("boolq")
    assert row.p_adj == row.p and row.holm_m == 1 and row.significant
    assert cmp.avg.holm_m == cmp.categories["Reasoning"].holm_m == 1  # they are boolq's Δ: its test
    assert cmp.singletons == [("task rows", "boolq")]
    line = LINE + "task rows of tuned − base (boolq)"
    assert holm_lines(report) == [line]
    assert to_markdown(report).count(line) == 1
    assert to_html(report).count(line.replace("−", "−")) == 1
    assert _rich_text(report).replace("\n", " ").count("Holm: one test in its family") == 1
    assert report_to_dict(report)["holm_lines"] == [line]
    assert json.loads(json.dumps(report_to_dict(report)))["comparisons"][0]["tasks"][0]["holm_m"] == 1
    csv = pd.read_csv(io.StringIO(to_csv(report)))
    deltas = csv[csv["section"] == "delta"]
    assert set(deltas["holm_m"]) == {1}


def test_avg_alone_in_its_family_is_named_and_a_real_family_is_not() -> None:
    """Two single-task categories take their tasks' tests: AVG is the only bootstrap test left."""
    report = build_report("base", ["tuned"], {"A": ["t1"], "B": ["t2"]}, items=_items(["t1", "t2"]), seed=0)
    cmp = report.vs_base("tuned")
    assert cmp.task("t1").holm_m == 2 and cmp.avg.holm_m == 1 and cmp.avg.p_adj == cmp.avg.p
    assert holm_lines(report) == [LINE + "categories + AVG of tuned − base (AVG)"]
    many = build_report("base", ["tuned"], {"A": ["t1", "t2"], "B": ["t3", "t4"]},
                        items=_items(["t1", "t2", "t3", "t4"]), seed=0)  # fmt: skip
    assert holm_lines(many) == [] and "Holm: one test" not in to_markdown(many)
    assert {t.holm_m for t in many.vs_base("tuned").tasks} == {4}


def test_a_one_task_signal_is_one_test_not_three() -> None:
    """Overall, category and task of a one-task comparison are one value: before, Holm judged it at α/3."""
    from cfbench.metrics import register_metric, unregister_metric

    metric = register_metric("gold_shift_one", lambda b: b.tuned[:, 0] - b.base[:, 0], label="shift",
                             unit="nats", kind="delta", better="higher")  # fmt: skip
    try:
        sigs = _one_task_signals(metric)
    finally:
        unregister_metric("gold_shift_one")
    assert [s.scope for s in sigs] == ["all", "C", "t0"]
    task = sigs[2]
    assert task.p is not None and 0.05 / 3 < task.p < 0.05  # starred alone; ×3 (old: three tests) is not
    assert all(s.p == task.p and s.p_adj == task.p and s.holm_m == 1 and s.significant for s in sigs)
    report = build_report("b", ["t"], {"C": ["t0"]}, items=_items(["t0"]).replace({"base": "b", "tuned": "t"}))
    report.add_signals("t", sigs)
    assert holm_lines(report) == [LINE + "task rows of t − b (t0); scopes of shift of t (t0)"]


def _one_task_signals(metric):  # type: ignore[no-untyped-def]
    from cfbench.metrics.choices import ChoiceRule, choice_frame
    from cfbench.metrics.drift import DriftSettings, drift_signals

    rng = np.random.default_rng(0)
    n = 80
    base = rng.normal(0, 1, size=(n, 2))
    z = rng.normal(size=n)
    tuned = base.copy()
    tuned[:, 0] += -0.3 + (z - z.mean()) / z.std() * (0.3 / 2.3) * np.sqrt(n)  # Δ −0.3 at z ≈ 2.3: p ≈ 0.02
    frames = {}
    for run, lp in (("b", base), ("t", tuned)):
        items = pd.DataFrame({"doc_id": np.arange(n), "logprobs": list(lp), "gold": 0, "item_hash": None,
                              "task_hash": "c", "subset": None})  # fmt: skip
        frames[run] = {"t0": choice_frame(items, ChoiceRule("loglikelihood", "acc"))[0]}
    res = drift_signals(frames, "b", ["t"], {"C": ["t0"]}, metrics=[metric], settings=DriftSettings(n_boot=2000))
    return res.signals["t"]


@pytest.mark.parametrize("alpha", [0.05, 0.01])
def test_the_line_names_the_report_alpha(alpha: float) -> None:
    report = build_report("base", ["tuned"], {"R": ["boolq"]}, items=_items(["boolq"]), seed=0, alpha=alpha)
    assert holm_lines(report)[0].startswith(f"Holm: one test in its family, so Holm adjusts nothing and its star "
                                            f"is at raw α={alpha:g}: ")  # fmt: skip
