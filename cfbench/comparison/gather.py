"""Gather the compared runs' items and task scores for one suite, and say why anything is missing."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd

from cfbench.comparison.runs import RunRef
from cfbench.data import default_sources
from cfbench.errors import CfbenchError
from cfbench.store import ResultStore
from cfbench.store.queries import run_items
from cfbench.tasks.registry import Suite, get_task, get_task_config, load_suite, primary_metric


def _metric_present(task: str, has: Any) -> str | None:
    """The task's primary metric, else ``acc`` (what imported summaries report), if the run has it."""
    for m in dict.fromkeys((primary_metric(task), "acc")):
        if has(m):
            return m
    return None


def gather(
    store: ResultStore,
    refs: Sequence[RunRef],
    tasks: Sequence[str],
    used: dict[str, set[str]] | None = None,
    raw: dict[str, pd.DataFrame] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Item rows (``run, task, doc_id, subset, score, item_hash, task_hash, gold, pred``) and task-level rows
    (``run, task, value, subset``).

    A run scored with ``--limit N`` contributes exactly the documents it selected, even when the
    shared item cache holds more. ``item_hash`` (the item's fingerprint, null for items stored before
    it existed) and ``task_hash`` decide which items may be paired (:func:`cfbench.stats.align_items`).
    ``raw`` (if given) receives each run's full item rows by label (:func:`run_items`), for the drift metrics.
    """
    item_frames, score_frames = [], []
    wanted = set(tasks)
    used = used if used is not None else {}
    home = store
    for ref in refs:
        rid = ref.record.run_id
        store = ref.store or home
        items = run_items(store, ref.record, list(wanted))
        if raw is not None:
            raw[ref.label] = items
        if not items.empty:
            for task, grp in items.groupby("task"):
                metric = _metric_present(str(task), lambda m, g=grp: m in g and not g[m].isna().all())
                if metric is None:
                    continue
                used.setdefault(str(task), set()).add(metric)
                item_frames.append(
                    pd.DataFrame(
                        {
                            "run": ref.label,
                            "task": task,
                            "doc_id": grp["doc_id"].astype(int),
                            "subset": grp["subset"],
                            "score": grp[metric].astype(float),
                            "item_hash": grp["item_hash"].astype(object) if "item_hash" in grp else None,
                            "task_hash": grp["task_hash"].astype(object) if "task_hash" in grp else None,
                            # for the label-prior flag (cfbench.stats.label_prior): gold index and prediction
                            "gold": grp.get("gold", None),
                            "pred": grp.get("pred", None),
                        }
                    )
                )
        scores = store.task_scores(run_ids=[rid])
        if not scores.empty:
            scores = scores[scores["task"].isin(wanted)]
            parts = []
            item_tasks = set(items["task"]) if not items.empty else set()
            for task, grp in scores.groupby("task"):
                metric = _metric_present(str(task), lambda m, g=grp: bool((g["metric"] == m).any()))
                if metric is None:
                    continue
                if task not in item_tasks:  # item-level rows win in the report; count only what is used
                    used.setdefault(str(task), set()).add(metric)
                parts.append(grp[grp["metric"] == metric])
            scores = pd.concat(parts) if parts else scores.iloc[0:0]
            if len(scores):
                cols = {"run": ref.label, "task": scores["task"], "value": scores["value"].astype(float)}
                if "subset" in scores:
                    cols["subset"] = scores["subset"]
                score_frames.append(pd.DataFrame(cols))
    items_df = pd.concat(item_frames, ignore_index=True) if item_frames else None
    scores_df = pd.concat(score_frames, ignore_index=True) if score_frames else None
    return items_df, scores_df  # type: ignore[return-value]


def subgroups(suite: Suite) -> dict[str, dict[str, str]]:
    out = {}
    for t in suite.tasks:
        groups = get_task_config(t).subset_groups
        if groups:
            out[t] = dict(groups)
    return out


def reference_coverage(suite: Suite) -> tuple[dict[str, tuple[str, ...]], dict[str, str]]:
    """The paper's task lists for categories that carry the paper's names, and why tasks are missing.

    A suite reusing the paper's category names (``offline``) promises the paper's categories, so
    its coverage is judged against paper.yaml: a dropped task or an empty category is partial, not
    complete. Reasons: a task outside the suite is "not in suite X" (plus "no data offline" when its
    data cannot be found here); a suite task a run lacks is "no scores".
    """
    if suite.reference == suite.name:
        paper = suite
    else:
        try:
            paper = load_suite(suite.reference)
        except CfbenchError:
            return {}, {}
    reference = {name: tuple(paper.categories[name]) for name in suite.categories if name in paper.categories}
    reasons: dict[str, str] = {}
    in_suite = set(suite.tasks)
    for task in (t for members in reference.values() for t in members):
        if task in in_suite:
            reasons[task] = "no scores"
            continue
        why = f"not in suite {suite.name}"
        try:
            if get_task(task).located() is None:
                why += ": no data offline"
        except CfbenchError:
            why += ": no task config"
        reasons[task] = why
    return reference, reasons


def refuse_other_rules(store: ResultStore, refs: Sequence[RunRef], items: Any, scores: Any, suite: Suite) -> None:
    """A run with no score on the suite but scores on its twin suite's tasks was scored by the other
    rules (``paper``: OpenCompass ``oc_*`` tasks; ``lmeval``/``offline``: lm-eval ones): say so, and
    which suite to use, instead of "no scores". The two are never mixed in one report."""
    have = set()
    for frame in (items, scores):
        if frame is not None:
            have |= set(frame["run"])
    wanted = set(suite.tasks)
    for ref in refs:
        if ref.label in have:
            continue
        stored = (ref.store or store).task_scores(run_ids=[ref.record.run_id])
        tasks = set((ref.record.task_hashes or {}).keys()) | (set(stored["task"]) if not stored.empty else set())
        twins = {t.removeprefix("oc_") for t in wanted} | {f"oc_{t}" for t in wanted}
        if tasks & (twins - wanted):
            other = "lmeval" if suite.name == "paper" else "paper"
            rule = "lm-eval" if other == "lmeval" else "OpenCompass"
            raise CfbenchError(
                f"run '{ref.label}' has no scores on suite {suite.name}: it was scored with {rule} rules "
                f"(e.g. {sorted(tasks & twins)[0]}), which never mix with this suite's; compare with --suite {other}"
            )


def cluster_maps(tasks: Sequence[str], data_dir: Any = None) -> tuple[dict[str, dict[int, str]], list[str]]:
    """doc_id → cluster id of every task that declares ``cluster_by``, read from its data, plus notes.

    Called before anything is scored, so a ``cluster_by`` naming no document field fails first (one
    line, :meth:`cfbench.tasks.task.Task.cluster_ids`). A task whose data is not found here is
    resampled item by item, and a note says so.
    """
    sources = default_sources(data_dir) if data_dir else None
    out: dict[str, dict[int, str]] = {}
    notes: list[str] = []
    for task in tasks:
        if get_task_config(task).cluster_by is None:
            continue
        t = get_task(task, sources)
        if t.located() is None:
            notes.append(f"{task}: cluster_by is set but its data is not found here; items resampled as independent")
            continue
        ids = t.cluster_ids()
        if ids is not None:
            out[task] = ids
    return out, notes


def add_clusters(items: pd.DataFrame | None, maps: dict[str, dict[int, str]]) -> pd.DataFrame | None:
    """A ``cluster`` column for the items of clustered tasks (others stay null: i.i.d.); an item whose
    document is not in the map is its own cluster."""
    if items is None or not maps:
        return items
    cluster = pd.Series([None] * len(items), index=items.index, dtype=object)
    for task, ids in maps.items():
        mask = items["task"] == task
        docs = items.loc[mask, "doc_id"].astype(int)
        cluster[mask] = [ids.get(d, f"doc:{d}") for d in docs]
    return items.assign(cluster=cluster)

