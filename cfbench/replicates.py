"""Contrasts between two arms ("did B forget less than A?"), with seeds as replicates.

The founding paper's claim, and a user's question, is a contrast: method B against method A, both
measured on the same items. Reading it off two separate CIs wastes the pairing and ignores training
noise, so this module answers it directly:

* **One run per arm**: a paired item bootstrap. Every replicate draws one multiset of items (or of
  clusters, e.g. RACE articles) and applies it to both runs, so item difficulty cancels; the CI is
  the percentile interval of the replicates, as for every other Δ in cfbench.
* **Seeds per arm**: a two-level bootstrap. A replicate draws seeds with replacement within each
  arm, then one multiset of items shared by every run (the items are crossed with the seeds, not
  nested in them). With 2-5 seeds the percentile interval is far too narrow: the resampled mean of
  k seeds has only ``(k - 1)/k`` of the seed variance, and a normal quantile ignores that the seed
  variance is itself estimated from k values. So the seed-level deviation of each replicate is
  scaled by ``sqrt(k / (k - 1))`` and the interval is ``estimate ± t(df) · SE``, SE from the
  replicates and ``df`` by Welch-Satterthwaite over the item and seed components. Synthetic data
  with known seed and item variances pin the coverage of both levels (``tests/test_replicates.py``).
  Like every two-way bootstrap of a crossed design (Owen 2007, "The pigeonhole bootstrap") it counts
  the seed × item interaction at both levels, so it errs wide: at most √2 in SE, when all the noise
  is interaction, and negligibly when seeds dominate.

An arm of one run contributes no seed variance: its seed SD is ``None``, and callers say that it
cannot estimate seed noise. Ratios ("forgetting per nat learned") reuse the arms' replicate means
(:func:`per_unit`), so numerator and denominator move together in every replicate.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import t as student_t

from cfbench.errors import CfbenchError
from cfbench.stats import bootstrap_p, percentile_ci

#: Largest (replicates x items) weight block held at once: bounds memory on MMLU-sized signals.
_MAX_BLOCK = 4_000_000


class ResamplePlan:
    """The seed draws of one contrast, shared by every signal of it, plus the generator for item draws.

    ``seed_a[r]`` / ``seed_b[r]`` are replicate ``r``'s seed indices of each arm (all zeros for an arm
    of one run). Sharing them across signals is what lets a ratio of two signals (:func:`per_unit`)
    take its CI from the same resamples.
    """

    def __init__(self, k_a: int, k_b: int, n_boot: int, rng: np.random.Generator) -> None:
        if k_a < 1 or k_b < 1:
            raise CfbenchError(f"a contrast needs at least one run per arm, got {k_a} and {k_b}")
        if n_boot < 1:
            raise CfbenchError(f"a resample plan needs n_boot >= 1, got {n_boot}; pass plan=None for no CI")
        self.k_a, self.k_b, self.n_boot, self.rng = k_a, k_b, n_boot, rng
        self.seed_a = rng.integers(0, k_a, size=(n_boot, k_a))
        self.seed_b = rng.integers(0, k_b, size=(n_boot, k_b))


@dataclass(frozen=True)
class Contrast:
    """B − A of one signal: estimate, CI, p, the arms' replicate means and their seed spread."""

    estimate: float
    ci: tuple[float, float] | None
    p: float | None
    reps_a: np.ndarray | None
    reps_b: np.ndarray | None
    mean_a: float
    mean_b: float
    seed_sd: tuple[float | None, float | None]
    n_items: int
    k: tuple[int, int]
    level: str  # "items" | "seeds+items"
    df: float | None = None  # degrees of freedom of the t interval (seeds+items); None for percentile
    note: str | None = None  # why there is no CI although replicates were asked for

    @property
    def reps(self) -> np.ndarray | None:
        """The contrast's own replicates (B − A per replicate)."""
        return None if self.reps_a is None or self.reps_b is None else self.reps_b - self.reps_a


def _stack(arm: Sequence[np.ndarray], name: str) -> np.ndarray:
    """The arm's runs as a (runs, items) float matrix; one line naming the problem otherwise."""
    if len(arm) == 0:
        raise CfbenchError(f"arm {name} of a contrast has no runs")
    rows = [np.asarray(v, dtype=float).ravel() for v in arm]
    if len({r.size for r in rows}) != 1:
        raise CfbenchError(f"arm {name}'s runs cover different numbers of items; align them on common items first")
    out = np.vstack(rows)
    if not np.isfinite(out).all():
        raise CfbenchError(f"arm {name} has non-finite item values; drop or re-score those items before contrasting")
    return out


def _item_weights(n: int, clusters: np.ndarray | None, size: int, rng: np.random.Generator) -> np.ndarray:
    """(size, n) counts of how often each item is drawn in each replicate (whole clusters if given)."""
    if clusters is None:
        idx = rng.integers(0, n, size=(size, n))
        return np.stack([np.bincount(r, minlength=n) for r in idx]).astype(float)
    _, inverse = np.unique(np.asarray(clusters).astype(str), return_inverse=True)
    k = int(inverse.max()) + 1
    counts = np.stack([np.bincount(r, minlength=k) for r in rng.integers(0, k, size=(size, k))]).astype(float)
    return counts[:, inverse]


def _per_seed_means(values: np.ndarray, plan: ResamplePlan, clusters: np.ndarray | None, other: np.ndarray) -> tuple:
    """Item-resampled means of every run of both arms, ``(n_boot, k_a)`` and ``(n_boot, k_b)``.

    One weight row per replicate is applied to the runs of *both* arms: the items are paired.
    """
    n = values.shape[1]
    out_a, out_b = np.empty((plan.n_boot, values.shape[0])), np.empty((plan.n_boot, other.shape[0]))
    block = max(1, _MAX_BLOCK // max(n, 1))
    for start in range(0, plan.n_boot, block):
        stop = min(start + block, plan.n_boot)
        w = _item_weights(n, clusters, stop - start, plan.rng)
        total = w.sum(axis=1, keepdims=True)
        out_a[start:stop] = w @ values.T / total
        out_b[start:stop] = w @ other.T / total
    return out_a, out_b


def _arm_reps(per_seed: np.ndarray, means: np.ndarray, draws: np.ndarray) -> np.ndarray:
    """Each replicate's arm mean: the items' resample over all seeds plus the inflated seed deviation.

    The seed deviation is taken from the runs' own item means (``means``), not from their item
    resamples: a resample's noise differs per seed and would count the item level a third time. The
    bootstrap mean of k resampled seeds varies by only ``(k − 1)/k`` of the seed variance; scaling the
    deviation by ``sqrt(k / (k − 1))`` makes it unbiased.
    """
    k = per_seed.shape[1]
    all_seeds = per_seed.mean(axis=1)
    if k == 1:
        return all_seeds
    drawn = means[draws].mean(axis=1)
    return all_seeds + np.sqrt(k / (k - 1)) * (drawn - means.mean())


def _seed_sd(values: np.ndarray) -> float | None:
    """Between-seed SD (n − 1) of the runs' item means; None for one run (no seed noise estimate)."""
    return float(values.mean(axis=1).std(ddof=1)) if values.shape[0] > 1 else None


def _welch_df(item_var: float, arms: Sequence[np.ndarray], n_units: int) -> float:
    """Satterthwaite's df of ``Var = item part + Σ_arm s²_arm / k_arm`` (each part with its own df)."""
    parts = [(item_var, max(n_units - 1, 1))]
    for v in arms:
        k = v.shape[0]
        if k > 1:
            parts.append((float(v.mean(axis=1).var(ddof=1)) / k, k - 1))
    total = sum(p for p, _ in parts)
    denom = sum(p * p / d for p, d in parts)
    return float(total * total / denom) if denom > 0 else float("inf")


def _t_interval(estimate: float, reps: np.ndarray, df: float, confidence: float) -> tuple[tuple[float, float], float]:
    """``estimate ± t(df) · sd(reps)`` and its two-sided p (1 when there is no spread and no effect)."""
    se = float(np.std(reps, ddof=1))
    if se <= 0:
        return (estimate, estimate), 1.0 if estimate == 0 else 0.0
    q = float(student_t.ppf((1 + confidence) / 2, df))
    return (estimate - q * se, estimate + q * se), float(2 * student_t.sf(abs(estimate) / se, df))


def paired_contrast(
    a: Sequence[np.ndarray],
    b: Sequence[np.ndarray],
    plan: ResamplePlan | None,
    *,
    confidence: float = 0.95,
    clusters: np.ndarray | None = None,
) -> Contrast:
    """B − A of one signal over the items both arms scored, with a paired (and seed-level) CI.

    ``a`` and ``b``: each arm's runs (one, or one per seed), each the per-item values over the same
    items in the same order. ``plan`` None: the estimate and seed SDs only (``--n-boot 0``).
    """
    va, vb = _stack(a, "A"), _stack(b, "B")
    if va.shape[1] != vb.shape[1] or va.shape[1] == 0:
        raise CfbenchError("the two arms of a contrast must cover the same items (and at least one)")
    if clusters is not None and len(clusters) != va.shape[1]:
        raise CfbenchError("clusters must give one id per item of the contrast")
    mean_a, mean_b = float(va.mean()), float(vb.mean())
    common = dict(
        mean_a=mean_a,
        mean_b=mean_b,
        seed_sd=(_seed_sd(va), _seed_sd(vb)),
        n_items=va.shape[1],
        k=(va.shape[0], vb.shape[0]),
        level="items" if va.shape[0] == vb.shape[0] == 1 else "seeds+items",
    )
    estimate = mean_b - mean_a
    if plan is None:
        return Contrast(estimate, None, None, None, None, **common)
    if (plan.k_a, plan.k_b) != common["k"]:
        raise CfbenchError(f"resample plan is for {plan.k_a} vs {plan.k_b} runs, the arms have {common['k']}")
    seeds_a, seeds_b = _per_seed_means(va, plan, clusters, vb)
    reps_a = _arm_reps(seeds_a, va.mean(axis=1), plan.seed_a)
    reps_b = _arm_reps(seeds_b, vb.mean(axis=1), plan.seed_b)
    if common["level"] == "items":
        diff = reps_b - reps_a
        return Contrast(estimate, percentile_ci(diff, confidence), bootstrap_p(diff), reps_a, reps_b, **common)
    n_units = va.shape[1] if clusters is None else len(set(map(str, clusters)))
    df = _welch_df(float(np.var(seeds_b.mean(axis=1) - seeds_a.mean(axis=1), ddof=1)), [va, vb], n_units)
    ci, p = _t_interval(estimate, reps_b - reps_a, df, confidence)
    return Contrast(estimate, ci, p, reps_a, reps_b, df=df, **common)


def per_unit(num: Contrast, den: Contrast, *, confidence: float = 0.95) -> Contrast:
    """``num_B / den_B − num_A / den_A`` ("forgetting per nat learned"), CI from the shared resamples.

    ``den`` must be the amount learned, positive when the run learned (e.g. the in-domain loss
    *decrease*), from the same :class:`ResamplePlan` as ``num``. A run that learned nothing makes the
    ratio undefined: refused in one line. Replicates whose denominator reaches 0 make the ratio's CI
    unbounded: then there is no CI, and ``note`` says why.
    """
    if num.k != den.k:
        raise CfbenchError("per_unit needs numerator and denominator from the same arms")
    if den.mean_a <= 0 or den.mean_b <= 0:
        raise CfbenchError(
            f"per nat learned is undefined: an arm learned nothing (in-domain gain {den.mean_a:+.4g} / "
            f"{den.mean_b:+.4g} nats); read the signals themselves"
        )
    estimate = num.mean_b / den.mean_b - num.mean_a / den.mean_a
    common = dict(
        mean_a=num.mean_a / den.mean_a,
        mean_b=num.mean_b / den.mean_b,
        seed_sd=(None, None),
        n_items=num.n_items,
        k=num.k,
        level=num.level,
    )
    if num.reps_a is None or den.reps_a is None or num.reps_b is None or den.reps_b is None:
        return Contrast(estimate, None, None, None, None, **common)
    if num.reps_a.shape != den.reps_a.shape:
        raise CfbenchError("per_unit needs numerator and denominator bootstrapped with the same plan")
    if (den.reps_a <= 0).any() or (den.reps_b <= 0).any():
        note = "the in-domain gain's resamples reach 0: the ratio has no finite CI"
        return Contrast(estimate, None, None, None, None, note=note, **common)
    reps_a, reps_b = num.reps_a / den.reps_a, num.reps_b / den.reps_b
    diff = reps_b - reps_a
    if num.level == "items":
        return Contrast(estimate, percentile_ci(diff, confidence), bootstrap_p(diff), reps_a, reps_b, **common)
    df = min(x for x in (num.df, den.df, float("inf")) if x is not None)
    ci, p = _t_interval(estimate, diff, df, confidence)
    return Contrast(estimate, ci, p, reps_a, reps_b, df=df, **common)


#: Why a contrast reads run means instead of items (each seed scored its own items).
RUN_LEVEL_NOTE = (
    "each run scored its own items (e.g. its seed's held-out split): a contrast of run means, seeds as replicates"
)


def run_level_contrast(
    a_means: Sequence[float],
    b_means: Sequence[float],
    plan: ResamplePlan | None,
    *,
    confidence: float = 0.95,
    n_items: int = 0,
) -> Contrast:
    """B − A when the runs did not score the same items (each seed's own held-out split): run means only.

    Items cannot be paired, so the replicates are the seeds themselves: each run's mean already
    carries its items' sampling noise, and the spread of run means within an arm estimates seed and
    item noise together. The interval is ``estimate ± t(df) · SE`` over the plan's (inflated) seed
    draws, df by Welch-Satterthwaite; an arm of one run has no spread, so there is then no CI.
    """
    ma, mb = np.asarray(a_means, dtype=float), np.asarray(b_means, dtype=float)
    if not (np.isfinite(ma).all() and np.isfinite(mb).all()) or ma.size == 0 or mb.size == 0:
        raise CfbenchError("a run-level contrast needs a finite mean for every run of both arms")
    est = float(mb.mean() - ma.mean())
    sd = tuple(float(m.std(ddof=1)) if m.size > 1 else None for m in (ma, mb))
    common = dict(mean_a=float(ma.mean()), mean_b=float(mb.mean()), seed_sd=sd, n_items=n_items,
                  k=(ma.size, mb.size), level="seeds")  # fmt: skip
    if plan is None:
        return Contrast(est, None, None, None, None, note=RUN_LEVEL_NOTE, **common)
    if ma.size < 2 or mb.size < 2:
        note = RUN_LEVEL_NOTE + "; an arm of one run has no seed spread, so no CI"
        return Contrast(est, None, None, None, None, note=note, **common)
    reps_a = _arm_reps(np.full((plan.n_boot, ma.size), ma), ma, plan.seed_a)
    reps_b = _arm_reps(np.full((plan.n_boot, mb.size), mb), mb, plan.seed_b)
    df = _welch_df(0.0, [ma[:, None], mb[:, None]], 2)
    ci, p = _t_interval(est, reps_b - reps_a, df, confidence)
    return Contrast(est, ci, p, reps_a, reps_b, df=df, note=RUN_LEVEL_NOTE, **common)
