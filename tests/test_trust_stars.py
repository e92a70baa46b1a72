"""Every star means what it says (issue 19): one rule per quantity, the test of the quantity shown, Holm."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cfbench.comparison.gate import Budget, gate
from cfbench.report import build_report
from cfbench.report.render import report_to_dict, to_markdown
from cfbench.stats import bootstrap_p, holm_adjust, mcnemar_exact


def _frame(run: str, task: str, scores: np.ndarray, subsets: list[str] | None = None) -> pd.DataFrame:
    return pd.DataFrame(
        {"run": run, "task": task, "doc_id": np.arange(len(scores)), "score": scores,
         "subset": subsets if subsets is not None else None}
    )  # fmt: skip


def _md_row(md: str, title: str, first: str) -> list[str]:
    """One row of a markdown table (cells stripped), found by its first cell, in the table titled ``title``."""
    block = md.split(title, 1)[1]
    for line in block.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] == first:
            return cells
    raise AssertionError(f"no row {first!r} under {title!r}")


# -- defect 3: a single-task category is its task's quantity, judged by the task's test ---------------------
def _arc_report() -> tuple:
    base = np.r_[np.ones(150), np.zeros(145)]
    tuned = base.copy()
    tuned[:5] = 0  # 5 forgotten, 0 gained of 295
    boolq = np.tile([1.0, 0.0], 100)
    items = pd.concat(
        [_frame("base", "arc_challenge", base), _frame("tuned", "arc_challenge", tuned),
         _frame("base", "boolq", boolq), _frame("tuned", "boolq", boolq)], ignore_index=True,
    )  # fmt: skip
    cats = {"Reasoning": ["boolq"], "Exams": ["arc_challenge"]}
    return build_report("base", ["tuned"], cats, items=items, n_boot=2000, seed=0), cats


def test_single_task_category_cannot_contradict_its_task_row() -> None:
    report, _ = _arc_report()
    cmp = report.vs_base("tuned")
    row = cmp.task("arc_challenge")
    exams = cmp.categories["Exams"]
    assert row.p == pytest.approx(mcnemar_exact(5, 0)) == pytest.approx(0.0625) and row.test == "McNemar"
    assert not row.significant
    # identical quantity: same Δ, same CI (the bootstrap CI does exclude 0 here), hence the same test and star
    assert exams.delta == pytest.approx(row.delta) and exams.ci == pytest.approx(row.ci)
    assert exams.ci[1] < 0
    assert exams.p == row.p and exams.test == "McNemar" and not report.aggregate_significant(exams)
    md = to_markdown(report)
    assert _md_row(md, "Δ by category", "tuned − base")[2].startswith("-1.69 ")  # no star on Exams
    assert "*" not in _md_row(md, "Δ by category", "tuned − base")[2]
    data = report_to_dict(report)["comparisons"][0]
    assert data["categories"]["Exams"]["significant"] is False and data["categories"]["Exams"]["test"] == "McNemar"


def test_regress_decides_on_the_same_rule_as_the_table() -> None:
    report, _ = _arc_report()
    (line,) = gate(report, [Budget("Exams", 1.0)], 0.05)
    # dropped 1.69 > 1.00 points, CI below 0, but the quantity's test (McNemar p = 0.0625) is not significant
    assert line.delta_points == pytest.approx(-100 * 5 / 295)
    assert not line.failed and not line.significant
    assert "not significant" in line.reason and "McNemar p 0.0625" in line.reason


# -- defect 2: the subject-mean row is tested as the subject mean ---------------------------------------------
def test_subject_mean_row_is_tested_by_its_own_bootstrap_not_pooled_mcnemar() -> None:
    subsets = ["abstract_algebra"] * 20 + ["professional_law"] * 400
    base = np.r_[np.ones(10), np.zeros(10), np.ones(200), np.zeros(200)]
    tuned = base.copy()
    tuned[:3] = 0  # abstract_algebra: 3 forgotten of 20
    tuned[220:240] = 1  # professional_law: 20 gained of 400
    items = pd.concat([_frame("base", "mmlu", base, subsets), _frame("tuned", "mmlu", tuned, subsets)])
    report = build_report("base", ["tuned"], {"DK": ["mmlu"]}, items=items, subset_mean_tasks=["mmlu"], seed=0)
    row = report.vs_base("tuned").task("mmlu")
    # the row shows OpenCompass's naive mean of subject means: (−3/20 + 20/400) / 2 = −5.00 points ...
    assert row.delta == pytest.approx(-0.05)
    # ... while McNemar on the pooled items tests the item-weighted Δ (+17/420 = +4.05), p = 0.0005
    assert mcnemar_exact(3, 20) < 0.001 and (row.forgotten, row.gained) == (3, 20)
    assert row.p_mcnemar is None and row.test == "bootstrap"
    assert row.ci[0] < 0 < row.ci[1] and row.p > 0.05 and not row.significant
    md_row = _md_row(to_markdown(report), "Per task: tuned − base", "DK")
    assert md_row[5] == "-5.00" and md_row[7].endswith("ᵇ")


# -- item 6: Holm within families, stars on adjusted p -------------------------------------------------------
def test_holm_adjust_matches_hand_computed_step_down() -> None:
    # sorted 0.01, 0.02, 0.03, 0.04 with m = 4: 0.04, 0.06, 0.06 (monotone), 0.06
    assert holm_adjust([0.03, 0.01, 0.04, 0.02]) == pytest.approx([0.06, 0.04, 0.06, 0.06])
    assert holm_adjust([0.5]) == [0.5]
    assert holm_adjust([0.9, 0.8]) == pytest.approx([1.0, 1.0])
    assert holm_adjust([]) == []


def test_bootstrap_p_is_the_percentile_ci_test() -> None:
    assert bootstrap_p(np.zeros(100)) == 1.0  # identical runs
    assert bootstrap_p(np.full(1999, -0.1)) == pytest.approx(2 / 2000)  # every replicate below 0
    d = np.r_[np.full(30, 0.1), np.full(1970, -0.1)]
    assert bootstrap_p(d) == pytest.approx(2 * 31 / 2001)


def test_task_stars_use_holm_adjusted_p_and_the_legend_says_so() -> None:
    """Four tasks each at raw p = 2/64 = 0.031 < 0.05: no star survives Holm (4 × 0.031 = 0.125)."""
    frames = []
    tasks = ["t1", "t2", "t3", "t4"]
    for t in tasks:
        base = np.r_[np.ones(50), np.zeros(50)]
        tuned = base.copy()
        tuned[:6] = 0  # 6 forgotten, 0 gained: McNemar p = 2 / 64
        frames += [_frame("base", t, base), _frame("tuned", t, tuned)]
    report = build_report("base", ["tuned"], {"A": tasks[:2], "B": tasks[2:]}, items=pd.concat(frames), seed=0)
    cmp = report.vs_base("tuned")
    for t in tasks:
        row = cmp.task(t)
        assert row.p == pytest.approx(2 / 64) and row.p_adj == pytest.approx(4 * 2 / 64) and not row.significant
    md = to_markdown(report)
    assert "Holm-adjusted" in md
    assert _md_row(md, "Per task: tuned − base", "A")[7:9] == ["0.031", "0.125"]
    # categories + AVG are one family of bootstrap tests; each reports its raw and adjusted p
    aggs = [*cmp.categories.values(), cmp.avg]
    assert all(a.test == "bootstrap" and a.p_adj is not None and a.p_adj >= a.p for a in aggs)
    assert [a.p_adj for a in aggs] == pytest.approx(holm_adjust([a.p for a in aggs]))
