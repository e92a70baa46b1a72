"""Contrasts of tuned runs (``compare --contrast B-A``, ``--pair``) and seed groups (``--group``, ``pair --seeds``).

This module chooses *which* runs are contrasted and gathers each signal's per-item values from the
places the per-run signals come from: accuracy from the gathered items (the report's), KL/JS/gold
margin from the drift metrics' paired items (:class:`cfbench.metrics.drift.TaskValues`), flips from
the items paired with the base (:func:`cfbench.stats.align_items`), perplexity drift from the paired
documents (:func:`cfbench.metrics.ppl_drift.pair_docs`) and in-domain loss/EM from the paired held-out
documents (:func:`cfbench.metrics.indomain.indomain_docs`). The statistics are in
:mod:`cfbench.report.contrast`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cfbench.comparison.runs import RunRef
from cfbench.errors import CfbenchError
from cfbench.metrics import registered_metrics
from cfbench.metrics.drift import PairDrift
from cfbench.metrics.indomain import TABLE as INDOMAIN_TABLE
from cfbench.metrics.indomain import indomain_docs
from cfbench.metrics.ppl_drift import DriftRow, pair_docs
from cfbench.models.checkpoint import MANIFEST
from cfbench.report.contrast import OVERALL, ItemValues, SignalSpec, build_contrast
from cfbench.report.seeds import seed_group
from cfbench.report.table import ComparisonReport
from cfbench.stats import align_items
from cfbench.store import ResultStore

ACCURACY = SignalSpec("accuracy", "accuracy", "points", "higher", aggregate=True, scale=100.0, vs_base=False)
FORGOTTEN = SignalSpec("forgotten", "forgotten (vs base)", "items", "lower", count=True)
GAINED = SignalSpec("gained", "gained (vs base)", "items", "higher", count=True, verbs=("gained more", "gained fewer"))
INDOMAIN_LOSS = SignalSpec("indomain_loss", "in-domain loss", "Δ nats/token", "lower", kind="learned", vs_base=False)
INDOMAIN_EM = SignalSpec("indomain_em", "in-domain EM", "Δ pts", "higher", kind="learned", vs_base=False)
#: Hyper-parameters that differ between seeds of one method without making it another method.
_NOT_METHOD = ("seed", "device", "micro_batch")


def _item_keys(frame: pd.DataFrame) -> list[str]:
    """An item's identity as :func:`cfbench.stats.align_items` pairs it: doc id plus fingerprint (or config hash).

    Two runs' items share a key only when they are provably the same item, so intersecting keys over
    any number of runs pairs them all at once.
    """
    ids = frame["doc_id"].astype(int).to_numpy()
    fp = frame["item_hash"].to_numpy(object) if "item_hash" in frame else np.full(len(frame), None, object)
    th = frame["task_hash"].to_numpy(object) if "task_hash" in frame else np.full(len(frame), None, object)
    return [
        f"{d}|{h}" if pd.notna(h) else f"{d}|task:{t}" if pd.notna(t) else f"{d}|"
        for d, h, t in zip(ids, fp, th, strict=True)
    ]


def _accuracy_values(out: ItemValues, items: pd.DataFrame, runs: Sequence[str], subset_mean: Sequence[str]) -> None:
    """Each run's 0/1 (or [0, 1]) item scores per task, as the report scores them.

    A subset-mean task (OpenCompass's mmlu: the mean of subject means) weights each item by
    ``n / (S · n_subject)`` so the item mean is the run's subject mean.
    """
    for (run, task), frame in items[items["run"].isin(runs)].groupby(["run", "task"], sort=False):
        score = frame["score"].astype(float).to_numpy()
        if task in subset_mean and "subset" in frame:
            sub = frame["subset"].astype(str).to_numpy()
            names, counts = np.unique(sub, return_counts=True)
            size = dict(zip(names, counts, strict=True))
            score = score * np.array([len(sub) / (len(names) * size[s]) for s in sub])
        keys = _item_keys(frame)
        out.add(ACCURACY, str(task), str(run), pd.Series(score, index=keys))
        if "cluster" in frame and frame["cluster"].notna().all():
            out.clusters[str(task)] = pd.Series(frame["cluster"].to_numpy(object), index=keys)


def _flip_values(
    out: ItemValues, items: pd.DataFrame, base: str, runs: Sequence[str], avg_tasks: Sequence[str]
) -> None:
    """Per item of the AVG tasks: forgotten (base right, run wrong) and gained indicators, paired with the base."""
    by = {(str(r), str(t)): f for (r, t), f in items.groupby(["run", "task"], sort=False)}
    for run in runs:
        forgot, gained = [], []
        for task in avg_tasks:
            if (base, task) not in by or (run, task) not in by:
                continue
            paired = align_items(by[base, task], by[run, task], task=task, names=(base, run))
            if paired.n == 0 or not paired.binary:
                continue
            keys = [f"{task}:{d}" for d in paired.doc_ids]
            forgot.append(pd.Series(((paired.ref == 1) & (paired.other == 0)).astype(float), index=keys))
            gained.append(pd.Series(((paired.ref == 0) & (paired.other == 1)).astype(float), index=keys))
        if forgot:
            out.add(FORGOTTEN, OVERALL, run, pd.concat(forgot))
            out.add(GAINED, OVERALL, run, pd.concat(gained))


def _drift_values(out: ItemValues, pairs: Mapping[str, PairDrift]) -> None:
    """KL, JS, gold margin (every registered metric): the per-item values each run's drift signal averaged."""
    metrics = {m.name: m for m in registered_metrics()}
    for run, pdrift in pairs.items():
        for name, per_task in pdrift.tasks.items():
            m = metrics.get(name)
            if m is None:
                continue
            spec = SignalSpec(name, m.label, m.unit, m.better, aggregate=True)  # type: ignore[arg-type]
            for task, v in per_task.items():
                if v.values is not None and v.doc_ids is not None:
                    out.add(spec, task, run, pd.Series(v.values, index=[int(d) for d in v.doc_ids]))


def _ppl_values(out: ItemValues, rows: Sequence[DriftRow]) -> None:
    """Held-out NLL drift per document, scaled so the item mean is the signal (Σ Δnll / Σ tokens).

    Both arms scored the same documents with the same tokenizer, so the token total is common to them;
    the contrast's CI resamples the documents' Δnll and holds that total fixed.
    """
    for row in rows:
        paired = pair_docs(row.base, row.tuned)
        delta = (paired.tuned_nll - paired.base_nll) * paired.n_tokens.size / paired.n_tokens.sum()
        spec = SignalSpec("ppl_drift", row.signal.label, row.signal.unit, "lower")
        out.add(spec, OVERALL, row.label, pd.Series(delta, index=list(paired.doc_hashes or ())))


def _indomain_values(out: ItemValues, store: ResultStore, refs: Sequence[RunRef]) -> None:
    """In-domain loss (tuned − base, nats/token) and EM (points) per held-out document, paired as attach_indomain."""
    rows = store.read_table(INDOMAIN_TABLE)
    base_hash = refs[0].record.checkpoint_hash
    if rows.empty or not base_hash:
        return
    base_splits = set(rows.loc[rows["checkpoint_hash"] == base_hash, "split_hash"])
    for ref in refs[1:]:
        h = ref.record.checkpoint_hash
        splits = sorted(base_splits & set(rows.loc[rows["checkpoint_hash"] == h, "split_hash"])) if h else []
        for split in splits:
            try:
                merged, _ = indomain_docs(store, base_hash, h, split)  # type: ignore[arg-type]
            except CfbenchError:
                continue  # attach_indomain already noted why
            unit = OVERALL if len(splits) == 1 else f"{merged['data_b'].iloc[0]}@{split[:8]}"
            keys = [f"{d}:{e}" for d, e in zip(merged["doc_id"], merged["example_hash"], strict=True)]
            out.add(
                INDOMAIN_LOSS,
                unit,
                ref.label,
                pd.Series((merged["loss_t"] - merged["loss_b"]).to_numpy(float), index=keys),
            )
            em = merged["em_b"].notna() & merged["em_t"].notna()
            if em.any():
                vals = 100.0 * (merged.loc[em, "em_t"].astype(float) - merged.loc[em, "em_b"].astype(float))
                out.add(
                    INDOMAIN_EM,
                    unit,
                    ref.label,
                    pd.Series(vals.to_numpy(), index=[k for k, e in zip(keys, em, strict=True) if e]),
                )


def collect_values(
    store: ResultStore,
    refs: Sequence[RunRef],
    items: pd.DataFrame | None,
    drift: Mapping[str, PairDrift],
    ppl_rows: Sequence[DriftRow],
    categories: Mapping[str, Sequence[str]],
    subset_mean: Sequence[str] = (),
) -> ItemValues:
    """Per-item values of every signal for every tuned run (the base is each run's reference, not an arm)."""
    out = ItemValues()
    tuned = [r.label for r in refs[1:]]
    if items is not None and not items.empty:
        _accuracy_values(out, items, tuned, subset_mean)
        avg_tasks = [t for members in categories.values() for t in members]
        _flip_values(out, items, refs[0].label, tuned, avg_tasks)
    _drift_values(out, drift)
    _ppl_values(out, ppl_rows)
    _indomain_values(out, store, refs)
    return out


def parse_contrast(spec: str, names: Sequence[str]) -> tuple[str, str]:
    """``B-A`` (or ``B−A``) → ``(A, B)``; labels may contain hyphens, so the split must leave two known names."""
    text = spec.replace("−", "-")
    found = []
    for i, ch in enumerate(text):
        if ch == "-":
            b, a = text[:i].strip(), text[i + 1 :].strip()
            if a in names and b in names:
                found.append((a, b))
    if len(found) != 1:
        why = "is ambiguous" if found else "does not name two runs or groups"
        raise CfbenchError(
            f"--contrast {spec!r} {why}: write B-A with B and A among {sorted(names)} (B − A is reported)"
        )
    if found[0][0] == found[0][1]:
        raise CfbenchError(f"--contrast {spec!r} contrasts a run with itself; name two different runs or groups")
    return found[0]


def parse_groups(specs: Sequence[str]) -> dict[str, list[str]]:
    """``NAME=run1,run2,…`` (repeatable) → name → run labels; each name once."""
    out: dict[str, list[str]] = {}
    for spec in specs:
        name, sep, runs = spec.partition("=")
        members = [r.strip() for r in runs.split(",") if r.strip()]
        if not sep or not name.strip() or not members:
            raise CfbenchError(f"--group {spec!r} is not NAME=run1,run2,…; e.g. --group 'w/ SAM=sam-s0,sam-s1,sam-s2'")
        if name.strip() in out:
            raise CfbenchError(f"--group {name.strip()!r} is given twice; give each group once")
        out[name.strip()] = members
    return out


def _manifest(ref: RunRef) -> dict[str, Any]:
    """The fine-tune manifest next to a run's checkpoint (``cfbench_manifest.json``), or {} if none is readable."""
    path = ref.record.checkpoint_path
    file = Path(path) / MANIFEST if path else None
    try:
        data = json.loads(file.read_text(encoding="utf-8")) if file is not None and file.is_file() else {}
    except (OSError, ValueError):
        data = {}
    return data if isinstance(data, dict) else {}


def method_key(ref: RunRef) -> tuple[str, str] | None:
    """(display name, identity) of the method a run is a seed of: method, base, data and every
    hyper-parameter but the seed. None when the run does not record a seed (not a cfbench fine-tune)."""
    man = _manifest(ref)
    hp = man.get("hyperparameters") or ref.record.hparams or {}
    method = man.get("method") or ref.record.method
    if not method or "seed" not in hp:
        return None
    same = {k: v for k, v in hp.items() if k not in _NOT_METHOD}
    data = (man.get("data") or {}).get("sha256")
    base = ref.record.base or json.dumps(man.get("base"), sort_keys=True, default=str)
    ident = json.dumps([method, base, data, same], sort_keys=True, default=str)
    return str(man.get("label") or method), ident


def auto_groups(refs: Sequence[RunRef]) -> dict[str, list[str]]:
    """Tuned runs that are seeds of one method (``pair --seeds``), two or more per method, named by the
    manifest's label (``w/o SAM``); a name already taken by a run gets `` (seeds)``."""
    by: dict[str, tuple[str, list[str]]] = {}
    for ref in refs:
        key = method_key(ref)
        if key is not None:
            by.setdefault(key[1], (key[0], []))[1].append(ref.label)
    labels = {r.label for r in refs}
    out: dict[str, list[str]] = {}
    for name, members in by.values():
        if len(members) < 2:
            continue
        while name in labels or name in out:
            name += " (seeds)"
        out[name] = members
    return out


def check_groups(groups: Mapping[str, Sequence[str]], tuned: Sequence[str]) -> None:
    """Every group names tuned runs only, each run in one group, and no name shadows a run label."""
    seen: dict[str, str] = {}
    for name, runs in groups.items():
        if name in tuned:
            raise CfbenchError(f"--group {name!r}: a run is already called {name!r}; give the group another name")
        for run in runs:
            if run not in tuned:
                raise CfbenchError(f"--group {name}: {run!r} is not a tuned run of this comparison {list(tuned)}")
            if run in seen:
                raise CfbenchError(f"run {run!r} is in groups {seen[run]!r} and {name!r}; put each run in one group")
            seen[run] = name


def arms(name: str, groups: Mapping[str, Sequence[str]]) -> list[str]:
    """The runs behind a contrast's side: a group's seeds, or the one run of that name."""
    return list(groups[name]) if name in groups else [name]


def last_two(tuned: Sequence[str], groups: Mapping[str, Sequence[str]]) -> tuple[str, str]:
    """``--pair``: the last two tuned runs (A, B), or their groups when both are seeds of two different methods."""
    if len(tuned) < 2:
        raise CfbenchError(f"--pair needs at least two tuned runs, got {len(tuned)}")
    a, b = tuned[-2], tuned[-1]
    owner = {r: name for name, runs in groups.items() for r in runs}
    if a in owner and b in owner and owner[a] != owner[b]:
        return owner[a], owner[b]
    return a, b


def check_contrast_names(contrasts: Sequence[tuple[str, str]], names: Sequence[str]) -> None:
    """Both sides of every contrast are runs or groups of this comparison, and differ (before any scoring)."""
    for a, b in contrasts:
        for side in (a, b):
            if side not in names:
                raise CfbenchError(
                    f"contrast {b} − {a}: {side!r} is not a tuned run or group here; use one of {sorted(names)}"
                )
        if a == b:
            raise CfbenchError(f"contrast {b} − {a} contrasts {a!r} with itself; name two different runs or groups")


def apply_contrasts(
    report: ComparisonReport,
    values: ItemValues,
    contrasts: Sequence[tuple[str, str] | str],
    groups: Mapping[str, Sequence[str]],
    *,
    pair: bool = False,
    recognised: Mapping[str, Sequence[str]] | None = None,
) -> list[str]:
    """Seed groups (given and recognised) and every contrast into ``report``; returns notes.

    ``recognised`` groups come from the runs' manifests (:func:`auto_groups`); a run already in a
    ``--group`` keeps that group. ``pair``: add the contrast of the last two tuned runs (:func:`last_two`).
    """
    given = {k: list(v) for k, v in groups.items()}
    taken = {r for runs in given.values() for r in runs}
    found = {k: list(v) for k, v in (recognised or {}).items() if not taken & set(v) and k not in given}
    every = {**given, **found}
    for name, runs in every.items():
        source = "--group" if name in given else "cfbench_manifest.json: same method and request apart from the seed"
        report.groups.append(seed_group(report, name, runs, source))
    names = [*report.tuned, *every]
    todo = [parse_contrast(c, names) if isinstance(c, str) else c for c in contrasts]
    todo += [last_two(report.tuned, every)] if pair else []
    check_contrast_names(todo, names)
    s = report.settings
    for a, b in dict.fromkeys(todo):
        report.contrasts.append(
            build_contrast(
                values, a, arms(a, every), b, arms(b, every), report.categories,
                n_boot=s.n_boot, seed=s.seed, confidence=s.confidence, alpha=s.alpha,
            )
        )  # fmt: skip
    notes = [g.note for g in report.groups if g.note]
    notes += [f"contrast {c.label}: {n}" for c in report.contrasts for n in c.notes]
    return notes
