"""Continuous forgetting signals from stored items (cfbench.metrics): formulas, pairing, floor, rendering, gates.

Every expected number is written out by hand from the formula in the comment next to it; stores are
synthetic (no model is loaded).
"""

from __future__ import annotations

import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cfbench.comparison import compare, drift_gate, parse_drift_budgets
from cfbench.errors import CfbenchError
from cfbench.metrics import ChoiceBatch, get_metric, register_metric, unregister_metric
from cfbench.metrics.choices import ChoiceRule, ChoiceSource, choice_frame
from cfbench.metrics.drift import DriftSettings, _judge, drift_signals, item_values
from cfbench.report.html import to_html
from cfbench.report.render import print_report, to_csv, to_json, to_markdown
from cfbench.signals import Signal
from cfbench.store import ResultStore, RunRecord, TaskScore
from cfbench.tasks.registry import load_suite

# -- hand-computed items ----------------------------------------------------------------------------
# Item A (2 choices, gold 0): base log-probs [-1, -2], tuned [-2, -1].
#   p = softmax(base) = [1/(1+e^-1), e^-1/(1+e^-1)] = [0.7310585786, 0.2689414214]; q = reversed.
#   KL(p‖q) = Σ p ln(p/q) = 0.7310585786·(+1) + 0.2689414214·(−1) = 0.4621171573
#   gold_margin = ln q0 − ln p0 = (−2 − lse) − (−1 − lse) = −1 (same log-sum-exp on both sides)
#   JS: m = [½, ½]; KL(p‖m) = 0.7310585786·ln 1.4621171573 + 0.2689414214·ln 0.5378828428
#       = 0.2777186 − 0.1667745 = 0.1109441; KL(q‖m) is the same by symmetry ⇒ JS = 0.1109441
# Item B (3 choices, gold 1): base [0, 0, 0] (p uniform ⅓), tuned [ln ½, ln ¼, ln ¼] (q = [½, ¼, ¼]).
#   KL(p‖q) = ⅓[ln(⅔) + 2 ln(4/3)] = ⅓[−0.4054651 + 0.5753641] = 0.0566330
#   gold_margin = ln ¼ − ln ⅓ = ln 0.75 = −0.2876821
#   JS: m = [5/12, 7/24, 7/24]; KL(p‖m) = ⅓[ln(4/5) + 2 ln(8/7)] = ⅓[−0.2231436 + 0.2670628] = 0.0146397
#       KL(q‖m) = ½ ln(6/5) + ½ ln(6/7) = ½(0.1823216 − 0.1541507) = 0.0140855 ⇒ JS = ½(0.0287252) = 0.0143626
A_BASE, A_TUNED, A_GOLD = [-1.0, -2.0], [-2.0, -1.0], 0
B_BASE, B_TUNED, B_GOLD = [0.0, 0.0, 0.0], [math.log(0.5), math.log(0.25), math.log(0.25)], 1
EXPECTED = {"kl": (0.4621171573, 0.0566330), "gold_margin": (-1.0, -0.2876821), "js": (0.1109441, 0.0143626)}


def _values(name: str, base: list[list[float]], tuned: list[list[float]], gold: list[int]) -> np.ndarray:
    return item_values(get_metric(name), [np.array(b) for b in base], [np.array(t) for t in tuned], np.array(gold))


@pytest.mark.parametrize("name", ["kl", "gold_margin", "js"])
def test_metrics_match_hand_computed_two_and_three_choice_items(name: str) -> None:
    # Mixed choice counts in one call: items are batched by k and put back in order.
    got = _values(name, [A_BASE, B_BASE], [A_TUNED, B_TUNED], [A_GOLD, B_GOLD])
    assert got == pytest.approx(EXPECTED[name], abs=2e-7)


def test_gold_margin_ignores_a_shift_of_every_choice() -> None:
    # Every choice 3 nats likelier: raw gold log-prob +3, but the choice distribution is unchanged.
    assert _values("gold_margin", [A_BASE], [[-1.0 + 3, -2.0 + 3]], [0]) == pytest.approx([0.0], abs=1e-12)


def test_kl_is_nonnegative_and_exactly_zero_for_identical_runs() -> None:
    rng = np.random.default_rng(1)
    base = [rng.normal(-5, 3, k) for k in rng.integers(2, 6, 200)]
    tuned = [b + rng.normal(0, 1, b.size) for b in base]
    gold = np.array([int(rng.integers(0, b.size)) for b in base])
    kl = get_metric("kl")
    assert (item_values(kl, base, tuned, gold) >= 0).all()
    assert (item_values(kl, base, base, gold) == 0).all()
    assert item_values(get_metric("js"), base, base, gold) == pytest.approx(np.zeros(200), abs=1e-15)


def test_a_negative_divergence_is_a_metric_bug_not_a_number() -> None:
    register_metric("bad_div", lambda b: -np.ones(b.n), label="bad", unit="nats", kind="divergence")
    try:
        with pytest.raises(CfbenchError, match="registered as a divergence but is negative"):
            _values("bad_div", [A_BASE], [A_TUNED], [0])
    finally:
        unregister_metric("bad_div")
    with pytest.raises(CfbenchError, match="already registered"):
        register_metric("kl", lambda b: np.zeros(b.n), label="x", unit="nats", kind="divergence")


# -- per-choice scores follow the task's primary metric ---------------------------------------------
def test_choice_rules_mirror_task_scoring() -> None:
    acc = ChoiceRule("loglikelihood", "acc")
    assert list(acc.scores(0, [-1.0, -2.0], None, 0, None)) == [-1.0, -2.0]  # raw sums
    # ppl: logprobs[0] is the context; (LL(ctx) + LL(choice)) / (n_ctx + n_choice)
    ppl = ChoiceRule("ppl", "acc")
    assert list(ppl.scores(0, [-4.0, -2.0, -6.0], [4, 2, 4], 0, None)) == [(-4 - 2) / 6, (-4 - 6) / 8]
    assert isinstance(ppl.scores(0, [-4.0, -2.0, -6.0], None, 0, None), str)  # no token counts: refused
    # acc_norm: log-prob / choice length in characters (lengths from the task's data)
    norm = ChoiceRule("loglikelihood", "acc_norm", {7: ((2, 3), "h", 1)}.get)
    assert list(norm.scores(7, [-4.0, -6.0], None, 1, "h")) == [-2.0, -2.0]
    assert "fingerprint" in norm.scores(7, [-4.0, -6.0], None, 1, "other")  # a different question: refused
    assert "not in the task's data" in norm.scores(8, [-4.0, -6.0], None, 1, None)


def test_oc_ppl_choice_scores_argmax_is_opencompass_prediction() -> None:
    """paper-suite tasks (scoring oc_ppl): the signals' scores rank as OpenCompass's lowest get_ppl (issue 19, 1)."""
    from cfbench.tasks.opencompass import oc_argmin, oc_ppl

    rule = ChoiceSource().rule("oc_copa", "cfbench", None)
    assert isinstance(rule, ChoiceRule) and rule.key == "oc_ppl/acc"
    got = rule.scores(0, [-30, -20], [9, 4], 0, None)
    assert not isinstance(got, str)
    # ppl 3.0 vs 4.0: OpenCompass predicts 0; the raw sums (-30 < -20) would put the argmax on 1
    assert int(np.argmax(got)) == 0 == oc_argmin([oc_ppl(-30, 9), oc_ppl(-20, 4)])
    assert list(got) == [-3.0, -4.0]
    assert isinstance(rule.scores(0, [-30, -20], None, 0, None), str)  # no token counts: refused
    rng = np.random.default_rng(3)
    for _ in range(200):
        k = int(rng.integers(2, 5))
        lls = list(rng.normal(-40, 15, size=k))
        ntok = [int(n) for n in rng.integers(1, 60, size=k)]
        scores = rule.scores(0, lls, ntok, 0, None)
        assert int(np.argmax(scores)) == oc_argmin([oc_ppl(ll, n) for ll, n in zip(lls, ntok, strict=True)])


def test_acc_norm_lengths_come_from_the_bundled_task_data() -> None:
    source = ChoiceSource()
    rule = source.rule("hellaswag", "cfbench", 0)
    assert isinstance(rule, ChoiceRule) and rule.key == "loglikelihood/acc_norm"
    lengths, fingerprint, gold = rule.choice_info(0)  # type: ignore[misc]
    lp = [-float(n) for n in lengths]  # one nat per character for every choice
    assert list(rule.scores(0, lp, None, gold, fingerprint)) == [-1.0] * len(lengths)
    assert "mc2" in str(source.rule("truthfulqa_mc", "cfbench", 0))  # no per-choice distribution: refused
    assert isinstance(source.rule("no_such_task", "cfbench", 0), str)


@pytest.mark.parametrize("task", ["arc_challenge", "copa", "hellaswag"])  # acc, ppl rule, acc_norm
def test_choice_scores_rank_exactly_as_the_task_primary_metric(task: str) -> None:
    """Random backend results through Task.score: argmax of the choice scores is what the metric counts."""
    from cfbench.requests import LoglikResult
    from cfbench.store.schema import item_fingerprint
    from cfbench.tasks.registry import get_task

    t = get_task(task)
    rule = ChoiceSource().rule(task, "cfbench", 0)
    assert isinstance(rule, ChoiceRule)
    rng = np.random.default_rng(7)
    for doc_id, doc in t.selected_docs(6):
        inst = t.render(doc, doc_id, 0)
        fp = item_fingerprint(inst.context, [t.cfg.target_delimiter + c for c in inst.choices], inst.gold)
        for _ in range(5):
            res = [LoglikResult(float(rng.normal(-20, 8)), False, int(rng.integers(1, 30))) for _ in inst.requests]
            item = t.score(inst, res)
            scores = rule.scores(doc_id, item.logprobs, item.n_tokens, item.gold, fp)
            assert not isinstance(scores, str), scores
            assert float(np.argmax(scores) == item.gold) == item.metrics[t.cfg.primary_metric]


# -- pairing, floor, significance -------------------------------------------------------------------
def _frame(rows: list[tuple[int, list[float], int, str | None]]) -> pd.DataFrame:
    items = pd.DataFrame(
        {
            "doc_id": [r[0] for r in rows],
            "logprobs": [r[1] for r in rows],
            "gold": [r[2] for r in rows],
            "item_hash": [r[3] for r in rows],
            "task_hash": "c1",
            "subset": None,
        }
    )
    frame, skipped = choice_frame(items, ChoiceRule("loglikelihood", "acc"))
    assert not skipped
    return frame


CATS = {"Exams": ["arc_challenge"]}


def test_pairing_uses_only_items_whose_fingerprints_match() -> None:
    base = _frame([(0, A_BASE, 0, "h0"), (1, B_BASE, 1, "h1"), (2, A_BASE, 0, "h2")])
    # doc 1 is another question in the tuned run (fingerprint differs); doc 3 exists only there.
    tuned = _frame([(0, A_TUNED, 0, "h0"), (1, [5.0, -9.0, 0.0], 1, "zz"), (2, A_BASE, 0, "h2"), (3, A_TUNED, 0, "h3")])
    res = drift_signals({"b": {"arc_challenge": base}, "t": {"arc_challenge": tuned}}, "b", ["t"], CATS,
                        settings=DriftSettings(n_boot=200))  # fmt: skip
    kl = next(s for s in res.signals["t"] if s.name == "kl" and s.scope == "arc_challenge")
    assert kl.n == 2  # docs 0 and 2
    assert kl.value == pytest.approx((0.4621171573 + 0.0) / 2, abs=1e-9)
    overall = next(s for s in res.signals["t"] if s.name == "kl" and s.scope == "all")
    assert overall.value == pytest.approx(kl.value) and overall.kind == "forgot"


def test_divergence_is_judged_against_the_floor_and_never_against_zero() -> None:
    kl, gm = get_metric("kl"), get_metric("gold_margin")
    assert _judge(kl, (0.01, 0.02), None, None)[0] is None  # no floor: not judged, although CI > 0
    assert _judge(kl, (0.01, 0.02), 0.001, (0.0005, 0.002))[0] is True  # CI low above the floor's CI high
    assert _judge(kl, (0.01, 0.02), 0.009, (0.005, 0.012))[0] is False  # overlaps the floor's CI
    assert _judge(kl, (0.01, 0.02), 0.009, None)[0] is True  # no floor CI: against its value
    assert _judge(gm, (-0.3, -0.1), None, None)[0] is True  # signed: against 0
    assert _judge(gm, (-0.3, 0.1), 5.0, (4.0, 6.0))[0] is False


def test_floor_decides_significance_end_to_end() -> None:
    rng = np.random.default_rng(3)
    n = 150
    base = [rng.normal(-3, 1, 4) for _ in range(n)]
    gold = [int(rng.integers(0, 4)) for _ in range(n)]

    def frame(noise: float) -> pd.DataFrame:
        pairs = enumerate(zip(base, gold, strict=True))
        rows = [(i, list(b + noise * rng.normal(0, 1, 4)), g, f"h{i}") for i, (b, g) in pairs]
        return _frame(rows)

    frames = {"b": {"arc_challenge": frame(0.0)}, "floor": {"arc_challenge": frame(0.05)},
              "big": {"arc_challenge": frame(0.8)}, "tiny": {"arc_challenge": frame(0.05)}}  # fmt: skip
    res = drift_signals(frames, "b", ["big", "tiny"], CATS, floor="floor", settings=DriftSettings(n_boot=500))
    sig = {(r, s.name): s for r, sigs in res.signals.items() for s in sigs if s.scope == "all"}
    assert sig["big", "kl"].significant is True and sig["big", "kl"].floor is not None
    assert sig["tiny", "kl"].significant is False  # same noise as the floor: not above it
    assert sig["big", "kl"].floor_ci is not None and sig["big", "kl"].ci[0] > sig["big", "kl"].floor_ci[1]
    assert sig["big", "gold_margin"].floor is None  # a signed Δ is judged against 0, not a floor
    res0 = drift_signals(frames, "b", ["big"], CATS, settings=DriftSettings(n_boot=500))
    s0 = next(s for s in res0.signals["big"] if s.name == "kl" and s.scope == "all")
    assert s0.significant is None and "no floor" in (s0.note or "")


# -- store-level: compare, formats, registry, regress, leaderboard ---------------------------------
def _store(root: Path) -> ResultStore:
    """base, base scored another way (small noise), and two tuned runs: 'far' moves a lot, 'near' little."""
    store = ResultStore(root)
    rng = np.random.default_rng(0)
    n = 120
    lp = {
        "boolq": rng.normal(-2, 1, (n, 2)),
        "arc_challenge": rng.normal(-5, 2, (n, 4)),
        "mmlu": rng.normal(-3, 1, (n, 4)),
    }
    gold = {t: rng.integers(0, v.shape[1], n) for t, v in lp.items()}
    for name, noise, ckpt in (("base", 0.0, "B"), ("base-bf16", 0.02, "B"), ("far", 0.6, "F"), ("near", 0.03, "N")):
        run = RunRecord(name=name, checkpoint_name=name, checkpoint_hash=ckpt, suite="offline")
        run.extra = {"cache_keys": {t: f"k:{name}:{t}" for t in lp}}
        frames, scores = [], []
        for task, base_lp in lp.items():
            x = base_lp + noise * rng.normal(0, 1, base_lp.shape)
            pred = x.argmax(1)
            acc = (pred == gold[task]).astype(float)
            k = base_lp.shape[1]
            frames.append(pd.DataFrame({
                "cache_key": f"k:{name}:{task}", "run_id": run.run_id, "task": task, "task_hash": "t",
                "doc_id": np.arange(n), "subset": "anatomy" if task == "mmlu" else None, "gold": gold[task],
                "pred": pred, "acc": acc, "acc_norm": acc, "mc1": None, "mc2": None,
                "logprobs": [list(r) for r in x], "n_tokens": [[1] * k] * n, "is_greedy": [[False] * k] * n,
                "item_hash": [f"{task}{i}" for i in range(n)],
            }))  # fmt: skip
            scores.append(TaskScore(task=task, metric="acc", value=float(acc.mean()), n_items=n,
                                    cache_key=f"k:{name}:{task}"))  # fmt: skip
        store.append_run(run, scores, pd.concat(frames, ignore_index=True))
    return store


@pytest.fixture(scope="module")
def store_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("drift-store")
    _store(root)
    return root


def test_compare_attaches_signals_with_floor(store_root: Path) -> None:
    res = compare("base", ["far", "near"], suite="offline", results=store_root, n_boot=300, noise_floor="base-bf16")
    by = {(r, s.name, s.scope): s for r, sigs in res.report.signals.items() for s in sigs}
    assert by["far", "kl", "all"].significant is True
    assert by["far", "kl", "all"].value > 10 * by["near", "kl", "all"].value
    assert by["far", "gold_margin", "all"].value < 0
    assert {("far", "kl", c) in by for c in ("DK", "Reasoning", "Exams")} == {True}
    assert ("far", "kl", "mmlu") in by and by["far", "kl", "mmlu"].n == 120
    # The category value is the mean of its task values; overall the mean of the category values (as AVG).
    reasoning = by["far", "kl", "Reasoning"].value
    assert reasoning == pytest.approx(by["far", "kl", "boolq"].value)
    cats = [by["far", "kl", c].value for c in ("DK", "Reasoning", "Exams")]
    assert by["far", "kl", "all"].value == pytest.approx(float(np.mean(cats)))


def test_noise_floor_must_be_a_different_scoring_of_the_base(store_root: Path) -> None:
    with pytest.raises(CfbenchError, match="base run itself"):
        compare("base", ["far"], suite="offline", results=store_root, n_boot=0, noise_floor="base")
    with pytest.raises(CfbenchError, match="not the base"):
        compare("base", ["far"], suite="offline", results=store_root, n_boot=0, noise_floor="near")


def _rich_text(report) -> str:
    from rich.console import Console

    console = Console(file=io.StringIO(), width=400, color_system=None)
    print_report(report, console)
    return console.file.getvalue()  # type: ignore[attr-defined]


def test_every_format_shows_the_signals_and_foreign_ones_generically(store_root: Path) -> None:
    res = compare("base", ["far"], suite="offline", results=store_root, n_boot=200, noise_floor="base-bf16")
    report = res.report
    # Another producer's signal (e.g. in-domain gain) renders with no code that knows its name.
    report.add_signals("far", [Signal("indomain_zz", "learned", "in-domain ZZ", -0.25, "Δ nats/token", 64,
                                      ci=(-0.3, -0.2), significant=True, better="lower")])  # fmt: skip
    kl = next(s for s in report.signals["far"] if s.name == "kl" and s.scope == "all")
    kl_text = f"{kl.value:.4g}"
    md, page, rich = to_markdown(report), to_html(report), _rich_text(report)
    for text in (md, page, rich):
        assert "Learned vs forgot" in text and "KL(base‖tuned)" in text and "in-domain ZZ" in text
        assert kl_text in text and "floor" in text and "-0.25*" in text
    data = json.loads(to_json(report))
    names = {(s["name"], s["scope"]) for s in data["signals"]["far"]}
    assert {("kl", "all"), ("js", "DK"), ("gold_margin", "mmlu"), ("indomain_zz", "all")} <= names
    frame = pd.read_csv(io.StringIO(to_csv(report)))
    sig = frame[frame["section"] == "signal"]
    row = sig[(sig["signal"] == "kl") & (sig["scope"] == "all")].iloc[0]
    assert row["value"] == pytest.approx(kl.value) and row["level"] == "avg" and row["floor"] == pytest.approx(kl.floor)
    assert set(sig["signal"]) >= {"kl", "js", "gold_margin", "indomain_zz"}
    with pytest.raises(CfbenchError, match="already has signal"):
        report.add_signals("far", [Signal("kl", "forgot", "x", 0.0, "nats", 1)])
    with pytest.raises(CfbenchError, match="not a tuned run"):
        report.add_signals("base", [Signal("zz", "forgot", "x", 0.0, "nats", 1)])


def test_a_metric_registered_in_one_place_shows_up_in_compare(store_root: Path) -> None:
    def top_choice_drop(batch: ChoiceBatch) -> np.ndarray:
        """Probability the tuned model gives the base's top choice, minus the base's."""
        top = batch.base.argmax(axis=1)
        rows = np.arange(batch.n)
        p = np.exp(batch.base - np.logaddexp.reduce(batch.base, axis=1, keepdims=True))
        q = np.exp(batch.tuned - np.logaddexp.reduce(batch.tuned, axis=1, keepdims=True))
        return q[rows, top] - p[rows, top]

    register_metric("top_drop", top_choice_drop, label="Δ p(base top)", unit="Δ prob", kind="delta", better="higher")
    try:
        res = compare("base", ["far"], suite="offline", results=store_root, n_boot=100)
        md = to_markdown(res.report)
        assert "Δ p(base top)" in md
        kl = next(s for s in res.report.signals["far"] if s.name == "kl" and s.scope == "all")
        assert kl.significant is None and f"{kl.value:.4g} [" in md and "(no floor)" in md  # never marked
        assert any(s["name"] == "top_drop" for s in json.loads(to_json(res.report))["signals"]["far"])
    finally:
        unregister_metric("top_drop")
    res = compare("base", ["far"], suite="offline", results=store_root, n_boot=0)
    assert "Δ p(base top)" not in to_markdown(res.report)


def test_drift_budgets_parse_like_max_drop_and_gate_on_the_ci(store_root: Path) -> None:
    suite = load_suite("offline")
    assert [(b.scope, b.metric, b.value) for b in parse_drift_budgets(["kl=0.01", "DK:js=0.2", "AVG:kl=1"], suite)] == [
        ("all", "kl", 0.01), ("DK", "js", 0.2), ("all", "kl", 1.0)]  # fmt: skip
    cases = [("kl=nan", "finite"), ("kl=inf", "finite"), ("kl=-1", "≥ 0"), ("kl", "METRIC=VALUE"),
             ("nope=1", "unknown item metric"), ("Foo:kl=1", "not a category"), ("kl=x", "not a number")]  # fmt: skip
    for bad, why in cases:
        with pytest.raises(CfbenchError, match=why):
            parse_drift_budgets([bad], suite)
    res = compare("base", ["far"], suite="offline", results=store_root, n_boot=300)
    kl = next(s for s in res.report.signals["far"] if s.name == "kl" and s.scope == "all")
    assert kl.ci is not None
    lines = drift_gate(res.report, "far", parse_drift_budgets([f"kl={kl.ci[0] * 0.9}", f"kl={kl.ci[0] * 1.1}"], suite))
    assert [x.failed for x in lines] == [True, False]  # fails only when the CI lower bound is over the budget
    gm = next(s for s in res.report.signals["far"] if s.name == "gold_margin" and s.scope == "all")
    lines = drift_gate(res.report, "far", parse_drift_budgets([f"gold_margin={-gm.ci[1] * 0.9}"], suite))
    assert lines[0].failed  # the whole CI is a drop larger than the budget


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cfbench", *args], capture_output=True, text=True, env={**os.environ})


def test_regress_max_drift_exit_codes(store_root: Path) -> None:
    common = ["regress", "--baseline", "base", "--suite", "offline", "--results", str(store_root), "--n-boot", "200"]
    bad = _cli(*common, "--candidate", "far", "--max-drift", "kl=0.01")
    assert bad.returncode == 1, bad.stderr
    assert "FAIL" in bad.stdout and "| kl |" in bad.stdout
    ok = _cli(*common, "--candidate", "near", "--max-drift", "kl=0.01", "--max-drift", "DK:kl=0.01")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    refused = _cli(*common, "--candidate", "near", "--max-drift", "kl=inf")
    assert refused.returncode == 2 and "error:" in refused.stderr and "finite" in refused.stderr


def test_leaderboard_reference_adds_drift_columns(store_root: Path) -> None:
    from cfbench.report.leaderboard import add_drift_columns, leaderboard, score_columns, to_markdown

    store = ResultStore(store_root)
    suite = load_suite("offline")
    board = add_drift_columns(leaderboard(store, suite=suite.categories), store, "base", suite.categories)
    row = board.set_index("name")
    assert math.isnan(row.loc["base", "kl vs ref"])  # the reference itself
    assert row.loc["far", "kl vs ref"] > row.loc["near", "kl vs ref"] > 0
    assert "kl vs ref" not in score_columns(board)  # never shown ×100
    shown = to_markdown(board)
    assert f"{row.loc['far', 'kl vs ref']:.4g}" in shown
    common = ["leaderboard", "--results", str(store_root), "--suite", "offline", "--format", "csv"]
    res = _cli(*common, "--reference", "base", "--sort", "kl vs ref")
    assert res.returncode == 0, res.stderr
    names = list(pd.read_csv(io.StringIO(res.stdout))["name"])
    assert names.index("base-bf16") < names.index("near") < names.index("far")  # least drift first
    refused = _cli(*common, "--sort", "kl vs ref")
    assert refused.returncode == 2 and "--reference" in refused.stderr
