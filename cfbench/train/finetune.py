"""Full fine-tuning with AdamW, SAM or ASAM, and the paper's compute-matched pair.

Li et al. 2024 (arXiv 2406.04836) compare, at equal compute, AdamW for 2 epochs against SAM
(ρ≈2, AdamW as base optimizer) for 1 epoch, lr 5e-6, batch 128: a SAM step costs two
forward+backward passes. :func:`pair` runs exactly that comparison.

Design choices, each for a reason:

* Global batch = ``batch_size`` examples by gradient accumulation over micro-batches. Each
  micro-batch loss is its summed token loss divided by the number of target tokens in the *whole*
  global batch, so any micro-batch size gives the same gradient as one big batch (the per-micro-
  batch mean most trainers use weights short examples up). SAM accumulates the first pass, perturbs,
  then accumulates a second pass over the same micro-batches at the perturbed point.
* Loss on response tokens only (see :mod:`cfbench.train.data`); plain text trains on every token.
* Weight decay skips 1-D tensors (norm gains), as usual for transformers.
* Linear warm-up then cosine decay to zero over the run.
* A non-finite loss or gradient stops the run before the bad update: the weights in memory are the
  last good ones, and they are saved (atomically) with a manifest that says so. "Good" is checked,
  not assumed: after every update the weights must be finite and below an absurd magnitude
  (:func:`divergence`), and the step must not show a collapsed model (loss at ln(vocab), the loss of
  a uniform prediction, with ~zero gradient: training has stopped learning anything). Either stops
  the run with an error and *no weights are written*: the weights in memory are already the bad
  ones, and keeping a copy of the previous step would double the memory of every run. The output
  folder then holds only the manifest (status ``diverged``), which eval cannot load.
* Outputs are complete HF folders (safetensors + tokenizer) plus ``cfbench_manifest.json``, written
  atomically. Re-running an identical, completed request returns the existing folder.

The optimizer step, the NaN guard and the divergence checks are :mod:`cfbench.train.trainer`. Here
:func:`finetune` runs a :class:`FinetuneRequest` through stages that can each be called alone:
:func:`check_request` → :func:`load_inputs` → :func:`encode_train_set` → :func:`build_run` →
:func:`plan_steps` / :func:`start_manifest` → :func:`train_loop` → :func:`finish_run`.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import shutil
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

import cfbench.train.distributed as distributed
from cfbench.errors import CfbenchError
from cfbench.fsutil import check_room
from cfbench.integrations.probe import ForgettingMonitor, Probe, check_max_overhead, overhead_line, parse_budgets
from cfbench.models.checkpoint import ResolvedCheckpoint, check_model_type, float32_weight_bytes, resolve_checkpoint
from cfbench.train._io import MANIFEST, atomic_dir, check_output_dir, environment, write_json
from cfbench.train.data import (
    Encoded,
    Example,
    LoadedData,
    collate,
    encode_example,
    examples_sha256,
    load_data,
    micro_batches,
    mix_rehearsal,
)
from cfbench.train.distributed import DistContext
from cfbench.train.indomain import HeldoutSplit, split_data, without_heldout
from cfbench.train.lora import apply_lora, base_reference, check_save_mode, lora_settings, merge_for_save, save_adapter
from cfbench.train.trainer import (
    EXPLODED_FACTOR,
    EXPLODED_FLOOR,
    OPTIMIZERS,
    NonFiniteError,
    Trainer,
    divergence,
    max_abs_weight,
)
from cfbench.train.trainer import token_loss_sum as token_loss_sum  # re-exported: benchmarks import it from here

LABELS = {"adamw": "w/o SAM", "sam": "w/ SAM", "asam": "w/ ASAM"}


@dataclass
class FinetuneResult:
    """Where the checkpoint went and its manifest (hyper-parameters, loss curve, hashes)."""

    path: Path
    manifest: dict[str, Any]

    @property
    def label(self) -> str:
        return str(self.manifest.get("label", self.manifest.get("method", "")))

    @property
    def steps(self) -> int:
        return int(self.manifest["steps"])

    @property
    def final_loss(self) -> float | None:
        return self.manifest.get("final_loss")


SCHEDULES = ("cosine", "linear", "constant")
# Hyper-parameters of the SAM run of a pair that its AdamW run does not share.
SAM_ONLY_HYPERPARAMETERS = (
    "optimizer", "rho", "epochs", "max_steps", "sam_every", "sam_only_norm", "sam_backup_dtype", "sam_look_alpha",
)  # fmt: skip
SAM_BACKUP_DTYPES = ("fp32", "bf16", "fp16")


def lr_factor(step: int, total: int, warmup_steps: int, schedule: str = "cosine") -> float:
    """Linear warm-up over ``warmup_steps`` (the first step already has lr > 0), then ``schedule``:
    cosine or linear decay towards 0 at ``total``, or constant."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total - warmup_steps))
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule == "linear":
        return 1.0 - progress
    return 1.0


def _validate(
    optimizer: str,
    rho: float,
    epochs: int,
    lr: float,
    batch_size: int,
    micro_batch: int,
    max_length: int,
    warmup: float,
    weight_decay: float,
    rehearsal_ratio: float,
    max_steps: int | None,
    lr_schedule: str,
    heldout: int | None = None,
    sam_every: int = 1,
    sam_only_norm: bool = False,
    sam_backup_dtype: str | None = None,
    sam_look_alpha: float | None = None,
) -> None:
    sam_options = (
        sam_every != 1 or sam_only_norm or sam_backup_dtype not in (None, "fp32") or sam_look_alpha is not None
    )
    checks = [
        (optimizer in OPTIMIZERS, f"--optimizer {optimizer!r} is unknown: choose one of {', '.join(OPTIMIZERS)}"),
        (optimizer == "adamw" or (math.isfinite(rho) and rho > 0),
         f"--rho must be > 0 and finite for {optimizer} (the paper uses 2.0), got {rho}"),
        (epochs >= 1, f"--epochs must be >= 1, got {epochs}"),
        (math.isfinite(lr) and lr > 0, f"--lr must be > 0 and finite (the paper uses 5e-6), got {lr}"),
        (batch_size >= 1, f"--batch-size must be >= 1 (the paper uses 128), got {batch_size}"),
        (micro_batch >= 1, f"--micro-batch must be >= 1, got {micro_batch}"),
        (max_length >= 2, f"--max-length must be >= 2 tokens, got {max_length}"),
        (math.isfinite(warmup) and warmup >= 0,
         f"--warmup must be >= 0 and finite (a fraction of the steps if < 1, else a step count), got {warmup}"),
        (math.isfinite(weight_decay) and weight_decay >= 0,
         f"--weight-decay must be >= 0 and finite, got {weight_decay}"),
        (0 <= rehearsal_ratio < 1, f"--rehearsal-ratio must be in [0, 1), got {rehearsal_ratio}"),
        (max_steps is None or max_steps >= 1, f"--max-steps must be >= 1, got {max_steps}"),
        (lr_schedule in SCHEDULES, f"--lr-schedule {lr_schedule!r} is unknown: choose one of {', '.join(SCHEDULES)}"),
        (heldout is None or heldout >= 0, f"--heldout must be >= 0 (0: no held-out split), got {heldout}"),
        (sam_every >= 1, f"--sam-every must be >= 1 (1 = a SAM step every step), got {sam_every}"),
        (
            sam_backup_dtype is None or sam_backup_dtype in SAM_BACKUP_DTYPES,
            f"--sam-backup-dtype {sam_backup_dtype!r} is unknown: choose one of {', '.join(SAM_BACKUP_DTYPES)}",
        ),
        (
            optimizer != "adamw" or not sam_options,
            "--sam-every/--sam-only-norm/--sam-backup-dtype/--sam-look-alpha need --optimizer sam or asam",
        ),
        (
            sam_look_alpha is None or (math.isfinite(sam_look_alpha) and sam_look_alpha >= 0),
            f"--sam-look-alpha must be a finite number >= 0 (LookSAM's α), got {sam_look_alpha}",
        ),
        (
            sam_look_alpha is None or sam_every > 1,
            "--sam-look-alpha (LookSAM) reuses the SAM gradient between SAM steps: add --sam-every K with K > 1",
        ),
        (
            sam_look_alpha is None or (optimizer == "sam" and not sam_only_norm),
            "--sam-look-alpha (LookSAM) needs plain SAM on all weights: use --optimizer sam without --sam-only-norm",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise CfbenchError(message)


def _fingerprint(hyper: dict[str, Any], base_hash: str, data: LoadedData, rehearsal: LoadedData | None) -> str:
    blob = json.dumps(
        {"hyper": hyper, "base": base_hash, "data": data.sha256, "rehearsal": rehearsal.sha256 if rehearsal else None},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def _existing(out: Path, fingerprint: str) -> dict[str, Any] | None:
    try:
        manifest = json.loads((out / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if manifest.get("status") == "completed" and manifest.get("request_fingerprint") == fingerprint:
        return manifest
    return None


def _progress(enabled: bool) -> Any:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),  # stdout stays for results
        disable=not enabled,
        transient=False,
    )


@dataclass
class FinetuneRequest:
    """Every argument of :func:`finetune`, as one value the stages share (same names and defaults).

    ``out`` is kept as given: it becomes a ``Path`` only after the options are checked, as it always
    did, so a bad option is reported before a bad ``out``.
    """

    base: str | Path
    data: str | Path
    out: str | Path
    optimizer: str = "adamw"
    rho: float = 2.0
    epochs: int = 1
    lr: float = 5e-6
    batch_size: int = 128
    micro_batch: int = 8
    max_length: int = 1024
    warmup: float = 0.03
    weight_decay: float = 0.0
    rehearsal: str | Path | None = None
    rehearsal_ratio: float = 0.2
    seed: int = 0
    bf16: bool = False
    max_steps: int | None = None
    lr_schedule: str = "cosine"
    overwrite: bool = False
    progress: bool = True
    device: str | None = None
    label: str | None = None
    lora_r: int | None = None
    lora_alpha: float | None = None
    lora_targets: str | Sequence[str] | None = None
    activation_checkpointing: bool = False
    heldout: int | None = None
    sam_every: int = 1
    sam_only_norm: bool = False
    sam_backup_dtype: str = "fp32"
    sam_look_alpha: float | None = None
    save: str = "merged"
    save_every: int | None = None
    monitor_every: int | None = None
    monitor_stop: Mapping[str, float] | Sequence[str] | None = None
    monitor_probe: Probe | None = None  # library only: a smaller probe (tests); default Probe.default()
    monitor_max_overhead: float | None = 0.1

    @property
    def run_label(self) -> str:
        """The label of the run in the manifest, the progress bar and the report."""
        return self.label or LABELS[self.optimizer]

    @property
    def effective_micro_batch(self) -> int:
        """A micro-batch never exceeds the global batch (the manifest records this value)."""
        return min(self.micro_batch, self.batch_size)


@dataclass
class Inputs:
    """Stage 1's result: the resolved base, the data and its held-out split, and the run's identity.

    ``hyper`` and ``fingerprint`` decide whether a finished folder is this very request (and reused).
    """

    resolved: ResolvedCheckpoint
    task_data: LoadedData
    task_examples: list[Example]
    split: HeldoutSplit | None
    reh_data: LoadedData | None
    lora: dict[str, Any] | None
    hyper: dict[str, Any]
    fingerprint: str
    reh_heldout_removed: int = 0  # rehearsal examples dropped because they are held-out documents


@dataclass
class TrainSet:
    """Stage 2's result: the examples trained on (task + rehearsal), encoded, and their tokenizer."""

    examples: list[Example]
    n_reh: int
    tokenizer: Any
    encoded: list[Encoded]
    n_truncated: int
    pad_id: int


@dataclass
class Run:
    """Stage 3's result: the model in training mode, its trainer, and where it runs."""

    model: torch.nn.Module
    trainer: Trainer
    ctx: DistContext | None
    device: torch.device
    lora: dict[str, Any] | None


@dataclass
class Plan:
    """How many steps, and the learning-rate schedule over them (the schedule's length is the plan's)."""

    steps_per_epoch: int
    planned: int
    warmup_steps: int
    scheduler: torch.optim.lr_scheduler.LambdaLR


@dataclass
class Outcome:
    """How the training loop ended: steps done, and why it stopped early (if it did)."""

    step: int
    failure: NonFiniteError | None
    diverged: str | None
    train_time_s: float


def check_request(req: FinetuneRequest) -> None:
    """Refuse a bad option before any loading, so a typo costs nothing."""
    _validate(
        req.optimizer, req.rho, req.epochs, req.lr, req.batch_size, req.micro_batch, req.max_length, req.warmup,
        req.weight_decay, req.rehearsal_ratio, req.max_steps, req.lr_schedule, req.heldout, req.sam_every,
        req.sam_only_norm, req.sam_backup_dtype, req.sam_look_alpha,
    )  # fmt: skip
    check_save_mode(req.save, req.lora_r)
    if req.save_every is not None and req.save_every < 1:
        raise CfbenchError(f"--save-every must be >= 1 (steps between step-N/ snapshots), got {req.save_every}")
    if req.monitor_every is not None and req.monitor_every < 1:
        raise CfbenchError(f"--monitor-every must be >= 1 (steps between forgetting probes), got {req.monitor_every}")
    if req.monitor_stop and req.monitor_every is None:
        raise CfbenchError("--monitor-stop needs --monitor-every N (how often the probe runs)")
    monitor_budgets(req.monitor_stop)
    check_max_overhead(req.monitor_max_overhead, "--monitor-max-overhead")
    if (req.save_every or req.monitor_every) and distributed.launched_world_size() > 1:
        raise CfbenchError("--save-every/--monitor-every under torchrun are not supported: run in one process")
    if req.sam_look_alpha is not None and distributed.launched_world_size() > 1:
        raise CfbenchError("--sam-look-alpha under torchrun (sharded FSDP) is not supported: use --sam-every alone")


def _hyperparameters(
    req: FinetuneRequest, reh_data: LoadedData | None, lora: dict[str, Any] | None, split: HeldoutSplit | None
) -> dict[str, Any]:
    """What changes the trained weights; the request fingerprint hashes it. Options added later are
    recorded only when set, so the fingerprints (and the reuse) of earlier runs stay as they were."""
    hyper: dict[str, Any] = {
        "optimizer": req.optimizer,
        "rho": req.rho if req.optimizer != "adamw" else None,
        "epochs": req.epochs,
        "lr": req.lr,
        "batch_size": req.batch_size,
        "max_length": req.max_length,
        "warmup": req.warmup,
        "weight_decay": req.weight_decay,
        "rehearsal_ratio": req.rehearsal_ratio if reh_data else None,
        "seed": req.seed,
        "bf16": req.bf16,
        "max_steps": req.max_steps,
        "base_optimizer": "AdamW(betas=(0.9, 0.999), eps=1e-8)",
        "lr_schedule": req.lr_schedule,
        "loss": "sum of target-token CE / target tokens per batch",
    }
    if lora is not None:  # only then: fingerprints of full fine-tuning runs stay as they were
        hyper["lora"] = lora
    if split is not None:  # likewise: a run without a held-out split trains on what it always did
        hyper["heldout"] = split.n
    # Likewise only when set: exact SAM's fingerprint (and its reuse of finished runs) is unchanged.
    if req.sam_every != 1:
        hyper["sam_every"] = req.sam_every
    if req.sam_only_norm:
        hyper["sam_only_norm"] = True
    if req.sam_backup_dtype != "fp32":
        hyper["sam_backup_dtype"] = req.sam_backup_dtype
    if req.sam_look_alpha is not None:
        hyper["sam_look_alpha"] = req.sam_look_alpha
    if req.save_every is not None:  # same weights, but a finished run without snapshots is not this run
        hyper["save_every"] = req.save_every
    if req.monitor_stop:  # a forgetting budget may end the run early: another run
        hyper["monitor"] = {"every": req.monitor_every, "stop": monitor_budgets(req.monitor_stop)}
        if req.monitor_max_overhead is not None:  # which steps are checked (so where it stops) depends on it
            hyper["monitor"]["max_overhead"] = req.monitor_max_overhead
    return hyper


def load_inputs(req: FinetuneRequest) -> Inputs:
    """Stage 1: resolve the base, read the data, split off the held-out documents, fix the fingerprint.

    Cheap (no model, no tokenizer), so a finished identical run is found before any real work.
    """
    resolved = resolve_checkpoint(str(req.base))
    task_data = load_data(req.data)
    task_examples, split = split_data(task_data, req.heldout, req.seed)
    reh_data = load_data(req.rehearsal) if req.rehearsal is not None else None
    reh_data, reh_removed = without_heldout(reh_data, split) if reh_data is not None else (None, 0)
    lora = lora_settings(req.lora_r, req.lora_alpha, req.lora_targets)
    if lora is not None and req.save == "adapter":  # another output, so another fingerprint
        lora["merged_on_save"] = False
    hyper = _hyperparameters(req, reh_data, lora, split)
    if reh_removed:  # only then, so unaffected runs keep their fingerprint; a leaky earlier run is not reused
        hyper["rehearsal_heldout_removed"] = reh_removed
    fingerprint = _fingerprint(hyper, resolved.content_hash, task_data, reh_data)
    return Inputs(resolved, task_data, task_examples, split, reh_data, lora, hyper, fingerprint, reh_removed)


def _encode_all(tokenizer: Any, examples: Sequence[Example], max_length: int) -> tuple[list[Encoded], int]:
    """Encoded examples that keep at least one target token, and how many hit ``max_length``."""
    encoded: list[Encoded] = []
    n_truncated = 0
    for ex in examples:
        enc = encode_example(tokenizer, ex, max_length)
        if enc.n_target > 0:
            encoded.append(enc)
        if len(enc.input_ids) >= max_length:
            n_truncated += 1
    return encoded, n_truncated


def _pad_id(tokenizer: Any) -> int:
    """The padding token (EOS when there is none, else 0); padded positions never carry a loss."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return int(pad_id) if pad_id is not None else 0


def encode_train_set(req: FinetuneRequest, inputs: Inputs) -> TrainSet:
    """Stage 2: mix in rehearsal data and tokenize; refuse a set with nothing to learn from."""
    if inputs.reh_data is not None:
        examples, n_reh = mix_rehearsal(inputs.task_examples, inputs.reh_data.examples, req.rehearsal_ratio, req.seed)
    else:
        examples, n_reh = list(inputs.task_examples), 0

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(inputs.resolved.path)
    encoded, n_truncated = _encode_all(tokenizer, examples, req.max_length)
    if not encoded:
        raise CfbenchError(
            f"no example of {inputs.task_data.source} has response tokens within --max-length {req.max_length}: "
            "raise --max-length"
        )
    return TrainSet(examples, n_reh, tokenizer, encoded, n_truncated, _pad_id(tokenizer))


def build_run(req: FinetuneRequest, inputs: Inputs) -> Run:
    """Stage 3: load the model, add LoRA adapters or FSDP2 shards, and make its trainer.

    The seed is set first and the steps keep this order, so adapter initialisation draws the same
    random numbers as in every earlier run with this seed.
    """
    torch.manual_seed(req.seed)
    ctx = distributed.context_from_env(req.device)
    sam_options: dict[str, Any] = {
        "sam_every": req.sam_every,
        "sam_only_norm": req.sam_only_norm,
        "sam_backup_dtype": None if req.sam_backup_dtype == "fp32" else req.sam_backup_dtype,
        "sam_look_alpha": req.sam_look_alpha,
    }
    if ctx is not None and inputs.lora is not None:
        raise CfbenchError("--lora-r under torchrun is not supported: run LoRA in one process or drop --lora-r")
    dev = ctx.device if ctx else torch.device(req.device or ("cuda" if torch.cuda.is_available() else "cpu"))

    from transformers import AutoModelForCausalLM

    check_model_type(inputs.resolved.path)
    model = AutoModelForCausalLM.from_pretrained(inputs.resolved.path, dtype=torch.float32)
    model.config.use_cache = False
    if inputs.lora is not None:
        model = apply_lora(model, inputs.lora)
    common = {"lr": req.lr, "rho": req.rho, "weight_decay": req.weight_decay, **sam_options}
    trainer: Trainer
    if ctx is not None:
        model = distributed.shard_model(
            model, ctx, bf16=req.bf16, activation_checkpointing=req.activation_checkpointing
        )
        # FSDP's MixedPrecisionPolicy already computes in bf16: no autocast on top.
        trainer = distributed.make_trainer(model, req.optimizer, bf16=False, **common)
    else:
        if req.activation_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model = model.to(dev)
        trainer = Trainer(model, req.optimizer, bf16=req.bf16, **common)
    model.train()
    return Run(model, trainer, ctx, dev, inputs.lora)


def make_batches(
    batch: list[Encoded], micro_batch: int, pad_id: int, ctx: DistContext | None
) -> list[dict[str, torch.Tensor]]:
    """This process's micro-batches of the global batch (under torchrun: this rank's share)."""
    if ctx is not None:
        return distributed.rank_micro_batches(batch, micro_batch, pad_id, ctx)
    return [collate(mb, pad_id) for mb in micro_batches(batch, micro_batch)]


def plan_steps(req: FinetuneRequest, n_examples: int, base_optimizer: torch.optim.Optimizer) -> Plan:
    """Steps per epoch, the planned total (capped by ``max_steps``), warm-up, and the lr schedule."""
    steps_per_epoch = math.ceil(n_examples / req.batch_size)
    planned = req.epochs * steps_per_epoch
    if req.max_steps is not None:
        planned = min(planned, req.max_steps)
    warmup_steps = math.ceil(req.warmup * planned) if req.warmup < 1 else int(req.warmup)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        base_optimizer, lambda s: lr_factor(s, planned, warmup_steps, req.lr_schedule)
    )
    return Plan(steps_per_epoch, planned, warmup_steps, scheduler)


def _base_entry(spec: str | Path, resolved: ResolvedCheckpoint) -> dict[str, Any]:
    return {
        "spec": str(spec),
        "name": resolved.name,
        "path": str(resolved.path),
        "kind": resolved.kind,
        "content_hash": resolved.content_hash,
    }


def _rehearsal_entry(
    reh_data: LoadedData | None, n_reh: int, ratio: float, n_heldout: int = 0
) -> dict[str, Any] | None:
    """The manifest's ``rehearsal``: ``n_examples`` counts what was left after removing the
    ``n_heldout_removed`` examples that are held-out documents of the task data."""
    if reh_data is None:
        return None
    return {
        "source": reh_data.source,
        "format": reh_data.format,
        "sha256": reh_data.sha256,
        "n_examples": len(reh_data.examples),
        "n_mixed_in": n_reh,
        "ratio": ratio,
        "n_heldout_removed": n_heldout,
    }


def _train_set_entry(train_set: TrainSet) -> dict[str, Any]:
    encoded, examples = train_set.encoded, train_set.examples
    return {
        "n_examples": len(encoded),
        "n_dropped_no_target": len(examples) - len(encoded),
        "n_truncated": train_set.n_truncated,
        "sha256": examples_sha256(examples),
        "target_tokens_per_epoch": sum(e.n_target for e in encoded),
        "prompt_format": "chat_template" if getattr(train_set.tokenizer, "chat_template", None) else "plain",
    }


def _loss_curve_fields(optimizer: str) -> dict[str, str]:
    """What each field of a ``loss_curve`` entry means (readers of the manifest need no code)."""
    return {
        "loss": "mean target-token loss of the global batch before the update",
        "loss_perturbed": "the same at the SAM-perturbed weights (sam/asam, SAM steps only)",
        "ascent": "1 for a SAM step (two passes), 0 for a plain AdamW step between them (--sam-every)",
        "grad_norm": "‖|w|·g‖ (the norm ASAM scales by)" if optimizer == "asam" else "‖g‖ of the global batch",
        "lr": "learning rate used for the update",
        "tokens": "target tokens in the global batch",
    }


def start_manifest(
    req: FinetuneRequest, inputs: Inputs, train_set: TrainSet, run: Run, plan: Plan, t_start: float
) -> dict[str, Any]:
    """The manifest as training starts (status ``running``); the loop appends to its ``loss_curve``."""
    task_data = inputs.task_data
    return {
        "cfbench_manifest": 1,
        "kind": "finetune",
        "status": "running",
        "method": req.optimizer,
        "label": req.run_label,
        "hyperparameters": {**inputs.hyper, "micro_batch": req.effective_micro_batch, "device": run.device.type},
        "request_fingerprint": inputs.fingerprint,
        "base": _base_entry(req.base, inputs.resolved),
        "data": {
            "source": task_data.source,
            "format": task_data.format,
            "sha256": task_data.sha256,
            "n_examples": len(task_data.examples),
        },
        "heldout": None if inputs.split is None else inputs.split.manifest(),
        "rehearsal": _rehearsal_entry(
            inputs.reh_data, train_set.n_reh, req.rehearsal_ratio, inputs.reh_heldout_removed
        ),
        "train_set": _train_set_entry(train_set),
        "steps_per_epoch": plan.steps_per_epoch,
        "planned_steps": plan.planned,
        "warmup_steps": plan.warmup_steps,
        "forward_backward_per_step": 2 if req.optimizer != "adamw" else 1,  # with --sam-every: of a SAM step
        "loss_curve_fields": _loss_curve_fields(req.optimizer),
        "distributed": None if run.ctx is None else run.ctx.describe(req.bf16, req.activation_checkpointing),
        "lora": run.lora,
        "steps": 0,
        "loss_curve": [],
        "started_at": datetime.fromtimestamp(t_start, timezone.utc).isoformat(),
        "environment": environment(),
    }


def train_loop(
    req: FinetuneRequest, run: Run, train_set: TrainSet, plan: Plan, curve: list[dict[str, Any]],
    on_step: Callable[[int], bool] | None = None,
) -> Outcome:  # fmt: skip
    """Stage 4: shuffled epochs of global batches until the plan is done or a step goes bad.

    A NaN/inf stops the loop before the bad update (the weights stay the last good ones); exploded or
    collapsed weights after an update stop it too. Each good step is appended to ``curve``, then
    ``on_step(step)`` runs (snapshots, the forgetting monitor); it returns True to stop training.
    """
    encoded, trainer = train_set.encoded, run.trainer
    rng = random.Random(req.seed)
    step = 0
    failure: NonFiniteError | None = None
    diverged: str | None = None
    stopped = False
    vocab = int(getattr(run.model.config, "vocab_size", None) or len(train_set.tokenizer))
    weight_limit = max(EXPLODED_FLOOR, EXPLODED_FACTOR * max_abs_weight(trainer.params))
    t_loop = time.perf_counter()
    with _progress(req.progress and (run.ctx is None or run.ctx.is_main)) as bar:
        task_id = bar.add_task(f"{req.run_label} ({req.optimizer})", total=plan.planned, loss="-")
        for epoch in range(req.epochs):
            order = list(range(len(encoded)))
            rng.shuffle(order)
            for start in range(0, len(order), req.batch_size):
                if step >= plan.planned:
                    break
                batch = [encoded[i] for i in order[start : start + req.batch_size]]
                n_target = sum(e.n_target for e in batch)
                lr_now = trainer.base_optimizer.param_groups[0]["lr"]
                try:
                    micro = make_batches(batch, req.effective_micro_batch, train_set.pad_id, run.ctx)
                    stats = trainer.step(micro, n_target)
                except NonFiniteError as exc:
                    failure = exc
                    break
                plan.scheduler.step()
                step += 1
                curve.append({"step": step, "epoch": epoch + 1, "lr": lr_now, "tokens": n_target, **stats})
                bar.update(task_id, advance=1, loss=f"{stats['loss']:.4f}")
                diverged = divergence(stats, max_abs_weight(trainer.params), weight_limit, vocab)
                stopped = on_step is not None and diverged is None and on_step(step)
                if diverged is not None or stopped:
                    break
            if failure is not None or diverged is not None or step >= plan.planned or stopped:
                break
    # The optimizer steps alone (no loading, hashing or saving): what a cost ratio between runs compares.
    return Outcome(step, failure, diverged, round(time.perf_counter() - t_loop, 3))


def _record_outcome(manifest: dict[str, Any], outcome: Outcome, optimizer: str, t_start: float) -> None:
    """Steps, passes, times and the final loss into the manifest (the status is decided after)."""
    curve = manifest["loss_curve"]
    step = outcome.step
    manifest["steps"] = step
    manifest["train_time_s"] = outcome.train_time_s
    if optimizer == "adamw":
        manifest["forward_backward_passes"] = step
    else:  # counted, not assumed: with --sam-every only the SAM steps take two passes
        manifest["sam_steps"] = sum(1 for c in curve if c.get("ascent", 1.0))
        manifest["forward_backward_passes"] = step + manifest["sam_steps"]
    manifest["final_loss"] = curve[-1]["loss"] if curve else None
    manifest["wall_time_s"] = round(time.time() - t_start, 3)
    manifest["finished_at"] = datetime.now(timezone.utc).isoformat()


def _save_run(run: Run, tokenizer: Any, out: Path, manifest: dict[str, Any], save: str, base: str | Path) -> None:
    """The trained weights as one normal HF folder: gathered from the shards, or LoRA merged in; with
    ``save="adapter"`` the LoRA adapter itself (naming its base), which every command scores as base + adapter.
    The ``step-N/`` snapshots of ``--save-every`` are kept inside ``out``."""
    if run.ctx is not None:
        distributed.save_consolidated(run.model, tokenizer, out, manifest, run.ctx)
        return
    carry = sorted(p.name for p in out.glob("step-*")) if out.is_dir() else []
    with atomic_dir(out, carry=carry) as tmp:
        if run.lora is not None and save == "adapter":
            save_adapter(run.model, tmp, base_reference(base))
        else:
            (merge_for_save(run.model) if run.lora is not None else run.model).save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_json(tmp / MANIFEST, manifest)


def save_snapshot(req: FinetuneRequest, run: Run, tokenizer: Any, manifest: dict[str, Any], step: int) -> Path:
    """``out/step-N/``: the weights after ``step`` (what ``cfbench sweep`` scores), training undisturbed.

    A LoRA run saved merged folds a copy of the model, never the one being trained; the manifest
    is the run's so far (its held-out split gives the sweep a learned signal per step).
    """
    import copy

    out = Path(req.out) / f"step-{step}"
    snap = {**manifest, "steps": step, "status": "snapshot", "saved_weights": f"after step {step}",
            "loss_curve": list(manifest["loss_curve"])}  # fmt: skip
    with atomic_dir(out) as tmp:
        if run.lora is not None and req.save == "adapter":
            save_adapter(run.model, tmp, base_reference(req.base))
        elif run.lora is not None:
            merge_for_save(copy.deepcopy(run.model)).save_pretrained(tmp)
        else:
            run.model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_json(tmp / MANIFEST, snap)
    return out


def monitor_budgets(stop: Mapping[str, float] | Sequence[str] | None) -> dict[str, float]:
    """``--monitor-stop kl=0.2`` (repeatable) or a mapping, checked like the callback's ``stop_at``."""
    if stop is None or isinstance(stop, Mapping):
        return parse_budgets(stop)
    pairs: dict[str, float] = {}
    for spec in stop:
        name, sep, value = str(spec).partition("=")
        try:
            pairs[name.strip()] = float(value) if sep else float("nan")
        except ValueError:
            pairs[name.strip()] = float("nan")
        if not sep or pairs[name.strip()] != pairs[name.strip()]:
            raise CfbenchError(f"--monitor-stop {spec!r} is not SIGNAL=VALUE: write e.g. --monitor-stop kl=0.2")
    return parse_budgets(pairs)


def _monitor_hook(req: FinetuneRequest, run: Run, tokenizer: Any, manifest: dict[str, Any]) -> Callable[[int], bool]:
    """``--monitor-every``: :class:`ForgettingMonitor` (the ``ForgettingCallback``'s code) on the model in memory.

    The base probe is scored now, before the first step; each check adds ``forgetting/*`` to the
    step's loss-curve entry, and a budget exceeded stops the run (the weights so far are saved).
    ``--monitor-max-overhead`` defers a check that would exceed it (:class:`OverheadBudget`); the
    manifest's ``monitor_overhead`` holds the measured share, refreshed after every step (so at the
    end it covers the whole run; :func:`run_finetune` prints it).
    """
    monitor = ForgettingMonitor(req.monitor_probe, monitor_budgets(req.monitor_stop), req.monitor_max_overhead)
    monitor.start(run.model, tokenizer)
    every = int(req.monitor_every or 1)
    manifest["monitor_overhead"] = monitor.budget.summary()

    def check(step: int) -> bool:
        due = step % every == 0 and monitor.due(step)
        values = monitor.check(run.model, step) if due else None
        manifest["monitor_overhead"] = monitor.budget.summary()
        if values is None:
            return False
        manifest["loss_curve"][-1].update(values)
        if monitor.stopped is not None:
            manifest["forgetting_stop"] = monitor.stopped
            print(f"[cfbench] forgetting budget exceeded: {monitor.stopped}; stopping training", file=sys.stderr)
            return True
        return False

    return check


def step_hooks(
    req: FinetuneRequest, run: Run, tokenizer: Any, manifest: dict[str, Any]
) -> Callable[[int], bool] | None:
    """What runs after each good step: ``--save-every`` snapshots, then the ``--monitor-every`` probe.
    Returns True to stop training."""
    if req.save_every is None and req.monitor_every is None:
        return None
    monitor = _monitor_hook(req, run, tokenizer, manifest) if req.monitor_every is not None else None

    def hook(step: int) -> bool:
        stop = monitor(step) if monitor is not None else False
        if req.save_every is not None and step % req.save_every == 0:
            save_snapshot(req, run, tokenizer, manifest, step)
        return stop

    return hook


def finish_run(
    req: FinetuneRequest,
    run: Run,
    train_set: TrainSet,
    manifest: dict[str, Any],
    outcome: Outcome,
    out: Path,
    t_start: float,
) -> FinetuneResult:
    """Stage 5: final manifest and weights, or an error that says what was (not) saved.

    Diverged: the weights in memory are already bad, so only the manifest is written and the run
    fails. Non-finite: the last good weights are saved, then the run fails. Else: completed.
    """
    _record_outcome(manifest, outcome, req.optimizer, t_start)
    step, failure = outcome.step, outcome.failure
    if outcome.diverged is not None:
        manifest["status"] = "diverged"
        manifest["stop_reason"] = f"{outcome.diverged} at step {step}"
        manifest["saved_weights"] = None
        if run.ctx is None or run.ctx.is_main:
            with atomic_dir(out) as tmp:  # the manifest (loss curve) only: there are no good weights
                write_json(tmp / MANIFEST, manifest)
        raise CfbenchError(
            f"training failed: {outcome.diverged} at step {step}; no weights were saved (only the manifest in {out}): "
            f"lower --lr (now {req.lr}) and re-run"
        )
    if failure is not None:
        manifest["status"] = "stopped_nonfinite"
        manifest["stop_reason"] = f"{failure.what} became {failure.value} at step {step + 1}"
        manifest["saved_weights"] = f"after step {step} (the last good update)"
    else:
        manifest["status"] = "completed"
    _save_run(run, train_set.tokenizer, out, manifest, req.save, req.base)
    if failure is not None:
        raise CfbenchError(
            f"training stopped: the {failure.what} became {failure.value} at step {step + 1}; the last good weights "
            f"(after step {step}) are saved in {out}: lower --lr (now {req.lr}) or check the data, then re-run"
        )
    return FinetuneResult(out, manifest)


def save_bytes(req: FinetuneRequest, base_folder: Path) -> int:
    """About how many bytes the run will write into ``--out``: the float32 weights, once per ``--save-every``
    snapshot too when ``--max-steps`` says how many there will be (a LoRA adapter alone: next to nothing)."""
    if req.lora_r is not None and req.save == "adapter":
        return 0
    copies = 1 + (req.max_steps // req.save_every if req.save_every and req.max_steps else 0)
    return copies * float32_weight_bytes(base_folder)


def run_finetune(req: FinetuneRequest) -> FinetuneResult:
    """:func:`finetune` on a request: the stages in order, or a finished identical run reused."""
    check_request(req)
    out = Path(req.out)
    t_start = time.time()
    inputs = load_inputs(req)
    if out.is_dir() and (done := _existing(out, inputs.fingerprint)) is not None and not req.overwrite:
        return FinetuneResult(out, done)
    check_output_dir(out, req.overwrite)
    check_room([out], save_bytes(req, inputs.resolved.path), "--out")  # not after training: nothing is saved then
    train_set = encode_train_set(req, inputs)
    run = build_run(req, inputs)
    plan = plan_steps(req, len(train_set.encoded), run.trainer.base_optimizer)
    manifest = start_manifest(req, inputs, train_set, run, plan, t_start)
    if req.save_every is not None and req.overwrite and out.is_dir():  # a replaced run's snapshots are not this run's
        for old in out.glob("step-*"):
            shutil.rmtree(old, ignore_errors=True)
    hooks = step_hooks(req, run, train_set.tokenizer, manifest)
    outcome = train_loop(req, run, train_set, plan, manifest["loss_curve"], hooks)
    if "monitor_overhead" in manifest:
        print(f"[cfbench] {overhead_line(manifest['monitor_overhead'])}", file=sys.stderr)
    return finish_run(req, run, train_set, manifest, outcome, out, t_start)


def finetune(
    base: str | Path,
    data: str | Path,
    out: str | Path,
    *,
    optimizer: str = "adamw",
    rho: float = 2.0,
    epochs: int = 1,
    lr: float = 5e-6,
    batch_size: int = 128,
    micro_batch: int = 8,
    max_length: int = 1024,
    warmup: float = 0.03,
    weight_decay: float = 0.0,
    rehearsal: str | Path | None = None,
    rehearsal_ratio: float = 0.2,
    seed: int = 0,
    bf16: bool = False,
    max_steps: int | None = None,
    lr_schedule: str = "cosine",
    overwrite: bool = False,
    progress: bool = True,
    device: str | None = None,
    label: str | None = None,
    lora_r: int | None = None,
    lora_alpha: float | None = None,
    lora_targets: str | Sequence[str] | None = None,
    activation_checkpointing: bool = False,
    heldout: int | None = None,
    sam_every: int = 1,
    sam_only_norm: bool = False,
    sam_backup_dtype: str = "fp32",
    sam_look_alpha: float | None = None,
    save: str = "merged",
    save_every: int | None = None,
    monitor_every: int | None = None,
    monitor_stop: Mapping[str, float] | Sequence[str] | None = None,
    monitor_probe: Probe | None = None,
    monitor_max_overhead: float | None = 0.1,
) -> FinetuneResult:
    """Fine-tune ``base`` on ``data`` and write an HF checkpoint folder with a manifest to ``out``.

    ``base``: anything :func:`cfbench.models.resolve_checkpoint` accepts (HF folder, ``smollm2-135m``,
    ``.gguf``, hub id). ``data``: ``.json``/``.jsonl``/``.txt`` or ``builtin:arithmetic``.
    ``optimizer``: ``adamw``, ``sam`` or ``asam`` (SAM/ASAM use AdamW as base optimizer).
    ``warmup``: fraction of the steps when < 1, else a number of steps, then ``lr_schedule`` (cosine,
    linear or constant) over the planned steps. ``max_steps`` caps the run (and the schedule).
    ``rehearsal``: general data mixed in as ``rehearsal_ratio`` of the training set.
    ``lora_r``: train rank-r LoRA adapters (peft) instead of all weights; they are merged into the
    weights on save, so the output is a normal checkpoint (``save="adapter"``: the adapter itself).
    Under ``torchrun`` (``WORLD_SIZE`` > 1)
    the run is data-parallel with FSDP2 full sharding (:mod:`cfbench.train.distributed`).
    ``heldout``: documents of ``data`` held out of training for the in-domain gain
    (:mod:`cfbench.train.indomain`; None: min(64, 10% of the distinct examples), 0: none); the
    split is recorded in the manifest under ``heldout``.
    Cheaper SAM (:mod:`cfbench.train.sam`; defaults are exact SAM): ``sam_every`` k = a SAM step on
    steps 0, k, 2k, ... and plain AdamW steps in between; ``sam_only_norm`` = perturb only the
    normalisation parameters (SAM-ON); ``sam_backup_dtype`` bf16/fp16 = keep ε in that dtype instead
    of a float32 copy of the weights (half the buffer, restore within ~1 float32 ulp);
    ``sam_look_alpha`` α (with ``sam_every`` > 1) = LookSAM: the in-between steps add back the last
    SAM gradient's part orthogonal to the current gradient, scaled by α·‖g‖/‖g_v‖.
    ``monitor_every`` N: score a forgetting probe every N steps (:class:`cfbench.integrations.probe.Probe`,
    the ``ForgettingCallback``'s code) into the loss curve; ``monitor_stop`` (``{"kl": 0.2}`` or
    ``["kl=0.2"]``) stops training when a signal passes its budget; ``monitor_max_overhead`` (0 < x <= 1,
    default 0.1) defers a check that would take the probe over that share of training time (None: none).
    ``save_every`` N: also write ``out/step-N/``, ``out/step-2N/``, ... during training (``cfbench sweep``).
    """
    return run_finetune(FinetuneRequest(
        base, data, out, optimizer=optimizer, rho=rho, epochs=epochs, lr=lr, batch_size=batch_size,
        micro_batch=micro_batch, max_length=max_length, warmup=warmup, weight_decay=weight_decay,
        rehearsal=rehearsal, rehearsal_ratio=rehearsal_ratio, seed=seed, bf16=bf16, max_steps=max_steps,
        lr_schedule=lr_schedule, overwrite=overwrite, progress=progress, device=device, label=label,
        lora_r=lora_r, lora_alpha=lora_alpha, lora_targets=lora_targets,
        activation_checkpointing=activation_checkpointing, heldout=heldout, sam_every=sam_every,
        sam_only_norm=sam_only_norm, sam_backup_dtype=sam_backup_dtype, sam_look_alpha=sam_look_alpha,
        save=save, save_every=save_every, monitor_every=monitor_every, monitor_stop=monitor_stop,
        monitor_probe=monitor_probe, monitor_max_overhead=monitor_max_overhead,
    ))  # fmt: skip

