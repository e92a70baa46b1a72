"""The paper's compute-matched pair (AdamW at 2× epochs vs SAM) and its seeds as replicates.

Built on :func:`cfbench.train.finetune.finetune`: each arm is one fine-tune run; ``pair.json`` /
``seeds.json`` describe the pair and the seeds, and are written last so an interrupted pair resumes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cfbench.errors import CfbenchError
from cfbench.train._io import environment, write_json
from cfbench.train.finetune import SAM_ONLY_HYPERPARAMETERS, FinetuneResult, finetune

PAIR_FILE = "pair.json"


@dataclass
class PairResult:
    """The compute-matched pair: ``runs`` is ``[(label, path), ...]`` in the order w/o SAM, w/ SAM."""

    path: Path
    wo_sam: FinetuneResult
    w_sam: FinetuneResult

    @property
    def runs(self) -> list[tuple[str, Path]]:
        return [(self.wo_sam.label, self.wo_sam.path), (self.w_sam.label, self.w_sam.path)]


def cost_ratio(adamw: dict[str, Any], sam: dict[str, Any]) -> dict[str, float | None]:
    """SAM run / AdamW run: forward+backward passes (counted) and time (measured, machine-dependent).

    Time is that of the training loops (``train_time_s``); manifests written before it existed fall
    back to the whole run's wall time, which also counts loading and saving.
    """
    passes = adamw.get("forward_backward_passes") or 0
    key = "train_time_s" if "train_time_s" in adamw and "train_time_s" in sam else "wall_time_s"
    wall = adamw.get(key) or 0.0
    return {
        "forward_backward_passes": sam["forward_backward_passes"] / passes if passes else None,
        "wall_time": round(sam[key] / wall, 4) if wall else None,
        "time_measured": key,
    }


def pair(
    base: str | Path,
    data: str | Path,
    out: str | Path,
    *,
    sam_optimizer: str = "sam",
    epochs: int = 1,
    max_steps: int | None = None,
    overwrite: bool = False,
    sam_every: int = 1,
    sam_only_norm: bool = False,
    sam_backup_dtype: str = "fp32",
    sam_look_alpha: float | None = None,
    **kwargs: Any,
) -> PairResult:
    """The paper's compute-matched pair: ``out/wo_sam`` (AdamW, 2×epochs) and ``out/w_sam`` (SAM, epochs).

    Both use the same lr, batch, seed and data; a SAM step costs two forward+backward passes, so
    both runs do the same number of passes. ``max_steps`` caps the SAM run (AdamW gets twice as
    many). Completed identical runs are reused, so an interrupted pair resumes. ``pair.json`` is
    written last and describes both runs; :attr:`PairResult.runs` gives ``(label, path)`` pairs.

    The cheaper-SAM options apply to the SAM run only. AdamW still gets 2× the epochs, as in the
    paper, even when ``sam_every`` > 1 makes the SAM run cost fewer passes (steps·(1 + 1/k)): the
    pair then compares the variant against the paper's AdamW baseline, *not* at equal compute.
    ``pair.json`` records the measured cost ratio (passes and wall time, SAM run / AdamW run).
    """
    if sam_optimizer not in ("sam", "asam"):
        raise CfbenchError(f"--sam-optimizer must be sam or asam, got {sam_optimizer!r}")
    if "optimizer" in kwargs:
        raise CfbenchError("pair chooses the optimizers itself (AdamW vs SAM): drop --optimizer")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise CfbenchError(f"output {out} exists and is not a folder: choose another --out")
    wo = finetune(
        base,
        data,
        out / "wo_sam",
        optimizer="adamw",
        epochs=2 * epochs,
        max_steps=None if max_steps is None else 2 * max_steps,
        overwrite=overwrite,
        **kwargs,
    )
    w = finetune(
        base,
        data,
        out / "w_sam",
        optimizer=sam_optimizer,
        epochs=epochs,
        max_steps=max_steps,
        overwrite=overwrite,
        sam_every=sam_every,
        sam_only_norm=sam_only_norm,
        sam_backup_dtype=sam_backup_dtype,
        sam_look_alpha=sam_look_alpha,
        **kwargs,
    )
    write_json(out / PAIR_FILE, pair_description(wo, w, sam_every))
    return PairResult(out, wo, w)


def _pair_run_entry(r: FinetuneResult) -> dict[str, Any]:
    """One run of a pair as ``pair.json`` lists it (enough to compare the two without their manifests)."""
    return {
        "label": r.label,
        "path": r.path.name,
        "method": r.manifest["method"],
        "epochs": r.manifest["hyperparameters"]["epochs"],
        "steps": r.steps,
        "forward_backward_passes": r.manifest["forward_backward_passes"],
        "sam_steps": r.manifest.get("sam_steps"),
        "final_loss": r.final_loss,
        "wall_time_s": r.manifest["wall_time_s"],
        "request_fingerprint": r.manifest["request_fingerprint"],
    }


def pair_description(wo: FinetuneResult, w: FinetuneResult, sam_every: int) -> dict[str, Any]:
    """``pair.json``: what was compared, at what measured cost ratio, and the hyper-parameters both share."""
    return {
        "cfbench_pair": 1,
        "paper": "Li et al. 2024, Revisiting Catastrophic Forgetting in LLM Tuning (arXiv 2406.04836)",
        "compute_matched": "AdamW runs twice the epochs of SAM; a SAM step is two forward+backward passes"
        + (
            ""
            if sam_every == 1
            else f" (with sam_every={sam_every} only every {sam_every}th step is: the SAM run costs less)"
        ),
        "cost_ratio": cost_ratio(wo.manifest, w.manifest),
        "base": wo.manifest["base"],
        "data": wo.manifest["data"],
        "runs": [_pair_run_entry(r) for r in (wo, w)],
        "shared_hyperparameters": {
            k: v for k, v in w.manifest["hyperparameters"].items() if k not in SAM_ONLY_HYPERPARAMETERS
        },
        "environment": environment(),
    }


SEEDS_FILE = "seeds.json"


def parse_seeds(text: str | Sequence[int]) -> list[int]:
    """``"0,1,2"`` (or a list) → distinct non-negative seeds in the given order."""
    if isinstance(text, str):
        parts = [p.strip() for p in text.split(",")]
        if any(not p.isdigit() for p in parts):
            raise CfbenchError(f"--seeds {text!r}: give non-negative integers separated by commas, e.g. 0,1,2")
        seeds = [int(p) for p in parts]
    else:
        seeds = [int(s) for s in text]
        if any(s < 0 for s in seeds):
            raise CfbenchError(f"--seeds {list(text)!r}: seeds must be non-negative integers")
    if not seeds:
        raise CfbenchError("--seeds needs at least one seed, e.g. 0,1,2")
    if len(set(seeds)) != len(seeds):
        raise CfbenchError(f"--seeds {text!r} repeats a seed: a repeated seed is the same run, not more evidence")
    return seeds


def mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (n−1); std is None for fewer than two values, both for none."""
    xs = [float(v) for v in values if v is not None]
    if not xs:
        return None, None
    mean = sum(xs) / len(xs)
    if len(xs) < 2:
        return mean, None
    return mean, math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1))


@dataclass
class SeedsResult:
    """One compute-matched pair per seed (``out/seed-<n>``) and the spread across seeds."""

    path: Path
    seeds: list[int]
    pairs: list[PairResult]
    summary: dict[str, Any]


def seed_summary(seeds: Sequence[int], pairs: Sequence[PairResult]) -> dict[str, Any]:
    """Per-seed numbers ``pair`` reports and their mean ± sample std, per run (w/o SAM, w/ SAM)."""
    runs: dict[str, Any] = {}
    for which in ("wo_sam", "w_sam"):
        rs = [getattr(p, which) for p in pairs]
        per_seed = [
            {
                "seed": s,
                "path": str(r.path),
                "steps": r.steps,
                "forward_backward_passes": r.manifest["forward_backward_passes"],
                "final_loss": r.final_loss,
                "wall_time_s": r.manifest["wall_time_s"],
            }
            for s, r in zip(seeds, rs, strict=True)
        ]
        stats = {}
        for key in ("final_loss", "wall_time_s"):
            m, sd = mean_std([row[key] for row in per_seed])
            stats[key] = {"mean": m, "std": sd, "n": sum(1 for row in per_seed if row[key] is not None)}
        runs[which] = {"label": rs[0].label, "per_seed": per_seed, **stats}
    return {"cfbench_seeds": 1, "seeds": list(seeds), "std": "sample standard deviation (n-1)", "runs": runs}


def pair_seeds(
    base: str | Path, data: str | Path, out: str | Path, seeds: str | Sequence[int], **kwargs: Any
) -> SeedsResult:
    """:func:`pair` once per seed into ``out/seed-<n>``, then ``out/seeds.json`` with the seed spread.

    The seed changes data order, rehearsal sampling and (where used) initialisation of adapters;
    everything else is shared. Finished seeds are reused like any finished run, so an interrupted
    sweep resumes; ``seeds.json`` is written last.
    """
    if "seed" in kwargs:
        raise CfbenchError("pass the seeds as --seeds 0,1,2 (not --seed as well)")
    values = parse_seeds(seeds)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise CfbenchError(f"output {out} exists and is not a folder: choose another --out")
    pairs = [pair(base, data, out / f"seed-{s}", seed=s, **kwargs) for s in values]
    summary = seed_summary(values, pairs)
    summary["environment"] = environment()
    write_json(out / SEEDS_FILE, summary)
    return SeedsResult(out, values, pairs, summary)
