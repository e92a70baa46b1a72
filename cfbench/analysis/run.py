"""Run the diagnostics on checkpoints and store them: what ``cfbench landscape`` and ``cfbench diff`` do.

:func:`landscape` measures each checkpoint's loss surface (SC / AG / MAG), optionally its sharpness
(Hessian trace, top eigenvalue) and the loss along the fine-tuning direction from a base;
:func:`diff_checkpoints` measures what moved between a base and tuned checkpoints, without any
evaluation. Both write every number to the results store (:mod:`cfbench.store.diagnostics`), where
``cfbench compare --diagnostics`` finds them, and return result objects the CLI only prints.
Checkpoints are handled one at a time (a model is freed before the next loads), and ``on_row`` /
``on_run`` hear about each as soon as it is done, so a long run shows its numbers as it goes.
"""

from __future__ import annotations

import gc
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cfbench.analysis.diff import check_same_architecture, load_state, total_displacement, weight_diff
from cfbench.analysis.directions import DIRECTION_KINDS
from cfbench.analysis.heldout import HeldOut, load_heldout
from cfbench.analysis.landscape import Surface, grid_axis, interpolation_curve, loss_surface, perturbable
from cfbench.analysis.plot import plot_diff, plot_landscapes
from cfbench.analysis.sharpness import Sharpness, model_sharpness
from cfbench.errors import CfbenchError
from cfbench.models.checkpoint import ResolvedCheckpoint, check_model_type, resolve_checkpoint
from cfbench.models.hashing import require_finite_weights
from cfbench.progress import Progress
from cfbench.store import ResultStore
from cfbench.store.diagnostics import LayerDiff, write_diagnostics, write_landscape, write_weight_diff


def labels_for(labels: str | Sequence[str] | None, specs: Sequence[str], what: str) -> list[str]:
    """One name per checkpoint: ``labels`` (comma-separated or a list) or the specs themselves."""
    if labels is None:
        return list(specs)
    names = [x.strip() for x in labels.split(",")] if isinstance(labels, str) else list(labels)
    if len(names) != len(specs):
        raise CfbenchError(f"--labels has {len(names)} names for {len(specs)} checkpoints: give one per {what}")
    return names


def full_weights(ck: ResolvedCheckpoint) -> ResolvedCheckpoint:
    """Landscapes and weight diffs read the weights themselves: a LoRA adapter is refused with the fix."""
    if ck.kind == "adapter":
        raise CfbenchError(
            f"{ck.spec} is a LoRA adapter; landscape/diff need full weights: "
            f"cfbench merge BASE {ck.spec} --alpha 1 --out DIR, then pass DIR"
        )
    return ck


def load_model(spec: str, device: str | None, attn: str | None = None) -> tuple[ResolvedCheckpoint, Any, Any]:
    """Model (float32, on ``device`` or cuda when available) and tokenizer; ``attn="eager"`` where double
    backward is needed (fused CPU SDPA has none)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ck = full_weights(resolve_checkpoint(spec))
    check_model_type(ck.path)
    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = AutoModelForCausalLM.from_pretrained(
        ck.path, dtype=torch.float32, **({"attn_implementation": attn} if attn else {})
    ).to(dev)
    tok = AutoTokenizer.from_pretrained(ck.path)
    return ck, model, tok


# -- landscape ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LandscapeSettings:
    """How the surface is measured (the ``cfbench landscape`` options, same defaults)."""

    data: str = "lambada"
    grid: int = 11
    span: float = 0.5
    directions: str = "filter"
    perturb_1d: bool = False
    seed: int = 0
    batches: int = 2
    batch_size: int = 4
    length: int = 128
    probes: int = 0
    power_iters: int = 0
    interp_data: str | None = None
    device: str | None = None

    @property
    def sharpness(self) -> bool:
        return bool(self.probes or self.power_iters)

    def heldout(self, spec: str, tokenizer: Any) -> HeldOut:
        return load_heldout(spec, tokenizer, count=self.batches * self.batch_size, length=self.length, seed=self.seed)


@dataclass
class Interpolation:
    """``L(base + t·(ckpt − base))`` on one text: ``points`` are ``(t, loss)``."""

    data: str
    points: list[tuple[float, float]]


@dataclass
class LandscapeRow:
    """One checkpoint's numbers (all of them are also in the store)."""

    label: str
    checkpoint_hash: str | None
    surface: Surface
    sharpness: Sharpness | None = None
    interpolations: list[Interpolation] = field(default_factory=list)

    @property
    def seconds_per_point(self) -> float:
        return self.surface.seconds / self.surface.loss.size

    def to_dict(self) -> dict[str, Any]:
        """The numbers, no grid: ``cfbench landscape --format json`` (the grid is in the store)."""
        sh = self.sharpness
        return {
            "checkpoint": self.label, "checkpoint_hash": self.checkpoint_hash, **self.surface.metrics,
            "seconds_per_point": self.seconds_per_point,
            "hessian_trace": sh.trace if sh else None, "hessian_trace_stderr": sh.trace_stderr if sh else None,
            "top_eigenvalue": sh.top_eigenvalue if sh else None, "hvp": sh.method if sh else None,
            "interpolation": {i.data: [list(p) for p in i.points] for i in self.interpolations},
        }  # fmt: skip


#: Columns of :meth:`LandscapeResult.tidy_rows` (``cfbench landscape --format csv``).
LANDSCAPE_COLUMNS = ("checkpoint", "checkpoint_hash", "source", "metric", "data", "t", "value")


@dataclass
class LandscapeResult:
    rows: list[LandscapeRow]
    settings: LandscapeSettings
    plot: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"checkpoints": [r.to_dict() for r in self.rows], "settings": asdict(self.settings),
                "plot": str(self.plot) if self.plot else None}  # fmt: skip

    def tidy_rows(self) -> list[dict[str, Any]]:
        """One number per row: ``source`` landscape (SC/AG/MAG, ...), sharpness, or interpolation (at ``t``)."""
        out: list[dict[str, Any]] = []
        for r in self.rows:
            key = {"checkpoint": r.label, "checkpoint_hash": r.checkpoint_hash, "data": self.settings.data}
            values = {**r.surface.metrics, "seconds_per_point": r.seconds_per_point}
            out += [{**key, "source": "landscape", "metric": m, "value": v} for m, v in values.items()]
            if (sh := r.sharpness) is not None:
                pairs = (("hessian_trace", sh.trace), ("hessian_trace_stderr", sh.trace_stderr),
                         ("top_eigenvalue", sh.top_eigenvalue))  # fmt: skip
                out += [{**key, "source": "sharpness", "metric": m, "value": v} for m, v in pairs]
            for i in r.interpolations:
                out += [{**key, "source": "interpolation", "metric": "loss", "data": i.data, "t": t, "value": v}
                        for t, v in i.points]  # fmt: skip
        return out


def _base_state(spec: str | None, device: str | None) -> tuple[ResolvedCheckpoint | None, list[Any] | None]:
    """The interpolation base's perturbable weights (copied; its model is freed at once)."""
    if not spec:
        return None, None
    ck, model, _ = load_model(spec, device)
    state = [p.detach().clone() for _, p in perturbable(model)]
    del model
    return ck, state


def _surface(model: Any, held: HeldOut, label: str, s: LandscapeSettings) -> Surface:
    with Progress(f"landscape {label}", s.grid * s.grid, unit="points") as prog:
        return loss_surface(
            model, held, grid=s.grid, span=s.span, directions=s.directions, seed=s.seed,
            ignore_1d=not s.perturb_1d, batch_size=s.batch_size, on_point=lambda _i, _j: prog.advance(1),
        )  # fmt: skip


def _store_surface(store: ResultStore, row: LandscapeRow, data: str) -> None:
    """The grid (table landscape) and SC/AG/MAG with the time per point (table diagnostics)."""
    surf = row.surface
    pts = [
        (i, j, float(a), float(b), float(surf.loss[i, j]))
        for i, a in enumerate(surf.alphas)
        for j, b in enumerate(surf.betas)
    ]
    write_landscape(store, kind="surface", checkpoint_name=row.label, checkpoint_hash=row.checkpoint_hash,
                    data=data, points=pts, settings=surf.settings)  # fmt: skip
    values: dict[str, float | None] = {**surf.metrics, "seconds_per_point": row.seconds_per_point}
    write_diagnostics(store, checkpoint_name=row.label, checkpoint_hash=row.checkpoint_hash, source="landscape",
                      values=values, settings=surf.settings)  # fmt: skip


def _sharpness(model: Any, held: HeldOut, row: LandscapeRow, s: LandscapeSettings, store: ResultStore) -> Sharpness:
    """Hutchinson trace and/or power-iteration top eigenvalue at the checkpoint's weights, stored."""
    with Progress(f"sharpness {row.label}", s.probes + s.power_iters, unit="Hv") as prog:
        sh = model_sharpness(model, held.batches(s.batch_size), probes=s.probes, power_iters=s.power_iters,
                             seed=s.seed, on_step=lambda: prog.advance(1))  # fmt: skip
    write_diagnostics(
        store, checkpoint_name=row.label, checkpoint_hash=row.checkpoint_hash, source="sharpness",
        values={"hessian_trace": sh.trace, "hessian_trace_stderr": sh.trace_stderr,
                "top_eigenvalue": sh.top_eigenvalue},
        settings={**row.surface.settings, "probes": s.probes, "power_iters": s.power_iters, "hvp": sh.method},
    )  # fmt: skip
    return sh


def _interpolations(
    model: Any, tok: Any, held: HeldOut, row: LandscapeRow, base: tuple[ResolvedCheckpoint, list[Any]],
    s: LandscapeSettings, store: ResultStore,
) -> list[Interpolation]:  # fmt: skip
    """The loss along base → checkpoint (t in [0, 1.5]) on the surface's text and on ``interp_data``."""
    out = []
    for spec in [s.data] + ([s.interp_data] if s.interp_data else []):
        h = held if spec == s.data else s.heldout(spec, tok)
        curve = interpolation_curve(model, base[1], h, batch_size=s.batch_size)
        write_landscape(
            store, kind="interpolation", checkpoint_name=row.label, checkpoint_hash=row.checkpoint_hash,
            base_hash=base[0].content_hash, data=spec, points=[(k, 0, t, 0.0, v) for k, (t, v) in enumerate(curve)],
            settings={"data": spec, "seed": s.seed},
        )  # fmt: skip
        out.append(Interpolation(spec, curve))
    return out


def _landscape_one(
    label: str, spec: str, s: LandscapeSettings, store: ResultStore, base: tuple[ResolvedCheckpoint, list[Any]] | None
) -> LandscapeRow:
    """Everything for one checkpoint, its model freed before returning."""
    ck, model, tok = load_model(spec, s.device, "eager" if s.sharpness else None)
    held = s.heldout(s.data, tok)
    row = LandscapeRow(label, ck.content_hash, _surface(model, held, label, s))
    _store_surface(store, row, s.data)
    if s.sharpness:
        row.sharpness = _sharpness(model, held, row, s, store)
    if base is not None:
        row.interpolations = _interpolations(model, tok, held, row, base, s, store)
    del model
    gc.collect()
    return row


def landscape(
    checkpoints: Sequence[str],
    *,
    settings: LandscapeSettings | None = None,
    labels: str | Sequence[str] | None = None,
    interpolate_from: str | None = None,
    results: str | Path = "results",
    plot: Path | None = None,
    on_row: Callable[[LandscapeRow], None] | None = None,
) -> LandscapeResult:
    """Loss surface f(α,β) = L(θ₀+αδ₁+βδ₂) of each checkpoint with the paper's SC/AG/MAG, stored.

    ``interpolate_from`` (a base checkpoint) adds the loss along base → checkpoint; ``plot`` writes one
    contour panel per checkpoint. Arguments are checked before any model loads.
    """
    s = settings or LandscapeSettings()
    if s.directions not in DIRECTION_KINDS:
        raise CfbenchError(f"unknown --directions {s.directions!r}: use gaussian or filter")
    grid_axis(s.grid, s.span)  # an even grid or a NaN span is refused before any model loads
    names = labels_for(labels, checkpoints, "checkpoint")
    store = ResultStore(results)
    base_ck, base_state = _base_state(interpolate_from, s.device)
    base = (base_ck, base_state) if base_ck is not None and base_state is not None else None
    rows = []
    for label, spec in zip(names, checkpoints, strict=True):
        rows.append(_landscape_one(label, spec, s, store, base))
        if on_row is not None:
            on_row(rows[-1])
    written = plot_landscapes([(r.label, r.surface) for r in rows], plot) if plot else None
    return LandscapeResult(rows, s, written)


# -- diff ---------------------------------------------------------------------------------------------


@dataclass
class DiffRun:
    """One tuned checkpoint against the base: total displacement and one row per tensor."""

    label: str
    checkpoint_hash: str | None
    displacement: float
    rel_displacement: float
    layers: list[LayerDiff]

    def top(self, n: int) -> list[LayerDiff]:
        """The ``n`` tensors that moved most relative to their size (‖ΔW‖/‖W‖)."""
        return sorted(self.layers, key=lambda r: -r.rel_delta)[:n]


#: Columns of :meth:`DiffResult.tidy_rows` (``cfbench diff --format csv``).
DIFF_COLUMNS = ("tuned", "tuned_hash", "base", "level", "param", "shape", "numel", "norm_base", "norm_delta",
                "rel_delta", "effective_rank", "top_singular", "svd")  # fmt: skip


@dataclass
class DiffResult:
    base: str
    base_hash: str | None
    runs: list[DiffRun]
    results: Path
    plot: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        """Every tensor of every run (``--top`` shortens only the table)."""
        runs = [{"tuned": r.label, "tuned_hash": r.checkpoint_hash, "displacement": r.displacement,
                 "rel_displacement": r.rel_displacement, "n_tensors": len(r.layers),
                 "layers": [asdict(x) for x in r.layers]} for r in self.runs]  # fmt: skip
        return {"base": self.base, "base_hash": self.base_hash, "runs": runs, "results": str(self.results),
                "plot": str(self.plot) if self.plot else None}  # fmt: skip

    def tidy_rows(self) -> list[dict[str, Any]]:
        """Per run one ``level=total`` row (displacement as norm_delta / rel_delta), then one per tensor."""
        out: list[dict[str, Any]] = []
        for r in self.runs:
            key = {"tuned": r.label, "tuned_hash": r.checkpoint_hash, "base": self.base}
            out.append({**key, "level": "total", "numel": sum(x.numel for x in r.layers),
                        "norm_delta": r.displacement, "rel_delta": r.rel_displacement})  # fmt: skip
            for x in r.layers:
                out.append({**key, "level": "tensor", **asdict(x), "shape": "x".join(map(str, x.shape))})
        return out


def _diff_one(
    label: str, spec: str, base: tuple[str, ResolvedCheckpoint, dict[str, Any], dict[str, Any]], store: ResultStore
) -> DiffRun:
    """Weight diff of one tuned checkpoint, stored (tables weight_diff and diagnostics)."""
    base_spec, bck, bstate, barch = base
    tck = full_weights(resolve_checkpoint(spec))
    tstate, tarch = load_state(tck.path)
    check_same_architecture(barch, tarch, base_spec, spec)
    rows = weight_diff(bstate, tstate)
    del tstate
    disp = total_displacement(rows)
    wnorm = math.sqrt(sum(r.norm_base**2 for r in rows))
    rel = disp / wnorm if wnorm else 0.0
    write_weight_diff(store, rows, base_name=base_spec, base_hash=bck.content_hash, tuned_name=label,
                      tuned_hash=tck.content_hash)  # fmt: skip
    write_diagnostics(store, checkpoint_name=label, checkpoint_hash=tck.content_hash, base_hash=bck.content_hash,
                      source="diff", values={"displacement": disp, "rel_displacement": rel},
                      settings={"base": base_spec})  # fmt: skip
    return DiffRun(label, tck.content_hash, disp, rel, rows)


def diff_checkpoints(
    base: str,
    tuned: Sequence[str],
    *,
    labels: str | Sequence[str] | None = None,
    results: str | Path = "results",
    plot: Path | None = None,
    on_run: Callable[[DiffRun], None] | None = None,
) -> DiffResult:
    """What moved from ``base`` to each tuned checkpoint: per-tensor ‖ΔW‖, ‖ΔW‖/‖W‖, effective rank of ΔW
    and the total displacement, stored; ``plot`` writes the per-layer ‖ΔW‖/‖W‖ figure."""
    names = labels_for(labels, tuned, "tuned checkpoint")
    store = ResultStore(results)
    for spec in [base, *tuned]:  # every checkpoint first: a NaN one is named (with its tensor), not an SVD error
        ck = full_weights(resolve_checkpoint(spec))
        require_finite_weights(ck.path, ck.content_hash, ck.name, consequence="its weight diff would be meaningless")
    bck = full_weights(resolve_checkpoint(base))
    bstate, barch = load_state(bck.path)
    runs = []
    for label, spec in zip(names, tuned, strict=True):
        runs.append(_diff_one(label, spec, (base, bck, bstate, barch), store))
        if on_run is not None:
            on_run(runs[-1])
    written = plot_diff([(r.label, r.layers) for r in runs], plot) if plot else None
    return DiffResult(base, bck.content_hash, runs, Path(results), written)
