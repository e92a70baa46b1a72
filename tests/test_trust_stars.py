"""Every star means what it says (issue 19): one rule per quantity, the test of the quantity shown, Holm."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cfbench.comparison.gate import Budget, gate
from cfbench.report import build_report
from cfbench.report.render import report_to_dict, to_markdown
from cfbench.stats import bootstrap_means, bootstrap_p, holm_adjust, mcnemar_exact


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


# -- item 5: tasks whose accuracy is the label prior are flagged ----------------------------------------------
def _prior_items() -> pd.DataFrame:
    """MMLU-like: 114 items, 33 with gold A (28.95 %); every run predicts A on 113 or 114 of them."""
    gold = np.r_[np.zeros(33, int), np.ones(30, int), np.full(30, 2), np.full(21, 3)]
    frames = []
    for run, odd in (("base", 40), ("tuned", None)):
        pred = np.zeros(114, int)
        if odd is not None:
            pred[odd] = 1  # gold 1 there: one right answer that is not A
        score = (pred == gold).astype(float)
        frames.append(pd.DataFrame({"run": run, "task": "mmlu", "doc_id": np.arange(114), "subset": None,
                                    "score": score, "gold": gold, "pred": pred}))  # fmt: skip
    boolq_gold = np.tile([0, 1], 100)
    for run in ("base", "tuned"):
        pred = np.where(np.arange(200) < 150, boolq_gold, 1 - boolq_gold)  # 75 % right, predictions balanced
        score = (pred == boolq_gold).astype(float)
        frames.append(pd.DataFrame({"run": run, "task": "boolq", "doc_id": np.arange(200), "subset": None,
                                    "score": score, "gold": boolq_gold, "pred": pred}))  # fmt: skip
    return pd.concat(frames, ignore_index=True)


def test_label_prior_rule() -> None:
    from cfbench.stats import label_prior

    gold = np.r_[np.zeros(33, int), np.ones(81, int)]
    pred = np.zeros(114, int)
    pred[40] = 1
    flag = label_prior(pred, gold, (pred == gold).astype(float))
    assert flag is not None and flag.one_choice and (flag.top_choice, flag.top_count, flag.n) == (0, 113, 114)
    assert flag.describe() == "113/114 predictions are choice A"
    # balanced predictions, accuracy far above the majority share: nothing to flag
    g = np.tile([0, 1], 100)
    p = np.where(np.arange(200) < 150, g, 1 - g)
    assert label_prior(p, g, (p == g).astype(float)) is None
    # accuracy at the majority-label share (within its CI), predictions spread: flagged by the second rule
    p2 = np.where(np.arange(200) < 104, g, 1 - g)
    flag2 = label_prior(p2, g, (p2 == g).astype(float))
    assert flag2 is not None and flag2.at_majority and not flag2.one_choice
    assert "majority-label share 50.00" in flag2.describe()
    # a stored pred that is not what the score counts (acc_norm) is not used for the one-choice rule
    assert label_prior(np.zeros(200, int), g, (p == g).astype(float)) is None


def test_label_prior_task_is_flagged_in_every_format() -> None:
    from cfbench.report.html import to_html
    from cfbench.report.render import to_csv

    report = build_report("base", ["tuned"], {"DK": ["mmlu"], "R": ["boolq"]}, items=_prior_items(), seed=0)
    assert set(report.label_prior) == {("base", "mmlu"), ("tuned", "mmlu")}
    line = (
        "‡ mmlu: 113/114 predictions are choice A (base); 114/114 predictions are choice A (tuned): "
        "accuracy measures the label prior here; read gold log-p / KL"
    )
    md = to_markdown(report)
    assert md.count(line) == 1
    task_row = _md_row(md, "Per task: tuned − base", "DK")
    assert task_row[5].endswith("‡")  # Δ marked, not a clean number
    assert not _md_row(md, "Per task: tuned − base", "R")[5].endswith("‡")
    cats = _md_row(md, "Δ by category", "tuned − base")
    assert cats[1].endswith("‡1/1") and cats[3].endswith("‡1/2")  # DK, AVG (R: none)
    assert "‡" not in cats[2]
    data = report_to_dict(report)
    assert line in data["label_prior_lines"]
    cmp = data["comparisons"][0]
    assert next(t for t in cmp["tasks"] if t["task"] == "mmlu")["label_prior"] is True
    assert cmp["avg"]["flagged_tasks"] == 1 and cmp["categories"]["R"]["flagged_tasks"] == 0
    frame = pd.read_csv(__import__("io").StringIO(to_csv(report)))
    mmlu = frame[(frame["section"] == "delta") & (frame["task"] == "mmlu")]
    assert bool(mmlu["label_prior"].iloc[0])
    html = to_html(report)
    assert "113/114 predictions are choice A (base)" in html


def test_signal_stars_use_holm_over_the_signal_scopes() -> None:
    """A signed signal on 6 tasks, each moved so its own bootstrap p is ≈ 0.02: Holm over the 8 scopes
    (overall, one category, 6 tasks) keeps the strong overall move starred and removes the task stars."""
    from cfbench.metrics import register_metric, unregister_metric

    # the raw change of the gold choice's score, so each item's value is exactly the shift drawn below
    metric = register_metric("gold_shift_test", lambda b: b.tuned[:, 0] - b.base[:, 0], label="shift",
                             unit="nats", kind="delta", better="higher")  # fmt: skip
    try:
        _check_signal_holm(metric)
    finally:
        unregister_metric("gold_shift_test")


def _check_signal_holm(metric) -> None:  # type: ignore[no-untyped-def]
    from cfbench.metrics.choices import ChoiceRule, choice_frame
    from cfbench.metrics.drift import DriftSettings, drift_signals

    rng = np.random.default_rng(0)
    tasks = [f"t{i}" for i in range(6)]
    frames: dict[str, dict[str, pd.DataFrame]] = {"b": {}, "t": {}}
    for task in tasks:
        n = 60
        base = rng.normal(0, 1, size=(n, 2))
        z = rng.normal(size=n)
        # gold (choice 0) log-p moves by exactly −0.3 on average with SE 0.3 / 2.3: each task alone p ≈ 0.02
        shift = -0.3 + (z - z.mean()) / z.std() * (0.3 / 2.3) * np.sqrt(n)
        tuned = base.copy()
        tuned[:, 0] += shift
        for run, lp in (("b", base), ("t", tuned)):
            items = pd.DataFrame({"doc_id": np.arange(n), "logprobs": list(lp), "gold": 0, "item_hash": None,
                                  "task_hash": "c", "subset": None})  # fmt: skip
            frames[run][task], _ = choice_frame(items, ChoiceRule("loglikelihood", "acc"))
    res = drift_signals(frames, "b", ["t"], {"C": tasks}, metrics=[metric],
                        settings=DriftSettings(n_boot=2000))  # fmt: skip
    sigs = res.signals["t"]
    assert len(sigs) == 8 and all(s.p is not None and s.p_adj is not None for s in sigs)
    assert [s.p_adj for s in sigs] == pytest.approx(holm_adjust([s.p for s in sigs]))
    assert all(s.significant == (s.p_adj < 0.05) for s in sigs)
    assert any(s.p < 0.05 <= s.p_adj for s in sigs)  # a raw star that the family adjustment removes
    assert next(s for s in sigs if s.scope == "all").significant


# -- item 8: minimum detectable effect ------------------------------------------------------------------------
def test_mcnemar_mde_has_80_percent_power_by_simulation() -> None:
    from cfbench.stats import mde_mcnemar

    n, p_d = 500, 0.12
    mde = mde_mcnemar(n, p_d)
    assert 0.035 < mde < 0.045  # ≈ 2.80 · √(0.12 / 500) = 0.0434, less the √(p_d − Δ²) correction
    rng = np.random.default_rng(1)
    trials = 3000
    disc = rng.binomial(n, p_d, size=trials)
    gained = rng.binomial(disc, 0.5 + mde / (2 * p_d))  # Δ = (gained − forgotten) / n = mde on average
    power = np.mean([mcnemar_exact(int(d - g), int(g)) < 0.05 for d, g in zip(disc, gained, strict=True)])
    assert 0.74 < power < 0.86
    # no flips observed: never 0; the discordance is floored at the 6 one-sided flips the exact test needs
    assert mde_mcnemar(300, 0.0) == mde_mcnemar(300, 6 / 300) >= 6 / 300
    assert mde_mcnemar(n, p_d, alpha=0.01) > mde  # stricter α, larger MDE


def test_mde_in_every_format_and_regress_warns_below_it() -> None:
    from cfbench.report.html import to_html
    from cfbench.report.render import to_csv

    report, _ = _arc_report()
    row = report.vs_base("tuned").task("arc_challenge")
    assert row.mde is not None and 0.02 < row.mde < 0.05  # 295 items, 5/295 discordant
    md_row = _md_row(to_markdown(report), "Per task: tuned − base", "Exams")
    assert md_row[9] == f"{100 * row.mde:.2f}"
    data = report_to_dict(report)["comparisons"][0]
    assert next(t for t in data["tasks"] if t["task"] == "arc_challenge")["mde"] == pytest.approx(row.mde)
    assert data["categories"]["Exams"]["mde"] == pytest.approx(row.mde)  # one task: its test, its MDE
    assert "MDE" in to_html(report) and "mde" in to_csv(report).splitlines()[0]
    mde_points = 100 * row.mde
    (low,) = gate(report, [Budget("Exams", 1.0)], 0.05)
    assert low.warning is not None and f"MDE {mde_points:.2f}" in low.warning
    need = int(np.ceil(295 * (mde_points / 1.0) ** 2))
    assert f"n={need} items" in low.warning
    (high,) = gate(report, [Budget("Exams", mde_points + 0.5)], 0.05)
    assert high.warning is None


# -- item 7: clusters ------------------------------------------------------------------------------------------
def _clustered_pairs(seed: int = 0, k: int = 300, size: int = 5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """0/1 scores of K passages × ``size`` questions; a passage-level effect makes its questions flip together."""
    rng = np.random.default_rng(seed)
    clusters = np.repeat(np.arange(k), size)
    easy = np.repeat(rng.random(k) < 0.5, size)
    ref = (easy | (rng.random(k * size) < 0.2)).astype(float)
    forgot = np.repeat(rng.random(k) < 0.15, size)  # the tuned run loses whole passages
    other = np.where(forgot, 0.0, ref)
    return ref, other, clusters


def test_cluster_bootstrap_matches_closed_form_variance_and_is_wider_than_iid() -> None:
    from cfbench.stats import cluster_bootstrap_means, cluster_delta_se, cluster_paired_p

    ref, other, clusters = _clustered_pairs()
    reps = cluster_bootstrap_means(ref, other, clusters, 4000, np.random.default_rng(1))
    boot_sd = float(np.std(reps[:, 1] - reps[:, 0]))
    closed = cluster_delta_se(ref, other, clusters)
    # closed form: Var = K/(K-1) Σ (D_k − Δ n_k)² / N²; the bootstrap lacks the K/(K-1) factor (K = 300)
    d = (other - ref).reshape(300, 5).sum(axis=1)
    delta = (other - ref).mean()
    assert closed == pytest.approx(np.sqrt(300 / 299 * np.sum((d - 5 * delta) ** 2) / 1500**2))
    assert boot_sd == pytest.approx(closed, rel=0.07)
    iid = bootstrap_means(ref, other, 4000, np.random.default_rng(1))
    iid_sd = float(np.std(iid[:, 1] - iid[:, 0]))
    assert boot_sd > 1.5 * iid_sd  # questions of one passage flip together: the i.i.d. CI is far too narrow
    # the cluster-level paired test is less extreme than McNemar, which counts each question as independent
    f, g = int(((ref == 1) & (other == 0)).sum()), int(((ref == 0) & (other == 1)).sum())
    assert cluster_paired_p(ref, other, clusters) > mcnemar_exact(f, g)


def test_report_uses_the_cluster_test_for_a_clustered_task() -> None:
    ref, other, clusters = _clustered_pairs(seed=2, k=40, size=5)
    items = pd.concat([
        pd.DataFrame({"run": run, "task": "race_high", "doc_id": np.arange(200), "score": s, "cluster": clusters})
        for run, s in (("base", ref), ("tuned", other))
    ])  # fmt: skip
    plain = build_report("base", ["tuned"], {"U": ["race_high"]}, items=items.drop(columns="cluster"), seed=0)
    clustered = build_report("base", ["tuned"], {"U": ["race_high"]}, items=items, seed=0)
    a, b = plain.vs_base("tuned").task("race_high"), clustered.vs_base("tuned").task("race_high")
    assert a.delta == b.delta and a.test == "McNemar" and b.test == "cluster" and b.p_mcnemar is None
    assert (b.ci[1] - b.ci[0]) > (a.ci[1] - a.ci[0])
    assert _md_row(to_markdown(clustered), "Per task: tuned − base", "U")[7].endswith("ᶜ")


def test_cluster_by_config_errors_are_one_line(tmp_path) -> None:
    from pathlib import Path

    import yaml

    from cfbench.errors import CfbenchError
    from cfbench.tasks.config import load_task_config
    from cfbench.tasks.registry import get_task

    src = yaml.safe_load((Path(__file__).parents[1] / "task_configs" / "boolq.yaml").read_text(encoding="utf-8"))
    for bad in (3, ""):
        path = tmp_path / "boolq.yaml"
        path.write_text(yaml.safe_dump({**src, "cluster_by": bad}), encoding="utf-8")
        with pytest.raises(CfbenchError, match="cluster_by must name one document field") as exc:
            load_task_config(path)
        assert "\n" not in str(exc.value)
    task = get_task("boolq")
    if task.located() is None:
        pytest.skip("boolq data not bundled here")
    assert task.cfg.cluster_by == "passage" and len(set(task.cluster_ids().values())) > 1  # type: ignore[union-attr]
    object.__setattr__(task.cfg, "cluster_by", "no_such_field")
    try:
        with pytest.raises(CfbenchError, match="cluster_by 'no_such_field' is not a field of its documents") as exc:
            task.cluster_ids()
        assert "\n" not in str(exc.value)
    finally:
        object.__setattr__(task.cfg, "cluster_by", "passage")


def test_avg_moved_by_one_task_only_takes_that_task_test() -> None:
    """AVG = (Δ arc + 0) / 2 when boolq is identical on every item: the same hypothesis as arc's row."""
    report, _ = _arc_report()
    cmp = report.vs_base("tuned")
    assert cmp.avg.delta == pytest.approx(cmp.task("arc_challenge").delta / 2)
    assert cmp.avg.test == "McNemar" and cmp.avg.p == cmp.task("arc_challenge").p
    assert not report.aggregate_significant(cmp.avg)


def test_each_footnote_once_and_one_summary_sentence_per_run() -> None:
    from cfbench.report.html import to_html

    frames = []
    runs = ["base", "r1", "r2", "r3"]
    for run in runs:
        for task in ("boolq", "copa"):
            frames.append(_frame(run, task, np.tile([1.0, 0.0], 50)))
    cats = {"U": ["race_high", "race_middle"], "R": ["boolq", "copa"]}
    report = build_report("base", runs[1:], cats, items=pd.concat(frames), seed=0)
    md = to_markdown(report)
    cover = [x for x in md.splitlines() if "U: 0/2 tasks" in x]
    assert len(cover) == 1  # before: one per run and per comparison, under two tables
    assert cover[0].startswith("† base, r1, r2, r3, r1 − base")
    html = to_html(report)
    assert html.count("U: 0/2 tasks") == 1
    summary = md.split("**Summary**", 1)[1].split("###", 1)[0]
    sentences = [x for x in summary.splitlines() if x.strip()]
    assert len(sentences) == 3 and all(x.startswith(f"r{i + 1} vs base: AVG") for i, x in enumerate(sentences))
    assert "not significant" in sentences[0]
    assert report_to_dict(report)["summary"] == [x.strip() for x in sentences]


def test_terminal_tables_fit_120_columns() -> None:
    from rich.console import Console

    from cfbench.report.render import to_rich
    from cfbench.signals import Signal

    cats = {"DK": ["mmlu"], "Reasoning": ["boolq", "openbookqa_fact", "hellaswag"], "Exams": ["arc_challenge"]}
    rng = np.random.default_rng(0)
    runs = ["base", "w/o SAM lr 3e-5", "w/ SAM lr 3e-5 rho 0.05", "Wise-FT"]
    frames = []
    for t in [x for m in cats.values() for x in m]:
        base = (rng.random(114) < 0.5).astype(float)
        for r in runs:
            s = base.copy()
            flip = rng.random(114) < 0.1
            s[flip] = 1 - s[flip]
            frames.append(_frame(r, t, base if r == "base" else s))
    report = build_report("base", runs[1:], cats, items=pd.concat(frames), seed=0)
    for r in runs[1:]:
        report.add_signals(r, [
            Signal(name=n, kind="forgot", label=lab, value=0.0123, unit="nats", n=100, ci=(0.01, 0.02), floor=0.001,
                   significant=True, scope=scope)
            for scope in ["all", *cats, *[x for m in cats.values() for x in m]]
            for n, lab in (("kl", "KL(base‖tuned)"), ("js", "JS(base, tuned)"), ("gm", "Δ gold log-p (choices)"))
        ])  # fmt: skip
    console = Console(width=400, record=True, color_system=None)
    console.print(to_rich(report))
    text = console.export_text()
    widths = [len(line.rstrip()) for line in text.splitlines() if "│" in line or "┃" in line]
    assert widths and max(widths) <= 120  # before: per-task tables of ~230 columns
    assert "Per task: w/o SAM lr 3e-5 − base (cont.)" in text  # the signal columns moved to a part of their own
