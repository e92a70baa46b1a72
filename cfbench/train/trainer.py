"""One optimizer step of full fine-tuning (AdamW, SAM or ASAM) and the checks around it.

:class:`Trainer` takes a global batch as micro-batches and does one update; it is shared by
:func:`cfbench.train.finetune.finetune`, the FSDP2 subclass in :mod:`cfbench.train.distributed`
and the benchmarks. It sits below both so that neither imports the other to get it.

* Each micro-batch loss is its summed token loss (:func:`token_loss_sum`) divided by the number of
  target tokens in the *whole* global batch, so any micro-batch size gives the gradient of one big
  batch. SAM accumulates the first pass, perturbs, then accumulates a second pass over the same
  micro-batches at the perturbed point.
* Weight decay skips 1-D tensors (norm gains), as usual for transformers.
* A non-finite loss or gradient raises :class:`NonFiniteError` before the bad update, so the
  weights in memory are the last good ones. After a good update, :func:`divergence` (with
  :func:`max_abs_weight`) says whether the weights exploded or the model collapsed.
* Gradient norms and the weight maximum are global under FSDP2 (:func:`sharded_grad_norm`,
  :func:`all_reduce_sum`): every rank must reach the same stop decision or the collectives hang.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

from cfbench.errors import CfbenchError
from cfbench.train.data import IGNORE_INDEX
from cfbench.train.sam import BACKUP_DTYPES, SAM, norm_parameters

OPTIMIZERS = ("adamw", "sam", "asam")


class NonFiniteError(Exception):
    """Raised by :meth:`Trainer.step` before any update when a loss or gradient is NaN/inf."""

    def __init__(self, what: str, value: float) -> None:
        super().__init__(f"{what} is {value}")
        self.what = what
        self.value = value


def token_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed next-token cross-entropy over positions whose label is not ``-100`` (float32).

    Labels are shifted instead of logits, so the (large) logits tensor is never copied.
    """
    shifted = F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), shifted.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"
    )


# Collapse: loss within this fraction of ln(vocab) while the gradient norm is below COLLAPSE_GRAD.
COLLAPSE_LOSS_REL = 0.01
COLLAPSE_GRAD = 1e-6
# Exploded: max |w| above max(EXPLODED_FLOOR, EXPLODED_FACTOR × the starting max |w|).
EXPLODED_FLOOR = 1e3
EXPLODED_FACTOR = 100.0


def max_abs_weight(params: Sequence[torch.Tensor]) -> float:
    """max |w| over ``params`` (NaN if any is NaN); FSDP2 shards are reduced over all ranks."""
    local = []
    for p in params:
        t = p.detach()
        if type(t).__name__ == "DTensor":
            t = t.to_local()  # type: ignore[attr-defined]
        if t.numel():
            local.append(t)
    if not local:
        return 0.0
    m = torch.stack(torch._foreach_norm(local, float("inf"), dtype=torch.float32)).max()
    if not bool(torch.isfinite(m)):
        return float("nan")
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(m, op=torch.distributed.ReduceOp.MAX)
    return float(m)


def divergence(stats: dict[str, float], weight_max: float, limit: float, vocab: int) -> str | None:
    """Why the weights after this step are not good (exploded or collapsed), or None if they are."""
    if not math.isfinite(weight_max) or weight_max > limit:
        return f"the weights exploded (max |w| = {weight_max:.3g} > {limit:.3g})"
    uniform = math.log(vocab)
    grad = stats.get("grad_norm", math.inf)
    if abs(stats["loss"] - uniform) <= COLLAPSE_LOSS_REL * uniform and grad <= COLLAPSE_GRAD:
        return (
            f"the model collapsed to a uniform prediction (loss {stats['loss']:.4g} = ln(vocab {vocab}) with "
            f"gradient norm {grad:.3g})"
        )
    return None


def all_reduce_sum(value: torch.Tensor) -> torch.Tensor:
    """SUM over ranks (a copy); a no-op outside a process group."""
    if not (dist.is_available() and dist.is_initialized()):
        return value
    out = value.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def sharded_grad_norm(grads: Sequence[torch.Tensor]) -> torch.Tensor:
    """Global L2 norm of DTensor-sharded gradients: local squared norms all-reduced, then the root."""
    local = [g.to_local() if hasattr(g, "to_local") else g for g in grads]
    sq = torch.stack(torch._foreach_norm(local, 2.0, dtype=torch.float64)).square().sum() if local else None
    sq = torch.zeros((), dtype=torch.float64) if sq is None else sq
    return all_reduce_sum(sq).sqrt().cpu()


def _grad_norm(params: Sequence[torch.Tensor]) -> torch.Tensor:
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    if type(grads[0]).__name__ == "DTensor":  # FSDP2 shards: the norm must be global (all-reduced)
        return sharded_grad_norm(grads)
    # float64 accumulation: float32 norms of large tensors drift ~1e-5 relative with the sharding.
    return torch.stack(torch._foreach_norm(grads, 2.0, dtype=torch.float64)).norm()


class Trainer:
    """One optimizer step over a global batch given as micro-batches (shared with the benchmark)."""

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: str,
        *,
        lr: float,
        rho: float = 2.0,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        bf16: bool = False,
        sam_every: int = 1,
        sam_only_norm: bool = False,
        sam_backup_dtype: str | None = None,
        sam_look_alpha: float | None = None,
    ) -> None:
        self.model = model
        self.method = optimizer
        self.bf16 = bf16
        self.params = [p for p in model.parameters() if p.requires_grad]
        decay = [p for p in self.params if p.ndim >= 2]
        no_decay = [p for p in self.params if p.ndim < 2]
        groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        groups = [g for g in groups if g["params"]]
        device = self.params[0].device
        # fused AdamW: one kernel per tensor list, no temporaries (CPU and CUDA since torch 2.4).
        adam: dict[str, Any] = {"lr": lr, "betas": betas, "eps": eps, "fused": device.type in ("cpu", "cuda")}
        if optimizer == "adamw":
            self.optimizer: torch.optim.Optimizer = torch.optim.AdamW(groups, **adam)
            self.base_optimizer = self.optimizer
        elif optimizer in ("sam", "asam"):
            try:
                perturb = norm_parameters(model) if sam_only_norm else None
            except ValueError as exc:
                raise CfbenchError(f"--sam-only-norm: {exc}; drop --sam-only-norm for this model") from exc
            self.optimizer = SAM(
                groups, torch.optim.AdamW, rho=rho, adaptive=optimizer == "asam", every_k=sam_every, perturb=perturb,
                backup_dtype=BACKUP_DTYPES[sam_backup_dtype] if sam_backup_dtype else None,
                look_alpha=sam_look_alpha, **adam,
            )  # fmt: skip
            self.base_optimizer = self.optimizer.base_optimizer
        else:
            raise CfbenchError(f"unknown optimizer {optimizer!r}: choose one of {', '.join(OPTIMIZERS)}")
        self.device = device

    def _accumulate(self, batches: Sequence[dict[str, torch.Tensor]], n_target: int) -> torch.Tensor:
        """Forward+backward every micro-batch; grads end up as those of the global-batch mean loss."""
        total = torch.zeros((), dtype=torch.float32, device=self.device)
        for batch in batches:
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                logits = self.model(
                    input_ids=batch["input_ids"].to(self.device),
                    attention_mask=batch["attention_mask"].to(self.device),
                ).logits
            loss = token_loss_sum(logits, batch["labels"].to(self.device))
            del logits
            (loss / n_target).backward()
            total += loss.detach()
        return total / n_target

    def step(self, batches: Sequence[dict[str, torch.Tensor]], n_target: int) -> dict[str, float]:
        """One update; raises :class:`NonFiniteError` (weights untouched) on NaN/inf."""
        opt = self.optimizer
        loss = self._accumulate(batches, n_target)
        stats = {"loss": float(loss)}
        if not math.isfinite(stats["loss"]):
            opt.zero_grad(set_to_none=True)
            raise NonFiniteError("loss", stats["loss"])
        if isinstance(opt, SAM) and opt.ascent_due:
            if opt.every_k > 1:
                stats["ascent"] = 1.0
            opt.first_step(zero_grad=True)
            stats["grad_norm"] = float(opt.last_grad_norm)  # type: ignore[arg-type]
            try:
                if not math.isfinite(stats["grad_norm"]):
                    raise NonFiniteError("gradient norm", stats["grad_norm"])
                stats["loss_perturbed"] = float(self._accumulate(batches, n_target))
                if not math.isfinite(stats["loss_perturbed"]):
                    raise NonFiniteError("loss at the SAM-perturbed weights", stats["loss_perturbed"])
                norm2 = float(_grad_norm(self.params))
                if not math.isfinite(norm2):
                    raise NonFiniteError("gradient norm at the SAM-perturbed weights", norm2)
            except NonFiniteError:
                opt.restore()
                opt.zero_grad(set_to_none=True)
                raise
            opt.second_step(zero_grad=True)
        else:
            if isinstance(opt, SAM):  # only reached with every_k > 1
                stats["ascent"] = 0.0  # every_k: a plain AdamW step between SAM steps
            stats["grad_norm"] = float(_grad_norm(self.params))
            if not math.isfinite(stats["grad_norm"]):
                opt.zero_grad(set_to_none=True)
                raise NonFiniteError("gradient norm", stats["grad_norm"])
            if isinstance(opt, SAM):
                opt.plain_step()
            else:
                opt.step()
            opt.zero_grad(set_to_none=True)
        return stats
