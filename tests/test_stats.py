"""Paired statistics of cfbench.stats checked against cases with a known answer."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from cfbench import stats
from cfbench.errors import CfbenchError
from cfbench.stats import (
    Coverage,
    TaskPoint,
    aggregate_deltas,
    align_items,
    bootstrap_means,
    ci_excludes_zero,
    flip_counts,
    mcnemar_exact,
    paired_task_delta,
    percentile_ci,
)

Z95 = 1.959964


def _paired(ref: np.ndarray, other: np.ndarray) -> stats.PairedScores:
    ids = np.arange(len(ref))
    return align_items(pd.DataFrame({"doc_id": ids, "score": ref}), pd.DataFrame({"doc_id": ids, "score": other}))


def _flip(base: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Copy of ``base`` with exactly k of its correct items turned wrong."""
    tuned = base.copy()
    tuned[rng.choice(np.flatnonzero(base == 1), size=k, replace=False)] = 0.0
    return tuned


@pytest.fixture(params=["multinomial", "indices"])
def bootstrap_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test through both bootstrap implementations (0 cells forces index resampling)."""
    if request.param == "indices":
        monkeypatch.setattr(stats, "_MULTINOMIAL_MAX_CELLS", 0)
        monkeypatch.setattr(stats, "_MAX_BLOCK", 50_000)  # several blocks per call
    return request.param


def test_identical_runs_give_zero_delta_and_degenerate_ci(bootstrap_path: str) -> None:
    rng = np.random.default_rng(0)
    scores = (rng.random(500) < 0.6).astype(float)
    d = paired_task_delta(_paired(scores, scores.copy()), n_boot=500, rng=np.random.default_rng(1))
    assert d.delta == 0.0
    assert d.ci == (0.0, 0.0)
    assert (d.forgotten, d.gained) == (0, 0)
    assert d.p_mcnemar == 1.0
    assert not ci_excludes_zero(d.ci)


def test_identical_continuous_runs_give_zero_delta(bootstrap_path: str) -> None:
    scores = np.random.default_rng(3).beta(3, 4, 400)  # TruthfulQA-mc2-like values
    d = paired_task_delta(_paired(scores, scores.copy()), n_boot=300, rng=np.random.default_rng(1))
    assert d.delta == 0.0 and d.ci == (0.0, 0.0)
    assert d.p_mcnemar is None and d.forgotten is None and d.gained is None


def test_k_flips_out_of_n_matches_binomial_standard_error(bootstrap_path: str) -> None:
    n, k = 1000, 50
    rng = np.random.default_rng(42)
    base = (rng.random(n) < 0.7).astype(float)
    tuned = _flip(base, k, rng)
    d = paired_task_delta(_paired(base, tuned), n_boot=4000, rng=np.random.default_rng(7))
    assert d.delta == pytest.approx(-k / n, abs=1e-12)
    assert d.ci is not None and d.ci[0] < -k / n < d.ci[1]
    # Per-item difference is -1 with probability p = k/n, else 0: SE of the mean = sqrt(p(1-p)/n).
    p = k / n
    analytic_width = 2 * Z95 * math.sqrt(p * (1 - p) / n)
    assert d.ci[1] - d.ci[0] == pytest.approx(analytic_width, rel=0.15)
    assert (d.forgotten, d.gained) == (k, 0)
    assert d.p_mcnemar == pytest.approx(2 * 0.5**k)
    assert ci_excludes_zero(d.ci)


def test_both_bootstrap_paths_draw_the_same_distribution(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(5)
    base = (rng.random(800) < 0.5).astype(float)
    tuned = _flip(base, 40, rng)
    tuned[np.flatnonzero(base == 0)[:15]] = 1.0
    fast = bootstrap_means(base, tuned, 6000, np.random.default_rng(0))
    monkeypatch.setattr(stats, "_MULTINOMIAL_MAX_CELLS", 0)
    slow = bootstrap_means(base, tuned, 6000, np.random.default_rng(0))
    for a, b in ((fast, slow), (fast[:, 1] - fast[:, 0], slow[:, 1] - slow[:, 0])):
        assert np.allclose(a.mean(axis=0), b.mean(axis=0), atol=0.002)
        assert np.allclose(a.std(axis=0), b.std(axis=0), rtol=0.08)


def test_bootstrap_means_shape_centre_and_seed() -> None:
    x = np.random.default_rng(9).beta(2, 2, 3000)
    y = np.clip(x - 0.05, 0, 1)
    reps = bootstrap_means(x, y, 700, np.random.default_rng(11))
    assert reps.shape == (700, 2)
    assert reps.mean(axis=0) == pytest.approx([x.mean(), y.mean()], abs=0.003)
    # The two columns come from the same resampled indices: their difference barely varies.
    assert np.std(reps[:, 1] - reps[:, 0]) < 0.2 * np.std(reps[:, 0])
    again = bootstrap_means(x, y, 700, np.random.default_rng(11))
    other = bootstrap_means(x, y, 700, np.random.default_rng(12))
    assert np.array_equal(reps, again) and not np.array_equal(reps, other)


def test_percentile_ci() -> None:
    values = np.arange(1001) / 1000.0  # uniform grid 0..1
    assert percentile_ci(values, 0.95) == pytest.approx((0.025, 0.975))
    assert percentile_ci(values, 0.5) == pytest.approx((0.25, 0.75))


@pytest.mark.parametrize(
    ("forgotten", "gained", "expected"),
    [
        (8, 2, 2 * (1 + 10 + 45) / 1024),  # 2·P(X ≤ 2), X ~ Bin(10, 1/2)
        (2, 8, 2 * (1 + 10 + 45) / 1024),  # symmetric
        (0, 5, 2 / 32),
        (10, 0, 2 / 1024),
        (3, 3, 1.0),
        (0, 0, 1.0),  # no discordant pairs: no evidence
        (6, 1, 2 * (1 + 7) / 128),
    ],
)
def test_mcnemar_exact_matches_hand_computed_binomial(forgotten: int, gained: int, expected: float) -> None:
    assert mcnemar_exact(forgotten, gained) == pytest.approx(expected, rel=1e-12)


def test_flip_counts() -> None:
    base = np.array([1, 1, 1, 0, 0, 1, 0, 1], dtype=float)
    tuned = np.array([1, 0, 0, 1, 0, 1, 0, 0], dtype=float)
    assert flip_counts(base, tuned) == (3, 1)
    assert flip_counts(tuned, base) == (1, 3)
    d = paired_task_delta(_paired(base, tuned), n_boot=100, rng=np.random.default_rng(0))
    assert (d.forgotten, d.gained) == (3, 1)
    assert d.delta == pytest.approx((1 - 3) / 8)
    assert d.p_mcnemar == pytest.approx(mcnemar_exact(3, 1))


def test_align_items_uses_common_doc_ids_in_any_row_order() -> None:
    ref = pd.DataFrame({"doc_id": [3, 1, 2, 0, 7], "score": [1, 0, 1, 1, 0], "subset": list("abcde")})
    other = pd.DataFrame({"doc_id": [0, 1, 2, 3, 9, 8], "score": [0, 0, 1, 1, 1, 1]})
    p = align_items(ref, other)
    assert p.doc_ids.tolist() == [0, 1, 2, 3]
    assert p.ref.tolist() == [1, 0, 1, 1]
    assert p.other.tolist() == [0, 0, 1, 1]
    assert p.subsets.tolist() == ["d", "b", "c", "a"]
    assert (p.n, p.dropped_ref, p.dropped_other) == (4, 1, 2)
    assert p.binary


def test_align_items_rejects_duplicates_and_disjoint_sets() -> None:
    a = pd.DataFrame({"doc_id": [0, 0, 1], "score": [1, 1, 0]})
    b = pd.DataFrame({"doc_id": [0, 1], "score": [1, 0]})
    with pytest.raises(CfbenchError, match=r"duplicate doc_id.*keep one row"):
        align_items(a, b, task="boolq", names=("base", "tuned"))
    c = pd.DataFrame({"doc_id": [5, 6], "score": [1, 0]})
    with pytest.raises(CfbenchError, match=r"share no doc_id on task 'boolq'.*re-evaluate"):
        align_items(b, c, task="boolq", names=("base", "tuned"))


def test_coverage() -> None:
    full = Coverage(("a", "b"), ())
    part = Coverage(("a", "b", "c"), ("d",))
    none = Coverage((), ("a",))
    assert not full.partial and full.label == "2/2 tasks"
    assert part.partial and part.label == "3/4 tasks" and part.total == 4
    assert none.empty and none.partial


def _point(base: np.ndarray, tuned: np.ndarray, seed: int, n_boot: int = 4000) -> TaskPoint:
    d = paired_task_delta(_paired(base, tuned), n_boot=n_boot, rng=np.random.default_rng(seed))
    return TaskPoint(d.ref_mean, d.other_mean, d.replicates)


def test_stratified_aggregate_ci_matches_combined_standard_error() -> None:
    """Category = mean of task means, AVG = mean of categories; SEs combine as independent strata."""
    rng = np.random.default_rng(2024)
    spec = {"t1": (2000, 100), "t2": (500, 10), "t3": (1000, 80)}  # task: (n, flips)
    points, se = {}, {}
    for i, (task, (n, k)) in enumerate(spec.items()):
        base = (rng.random(n) < 0.6).astype(float)
        points[task] = _point(base, _flip(base, k, rng), seed=i)
        se[task] = math.sqrt((k / n) * (1 - k / n) / n)
    cats, avg = aggregate_deltas({"A": ["t1", "t2"], "B": ["t3"]}, points)

    d1, d2, d3 = -100 / 2000, -10 / 500, -80 / 1000
    assert cats["A"].delta == pytest.approx((d1 + d2) / 2)
    assert cats["B"].delta == pytest.approx(d3)
    assert avg.delta == pytest.approx(((d1 + d2) / 2 + d3) / 2)
    assert cats["A"].ref_mean == pytest.approx((points["t1"].ref_mean + points["t2"].ref_mean) / 2)

    se_a = 0.5 * math.sqrt(se["t1"] ** 2 + se["t2"] ** 2)
    se_avg = 0.5 * math.sqrt(se_a**2 + se["t3"] ** 2)
    for agg, expected_se in ((cats["A"], se_a), (avg, se_avg)):
        assert agg.ci is not None and agg.ci[0] < agg.delta < agg.ci[1]
        assert agg.ci[1] - agg.ci[0] == pytest.approx(2 * Z95 * expected_se, rel=0.12)
    assert not avg.coverage.partial and avg.coverage.label == "3/3 tasks"


def test_aggregate_partial_coverage_and_missing_ci() -> None:
    rng = np.random.default_rng(1)
    base = (rng.random(300) < 0.5).astype(float)
    points = {
        "t1": _point(base, _flip(base, 10, rng), seed=1, n_boot=200),
        "t2": TaskPoint(0.50, 0.40, None),  # imported task-level score: no replicates
    }
    cats, avg = aggregate_deltas({"A": ["t1", "t9"], "B": ["t2"], "C": ["t8"]}, points)
    assert cats["A"].coverage.partial and cats["A"].coverage.label == "1/2 tasks"
    assert cats["A"].coverage.missing == ("t9",)
    assert cats["A"].ci is not None  # its only present task is item-level
    assert cats["B"].delta == pytest.approx(-0.10) and cats["B"].ci is None
    assert cats["C"].delta is None and cats["C"].coverage.empty
    assert avg.coverage.partial and avg.coverage.label == "2/3 categories, 2/4 tasks"
    assert avg.ci is None  # one contributing task has no item-level data
    assert avg.delta == pytest.approx((cats["A"].delta + cats["B"].delta) / 2)  # mean over present categories


def test_no_bootstrap_when_n_boot_is_zero() -> None:
    base = np.array([1, 0, 1, 1.0])
    d = paired_task_delta(_paired(base, np.array([0, 0, 1, 1.0])), n_boot=0, rng=np.random.default_rng(0))
    assert d.ci is None and d.replicates is None and d.delta == pytest.approx(-0.25)


def test_ci_bound_at_zero_up_to_float_noise_is_not_significant() -> None:
    """A stratified CI whose lower end is 0 came out as 2.7e-17 on a real store (SmolLM2 + noise,
    Reasoning at --limit 10) and was starred while printing [0.00, +24.00]."""
    assert not ci_excludes_zero((2.7061686225239413e-17, 0.24))
    assert not ci_excludes_zero((-0.24, -3e-17))
    assert ci_excludes_zero((1 / 1000, 0.24)) and ci_excludes_zero((-0.3, -1 / 5000))
