"""``cfbench landscape`` (loss surfaces, flatness, sharpness, interpolation) and ``cfbench diff`` (what moved)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from cfbench.cli.common import Results


def _load(spec: str, device: str | None, attn: str | None = None) -> tuple[Any, Any, Any]:
    """Model and tokenizer; ``attn="eager"`` where double backward is needed (fused CPU SDPA has none)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cfbench.models.checkpoint import resolve_checkpoint

    ck = resolve_checkpoint(spec)
    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = AutoModelForCausalLM.from_pretrained(
        ck.path, dtype=torch.float32, **({"attn_implementation": attn} if attn else {})
    ).to(dev)
    tok = AutoTokenizer.from_pretrained(ck.path)
    return ck, model, tok


def register(app: typer.Typer) -> None:
    @app.command("landscape")
    def landscape_cmd(
        checkpoints: Annotated[list[str], typer.Argument(help="Checkpoints (folder, .gguf, hub id, smollm2-135m).")],
        data: Annotated[str, typer.Option("--data", help="Held-out text: lambada, squad, builtin:NAME or a file.")] = (
            "lambada"
        ),
        grid: Annotated[int, typer.Option("--grid", help="Points per axis (N×N grid).")] = 11,
        span: Annotated[float, typer.Option("--span", help="α, β range [-S, S].")] = 0.5,
        directions: Annotated[
            str, typer.Option("--directions", help="gaussian (paper) or filter (Li et al. 2018).")
        ] = ("filter"),
        perturb_1d: Annotated[bool, typer.Option("--perturb-1d", help="Also perturb norm/bias (1-D) tensors.")] = False,
        seed: Annotated[int, typer.Option("--seed", help="Direction and held-out sampling seed.")] = 0,
        batches: Annotated[int, typer.Option("--batches", help="Held-out batches per grid point.")] = 2,
        batch_size: Annotated[int, typer.Option("--batch-size", help="Blocks per batch.")] = 4,
        length: Annotated[int, typer.Option("--length", help="Tokens per held-out block.")] = 128,
        probes: Annotated[
            int, typer.Option("--hutchinson", help="Hutchinson probes for the Hessian trace (0: off).")
        ] = 0,
        power_iters: Annotated[
            int, typer.Option("--power-iters", help="Power iterations, top eigenvalue (0: off).")
        ] = 0,
        interpolate_from: Annotated[
            str | None, typer.Option("--interpolate-from", help="Base: also L(base + t·(ckpt − base)), t in [0, 1.5].")
        ] = None,
        interp_data: Annotated[
            str | None, typer.Option("--interp-data", help="Extra (in-domain) data for the interpolation curve.")
        ] = None,
        plot: Annotated[Path | None, typer.Option("--plot", help="Contour PNG (one panel per checkpoint).")] = None,
        labels: Annotated[str | None, typer.Option("--labels", help="Comma-separated panel titles.")] = None,
        device: Annotated[
            str | None, typer.Option("--device", help="cpu or cuda (default: cuda when available).")
        ] = None,
        results: Results = Path("results"),
    ) -> None:
        """Loss surface f(α,β) = L(θ₀+αδ₁+βδ₂) per checkpoint, the paper's SC/AG/MAG; stored in the results store."""
        import gc

        from cfbench.analysis.directions import DIRECTION_KINDS
        from cfbench.analysis.heldout import load_heldout
        from cfbench.analysis.landscape import interpolation_curve, loss_surface, perturbable
        from cfbench.analysis.sharpness import model_sharpness
        from cfbench.errors import CfbenchError
        from cfbench.progress import Progress
        from cfbench.store import ResultStore
        from cfbench.store.diagnostics import write_diagnostics, write_landscape

        if directions not in DIRECTION_KINDS:
            raise CfbenchError(f"unknown --directions {directions!r}: use gaussian or filter")
        names = [x.strip() for x in labels.split(",")] if labels else list(checkpoints)
        if len(names) != len(checkpoints):
            raise CfbenchError(
                f"--labels has {len(names)} names for {len(checkpoints)} checkpoints: give one per checkpoint"
            )
        store = ResultStore(results)
        panels = []
        base_state = None
        base_ck = None
        if interpolate_from:
            base_ck, bm, _ = _load(interpolate_from, device)
            base_state = [p.detach().clone() for _, p in perturbable(bm)]
            del bm
        for label, spec in zip(names, checkpoints, strict=True):
            ck, model, tok = _load(spec, device, "eager" if (probes or power_iters) else None)
            held = load_heldout(data, tok, count=batches * batch_size, length=length, seed=seed)
            with Progress(f"landscape {label}", grid * grid, unit="points") as prog:
                surf = loss_surface(
                    model,
                    held,
                    grid=grid,
                    span=span,
                    directions=directions,
                    seed=seed,
                    ignore_1d=not perturb_1d,
                    batch_size=batch_size,
                    on_point=lambda _i, _j: prog.advance(1),
                )
            pts = [
                (i, j, float(a), float(b), float(surf.loss[i, j]))
                for i, a in enumerate(surf.alphas)
                for j, b in enumerate(surf.betas)
            ]
            write_landscape(
                store,
                kind="surface",
                checkpoint_name=label,
                checkpoint_hash=ck.content_hash,
                data=data,
                points=pts,
                settings=surf.settings,
            )
            values: dict[str, float | None] = dict(surf.metrics)
            values["seconds_per_point"] = surf.seconds / (grid * grid)
            write_diagnostics(
                store,
                checkpoint_name=label,
                checkpoint_hash=ck.content_hash,
                source="landscape",
                values=values,
                settings=surf.settings,
            )
            m = surf.metrics
            line = (
                f"{label}: SC {m['sc']:.4g}  AG {m['ag']:.4g}  MAG {m['mag']:.4g}  loss(θ₀) {m['loss_center']:.4f}"
                f"  [{surf.seconds / (grid * grid):.2f}s/point]"
            )
            if probes or power_iters:
                total = probes + power_iters
                with Progress(f"sharpness {label}", total, unit="Hv") as prog:
                    sh = model_sharpness(
                        model,
                        held.batches(batch_size),
                        probes=probes,
                        power_iters=power_iters,
                        seed=seed,
                        on_step=lambda: prog.advance(1),
                    )
                write_diagnostics(
                    store,
                    checkpoint_name=label,
                    checkpoint_hash=ck.content_hash,
                    source="sharpness",
                    values={
                        "hessian_trace": sh.trace,
                        "hessian_trace_stderr": sh.trace_stderr,
                        "top_eigenvalue": sh.top_eigenvalue,
                    },
                    settings={**surf.settings, "probes": probes, "power_iters": power_iters, "hvp": sh.method},
                )
                if sh.trace is not None:
                    line += f"  tr(H) {sh.trace:.4g}±{sh.trace_stderr:.2g}"
                if sh.top_eigenvalue is not None:
                    line += f"  λmax {sh.top_eigenvalue:.4g}"
                line += f" ({sh.method}, {sh.seconds:.0f}s)"
            if base_state is not None and base_ck is not None:
                for dspec in [data] + ([interp_data] if interp_data else []):
                    h = (
                        held
                        if dspec == data
                        else load_heldout(dspec, tok, count=batches * batch_size, length=length, seed=seed)
                    )
                    curve = interpolation_curve(model, base_state, h, batch_size=batch_size)
                    write_landscape(
                        store,
                        kind="interpolation",
                        checkpoint_name=label,
                        checkpoint_hash=ck.content_hash,
                        base_hash=base_ck.content_hash,
                        data=dspec,
                        points=[(k, 0, t, 0.0, v) for k, (t, v) in enumerate(curve)],
                        settings={"data": dspec, "seed": seed},
                    )
                    typer.echo(f"{label}: interpolation on {dspec}: " + " ".join(f"{t:g}:{v:.3f}" for t, v in curve))
            typer.echo(line)
            panels.append((label, surf))
            del model
            gc.collect()
        if plot:
            from cfbench.analysis.plot import plot_landscapes

            typer.echo(f"wrote {plot_landscapes(panels, plot)}")

    @app.command("diff")
    def diff_cmd(
        base: Annotated[str, typer.Argument(help="Base checkpoint.")],
        tuned: Annotated[list[str], typer.Argument(help="Tuned checkpoints of the same architecture.")],
        plot: Annotated[Path | None, typer.Option("--plot", help="Per-layer ‖ΔW‖/‖W‖ PNG.")] = None,
        top: Annotated[int, typer.Option("--top", help="Parameters listed, by ‖ΔW‖/‖W‖.")] = 8,
        labels: Annotated[str | None, typer.Option("--labels", help="Comma-separated names, tuned only.")] = None,
        results: Results = Path("results"),
    ) -> None:
        """What moved: per-layer ‖ΔW‖, ‖ΔW‖/‖W‖, effective rank of ΔW, total displacement (no evaluation)."""
        import math

        from cfbench.analysis.diff import check_same_architecture, load_state, total_displacement, weight_diff
        from cfbench.errors import CfbenchError
        from cfbench.models.checkpoint import resolve_checkpoint
        from cfbench.store import ResultStore
        from cfbench.store.diagnostics import write_diagnostics, write_weight_diff

        names = [x.strip() for x in labels.split(",")] if labels else list(tuned)
        if len(names) != len(tuned):
            raise CfbenchError(
                f"--labels has {len(names)} names for {len(tuned)} checkpoints: give one per tuned checkpoint"
            )
        store = ResultStore(results)
        bck = resolve_checkpoint(base)
        bstate, barch = load_state(bck.path)
        all_rows = []
        for label, spec in zip(names, tuned, strict=True):
            tck = resolve_checkpoint(spec)
            tstate, tarch = load_state(tck.path)
            check_same_architecture(barch, tarch, base, spec)
            rows = weight_diff(bstate, tstate)
            del tstate
            disp = total_displacement(rows)
            wnorm = math.sqrt(sum(r.norm_base**2 for r in rows))
            write_weight_diff(
                store, rows, base_name=base, base_hash=bck.content_hash, tuned_name=label, tuned_hash=tck.content_hash
            )
            write_diagnostics(
                store,
                checkpoint_name=label,
                checkpoint_hash=tck.content_hash,
                base_hash=bck.content_hash,
                source="diff",
                values={"displacement": disp, "rel_displacement": disp / wnorm if wnorm else 0.0},
                settings={"base": base},
            )
            typer.echo(
                f"{label} vs {base}: displacement ‖Δθ‖ = {disp:.6g} (relative {disp / wnorm if wnorm else 0.0:.3e})"
                f" over {len(rows)} tensors"
            )
            for r in sorted(rows, key=lambda r: -r.rel_delta)[:top]:
                er = "-" if r.effective_rank is None else f"{r.effective_rank:.1f}"
                sv = ", ".join(f"{x:.3g}" for x in r.top_singular[:3])
                typer.echo(
                    f"  {r.param:<48} ‖ΔW‖ {r.norm_delta:.4g}  ‖ΔW‖/‖W‖ {r.rel_delta:.3e}  eff.rank {er}"
                    f"  σ[:3] {sv}  ({r.svd})"
                )
            all_rows.append((label, rows))
        if plot:
            from cfbench.analysis.plot import plot_diff

            typer.echo(f"wrote {plot_diff(all_rows, plot)}")
        typer.echo(f"stored in {results}/ (tables weight_diff, diagnostics)")
