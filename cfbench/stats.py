"""Paired statistics for "how much did fine-tuning change this score".

Base and tuned models answer the *same* items, so every comparison here is paired: item scores are
aligned on ``doc_id`` first, and the bootstrap resamples item indices once for both runs. Two rows
with the same ``doc_id`` are the same item only if they render to the same prompt: items carry a
fingerprint (``item_hash``) and pair only when it matches (see :func:`align_items`). Pairing
removes item difficulty from the variance, which is what makes a 1-point drop on a 1k-item task
detectable at all.

Aggregates (category = mean of task means, AVG = mean of category means) get a *stratified*
bootstrap: every replicate resamples each task's items independently and recomputes the aggregate
for both runs, so the CI is for the paired Δ of the aggregate rather than a guess from task CIs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import binomtest, norm

from cfbench.errors import CfbenchError

DEFAULT_N_BOOT = 2000
DEFAULT_CONFIDENCE = 0.95

# Above this many distinct (ref, other) score pairs the bootstrap resamples indices directly;
# below it a multinomial over the distinct pairs draws the same distribution in O(n_boot).
_MULTINOMIAL_MAX_CELLS = 256
# Largest (replicates x items) index block materialised at once: bounds memory on MMLU-sized tasks.
_MAX_BLOCK = 4_000_000


@dataclass(frozen=True)
class PairedScores:
    """Item scores of two runs on one task, aligned on their common ``doc_id``s."""

    doc_ids: np.ndarray
    ref: np.ndarray
    other: np.ndarray
    subsets: np.ndarray
    dropped_ref: int
    dropped_other: int
    #: Common ``doc_id``s left out because the runs' items differ (fingerprints disagree, or neither
    #: fingerprints nor task config hashes show they are the same item).
    mismatched: int = 0
    #: Cluster id per item (the task's ``cluster_by`` field, e.g. a RACE article), or None: i.i.d. items.
    clusters: np.ndarray | None = None

    @property
    def n(self) -> int:
        return int(self.doc_ids.size)

    @property
    def binary(self) -> bool:
        """True for 0/1 metrics, the only ones where McNemar and flip counts mean something."""
        return bool(np.isin(self.ref, (0.0, 1.0)).all() and np.isin(self.other, (0.0, 1.0)).all())

    def select(self, mask: np.ndarray) -> PairedScores:
        """The same pairing restricted to some items (e.g. one MMLU sub-group)."""
        clusters = self.clusters[mask] if self.clusters is not None else None
        return PairedScores(
            self.doc_ids[mask], self.ref[mask], self.other[mask], self.subsets[mask], 0, 0, clusters=clusters
        )

    @property
    def unpairable(self) -> bool:
        """True when the runs share doc_ids but no item is provably the same in both."""
        return self.n == 0 and self.mismatched > 0


def _same_items(merged: pd.DataFrame) -> np.ndarray:
    """Which joined rows are provably the same item in both runs.

    Both fingerprints present: they must be equal (same rendered context, choices and gold). Where
    either side lacks one (items stored before fingerprints existed, or an import that could not
    render the prompt), equal non-null task config hashes stand in: the same config renders the same
    prompts from the same data. Anything else is not paired: a doc_id alone says nothing about
    which question was asked.
    """
    n = len(merged)

    def col(name: str) -> np.ndarray:
        return merged[name].to_numpy(dtype=object) if name in merged else np.full(n, None, object)

    h_ref, h_oth = col("item_hash_ref"), col("item_hash_other")
    t_ref, t_oth = col("task_hash_ref"), col("task_hash_other")
    has_h = pd.notna(h_ref) & pd.notna(h_oth)
    has_t = pd.notna(t_ref) & pd.notna(t_oth)
    same_h = has_h & (h_ref == h_oth)
    same_t = ~has_h & has_t & (t_ref == t_oth)
    return same_h | same_t


def align_items(
    ref: pd.DataFrame, other: pd.DataFrame, *, task: str = "", names: tuple[str, str] = ("", "")
) -> PairedScores:
    """Inner-join two runs' items of one task on ``doc_id``, keeping only items that are the same.

    Items present in only one run are dropped (and counted) rather than compared against nothing:
    a Δ over different item sets mixes forgetting with a change of test set. Common doc_ids whose
    items differ (:func:`_same_items`) are dropped too and counted in ``mismatched``: a paired
    statistic is computed only over matching items, and when none match the result has ``n == 0``
    (``unpairable``) so the caller falls back to an unpaired task-level Δ. Frames without the
    optional ``item_hash``/``task_hash`` columns (plain DataFrames given to ``build_report``) are
    taken to be the same items, as before fingerprints existed.
    """
    for frame, name in zip((ref, other), names, strict=True):
        dup = frame["doc_id"].duplicated()
        if dup.any():
            raise CfbenchError(
                f"run '{name}' has {int(dup.sum())} duplicate doc_id(s) on task '{task}' "
                f"(e.g. {frame['doc_id'][dup].iloc[0]}); keep one row per item before comparing"
            )
    keys = [c for c in ("item_hash", "task_hash") if c in ref.columns and c in other.columns]
    extra = [c for c in ("subset", "cluster") if c in ref.columns]
    cols = ["doc_id", "score", *keys, *extra]
    merged = ref[cols].merge(other[["doc_id", "score", *keys]], on="doc_id", suffixes=("_ref", "_other"))
    merged = merged.sort_values("doc_id", kind="stable")
    if merged.empty:
        raise CfbenchError(
            f"runs '{names[0]}' and '{names[1]}' share no doc_id on task '{task}'; they were evaluated "
            "on different item sets (task version or --limit differ): re-evaluate both the same way"
        )
    common = len(merged)
    if keys:
        merged = merged[_same_items(merged)]
    subsets = merged["subset"].to_numpy(dtype=object) if "subset" in merged else np.full(len(merged), None, object)
    return PairedScores(
        doc_ids=merged["doc_id"].to_numpy(),
        ref=merged["score_ref"].to_numpy(dtype=float),
        other=merged["score_other"].to_numpy(dtype=float),
        subsets=subsets,
        dropped_ref=len(ref) - common,
        dropped_other=len(other) - common,
        mismatched=common - len(merged),
        clusters=(
            merged["cluster"].to_numpy(dtype=object)
            if "cluster" in merged and len(merged) and merged["cluster"].notna().all()
            else None
        ),
    )


def data_key(paired: PairedScores) -> str:
    """A digest of the paired data itself (doc ids and both runs' scores).

    Seeding the bootstrap from this (plus ``--seed`` and the task/group name) makes every CI a
    function of the data alone: renaming runs with ``--labels``, reordering runs or adding another
    comparison cannot change a number, while two different comparisons still get independent draws.
    """
    h = hashlib.sha256()
    for arr in (paired.doc_ids.astype(np.int64), paired.ref.astype(np.float64), paired.other.astype(np.float64)):
        h.update(np.ascontiguousarray(arr).tobytes())
        h.update(b"|")
    return h.hexdigest()


def task_rng(seed: int, *keys: str) -> np.random.Generator:
    """A generator for one (comparison, task): results do not depend on the order tasks are processed.

    ``keys`` must be stable data identifiers (a :func:`data_key`, task and group names), never
    display labels: a label is not part of the data, so it must not move a CI.
    """
    words = [int.from_bytes(hashlib.sha256(k.encode()).digest()[:8], "little") for k in keys]
    return np.random.default_rng([seed, *words])


def bootstrap_means(ref: np.ndarray, other: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Means of both runs under ``n_boot`` paired resamples of the items: shape ``(n_boot, 2)``.

    Resampling n items with replacement only matters through how often each distinct
    ``(ref, other)`` pair is drawn, so for 0/1 metrics (at most 4 distinct pairs) a multinomial draw
    of pair counts is the same distribution at O(n_boot) cost. Continuous metrics fall back to
    drawing index blocks of bounded size.
    """
    ref = np.asarray(ref, dtype=float)
    other = np.asarray(other, dtype=float)
    n = ref.size
    if n == 0:
        raise ValueError("cannot bootstrap zero items")
    pairs = np.column_stack([ref, other])
    cells, counts = np.unique(pairs, axis=0, return_counts=True)
    if len(cells) <= _MULTINOMIAL_MAX_CELLS:
        draws = rng.multinomial(n, counts / n, size=n_boot)  # (B, cells)
        return draws @ cells / n
    out = np.empty((n_boot, 2))
    block = max(1, _MAX_BLOCK // n)
    for start in range(0, n_boot, block):
        stop = min(start + block, n_boot)
        idx = rng.integers(0, n, size=(stop - start, n))
        out[start:stop, 0] = ref[idx].mean(axis=1)
        out[start:stop, 1] = other[idx].mean(axis=1)
    return out


def percentile_ci(values: np.ndarray, confidence: float = DEFAULT_CONFIDENCE) -> tuple[float, float]:
    """Percentile bootstrap interval; exact [0, 0] when every replicate is 0 (identical runs)."""
    tail = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(values, [tail, 1.0 - tail])
    return float(lo), float(hi)


def flip_counts(ref: np.ndarray, other: np.ndarray) -> tuple[int, int]:
    """(forgotten, gained): items the reference got right and the other run wrong, and the reverse."""
    ref_b = np.asarray(ref) == 1
    oth_b = np.asarray(other) == 1
    return int(np.sum(ref_b & ~oth_b)), int(np.sum(~ref_b & oth_b))


def mcnemar_exact(forgotten: int, gained: int) -> float:
    """Exact McNemar p: two-sided binomial test of the discordant pairs against 1/2.

    Concordant items carry no information about which run is better, so only flips count; with no
    flips at all there is no evidence of a difference and p is 1.
    """
    discordant = forgotten + gained
    if discordant == 0:
        return 1.0
    return float(binomtest(forgotten, discordant, 0.5, alternative="two-sided").pvalue)


@dataclass(frozen=True)
class TaskDelta:
    """Paired comparison of one task (or sub-group) between a reference run and another run.

    ``ref_mean``/``other_mean`` are on the common items, so ``delta == other_mean - ref_mean``.
    ``replicates`` (``(n_boot, 2)`` bootstrap means, or None) feed the stratified aggregate CI.
    """

    n: int
    dropped_ref: int
    dropped_other: int
    ref_mean: float
    other_mean: float
    delta: float
    ci: tuple[float, float] | None
    p_mcnemar: float | None
    forgotten: int | None
    gained: int | None
    replicates: np.ndarray | None
    #: The p-value of the test of *this* Δ (``test`` names it): McNemar's exact test for an item mean
    #: of 0/1 scores, the paired bootstrap otherwise (a subject-mean Δ, a non-0/1 metric).
    p: float | None = None
    test: str | None = None
    #: Minimum detectable |Δ| at :data:`MDE_POWER` power and the test's α (:func:`mde_mcnemar`, :func:`mde_from_se`).
    mde: float | None = None


#: Power at which the minimum detectable effect is reported.
MDE_POWER = 0.8


def _z_sum(alpha: float, power: float) -> tuple[float, float]:
    return float(norm.ppf(1 - alpha / 2)), float(norm.ppf(power))


def mde_from_se(se: float, alpha: float = 0.05, power: float = MDE_POWER) -> float:
    """Smallest |Δ| a two-sided level-α test detects with probability ``power``: ``(z_{1-α/2} + z_power) · SE``."""
    za, zb = _z_sum(alpha, power)
    return float((za + zb) * se)


def mde_mcnemar(n: int, discordance: float, alpha: float = 0.05, power: float = MDE_POWER) -> float:
    """Minimum detectable Δ of a paired 0/1 task for its ``n`` and discordance rate ``p_d`` (McNemar).

    Normal approximation of McNemar's power (Connor 1987): the Δ solving
    ``√n |Δ| = z_{1-α/2} √p_d + z_power √(p_d − Δ²)`` (fixed-point iteration). It is never below
    ``k_min / n``, where ``k_min`` is the fewest one-sided discordant pairs the *exact* test can
    reject with (6 at α = 0.05): with no observed flips the normal formula would claim 0.
    """
    if n <= 0:
        raise ValueError("the minimum detectable effect of zero items is undefined")
    za, zb = _z_sum(alpha, power)
    k_min = 1
    while 2 * 0.5**k_min >= alpha:
        k_min += 1
    pd_ = max(discordance, k_min / n)
    delta = (za + zb) * np.sqrt(pd_ / n)
    for _ in range(50):
        delta = (za * np.sqrt(pd_) + zb * np.sqrt(max(pd_ - delta**2, 0.0))) / np.sqrt(n)
    return float(min(1.0, max(delta, k_min / n)))


def bootstrap_p(diffs: np.ndarray) -> float:
    """Two-sided percentile-bootstrap p of a Δ against 0: ``2 (min(#Δ* ≤ 0, #Δ* ≥ 0) + 1) / (B + 1)``.

    The test that matches the percentile CI: with ``B`` replicates the (1 − α) interval excludes 0
    exactly when fewer than about ``α B / 2`` replicates fall on the far side of 0, i.e. when this
    p < α. The ``+1``s keep p above 0 (a finite bootstrap cannot show p = 0) and make identical
    runs (every replicate 0) p = 1.
    """
    d = np.asarray(diffs, dtype=float)
    if d.size == 0:
        raise ValueError("cannot compute a bootstrap p from zero replicates")
    below = int(np.sum(d <= CI_ZERO_TOL))
    above = int(np.sum(d >= -CI_ZERO_TOL))
    return float(min(1.0, 2.0 * (min(below, above) + 1) / (d.size + 1)))


def bootstrap_p_above(values: np.ndarray, bar: float) -> float:
    """Bootstrap p that a statistic is not above ``bar``: ``2 (#v* ≤ bar + 1) / (B + 1)``, capped at 1.

    The test of "CI lower bound above ``bar``" (a divergence above its noise floor), on the same
    two-sided scale as :func:`bootstrap_p` so one α reads both.
    """
    v = np.asarray(values, dtype=float)
    if v.size == 0:
        raise ValueError("cannot compute a bootstrap p from zero replicates")
    return float(min(1.0, 2.0 * (int(np.sum(v <= bar)) + 1) / (v.size + 1)))


def holm_adjust(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values of one family, in the given order.

    ``p_adj(i) = max_{j ≤ rank(i)} min(1, (m − j + 1) p_(j))``: rejecting where ``p_adj < α`` controls
    the family-wise error rate at α under any dependence between the tests.
    """
    p = np.asarray(pvalues, dtype=float)
    if p.size == 0:
        return []
    if not np.isfinite(p).all() or (p < 0).any() or (p > 1).any():
        raise CfbenchError(f"Holm adjustment needs p-values in [0, 1], got {p.tolist()}")
    order = np.argsort(p, kind="stable")
    m = p.size
    stepped = np.minimum(1.0, (m - np.arange(m)) * p[order])
    adj = np.empty(m)
    adj[order] = np.maximum.accumulate(stepped)
    return [float(x) for x in adj]


def _cluster_sums(ref: np.ndarray, other: np.ndarray, clusters: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per cluster: item count, sum of ref scores, sum of other scores (clusters in sorted id order)."""
    _, inverse = np.unique(clusters.astype(str), return_inverse=True)
    k = int(inverse.max()) + 1
    sizes = np.bincount(inverse, minlength=k).astype(float)
    return sizes, np.bincount(inverse, ref, minlength=k), np.bincount(inverse, other, minlength=k)


def cluster_bootstrap_means(
    ref: np.ndarray, other: np.ndarray, clusters: np.ndarray, n_boot: int, rng: np.random.Generator
) -> np.ndarray:
    """Paired cluster bootstrap: resample whole clusters (e.g. RACE articles), ``(n_boot, 2)`` item means.

    Items of one passage share its difficulty, so resampling items as if independent understates the
    variance; each replicate draws K clusters with replacement and takes the item mean over them.
    """
    sizes, s_ref, s_oth = _cluster_sums(np.asarray(ref, float), np.asarray(other, float), np.asarray(clusters))
    k = sizes.size
    out = np.empty((n_boot, 2))
    block = max(1, _MAX_BLOCK // k)
    for start in range(0, n_boot, block):
        stop = min(start + block, n_boot)
        counts = np.stack([np.bincount(r, minlength=k) for r in rng.integers(0, k, size=(stop - start, k))])
        n = counts @ sizes
        out[start:stop, 0] = counts @ s_ref / n
        out[start:stop, 1] = counts @ s_oth / n
    return out


def cluster_delta_se(ref: np.ndarray, other: np.ndarray, clusters: np.ndarray) -> float:
    """Closed-form (linearised ratio-estimator) SE of the paired Δ of item means under cluster sampling.

    ``Var(Δ̂) = K/(K−1) · Σ_k (D_k − Δ̂ n_k)² / N²`` with ``D_k`` the cluster's summed Δ, ``n_k`` its
    size and ``N`` the items: the cluster-robust (sandwich) variance of a mean.
    """
    sizes, s_ref, s_oth = _cluster_sums(np.asarray(ref, float), np.asarray(other, float), np.asarray(clusters))
    k, n = sizes.size, sizes.sum()
    if k < 2:
        return 0.0
    d = s_oth - s_ref
    delta = d.sum() / n
    return float(np.sqrt(k / (k - 1) * np.sum((d - delta * sizes) ** 2) / n**2))


def cluster_paired_p(ref: np.ndarray, other: np.ndarray, clusters: np.ndarray) -> float:
    """Cluster-level paired test of Δ = 0: ``z = Δ̂ / SE_cluster``, two-sided normal p.

    For 0/1 scores this is Obuchowski's (1998) clustered McNemar test (its χ² is ``z²``); McNemar's exact
    test assumes independent items, which items sharing a passage are not. No change at all: p = 1.
    """
    ref = np.asarray(ref, float)
    other = np.asarray(other, float)
    delta = float(other.mean() - ref.mean())
    se = cluster_delta_se(ref, other, clusters)
    if se <= 0:
        return 1.0 if abs(delta) <= CI_ZERO_TOL else 0.0
    return float(2 * norm.sf(abs(delta) / se))


def n_clusters(paired: PairedScores) -> int:
    """How many distinct clusters the paired items fall in (0 without clusters)."""
    return 0 if paired.clusters is None else int(np.unique(paired.clusters.astype(str)).size)


def _clustered(paired: PairedScores, n_boot: int, rng: np.random.Generator, alpha: float) -> tuple[Any, ...]:
    """(replicates, p, test, mde) of a task whose items are clustered (``paired.clusters`` set).

    One cluster (``--limit 3`` on RACE: three questions of one article) has no between-cluster
    variance to estimate: its bootstrap is a point and its z test divides by 0, which called any Δ
    significant (p = 0, CI [Δ, Δ], MDE 0). It is untested: (None, None, None, None). With two or more
    clusters the normal z test can still claim certainty that few clusters or no discordant pair
    cannot give, so a 0/1 task's p is never below McNemar's exact p and its MDE never below the
    fewest discordant pairs that test could reject with (:func:`mde_mcnemar` at discordance 0).
    """
    assert paired.clusters is not None
    if n_clusters(paired) < 2:
        return None, None, None, None
    reps = cluster_bootstrap_means(paired.ref, paired.other, paired.clusters, n_boot, rng) if n_boot > 0 else None
    p = cluster_paired_p(paired.ref, paired.other, paired.clusters)
    mde = mde_from_se(cluster_delta_se(paired.ref, paired.other, paired.clusters), alpha)
    if paired.binary:
        p = max(p, mcnemar_exact(*flip_counts(paired.ref, paired.other)))
        mde = max(mde, mde_mcnemar(paired.n, 0.0, alpha))
    return reps, p, "cluster", mde


def paired_task_delta(
    paired: PairedScores,
    *,
    n_boot: int = DEFAULT_N_BOOT,
    rng: np.random.Generator,
    confidence: float = DEFAULT_CONFIDENCE,
    subset_mean: bool = False,
    alpha: float = 0.05,
) -> TaskDelta:
    """Δ = mean(other) − mean(ref) on the common items, with paired bootstrap CI and McNemar p.

    ``subset_mean``: the means are OpenCompass's naive average of per-subset means (its ``mmlu``),
    and the bootstrap resamples items within each subset (stratified), so the CI is for that mean.
    The flip counts stay item-level (they count items), but McNemar tests the *item-weighted* Δ, not
    the subset mean shown, so such a Δ is tested by its own bootstrap (``p``, ``test="bootstrap"``)
    and ``p_mcnemar`` is None: a row never shows a p of a quantity it does not show.
    """
    if subset_mean:
        masks = [paired.subsets == s for s in dict.fromkeys(paired.subsets.tolist())]
        ref_mean = float(np.mean([paired.ref[m].mean() for m in masks]))
        other_mean = float(np.mean([paired.other[m].mean() for m in masks]))
        reps = (
            np.mean([bootstrap_means(paired.ref[m], paired.other[m], n_boot, rng) for m in masks], axis=0)
            if n_boot > 0
            else None
        )
    else:
        ref_mean = float(paired.ref.mean())
        other_mean = float(paired.other.mean())
        if paired.clusters is not None:
            return _cluster_task_delta(paired, ref_mean, other_mean, n_boot, rng, confidence, alpha)
        reps = bootstrap_means(paired.ref, paired.other, n_boot, rng) if n_boot > 0 else None
    ci = percentile_ci(reps[:, 1] - reps[:, 0], confidence) if reps is not None else None
    p = forgotten = gained = None
    if paired.binary:
        forgotten, gained = flip_counts(paired.ref, paired.other)
        p = None if subset_mean else mcnemar_exact(forgotten, gained)
    p_test, test = (p, "McNemar") if p is not None else (None, None)
    mde = mde_mcnemar(paired.n, (forgotten + gained) / paired.n, alpha) if p is not None else None  # type: ignore[operator]
    if p is None and reps is not None:
        p_test, test = bootstrap_p(reps[:, 1] - reps[:, 0]), "bootstrap"
        mde = mde_from_se(float(np.std(reps[:, 1] - reps[:, 0], ddof=1)), alpha) if len(reps) > 1 else None
    return TaskDelta(
        n=paired.n,
        dropped_ref=paired.dropped_ref,
        dropped_other=paired.dropped_other,
        ref_mean=ref_mean,
        other_mean=other_mean,
        delta=other_mean - ref_mean,
        ci=ci,
        p_mcnemar=p,
        forgotten=forgotten,
        gained=gained,
        replicates=reps,
        p=p_test,
        test=test,
        mde=mde,
    )


def _cluster_task_delta(
    paired: PairedScores, ref_mean: float, other_mean: float, n_boot: int, rng: np.random.Generator,
    confidence: float, alpha: float,
) -> TaskDelta:  # fmt: skip
    """:func:`paired_task_delta` of a clustered task: cluster bootstrap CI, cluster-level paired test."""
    reps, p, test, mde = _clustered(paired, n_boot, rng, alpha)
    forgotten = gained = None
    if paired.binary:
        forgotten, gained = flip_counts(paired.ref, paired.other)
    return TaskDelta(
        n=paired.n, dropped_ref=paired.dropped_ref, dropped_other=paired.dropped_other, ref_mean=ref_mean,
        other_mean=other_mean, delta=other_mean - ref_mean,
        ci=percentile_ci(reps[:, 1] - reps[:, 0], confidence) if reps is not None else None,
        p_mcnemar=None, forgotten=forgotten, gained=gained, replicates=reps, p=p, test=test, mde=mde,
    )  # fmt: skip


@dataclass(frozen=True)
class TaskPoint:
    """Input to aggregation: a task's means for both runs, plus bootstrap replicates if item-level."""

    ref_mean: float
    other_mean: float
    replicates: np.ndarray | None = None


@dataclass(frozen=True)
class Coverage:
    """Which of an aggregate's tasks were available; anything short of all of them is *partial*.

    ``missing`` is judged against the reference membership (the paper's task lists when a suite
    uses the paper's category names), not just the suite's: a suite that drops a task, or a whole
    category, cannot produce a complete-looking AVG. ``reasons`` says why each missing task is
    missing. For AVG, ``categories``/``categories_total`` count categories with a score.
    """

    present: tuple[str, ...]
    missing: tuple[str, ...]
    reasons: tuple[tuple[str, str], ...] = ()
    categories: int | None = None
    categories_total: int | None = None

    @property
    def total(self) -> int:
        return len(self.present) + len(self.missing)

    @property
    def categories_partial(self) -> bool:
        return self.categories_total is not None and (self.categories or 0) < self.categories_total

    @property
    def partial(self) -> bool:
        # A category with no task at all (e.g. Understanding offline) has nothing missing by count
        # but is certainly not complete.
        return bool(self.missing) or self.total == 0 or self.categories_partial

    @property
    def empty(self) -> bool:
        return not self.present

    @property
    def label(self) -> str:
        if self.categories_partial:
            return f"{self.categories}/{self.categories_total} categories, {len(self.present)}/{self.total} tasks"
        return f"{len(self.present)}/{self.total} tasks"

    def reason(self, task: str) -> str | None:
        return dict(self.reasons).get(task)

    def missing_text(self) -> str:
        """``race_high (not in suite offline), csl_dev`` — the missing tasks with their reasons."""
        why = dict(self.reasons)
        return ", ".join(f"{t} ({why[t]})" if t in why else t for t in self.missing) or "no task in this category"


def coverage_of(
    members: Sequence[str],
    available: Mapping[str, object] | set[str],
    reference: Sequence[str] | None = None,
    reasons: Mapping[str, str] | None = None,
) -> Coverage:
    """Coverage of one category: ``reference`` members (plus any extra suite members) vs what is available."""
    expected = list(dict.fromkeys([*(reference or ()), *members]))
    present = tuple(t for t in expected if t in available)
    missing = tuple(t for t in expected if t not in available)
    why = tuple((t, reasons[t]) for t in missing if reasons and t in reasons)
    return Coverage(present, missing, why)


def avg_coverage(cats: Mapping[str, Coverage], scored: int) -> Coverage:
    """AVG coverage: all categories' tasks, plus how many of the categories have a score."""
    present = tuple(t for c in cats.values() for t in c.present)
    missing = tuple(t for c in cats.values() for t in c.missing)
    reasons = tuple(r for c in cats.values() for r in c.reasons)
    return Coverage(present, missing, reasons, scored, len(cats))


@dataclass(frozen=True)
class AggregateDelta:
    """Paired Δ of a category (mean of task means) or of AVG (mean of category means).

    Values are None when no task of the aggregate is available; ``ci`` is None when any contributing
    task has no item-level scores (a bootstrap that froze those tasks would understate the width).
    """

    name: str
    ref_mean: float | None
    other_mean: float | None
    delta: float | None
    ci: tuple[float, float] | None
    coverage: Coverage
    #: Two-sided bootstrap p of the Δ (:func:`bootstrap_p`), None without replicates. The report
    #: replaces it by the task's own test where the aggregate *is* one task's Δ (one task present).
    p: float | None = None
    test: str | None = None
    #: Set by the report: the Holm-adjusted p within its family, the star it gives, and the family's size.
    p_adj: float | None = None
    significant: bool | None = None
    holm_m: int | None = None
    #: Minimum detectable |Δ| at 80 % power from the replicates' SE (:func:`mde_from_se`, at α = 1 − confidence).
    mde: float | None = None
    #: ``(n_boot, 2)`` stratified replicates of both means (None without a bootstrap), for callers that
    #: test against something other than 0 (a drift signal against its noise floor).
    replicates: np.ndarray | None = field(default=None, compare=False, repr=False)


def _agg_mde(reps: np.ndarray | None, confidence: float) -> float | None:
    if reps is None or len(reps) < 2:
        return None
    return mde_from_se(float(np.std(reps[:, 1] - reps[:, 0], ddof=1)), 1 - confidence)


def aggregate_deltas(
    categories: Mapping[str, Sequence[str]],
    tasks: Mapping[str, TaskPoint],
    *,
    confidence: float = DEFAULT_CONFIDENCE,
    reference: Mapping[str, Sequence[str]] | None = None,
    reasons: Mapping[str, str] | None = None,
) -> tuple[dict[str, AggregateDelta], AggregateDelta]:
    """Category and AVG Δ with stratified paired bootstrap CIs.

    ``tasks`` holds only the tasks available for *both* runs. Task replicates were drawn
    independently per task, so stacking them replicate-by-replicate is exactly the stratified
    bootstrap; the aggregates are recomputed per replicate for both runs before differencing.
    ``reference`` (category → expected tasks) and ``reasons`` only widen coverage, never the means.
    """
    cat_out: dict[str, AggregateDelta] = {}
    cat_points: list[tuple[float, float]] = []
    cat_reps: list[np.ndarray | None] = []
    covs: dict[str, Coverage] = {}
    for name, members in categories.items():
        coverage = coverage_of(members, set(tasks), (reference or {}).get(name), reasons)
        covs[name] = coverage
        present = tuple(t for t in members if t in tasks)
        if not present:
            cat_out[name] = AggregateDelta(name, None, None, None, None, coverage)
            continue
        ref_mean = float(np.mean([tasks[t].ref_mean for t in present]))
        other_mean = float(np.mean([tasks[t].other_mean for t in present]))
        reps_list = [tasks[t].replicates for t in present]
        reps = None if any(r is None for r in reps_list) else np.mean(np.stack(reps_list), axis=0)
        ci = percentile_ci(reps[:, 1] - reps[:, 0], confidence) if reps is not None else None
        p, test = (bootstrap_p(reps[:, 1] - reps[:, 0]), "bootstrap") if reps is not None else (None, None)
        delta = other_mean - ref_mean
        cat_out[name] = AggregateDelta(
            name, ref_mean, other_mean, delta, ci, coverage, p, test, mde=_agg_mde(reps, confidence), replicates=reps
        )
        cat_points.append((ref_mean, other_mean))
        cat_reps.append(reps)

    avg_cov = avg_coverage(covs, len(cat_points))
    if not cat_points:
        return cat_out, AggregateDelta("AVG", None, None, None, None, avg_cov)
    avg_ref = float(np.mean([p[0] for p in cat_points]))
    avg_other = float(np.mean([p[1] for p in cat_points]))
    avg_ci = avg_p = avg_test = avg_reps = None
    if all(r is not None for r in cat_reps):
        avg_reps = np.mean(np.stack(cat_reps), axis=0)  # type: ignore[arg-type]
        avg_ci = percentile_ci(avg_reps[:, 1] - avg_reps[:, 0], confidence)
        avg_p, avg_test = bootstrap_p(avg_reps[:, 1] - avg_reps[:, 0]), "bootstrap"
    avg = AggregateDelta(
        "AVG", avg_ref, avg_other, avg_other - avg_ref, avg_ci, avg_cov, avg_p, avg_test,
        mde=_agg_mde(avg_reps, confidence), replicates=avg_reps,
    )  # fmt: skip
    return cat_out, avg


#: Bounds within this of 0 count as 0. A stratified bootstrap averages task Δs in floating point, so
#: an interval whose true lower end is 0 (every replicate ≥ 0) can come out as 2.7e-17 and would
#: otherwise be called significant while it prints as [0.00, …]. Real Δs are multiples of 1/n items.
CI_ZERO_TOL = 1e-12


def ci_excludes_zero(ci: tuple[float, float] | None) -> bool:
    """Significance of a Δ at the CI's level: the interval lies strictly on one side of 0."""
    return ci is not None and (ci[0] > CI_ZERO_TOL or ci[1] < -CI_ZERO_TOL)


def wilson_ci(successes: int, n: int, confidence: float = DEFAULT_CONFIDENCE) -> tuple[float, float]:
    """Wilson score interval of a proportion (well-behaved at 0 and 1, unlike the Wald interval)."""
    if n <= 0:
        raise ValueError("a proportion of zero items has no interval")
    z = float(norm.ppf(0.5 + confidence / 2))
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


#: A run that puts at least this share of its predictions on one choice index measures the label prior.
ONE_CHOICE_SHARE = 0.9


@dataclass(frozen=True)
class LabelPrior:
    """Why a run's accuracy on a task cannot show anything: it is the label prior, not knowledge.

    ``one_choice``: ``top_count / n >= ONE_CHOICE_SHARE`` predictions fall on choice ``top_choice``;
    ``at_majority``: the majority-label share (always answering the commonest gold index) lies inside
    the accuracy's Wilson CI ``ci``.
    """

    n: int
    top_choice: int
    top_count: int
    accuracy: float
    majority_share: float
    ci: tuple[float, float]
    one_choice: bool
    at_majority: bool

    def describe(self) -> str:
        """``113/114 predictions are choice A`` or ``accuracy 50.00 = majority-label share 50.00 within CI``."""
        if self.one_choice:
            return f"{self.top_count}/{self.n} predictions are choice {_choice_name(self.top_choice)}"
        return (
            f"accuracy {100 * self.accuracy:.2f} equals the majority-label share {100 * self.majority_share:.2f} "
            f"within its CI [{100 * self.ci[0]:.2f}, {100 * self.ci[1]:.2f}]"
        )


def _choice_name(index: int) -> str:
    return chr(ord("A") + index) if 0 <= index < 26 else str(index)


def label_prior(
    pred: np.ndarray | None, gold: np.ndarray, score: np.ndarray, confidence: float = DEFAULT_CONFIDENCE
) -> LabelPrior | None:
    """The :class:`LabelPrior` flag of one run on one task, or None when its accuracy can show something.

    ``pred`` counts only where it *is* the scored prediction (``score == (pred == gold)`` on every item;
    an ``acc_norm`` task stores the ``acc`` argmax, which is not what its score counts). The accuracy
    here is the item mean of the 0/1 scores.
    """
    gold = np.asarray(gold, dtype=np.int64)
    score = np.asarray(score, dtype=float)
    n = int(score.size)
    if n == 0 or not np.isin(score, (0.0, 1.0)).all():
        return None
    labels, counts = np.unique(gold, return_counts=True)
    majority = float(counts.max() / n)
    acc = float(score.mean())
    ci = wilson_ci(int(score.sum()), n, confidence)
    top, top_count = int(labels[counts.argmax()]), 0
    one_choice = False
    if pred is not None:
        pred = np.asarray(pred, dtype=np.int64)
        if np.array_equal((pred == gold).astype(float), score):
            values, pcounts = np.unique(pred, return_counts=True)
            top, top_count = int(values[pcounts.argmax()]), int(pcounts.max())
            one_choice = top_count >= ONE_CHOICE_SHARE * n
    at_majority = ci[0] <= majority <= ci[1]
    if not (one_choice or at_majority):
        return None
    return LabelPrior(n, top, top_count, acc, majority, ci, one_choice, at_majority)
