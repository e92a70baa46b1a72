"""Multi-process fine-tuning with torch FSDP2 (``fully_shard``), launched by ``torchrun``.

``torchrun --nproc-per-node N -m cfbench finetune|pair ...`` runs the ordinary single-process code
path of :func:`cfbench.train.finetune.finetune` on every rank; this module supplies the hooks that
make it a data-parallel, fully sharded run:

* :func:`context_from_env` reads torchrun's ``WORLD_SIZE``/``RANK``/``LOCAL_RANK`` and starts the
  process group (NCCL on CUDA, gloo on CPU). ``WORLD_SIZE`` 1 or unset: no distributed hooks at all.
* :func:`shard_model` wraps every decoder layer, then the root, in ``fully_shard`` (ZeRO-3: each
  rank keeps 1/N of every parameter, gradient and AdamW state). With ``bf16`` the FSDP
  ``MixedPrecisionPolicy`` all-gathers parameters in bfloat16 for forward/backward but keeps the
  *sharded* parameters (the master weights), the optimizer states and the gradient reduction in
  float32. SAM perturbs and restores those float32 master shards, so ``ε`` itself is kept in
  float32; only the forward at ``w + ε`` sees it rounded to bfloat16 (how much survives is measured
  by ``benchmarks/sam_bf16.py``, see docs/scale.md).
* :func:`rank_micro_batches` gives each rank its slice of the global batch. Every rank runs the same
  number of forward/backward passes (collectives must match), padding with all-ignored micro-batches
  that contribute zero loss and zero gradient. Each rank divides its loss by the *global* target-token
  count and the FSDP-averaged gradient is scaled back by N, so the reduced gradient is the
  global-batch gradient of one process (the same normalisation as single-process accumulation).
* :class:`DistributedTrainer` all-reduces the reported loss, so NaN guards and loss curves agree on
  every rank; gradient norms are global (see :func:`cfbench.train.trainer.sharded_grad_norm` and
  :mod:`cfbench.train.sam`).
* :func:`save_consolidated` gathers a full state dict to CPU (a collective) and rank 0 alone writes
  one normal HF safetensors folder, atomically (temporary folder + rename).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from cfbench.errors import CfbenchError
from cfbench.train._io import MANIFEST, atomic_dir, write_json
from cfbench.train.data import IGNORE_INDEX, Encoded, collate, micro_batches
from cfbench.train.trainer import Trainer, all_reduce_sum


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in a torchrun job."""

    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def describe(self, bf16: bool, activation_checkpointing: bool) -> dict[str, Any]:
        """The manifest entry: how the run was spread (does not change the numbers beyond rounding)."""
        return {
            "launcher": "torchrun",
            "world_size": self.world,
            "backend": dist.get_backend() if dist.is_initialized() else None,
            "strategy": "FSDP2 fully_shard (every decoder layer + root), full sharding",
            "mixed_precision": "bf16 params for compute, fp32 master weights/optimizer/reduce" if bf16 else "fp32",
            "activation_checkpointing": activation_checkpointing,
            "sam_perturbation_dtype": "float32 (applied to the fp32 master shards)",
        }


def launched_world_size() -> int:
    """The number of processes torchrun launched (``WORLD_SIZE``; 1 when unset), read without
    starting anything, so callers can refuse an option before any work."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def context_from_env(device: str | None = None) -> DistContext | None:
    """A :class:`DistContext` when launched by torchrun with ``WORLD_SIZE`` > 1, else None.

    ``device``: ``cpu`` forces gloo on CPU (tests, CPU clusters); otherwise CUDA is used when present,
    one GPU per rank (``LOCAL_RANK``).
    """
    world = launched_world_size()
    if world <= 1:
        return None
    if not dist.is_available():
        raise CfbenchError("WORLD_SIZE > 1 but this torch build has no torch.distributed: install a standard torch")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and (device is None or device.startswith("cuda"))
    if device is not None and device.startswith("cuda") and not torch.cuda.is_available():
        raise CfbenchError(f"--device {device} but CUDA is not available: drop --device or pass --device cpu")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    if dist.get_world_size() != world:
        raise CfbenchError(f"WORLD_SIZE={world} but the process group has {dist.get_world_size()} ranks: relaunch")
    return DistContext(dist.get_rank(), world, local_rank, dev)


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The repeated transformer blocks (the FSDP units): ``model.model.layers`` for llama-like models."""
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if isinstance(layers, torch.nn.ModuleList) and len(layers):
        return list(layers)
    found = [m for m in model.modules() if type(m).__name__.endswith(("DecoderLayer", "Block"))]
    if not found:
        raise CfbenchError(f"cannot find the decoder layers of {type(model).__name__} to shard: use a llama-like model")
    return found


def shard_model(
    model: torch.nn.Module, ctx: DistContext, *, bf16: bool, activation_checkpointing: bool
) -> torch.nn.Module:
    """Fully shard ``model`` in place over all ranks (FSDP2) and return it.

    Activation checkpointing recomputes each decoder layer in backward (non-reentrant, so it
    composes with FSDP2 hooks and with SAM's second pass): activation memory drops from all layers
    to about one.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    if activation_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    mesh = init_device_mesh(ctx.device.type, (ctx.world,))
    policy = (
        MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        if bf16
        else MixedPrecisionPolicy()
    )
    for layer in decoder_layers(model):
        fully_shard(layer, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    return model


def rank_micro_batches(
    batch: Sequence[Encoded], micro_batch: int, pad_id: int, ctx: DistContext
) -> list[dict[str, torch.Tensor]]:
    """This rank's micro-batches of the global ``batch`` (examples ``rank::world``), padded to a common count.

    Ranks with fewer micro-batches get copies whose labels are all ignored: zero loss and zero
    gradient, but the same forward/backward collectives as the others (else FSDP would hang).
    """
    mine = list(batch[ctx.rank :: ctx.world])
    per_rank = -(-len(batch) // ctx.world)
    n_micro = -(-per_rank // micro_batch)
    out = [collate(mb, pad_id) for mb in micro_batches(mine, micro_batch)] if mine else []
    template = collate([batch[0]], pad_id)
    while len(out) < n_micro:
        out.append({**template, "labels": torch.full_like(template["labels"], IGNORE_INDEX)})
    return out


class DistributedTrainer(Trainer):
    """Trainer whose reported loss is the global-batch loss on every rank (one all-reduce)."""

    def _accumulate(self, batches: Sequence[dict[str, torch.Tensor]], n_target: int) -> torch.Tensor:
        loss = super()._accumulate(batches, n_target)
        # FSDP averages gradients over ranks, but each rank's loss is already divided by the
        # *global* token count: scale the sum back (exact for a power-of-two world size). Setting
        # FSDP's divide factor to 1 instead needs PREMUL_SUM, which gloo lacks.
        grads = [p.grad.to_local() if hasattr(p.grad, "to_local") else p.grad for p in self.params
                 if p.grad is not None]  # fmt: skip
        if grads:
            torch._foreach_mul_(grads, float(dist.get_world_size()))
        return all_reduce_sum(loss)


def make_trainer(model: torch.nn.Module, optimizer: str, **kwargs: Any) -> DistributedTrainer:
    """A :class:`DistributedTrainer`; ``kwargs`` as for :class:`cfbench.train.trainer.Trainer`."""
    return DistributedTrainer(model, optimizer, **kwargs)


def save_consolidated(
    model: torch.nn.Module, tokenizer: Any, out: Path, manifest: dict[str, Any], ctx: DistContext
) -> None:
    """Gather the full float32 state dict (every rank takes part), rank 0 writes one HF folder atomically."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    for key in _tied_duplicates(model):
        full.pop(key, None)  # gathered as a separate copy; the HF folder stores tied weights once
    if ctx.is_main:
        with atomic_dir(out) as tmp:
            model.save_pretrained(tmp, state_dict={k: v.contiguous() for k, v in full.items()})
            tokenizer.save_pretrained(tmp)
            write_json(tmp / MANIFEST, manifest)
    dist.barrier()


def _tied_duplicates(model: torch.nn.Module) -> list[str]:
    """State-dict keys of the output embedding when it is tied to the input one (e.g. SmolLM2)."""
    config = getattr(model, "config", None)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    if not getattr(text, "tie_word_embeddings", False) or not hasattr(model, "get_output_embeddings"):
        return []
    head = model.get_output_embeddings()
    names = [name for name, module in model.named_modules() if module is head and name]
    return [f"{name}.weight" for name in names]


def finish() -> None:
    """Tear the process group down (each rank, at the end of the command)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
