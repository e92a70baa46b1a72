"""Contrasts B − A (cfbench.replicates): known answers and coverage on synthetic data.

The data are ``y[m, s, i] = μ_m + u[m, s] + v[i] + e[m, s, i]``: method effect, seed effect (SD σ_s),
item effect shared by every run (SD σ_v: it cancels in a paired contrast) and noise (SD σ_e). The
true contrast is ``μ_B − μ_A``; coverage is counted over many simulated experiments.
"""

from __future__ import annotations

import numpy as np
import pytest

from cfbench.errors import CfbenchError
from cfbench.replicates import Contrast, ResamplePlan, paired_contrast, per_unit


def _experiment(rng, k_a, k_b, n, sd_seed, sd_item, sd_noise, delta=0.1):
    items = rng.normal(0, sd_item, n)
    a = [1.0 + rng.normal(0, sd_seed) + items + rng.normal(0, sd_noise, n) for _ in range(k_a)]
    b = [1.0 + delta + rng.normal(0, sd_seed) + items + rng.normal(0, sd_noise, n) for _ in range(k_b)]
    return a, b


def _coverage(k, sd_seed, sd_noise, sims=300, n=120, n_boot=300, seed=0, delta=0.1) -> float:
    rng = np.random.default_rng(seed)
    hits = 0
    for _ in range(sims):
        a, b = _experiment(rng, k, k, n, sd_seed, 1.0, sd_noise, delta)
        c = paired_contrast(a, b, ResamplePlan(k, k, n_boot, rng))
        hits += c.ci[0] <= delta <= c.ci[1]
    return hits / sims


def test_point_estimate_is_the_difference_of_arm_means():
    a = [np.array([0.0, 1.0, 1.0, 0.0]), np.array([1.0, 1.0, 1.0, 0.0])]
    b = [np.array([1.0, 1.0, 1.0, 1.0])]
    c = paired_contrast(a, b, None)
    assert c.estimate == pytest.approx(1.0 - 0.625)
    assert c.ci is None and c.p is None and c.reps is None
    assert c.level == "seeds+items" and c.k == (2, 1)
    assert c.seed_sd == (pytest.approx(np.std([0.5, 0.75], ddof=1)), None)


def test_one_run_per_arm_is_a_paired_bootstrap_whose_se_matches_the_closed_form():
    rng = np.random.default_rng(1)
    n = 400
    items = rng.normal(0, 3.0, n)  # large shared item effect: cancels only if the resample is shared
    a, b = items + rng.normal(0, 0.2, n), items + 0.05 + rng.normal(0, 0.2, n)
    c = paired_contrast([a], [b], ResamplePlan(1, 1, 4000, rng))
    closed = np.std(b - a, ddof=1) / np.sqrt(n)
    assert c.level == "items" and c.df is None
    assert np.std(c.reps, ddof=1) == pytest.approx(closed, rel=0.06)
    # unpaired resampling would see the item SD of 3.0: ~20x wider
    assert c.ci[1] - c.ci[0] < 4 * 1.96 * closed


def test_identical_arms_give_a_zero_contrast_with_p_one():
    x = np.random.default_rng(2).random(50)
    c = paired_contrast([x], [x.copy()], ResamplePlan(1, 1, 200, np.random.default_rng(3)))
    assert c.estimate == 0 and c.ci == (0.0, 0.0) and c.p == 1.0


@pytest.mark.parametrize(
    ("k", "sd_seed", "sd_noise", "high"),
    [(1, 0.0, 0.5, 0.99), (3, 0.1, 0.05, 0.99), (5, 0.1, 0.05, 0.99), (3, 0.0, 0.5, 1.0)],
    ids=["items-only", "seed-dominated-3", "seed-dominated-5", "interaction-only-3"],
)
def test_coverage_of_both_levels_is_close_to_nominal(k, sd_seed, sd_noise, high):
    """At least nominal-ish everywhere; the crossed design's known conservatism shows only when all the
    noise is seed × item interaction (counted at both levels, Owen 2007): there the CI is at most √2 wider."""
    cov = _coverage(k, sd_seed, sd_noise)
    assert 0.90 <= cov <= high, cov


def test_the_interaction_is_counted_at_most_twice():
    rng = np.random.default_rng(11)
    k, n, sd_noise = 3, 120, 0.5
    true_se = np.sqrt(2 * sd_noise**2 / (k * n))
    ses = [
        np.std(
            paired_contrast(*_experiment(rng, k, k, n, 0.0, 1.0, sd_noise), ResamplePlan(k, k, 300, rng)).reps, ddof=1
        )
        for _ in range(60)
    ]
    assert true_se <= np.mean(ses) <= np.sqrt(2) * true_se * 1.08


def test_ignoring_the_seed_level_undercovers_when_seeds_dominate():
    """The reason seeds are replicates: pooling 3 seeds' items into one run per arm misses the seed noise."""
    rng = np.random.default_rng(4)
    hits, sims, delta = 0, 200, 0.1
    for _ in range(sims):
        a, b = _experiment(rng, 3, 3, 120, 0.1, 1.0, 0.05, delta)
        pooled = paired_contrast([np.mean(a, axis=0)], [np.mean(b, axis=0)], ResamplePlan(1, 1, 300, rng))
        hits += pooled.ci[0] <= delta <= pooled.ci[1]
    assert hits / sims < 0.6


def test_seed_sd_is_the_between_seed_sd_of_item_means():
    rng = np.random.default_rng(5)
    sds = [paired_contrast(*_experiment(rng, 8, 8, 2000, 0.3, 1.0, 0.1), None).seed_sd[0] for _ in range(200)]
    assert np.mean(sds) == pytest.approx(0.3, rel=0.06)


def test_clusters_are_resampled_whole():
    """Items sharing a passage move together: the clustered CI is wider than the i.i.d. one."""
    rng = np.random.default_rng(6)
    clusters = np.repeat(np.arange(40), 10)
    shift = np.repeat(rng.normal(0, 0.5, 40), 10)  # the tuned run moved whole passages
    a = rng.random(400)
    b = a + shift
    iid = paired_contrast([a], [b], ResamplePlan(1, 1, 2000, np.random.default_rng(7)))
    clu = paired_contrast([a], [b], ResamplePlan(1, 1, 2000, np.random.default_rng(7)), clusters=clusters)
    assert (clu.ci[1] - clu.ci[0]) > 2.5 * (iid.ci[1] - iid.ci[0])
    se_closed = np.std(shift.reshape(40, 10)[:, 0], ddof=1) / np.sqrt(40)
    assert np.std(clu.reps, ddof=1) == pytest.approx(se_closed, rel=0.1)


def test_per_unit_uses_the_same_resamples_and_knows_the_answer():
    rng = np.random.default_rng(8)
    n = 300
    kl_a, gain_a = rng.gamma(2.0, 0.05, n), rng.normal(0.5, 0.05, n)
    kl_b, gain_b = kl_a / 2, gain_a / 2  # B forgot half as much on every item, and learned half as much
    plan = ResamplePlan(1, 1, 2000, rng)
    kl = paired_contrast([kl_a], [kl_b], plan)
    gain = paired_contrast([gain_a], [gain_b], plan)
    ratio = per_unit(kl, gain)
    assert ratio.estimate == pytest.approx(kl_b.mean() / gain_b.mean() - kl_a.mean() / gain_a.mean())
    # B forgot half as much but learned half as much: per nat learned, no difference in any resample
    assert ratio.estimate == pytest.approx(0, abs=1e-12)
    assert ratio.ci == pytest.approx((0, 0), abs=1e-12)
    assert kl.ci[1] < 0  # while the raw signal says B forgot less


def test_per_unit_refuses_an_arm_that_learned_nothing():
    plan = ResamplePlan(1, 1, 100, np.random.default_rng(9))
    kl = paired_contrast([np.ones(5)], [np.ones(5)], plan)
    gain = paired_contrast([np.zeros(5)], [np.ones(5)], plan)
    with pytest.raises(CfbenchError, match="learned nothing"):
        per_unit(kl, gain)


def test_per_unit_has_no_ci_when_the_gain_resamples_reach_zero():
    rng = np.random.default_rng(10)
    plan = ResamplePlan(1, 1, 500, rng)
    kl = paired_contrast([rng.random(30)], [rng.random(30)], plan)
    noisy = np.tile([-3.0, 3.2], 15)  # mean +0.1: learned on average, but many resamples reach 0
    gain = paired_contrast([noisy], [noisy + 0.05], plan)
    r = per_unit(kl, gain)
    assert isinstance(r, Contrast) and r.ci is None and "reach 0" in r.note


@pytest.mark.parametrize(
    ("a", "b", "match"),
    [
        ([], [np.ones(3)], "no runs"),
        ([np.ones(3), np.ones(4)], [np.ones(3)], "different numbers of items"),
        ([np.ones(3)], [np.ones(4)], "same items"),
        ([np.array([1.0, np.nan])], [np.ones(2)], "non-finite"),
    ],
)
def test_bad_arms_are_refused_in_one_line(a, b, match):
    with pytest.raises(CfbenchError, match=match):
        paired_contrast(a, b, None)


def test_plan_must_match_the_arms():
    with pytest.raises(CfbenchError, match="resample plan"):
        paired_contrast([np.ones(3)], [np.ones(3)], ResamplePlan(2, 1, 50, np.random.default_rng(0)))


def test_run_level_contrast_of_seeds_that_scored_their_own_items():
    """Each seed's own held-out split: no item pairs, so run means are the replicates (Welch t)."""
    from cfbench.replicates import run_level_contrast

    c = run_level_contrast([0.5, 0.6, 0.7], [0.3, 0.35, 0.4], ResamplePlan(3, 3, 2000, np.random.default_rng(12)))
    assert c.estimate == pytest.approx(-0.25) and c.level == "seeds"
    assert c.seed_sd == (pytest.approx(0.1), pytest.approx(0.05))
    se = np.sqrt(0.1**2 / 3 + 0.05**2 / 3)
    df = se**4 / ((0.1**2 / 3) ** 2 / 2 + (0.05**2 / 3) ** 2 / 2)
    assert c.df == pytest.approx(df)
    assert np.std(c.reps, ddof=1) == pytest.approx(se, rel=0.05)  # the inflated seed draws are unbiased
    one = run_level_contrast([0.5], [0.3, 0.4], ResamplePlan(1, 2, 100, np.random.default_rng(0)))
    assert one.ci is None and "no seed spread" in one.note


def test_run_level_contrast_covers():
    from cfbench.replicates import run_level_contrast

    rng = np.random.default_rng(13)
    hits = 0
    for _ in range(400):
        a, b = rng.normal(0.5, 0.1, 3), rng.normal(0.4, 0.1, 3)
        c = run_level_contrast(a, b, ResamplePlan(3, 3, 400, rng))
        hits += c.ci[0] <= -0.1 <= c.ci[1]
    assert 0.90 <= hits / 400 <= 0.99
