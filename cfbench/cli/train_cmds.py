"""``cfbench finetune``, ``cfbench pair`` and ``cfbench merge``: thin wrappers over :mod:`cfbench.train`."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from cfbench.cli.common import Results


class OptimizerName(str, Enum):
    adamw = "adamw"
    sam = "sam"
    asam = "asam"


class SamName(str, Enum):
    sam = "sam"
    asam = "asam"


class BackupDtype(str, Enum):
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


Base = Annotated[str, typer.Argument(help="Base model: HF folder, .gguf, hub id or built-in name (smollm2-135m).")]
Data = Annotated[
    str,
    typer.Option(
        "--data", help="Training data: .json/.jsonl (Alpaca, ShareGPT, messages), .txt, or builtin:arithmetic."
    ),
]
Out = Annotated[Path, typer.Option("--out", help="Output folder (written atomically).")]
Rho = Annotated[float, typer.Option("--rho", help="SAM radius ρ (the paper uses 2.0 for full fine-tuning).")]
Epochs = Annotated[int, typer.Option("--epochs", help="Epochs (pair: SAM epochs; AdamW runs twice as many).")]
Lr = Annotated[float, typer.Option("--lr", help="Peak learning rate.")]
BatchSize = Annotated[int, typer.Option("--batch-size", help="Global batch size in examples.")]
MicroBatch = Annotated[int, typer.Option("--micro-batch", help="Examples per forward pass (gradient accumulation).")]
MaxLength = Annotated[int, typer.Option("--max-length", help="Truncate examples to this many tokens.")]
Warmup = Annotated[float, typer.Option("--warmup", help="Warm-up: fraction of steps if < 1, else steps.")]
WeightDecay = Annotated[float, typer.Option("--weight-decay", help="AdamW weight decay (not on 1-D tensors).")]
Rehearsal = Annotated[str | None, typer.Option("--rehearsal", help="General data to mix in (same formats as --data).")]
RehearsalRatio = Annotated[
    float, typer.Option("--rehearsal-ratio", help="Fraction of the mixed training set that is rehearsal data.")
]
Seed = Annotated[int, typer.Option("--seed", help="Seed for shuffling and rehearsal sampling.")]
Bf16 = Annotated[bool, typer.Option("--bf16", help="bfloat16 autocast (weights and optimizer stay float32).")]
MaxSteps = Annotated[int | None, typer.Option("--max-steps", help="Stop after this many steps (pair: SAM steps).")]
LrSchedule = Annotated[str, typer.Option("--lr-schedule", help="After warm-up: cosine, linear (to 0) or constant.")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace an existing output folder.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")]
Device = Annotated[str | None, typer.Option("--device", help="cpu or cuda (default: cuda when available).")]
LoraR = Annotated[int | None, typer.Option("--lora-r", help="Train rank-R LoRA adapters (peft), merged on save.")]
LoraAlpha = Annotated[float | None, typer.Option("--lora-alpha", help="LoRA scaling alpha (default 2 x rank).")]
LoraTargets = Annotated[
    str | None, typer.Option("--lora-targets", help="Comma-separated module names (default: all llama projections).")
]
Save = Annotated[
    str,
    typer.Option(
        "--save",
        help="With --lora-r: merged (a full checkpoint, default) or adapter (the LoRA adapter itself, "
        "scored as base + adapter).",
    ),
]
SaveEvery = Annotated[
    int | None,
    typer.Option("--save-every", help="Also write OUT/step-N/ every N steps (score them with cfbench sweep BASE OUT)."),
]
MonitorEvery = Annotated[
    int | None,
    typer.Option(
        "--monitor-every",
        help="Score a small forgetting probe (64 offline-suite items + 32 passages) every N steps into the loss curve.",
    ),
]
MonitorStop = Annotated[
    list[str] | None,
    typer.Option("--monitor-stop", help="With --monitor-every: SIGNAL=VALUE budget that stops training, e.g. kl=0.2."),
]
MonitorMaxOverhead = Annotated[
    str,
    typer.Option(
        "--monitor-max-overhead",
        help="With --monitor-every: the probe's largest share of training time (0 < x <= 1); a check that "
        "would exceed it waits for the next scheduled step. 'none': check every N steps whatever it costs.",
    ),
]
Heldout = Annotated[
    int | None,
    typer.Option(
        "--heldout",
        help="Held-out documents of --data, never trained on, for the in-domain gain "
        "(default: min(64, 10% of the distinct examples); 0: none).",
    ),
]
ActCkpt = Annotated[
    bool, typer.Option("--activation-checkpointing", help="Recompute decoder layers in backward (less memory).")
]
SamEvery = Annotated[
    int, typer.Option("--sam-every", help="SAM step on steps 0, K, 2K, ...; plain AdamW steps in between (1 = SAM).")
]
SamOnlyNorm = Annotated[
    bool, typer.Option("--sam-only-norm", help="SAM-ON: perturb only normalisation-layer parameters.")
]
SamLookAlpha = Annotated[
    float | None,
    typer.Option(
        "--sam-look-alpha",
        help="LookSAM (with --sam-every K > 1): between SAM steps add back the last SAM gradient's part "
        "orthogonal to the gradient, scaled by ALPHA·‖g‖/‖g_v‖ (Liu et al. 2022 use 0.7).",
    ),
]
SamBackup = Annotated[
    BackupDtype,
    typer.Option("--sam-backup-dtype", help="SAM restore buffer: fp32 (exact copy) or ε in bf16/fp16 (half memory)."),
]


def _max_overhead(text: str) -> float | None:
    """``--monitor-max-overhead``: a number, or ``none`` for no budget (the range is checked by finetune)."""
    from cfbench.errors import CfbenchError

    if text.strip().lower() in ("none", "off"):
        return None
    try:
        return float(text)
    except ValueError:
        raise CfbenchError(f"--monitor-max-overhead {text!r}: give a fraction 0 < x <= 1 (e.g. 0.1) or none") from None


def finetune_cmd(
    base: Base,
    data: Data,
    out: Out,
    optimizer: Annotated[
        OptimizerName, typer.Option("--optimizer", help="adamw, sam or asam (SAM/ASAM wrap AdamW).")
    ] = OptimizerName.adamw,
    rho: Rho = 2.0,
    epochs: Epochs = 1,
    lr: Lr = 5e-6,
    batch_size: BatchSize = 128,
    micro_batch: MicroBatch = 8,
    max_length: MaxLength = 1024,
    warmup: Warmup = 0.03,
    weight_decay: WeightDecay = 0.0,
    rehearsal: Rehearsal = None,
    rehearsal_ratio: RehearsalRatio = 0.2,
    seed: Seed = 0,
    bf16: Bf16 = False,
    max_steps: MaxSteps = None,
    lr_schedule: LrSchedule = "cosine",
    overwrite: Overwrite = False,
    quiet: Quiet = False,
    device: Device = None,
    lora_r: LoraR = None,
    lora_alpha: LoraAlpha = None,
    lora_targets: LoraTargets = None,
    activation_checkpointing: ActCkpt = False,
    heldout: Heldout = None,
    results: Results = Path("results"),
    sam_every: SamEvery = 1,
    sam_only_norm: SamOnlyNorm = False,
    sam_backup_dtype: SamBackup = BackupDtype.fp32,
    sam_look_alpha: SamLookAlpha = None,
    save: Save = "merged",
    save_every: SaveEvery = None,
    monitor_every: MonitorEvery = None,
    monitor_stop: MonitorStop = None,
    monitor_max_overhead: MonitorMaxOverhead = "0.1",
) -> None:
    """Fine-tune BASE on --data with AdamW, SAM or ASAM; writes an HF folder plus cfbench_manifest.json."""
    from cfbench.train.finetune import finetune

    _quiet(quiet)
    result = finetune(
        base, data, out, optimizer=optimizer.value, progress=not quiet, heldout=heldout,
        **_common(rho, epochs, lr, batch_size, micro_batch, max_length, warmup, weight_decay, rehearsal,
                  rehearsal_ratio, seed, bf16, max_steps, lr_schedule, overwrite, device),
        **_scale(lora_r, lora_alpha, lora_targets, activation_checkpointing),
        **_sam(sam_every, sam_only_norm, sam_backup_dtype, sam_look_alpha), save=save, save_every=save_every,
        monitor_every=monitor_every, monitor_stop=monitor_stop,
        monitor_max_overhead=_max_overhead(monitor_max_overhead),
    )  # fmt: skip
    if not _main_rank():
        return
    m = result.manifest
    typer.echo(
        f"{result.label}: {m['steps']} steps, final loss {_fmt(result.final_loss)}, "
        f"{m['wall_time_s']:.0f}s -> {result.path}"
    )
    _learned(results, [(result.label, result.path, m)], device)


def pair_cmd(
    base: Base,
    data: Data,
    out: Out,
    sam_optimizer: Annotated[
        SamName, typer.Option("--sam-optimizer", help="sam or asam for the w/ SAM run.")
    ] = SamName.sam,
    rho: Rho = 2.0,
    epochs: Epochs = 1,
    lr: Lr = 5e-6,
    batch_size: BatchSize = 128,
    micro_batch: MicroBatch = 8,
    max_length: MaxLength = 1024,
    warmup: Warmup = 0.03,
    weight_decay: WeightDecay = 0.0,
    rehearsal: Rehearsal = None,
    rehearsal_ratio: RehearsalRatio = 0.2,
    seed: Seed = 0,
    seeds: Annotated[
        str | None,
        typer.Option(
            "--seeds",
            help="Several seeds (0,1,2): one pair each in OUT/seed-<n>, then the seed spread (mean ± std) "
            "and OUT/seeds.json.",
        ),
    ] = None,
    bf16: Bf16 = False,
    max_steps: MaxSteps = None,
    lr_schedule: LrSchedule = "cosine",
    overwrite: Overwrite = False,
    quiet: Quiet = False,
    device: Device = None,
    lora_r: LoraR = None,
    lora_alpha: LoraAlpha = None,
    lora_targets: LoraTargets = None,
    activation_checkpointing: ActCkpt = False,
    heldout: Heldout = None,
    sam_every: SamEvery = 1,
    sam_only_norm: SamOnlyNorm = False,
    sam_backup_dtype: SamBackup = BackupDtype.fp32,
    sam_look_alpha: SamLookAlpha = None,
    compare: Annotated[
        bool, typer.Option("--compare", help="Then run `cfbench compare` on base, w/o SAM and w/ SAM.")
    ] = False,
    suite: Annotated[str, typer.Option("--suite", help="With --compare: the suite to score.")] = "paper",
    limit: Annotated[int | None, typer.Option("--limit", help="With --compare: documents per task.")] = None,
    results: Results = Path("results"),
    save: Save = "merged",
) -> None:
    """The paper's compute-matched pair: OUT/wo_sam (AdamW, 2x epochs) and OUT/w_sam (SAM, epochs)."""
    _quiet(quiet)
    kwargs = {
        **_common(rho, epochs, lr, batch_size, micro_batch, max_length, warmup, weight_decay, rehearsal,
                  rehearsal_ratio, seed, bf16, max_steps, lr_schedule, overwrite, device),
        **_scale(lora_r, lora_alpha, lora_targets, activation_checkpointing),
        **_sam(sam_every, sam_only_norm, sam_backup_dtype, sam_look_alpha),
        "heldout": heldout,
        "save": save,
    }  # fmt: skip
    seed_list, done, summary = _run_pairs(base, data, out, seeds, sam_optimizer.value, not quiet, kwargs)
    if not _main_rank():
        return
    for s, result in zip(seed_list, done, strict=True):
        print_pair(result, "" if summary is None else f"seed {s}: ")
        _learned(results, [(r.label, r.path, r.manifest) for r in (result.wo_sam, result.w_sam)], device)
    if summary is not None:
        print_seed_spread(summary, seed_list, out)
    if compare:
        _compare_pairs(base, seed_list, done, summary is not None, suite=suite, results=results, limit=limit)


def _run_pairs(
    base: str, data: str, out: Path, seeds: str | None, sam_optimizer: str, progress: bool, kwargs: dict[str, Any]
) -> tuple[list[int], list[Any], dict[str, Any] | None]:
    """One pair (``--seed``) or one per seed (``--seeds``): (seeds, pair results, seed summary or None)."""
    from cfbench.errors import CfbenchError
    from cfbench.train.pair import pair, pair_seeds, parse_seeds

    seed = kwargs["seed"]
    seed_list = parse_seeds(seeds) if seeds is not None else None
    if seed_list is not None and seed != 0:
        raise CfbenchError(f"pass either --seed {seed} or --seeds {seeds}, not both")
    if seed_list is None:
        return [seed], [pair(base, data, out, sam_optimizer=sam_optimizer, progress=progress, **kwargs)], None
    rest = {k: v for k, v in kwargs.items() if k != "seed"}
    many = pair_seeds(base, data, out, seed_list, sam_optimizer=sam_optimizer, progress=progress, **rest)
    return seed_list, many.pairs, many.summary


def print_pair(result: Any, tag: str) -> None:
    """Each run's method, epochs, steps, passes and final loss, then the measured cost ratio."""
    for run in (result.wo_sam, result.w_sam):
        m = run.manifest
        typer.echo(
            f"{tag}{run.label}: {m['method']}, {m['hyperparameters']['epochs']} epoch(s), {m['steps']} steps, "
            f"{m['forward_backward_passes']} forward+backward passes, final loss {_fmt(run.final_loss)} "
            f"-> {run.path}"
        )
    cost = json.loads((result.path / "pair.json").read_text())["cost_ratio"]
    typer.echo(
        f"{tag}cost w/ SAM / w/o SAM: {_fmt(cost['forward_backward_passes'], 3)} forward+backward passes, "
        f"{_fmt(cost['wall_time'], 3)} training time (measured)"
    )
    typer.echo(f"pair description -> {result.path / 'pair.json'}")


def print_seed_spread(summary: dict[str, Any], seed_list: list[int], out: Path) -> None:
    """Mean ± sample std over seeds of each side's final loss and wall time."""
    for which in ("wo_sam", "w_sam"):
        r = summary["runs"][which]
        typer.echo(
            f"{r['label']} over seeds {','.join(map(str, seed_list))}: final loss "
            f"{_pm(r['final_loss'])}, wall time {_pm(r['wall_time_s'], '.0f')} s (mean ± sample std)"
        )
    typer.echo(f"seed spread -> {out / 'seeds.json'}")


def _compare_pairs(
    base: str, seed_list: list[int], done: list[Any], tagged: bool, *, suite: str, results: Path, limit: int | None
) -> None:
    """``pair --compare``: base, then every seed's w/o and w/ SAM, each seed's two as a pair; the report.

    The contrast w/ SAM − w/o SAM on every signal comes with it: of the two runs, or with several seeds
    of the two seed groups (a two-level CI).
    """
    from cfbench.comparison import compare as run_compare
    from cfbench.report.render import print_report

    tuned, labels, pairs = [], [base], []
    for s, result in zip(seed_list, done, strict=True):
        tag = f" (seed {s})" if tagged else ""
        tuned += [f"ckpt:{result.wo_sam.path}", f"ckpt:{result.w_sam.path}"]
        labels += [f"w/o SAM{tag}", f"w/ SAM{tag}"]
        pairs.append((f"w/o SAM{tag}", f"w/ SAM{tag}"))
    groups = {"w/o SAM": [a for a, _ in pairs], "w/ SAM": [b for _, b in pairs]} if tagged else {}
    res = run_compare(
        f"ckpt:{base}", tuned, suite=suite, results=results, labels=labels, pairs=pairs,
        eval_kwargs={"limit": limit, "progress": "auto"}, groups=groups, contrasts=[("w/o SAM", "w/ SAM")],
    )  # fmt: skip
    print_report(res.report)


def merge_cmd(
    base: Base,
    tuned: Annotated[str, typer.Argument(help="Fine-tuned checkpoint (same architecture as BASE).")],
    alpha: Annotated[
        str,
        typer.Option(
            "--alpha",
            help="Weight of TUNED: 0 = base, 1 = tuned. Several (0.25,0.5,0.75): one checkpoint each, "
            "in OUT/alpha-<α>.",
        ),
    ],
    out: Out,
    overwrite: Overwrite = False,
) -> None:
    """Wise-FT: write (1-alpha)*BASE + alpha*TUNED as an HF folder with a manifest (or one per alpha)."""
    from cfbench.train.merge import merge, merge_sweep, parse_alphas

    alphas = parse_alphas(alpha)
    if len(alphas) == 1:
        results = [merge(base, tuned, alphas[0], out, overwrite=overwrite)]
    else:
        results = merge_sweep(base, tuned, alphas, out, overwrite=overwrite)
    for result in results:
        typer.echo(
            f"Wise-FT α={result.manifest['alpha']:g}: {result.manifest['n_interpolated']} tensors interpolated "
            f"-> {result.path}"
        )


def register(app: typer.Typer) -> None:
    """Add ``finetune``, ``pair`` and ``merge`` to the cfbench app."""
    app.command("finetune")(finetune_cmd)
    app.command("pair")(pair_cmd)
    app.command("merge")(merge_cmd)


def _common(
    rho: float, epochs: int, lr: float, batch_size: int, micro_batch: int, max_length: int, warmup: float,
    weight_decay: float, rehearsal: str | None, rehearsal_ratio: float, seed: int, bf16: bool,
    max_steps: int | None, lr_schedule: str, overwrite: bool, device: str | None,
) -> dict[str, Any]:  # fmt: skip
    return {
        "rho": rho, "epochs": epochs, "lr": lr, "batch_size": batch_size, "micro_batch": micro_batch,
        "max_length": max_length, "warmup": warmup, "weight_decay": weight_decay, "rehearsal": rehearsal,
        "rehearsal_ratio": rehearsal_ratio, "seed": seed, "bf16": bf16, "max_steps": max_steps,
        "lr_schedule": lr_schedule, "overwrite": overwrite, "device": device,
    }  # fmt: skip


def _sam(
    sam_every: int, sam_only_norm: bool, sam_backup_dtype: BackupDtype, sam_look_alpha: float | None
) -> dict[str, Any]:
    return {"sam_every": sam_every, "sam_only_norm": sam_only_norm, "sam_backup_dtype": sam_backup_dtype.value,
            "sam_look_alpha": sam_look_alpha}  # fmt: skip


def _scale(
    lora_r: int | None, lora_alpha: float | None, lora_targets: str | None, activation_checkpointing: bool
) -> dict[str, Any]:
    return {"lora_r": lora_r, "lora_alpha": lora_alpha, "lora_targets": lora_targets,
            "activation_checkpointing": activation_checkpointing}  # fmt: skip


def _learned(results: Path, runs: list[tuple[str, Path, dict[str, Any]]], device: str | None) -> None:
    """Score base and tuned runs on the held-out split and print the "Learned" summary (or why not)."""
    from cfbench.train.indomain import learned_after_finetune

    learned = learned_after_finetune(results, runs, device=device)
    if learned is None:
        typer.echo("Learned: not measured (no held-out split: the data is too small for the default, or --heldout 0)")
        return
    for line in learned.lines():
        typer.echo(line)


def _main_rank() -> bool:
    """Under torchrun only rank 0 prints (and runs --compare); the others end their process group here."""
    import os

    if int(os.environ.get("RANK", "0") or 0) == 0:
        return True
    from cfbench.train.distributed import finish

    finish()
    return False


def _quiet(quiet: bool) -> None:
    """--quiet also silences transformers' own loading/saving bars (global, fine in a CLI process)."""
    if quiet:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()


def _fmt(x: float | None, digits: int = 4) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _pm(stat: dict[str, Any], fmt: str = ".4f") -> str:
    """``mean ± std`` of a seed-summary entry (std ``-`` when fewer than two seeds had a value)."""
    if stat["mean"] is None:
        return "-"
    std = "-" if stat["std"] is None else format(stat["std"], fmt)
    return f"{format(stat['mean'], fmt)} ± {std}"
