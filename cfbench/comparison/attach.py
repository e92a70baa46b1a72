"""Attach the signals beyond accuracy to a report: drift metrics (with a noise floor), in-domain gain and
held-out perplexity drift.

Every signal is computed in :mod:`cfbench.metrics` from stored items; this module only chooses
which runs and which floor take part, and records why a signal is not shown.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd

from cfbench.backends.reuse import reuse_loads
from cfbench.comparison.gather import gather
from cfbench.comparison.runs import RunRef, check_floor, floor_change
from cfbench.data.text import load_text_source
from cfbench.errors import CfbenchError
from cfbench.metrics.drift import DriftSettings, PairDrift, drift_signals, load_choice_frames
from cfbench.metrics.floor import floor_flips
from cfbench.metrics.indomain import TABLE as INDOMAIN_TABLE
from cfbench.metrics.indomain import indomain_gain
from cfbench.metrics.ppl_drift import DriftRow, ppl_drift_for_runs
from cfbench.report.table import ComparisonReport
from cfbench.signals import NoiseFloor
from cfbench.store import ResultStore, RunRecord
from cfbench.tasks.registry import Suite


def attach_drift(
    report: ComparisonReport,
    store: ResultStore,
    refs: Sequence[RunRef],
    suite: Suite,
    raw: dict[str, pd.DataFrame],
    floor: RunRecord | None,
    *,
    n_boot: int,
    seed: int,
    confidence: float,
    data_dir: Any,
    reference: dict[str, tuple[str, ...]],
    reasons: dict[str, str],
    pairs_out: dict[str, PairDrift] | None = None,
) -> list[str]:
    """Compute every registered item metric from the stored items and attach them as signals; with a
    floor, also its own values and flips (``report.noise_floor``). ``pairs_out`` (if given) receives
    each tuned run's paired items and values (for contrasts).
    """
    records = {r.label: r.record for r in refs}
    floor_label = None
    if floor is not None:
        check_floor(floor, refs[0].record)
        floor_label = f"noise floor {floor.name}"
        while floor_label in records:
            floor_label += "'"
        records[floor_label] = floor
    frames, notes = load_choice_frames(store, records, suite.tasks, items=raw, data_dir=data_dir)
    same: list[str] = []
    if floor is not None:
        same = _same_items(refs[0].record, floor, frames[floor_label])
        for t in same:  # the very items the base scored: a floor of exactly 0 would judge nothing
            del frames[floor_label][t]
        if same:
            notes.append(
                f"noise floor: {floor.name} holds the base's own scored items for {', '.join(same)} (scored the same "
                "way); no floor there"
            )
    result = drift_signals(
        frames, refs[0].label, [r.label for r in refs[1:]], suite.categories, suite.extras, floor=floor_label,
        settings=DriftSettings(n_boot, seed, confidence), reference=reference, reasons=reasons,
    )  # fmt: skip
    for run, sigs in result.signals.items():
        if sigs:
            report.add_signals(run, sigs)
    if pairs_out is not None:
        pairs_out.update(result.pairs)
    if floor is not None:
        report.noise_floor = noise_floor(store, refs[0], floor, suite, result.floor_values, skip=same)
    return list(dict.fromkeys(notes + result.notes))


def _same_items(base: RunRecord, floor: RunRecord, floor_frames: dict[str, pd.DataFrame]) -> list[str]:
    """Tasks whose floor items are the base's own cached items (same cache key): no floor there."""
    base_keys = (base.extra or {}).get("cache_keys") or {}
    floor_keys = (floor.extra or {}).get("cache_keys") or {}
    return sorted(t for t in floor_frames if t in base_keys and base_keys[t] == floor_keys.get(t))


def noise_floor(
    store: ResultStore, base: RunRef, floor: RunRecord, suite: Suite, values: dict[str, float], skip: Sequence[str]
) -> NoiseFloor:
    """The floor as the report shows it: what it changed, its overall divergences and the items numerics
    alone flipped (scored like the tuned runs' Forgotten/Gained: the task's primary metric, paired items)."""
    floor_ref = RunRef("noise floor", floor)
    tasks = [t for t in suite.tasks if t not in skip]
    items, _ = gather(store, [RunRef("base", base.record, store=base.store), floor_ref], tasks)
    total, per_task = None, {}
    if items is not None and not items.empty:
        total, per_task = floor_flips(
            items[items["run"] == "base"], items[items["run"] == "noise floor"], suite.categories, suite.extras
        )
    return NoiseFloor(floor.name, floor_change(base.record, floor), dict(values), total, per_task)


def attach_indomain(
    report: ComparisonReport, store: ResultStore, refs: Sequence[RunRef], *, n_boot: int, seed: int, confidence: float
) -> list[str]:
    """Attach the in-domain gain (:mod:`cfbench.metrics.indomain`) of every tuned run whose checkpoint and
    the base's were both scored on a held-out split after a fine-tune; returns notes for pairs that
    were skipped and why. Runs without such rows simply get no in-domain signals."""
    rows = store.read_table(INDOMAIN_TABLE)
    base_hash = refs[0].record.checkpoint_hash
    if rows.empty or not base_hash:
        return []
    base_splits = set(rows.loc[rows["checkpoint_hash"] == base_hash, "split_hash"])
    notes: list[str] = []
    for ref in refs[1:]:
        h = ref.record.checkpoint_hash
        splits = sorted(base_splits & set(rows.loc[rows["checkpoint_hash"] == h, "split_hash"])) if h else []
        for split in splits:
            try:
                sigs = indomain_gain(store, base_hash, h, split, n_boot=n_boot, seed=seed, confidence=confidence)
            except CfbenchError as exc:
                notes.append(f"in-domain gain of {ref.label}: not shown ({exc})")
                continue
            if len(splits) > 1:  # one scope per split, named by its data and hash
                data = str(rows.loc[rows["split_hash"] == split, "data"].iloc[0])
                sigs = [replace(s, scope=f"{data}@{split[:8]}") for s in sigs]
            report.add_signals(ref.label, sigs)
    return notes


@dataclass(frozen=True)
class PplDrift:
    """Held-out perplexity drift on a text (``compare --ppl``), every checkpoint scored the same way."""

    data: str
    limit: int | None = None
    backend: str = "hf"
    backend_options: dict[str, Any] | None = None

    def check(self) -> None:
        """Refuse a bad text or limit before anything is scored (one line each)."""
        load_text_source(self.data)
        if self.limit is not None and self.limit <= 0:
            raise CfbenchError(f"--ppl-limit must be a positive number of documents, got {self.limit}")


def attach_ppl_drift(
    report: ComparisonReport, refs: Sequence[RunRef], spec: PplDrift, *, results: str | Path, n_boot: int, seed: int
) -> list[DriftRow]:
    """One forgot-signal per tuned run: its held-out NLL against the base's (:mod:`cfbench.probes.ppl`).

    Returns the rows (both sides' per-document scores), which a contrast of two tuned runs pairs.
    """
    with reuse_loads():  # one load of a base for its adapters
        rows = ppl_drift_for_runs(
            [(r.label, r.record) for r in refs], data=spec.data, limit=spec.limit, backend=spec.backend,
            backend_options=spec.backend_options, results=results, n_boot=n_boot, seed=seed, progress="auto",
        )  # fmt: skip
    for row in rows:
        report.add_signals(row.label, [row.signal])
    return rows
