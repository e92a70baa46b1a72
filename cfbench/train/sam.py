"""Sharpness-Aware Minimization (SAM, Foret et al. 2021) and adaptive SAM (ASAM, Kwon et al. 2021).

Li et al. 2024 ("Revisiting Catastrophic Forgetting in LLM Tuning", arXiv 2406.04836) show that a
flatter loss landscape forgets less; SAM with a large radius (ρ≈2 for full fine-tuning) is their
remedy. This wrapper works with any ``torch.optim`` optimizer and does exactly two forward+backward
passes per step:

1. gradient ``g`` at ``w`` (accumulate micro-batches as usual), then :meth:`SAM.first_step`
   moves the weights to ``w + ε`` with ``ε = ρ·g/‖g‖`` (ASAM: ``ε = ρ·w²·g/‖|w|·g‖``);
2. gradient at ``w + ε`` (same micro-batches), then :meth:`SAM.second_step` puts ``w`` back and lets
   the base optimizer step with that gradient.

Why the norm is right in every setting:

* Gradient accumulation: ``first_step`` runs once, after every micro-batch's backward, so ``‖g‖``
  is the norm of the accumulated (full-batch) gradient, never a per-micro-batch norm.
* DDP: DDP all-reduces (averages) gradients inside ``backward`` (with ``no_sync`` on the last
  micro-batch), so every rank holds the *same full* gradient and its local norm already is the
  global norm. Summing squares across ranks here would be wrong (``√world_size`` too large), so
  nothing is communicated and ``ε`` is identical on every rank, which keeps replicas in sync.
* Sharded parameters (FSDP2 ``fully_shard`` DTensors, FSDP1 ``FlatParameter``s, ZeRO-style
  splits): each rank holds only a slice of the gradient, so the squared norm of the local slice is
  all-reduced (SUM) before the square root. The paper's code took a per-shard norm, which gives
  each shard its own radius. Detected automatically for DTensors and FlatParameters; pass
  ``sharded=True`` for hand-made splits.

Memory and time: one buffer per parameter holding the unperturbed weights, so restoring is an
exact copy (``(w + ε) - ε`` is not exact in low precision) and no other weight-sized tensor is
allocated: ``ε`` is never materialised, the perturbation is one fused in-place
``w += s·g`` (ASAM: ``g ← w·g`` in place, then ``w += s·g·w``). Per step SAM adds about eight
weight-sized memory passes (norm, copy, perturb, restore), roughly one fused AdamW step, and one
host synchronisation (the norm as a Python scalar).

Cheaper variants (all off by default; with them off the code path is exact SAM as above):

* ``every_k`` (SAM every k steps, the naive schedule that LookSAM, Liu et al. 2022, *Towards
  Efficient and Scalable Sharpness-Aware Minimization*, improves on): optimizer steps 0, k, 2k,
  ... are SAM steps (two passes); the others are plain base-optimizer steps on the gradient at
  ``w`` (one pass). ``every_k=1`` is exact SAM, bit for bit.
* ``look_alpha`` α (with ``every_k`` > 1: LookSAM proper). At each SAM step the part of the SAM
  gradient ``g_s`` orthogonal to ``g`` is kept, ``g_v = g_s − (⟨g, g_s⟩/‖g‖²)·g``; ``g``'s direction
  is ``ε``'s, read from the weights before they are restored, so no copy of ``g`` is made. The
  in-between steps use ``g + α·‖g‖/‖g_v‖·g_v``. ``g_v`` is a persistent weight-sized buffer (so
  LookSAM costs SAM's memory plus one more copy, for SAM-k's passes) and is not saved in
  ``state_dict``: after a resume the in-between steps before the next SAM step are SAM-k steps.
  Plain SAM only (not ASAM, not with ``perturb``), and not on sharded parameters (refused).
  ``look_alpha=0`` is SAM-k bit for bit.
* ``perturb`` (SAM-ON, Mueller et al. 2023, *Normalization Layers Are All That Sharpness-Aware
  Minimization Needs*): only these parameters (normally the normalisation gains/biases, see
  :func:`norm_parameters`) are moved to ``w + ε``; ``ε = ρ·g_N/‖g_N‖`` with the norm over *their*
  gradients only, so ρ is the radius in that subspace. All parameters still get the base update
  with the gradient at the perturbed point. Only the subset gets a restore buffer. Sharded: the
  subset's squared norm is all-reduced exactly like the full one (a rank whose shard holds no norm
  parameter contributes zero).
* ``backup_dtype`` (``torch.bfloat16``/``torch.float16``): the buffer holds ``ε`` rounded to that
  dtype instead of a float32 copy of ``w`` (half the bytes). The weights move by exactly that
  rounded ``ε'`` and are restored by subtracting it: ``fl(fl(w + ε') − ε')``, whose error per
  element is at most ``u·(2|w| + |ε'|)·(1 + u)`` with ``u = 2⁻²⁴`` (float32 weights), about one
  float32 ulp of ``w``, the size of one rounding of the base optimizer's own update. ``ε'`` differs
  from ``ε`` by ≤ 2⁻⁸ relative per element in bfloat16 (radius off by < 0.4 %); float16 rounds to
  2⁻¹¹ for normal numbers but flushes elements below 3·10⁻⁸ to zero and keeps few bits below
  6·10⁻⁵, while per-element ε is ~ρ/√n (10⁻⁵ at 7B), so prefer bfloat16. A bfloat16 copy
  of *w* was not used: restoring from it rounds every weight to bfloat16 every step, which erases
  AdamW updates smaller than half a bfloat16 ulp (lr 5e-6 against ulp ≈ 1e-4 at |w| ≈ 0.02):
  training would stall. With ``backup_dtype`` the gradients hold ``ε`` after :meth:`SAM.first_step`
  (overwritten in place, as ASAM already does, to avoid a weight-sized temporary).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from torch.optim import Optimizer

__all__ = ["BACKUP_DTYPES", "SAM", "norm_parameters"]

BACKUP_DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}

_NORM_TYPES: tuple[type[torch.nn.Module], ...] = tuple(
    t
    for t in (
        torch.nn.LayerNorm,
        getattr(torch.nn, "RMSNorm", None),
        torch.nn.GroupNorm,
        torch.nn.modules.batchnorm._BatchNorm,
        torch.nn.modules.instancenorm._InstanceNorm,
        torch.nn.LocalResponseNorm,
    )
    if t is not None
)
_NORM_NAME_PARTS = ("norm", "ln_", "ln1", "ln2", "ln_f", "layernorm", "rmsnorm")


def norm_parameters(model: torch.nn.Module) -> list[Tensor]:
    """The normalisation-layer parameters of ``model`` (SAM-ON's perturbed set), trainable only.

    By module type first: torch's norm layers, and any module whose class name ends in ``Norm``
    (``LlamaRMSNorm``, ``Qwen2RMSNorm``, FSDP2's ``FSDPLlamaRMSNorm``: model code defines its own
    classes). Then, as a fallback for norm layers that are plain ``Parameter``s or oddly named
    classes, parameters whose dotted module path has a part containing ``norm``, ``ln_``, ``ln1`` or
    ``ln2`` (GPT-2's ``ln_1``/``ln_f``). Raises ``ValueError`` when nothing matches: SAM-ON would then be
    plain AdamW with extra passes.
    """
    found: dict[int, Tensor] = {}
    for module in model.modules():
        if isinstance(module, _NORM_TYPES) or type(module).__name__.lower().endswith("norm"):
            for p in module.parameters(recurse=False):
                if p.requires_grad:
                    found[id(p)] = p
    for name, p in model.named_parameters():
        parts = name.lower().split(".")[:-1]
        if p.requires_grad and any(any(k in part for k in _NORM_NAME_PARTS) for part in parts):
            found.setdefault(id(p), p)
    if not found:
        raise ValueError("no normalisation-layer parameters found (by module type or by name) for only_norm")
    return list(found.values())


def _local(t: Tensor) -> Tensor:
    """The local shard of a DTensor (a view sharing storage), or ``t`` itself."""
    to_local = getattr(t, "to_local", None)
    return to_local() if callable(to_local) else t


def _looks_sharded(params: Iterable[Tensor]) -> bool:
    """True when parameters are FSDP2 DTensors or FSDP1 FlatParameters (gradients are slices)."""
    names = {"DTensor", "FlatParameter"}
    return any(type(p).__name__ in names or getattr(p, "_is_flat_param", False) for p in params)


class SAM(Optimizer):
    """SAM/ASAM around a base optimizer; ``param_groups`` are shared with the base optimizer.

    ``SAM(params, torch.optim.AdamW, rho=2.0, lr=5e-6)`` builds the base optimizer from the class and
    keyword arguments; ``SAM(None, existing_optimizer, rho=2.0)`` wraps an existing one. LR
    schedulers may be attached to either object (they edit the same group dicts). ``rho`` and
    ``adaptive`` live in each param group, so they can differ between groups.

    Use either ``loss = sam.step(closure)`` (the closure runs forward+backward and is called twice)
    or the explicit form::

        loss(batch).backward(); sam.first_step(zero_grad=True)
        loss(batch).backward(); sam.second_step(zero_grad=True)
    """

    def __init__(
        self,
        params: Iterable[Any] | None,
        base_optimizer: type[Optimizer] | Optimizer,
        rho: float = 2.0,
        adaptive: bool = False,
        *,
        eps: float = 1e-12,
        sharded: bool | None = None,
        process_group: Any = None,
        every_k: int = 1,
        perturb: Iterable[Tensor] | None = None,
        backup_dtype: torch.dtype | None = None,
        look_alpha: float | None = None,
        **base_kwargs: Any,
    ) -> None:
        if not rho >= 0.0:
            raise ValueError(f"SAM rho must be >= 0, got {rho}")
        if not (isinstance(every_k, int) and every_k >= 1):
            raise ValueError(f"SAM every_k must be an integer >= 1, got {every_k!r}")
        if look_alpha is not None and not (look_alpha >= 0.0 and every_k > 1 and perturb is None):
            raise ValueError(
                f"SAM look_alpha (LookSAM) needs every_k > 1 and all parameters perturbed (no perturb subset), "
                f"and must be >= 0; got look_alpha={look_alpha}, every_k={every_k}, "
                f"perturb={'a subset' if perturb is not None else None}"
            )
        if backup_dtype not in (None, torch.float32, torch.bfloat16, torch.float16):
            raise ValueError(f"SAM backup_dtype must be None, float32, bfloat16 or float16, got {backup_dtype}")
        if isinstance(base_optimizer, Optimizer):
            if base_kwargs:
                raise TypeError(f"base optimizer keyword arguments {sorted(base_kwargs)} need a class, not an instance")
            base = base_optimizer
            if params is not None:
                given = _flatten_params(params)
                owned = {id(p) for g in base.param_groups for p in g["params"]}
                if {id(p) for p in given} != owned:
                    raise ValueError("params differ from the wrapped optimizer's parameters; pass params=None")
        else:
            if params is None:
                raise ValueError("params are required when base_optimizer is a class")
            base = base_optimizer(params, **base_kwargs)
        defaults = {"rho": rho, "adaptive": adaptive}
        # Registers the *same* group dicts (Optimizer.add_param_group keeps the dict object), then
        # shares the base optimizer's list so schedulers and add_param_group see one set of groups.
        super().__init__(base.param_groups, defaults)
        self.base_optimizer = base
        self.param_groups = base.param_groups
        self.defaults.update(base.defaults)
        self.defaults.update(defaults)
        self.eps = eps
        all_params = [p for g in self.param_groups for p in g["params"]]
        self.sharded = _looks_sharded(all_params) if sharded is None else sharded
        self.process_group = process_group
        self.every_k = every_k
        # float32 (or None) = the exact copy of w; a lower dtype = ε stored and subtracted back.
        self.backup_dtype = None if backup_dtype == torch.float32 else backup_dtype
        self.look_alpha = look_alpha
        if look_alpha is not None and self.sharded:
            raise ValueError("SAM look_alpha (LookSAM) is not supported with sharded parameters: use every_k alone")
        # Groups carry ``adaptive`` (the argument is their default), so this covers both.
        if look_alpha is not None and any(g["adaptive"] for g in self.param_groups):
            raise ValueError("SAM look_alpha (LookSAM) needs plain SAM, not adaptive=True (ASAM)")
        self._look_norm: float | None = None  # ‖g_v‖ of the last SAM step (None: no g_v yet)
        self._look_params: list[Tensor] = []
        self._perturb_ids: set[int] | None = None
        if perturb is not None:
            self._perturb_ids = {id(p) for p in perturb}
            owned = {id(p) for p in all_params}
            if not self._perturb_ids:
                raise ValueError("perturb is empty: SAM would never move the weights")
            if not self._perturb_ids <= owned:
                raise ValueError("perturb holds tensors that are not parameters of this optimizer")
        self._perturbed: list[tuple[list[Tensor], list[Tensor], list[Tensor]]] | None = None  # (params, w, buffer)
        self.last_grad_norm: Tensor | None = None
        # Optimizer steps taken (SAM or plain): with every_k, steps 0, k, 2k, ... are SAM steps.
        self.steps_done = 0

    @property
    def ascent_due(self) -> bool:
        """Whether the next optimizer step is a SAM step (always, unless ``every_k`` > 1)."""
        return self.steps_done % self.every_k == 0

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group to the base optimizer (and so to this one), with SAM's defaults filled in."""
        if "base_optimizer" not in self.__dict__:  # Optimizer.__init__ registering the shared dicts
            super().add_param_group(param_group)
            return
        param_group.setdefault("rho", self.defaults["rho"])
        param_group.setdefault("adaptive", self.defaults["adaptive"])
        self.base_optimizer.add_param_group(param_group)

    def _grad_norm(self, grads: list[Tensor]) -> Tensor:
        """L2 norm of all ``grads`` together, summed over ranks when the gradients are shards."""
        device = grads[0].device if grads else torch.device("cpu")
        if grads:
            # Half-precision grads are normed in float32 (no overflow); float32/64 accumulate in float64:
            # a float32 norm of a large tensor (an embedding gradient) is off by ~1e-5 relative on CPU,
            # which makes ε, and so the step, depend on how the tensor is sharded.
            low = [g for g in grads if g.dtype in (torch.float16, torch.bfloat16)]
            high = [g for g in grads if g.dtype not in (torch.float16, torch.bfloat16)]
            norms = list(torch._foreach_norm(high, 2.0, dtype=torch.float64)) if high else []
            if low:
                norms += torch._foreach_norm(low, 2.0, dtype=torch.float32)
            dtype = torch.float64 if any(n.dtype == torch.float64 for n in norms) else torch.float32
            sq = torch.stack([n.to(device=device, dtype=dtype) for n in norms]).square().sum()
        else:  # a rank whose shard holds no gradient still joins the all-reduce
            sq = torch.zeros((), device=device, dtype=torch.float32)
        if self.sharded and dist.is_available() and dist.is_initialized():
            dist.all_reduce(sq, op=dist.ReduceOp.SUM, group=self.process_group)
        return sq.sqrt()

    @torch.no_grad()
    def first_step(self, zero_grad: bool = False) -> None:
        """Move to ``w + ε`` using the current (fully accumulated) gradients.

        ASAM overwrites ``.grad`` with ``w·g`` (its norm is the one ASAM needs, and no temporary is
        allocated); ``zero_grad=True`` clears the gradients so the second backward starts from zero.
        """
        if self._perturbed is not None:
            raise RuntimeError("SAM.first_step called twice: call second_step (or restore) in between")
        per_group: list[tuple[dict[str, Any], list[Tensor], list[Tensor], list[Tensor]]] = []
        only = self._perturb_ids
        for group in self.param_groups:
            ps = [p for p in group["params"] if p.grad is not None and (only is None or id(p) in only)]
            per_group.append((group, ps, [_local(p) for p in ps], [_local(p.grad) for p in ps]))
        # ASAM: the norm is over |w|·g; ‖w·g‖ = ‖|w|·g‖, so g ← w·g in place (no temporary).
        for group, _, ws, gs in per_group:
            if group["adaptive"] and gs:
                torch._foreach_mul_(gs, ws)
        # One norm over all groups: groups that differ in rho still share the direction.
        norm = self._grad_norm([g for *_, gs in per_group for g in gs])
        self.last_grad_norm = norm
        # One host sync per step buys scalar-alpha foreach kernels: ε is never materialised, the
        # perturbation is a single fused read-modify-write of the weights.
        norm_value = float(norm)
        perturbed: list[tuple[list[Tensor], list[Tensor], list[Tensor]]] = []
        for group, ps, ws, gs in per_group:
            if not ws:
                continue
            scale = group["rho"] / max(norm_value, self.eps)  # eps only guards a zero gradient
            bufs = [self._buffer(p, w) for p, w in zip(ps, ws, strict=True)]
            if self.backup_dtype is not None:
                # ε in place in the gradients (no weight-sized temporary), rounded into the buffer,
                # and the weights moved by that rounded ε' so that subtracting it restores them.
                if group["adaptive"]:
                    torch._foreach_mul_(gs, ws)  # (w·g)·w = |w|²·g
                torch._foreach_mul_(gs, scale)
                torch._foreach_copy_(bufs, gs)
                torch._foreach_add_(ws, bufs)
                perturbed.append((ps, ws, bufs))
                continue
            torch._foreach_copy_(bufs, ws)
            if group["adaptive"]:
                torch._foreach_addcmul_(ws, gs, ws, value=scale)  # w + s·(w·g)·w = w + s·|w|²·g
            else:
                torch._foreach_add_(ws, gs, alpha=scale)  # w + s·g
            perturbed.append((ps, ws, bufs))
        self._perturbed = perturbed
        if zero_grad:
            self.zero_grad(set_to_none=True)

    def _buffer(self, p: Tensor, w: Tensor) -> Tensor:
        """The persistent weight-sized buffer of ``p`` (allocated once, reused every step).

        ``w_old`` (a copy of ``w``) by default; ``eps_low`` (``ε`` in ``backup_dtype``) otherwise.
        """
        state = self.state[p]
        key, dtype = ("w_old", w.dtype) if self.backup_dtype is None else ("eps_low", self.backup_dtype)
        buf = state.get(key)
        if buf is None or buf.shape != w.shape or buf.dtype != dtype or buf.device != w.device:
            buf = state[key] = torch.empty_like(w, dtype=dtype)
        return buf

    @torch.no_grad()
    def _keep_orthogonal_part(self) -> None:
        """LookSAM at a SAM step: ``g_v = g_s − proj_g(g_s)`` into a persistent buffer, and ‖g_v‖.

        ``g_s`` is the gradient at ``w + ε`` (in ``.grad`` now); ``g``'s direction is ``ε``'s (plain
        SAM: ``ε = ρ·g/‖g‖``), read from the weights before they are restored (``ε = w − w_old``, or
        the stored ``ε'`` with ``backup_dtype``), so ``g`` itself needs no buffer.
        """
        assert self._perturbed is not None
        gvs: list[Tensor] = []
        gss: list[Tensor] = []
        for ps, ws, bufs in self._perturbed:
            for p, w, buf in zip(ps, ws, bufs, strict=True):
                if p.grad is None:
                    continue
                g_s = _local(p.grad)
                state = self.state[p]
                gv = state.get("look_gv")
                if gv is None or gv.shape != g_s.shape or gv.dtype != g_s.dtype or gv.device != g_s.device:
                    gv = state["look_gv"] = torch.empty_like(g_s)
                if self.backup_dtype is None:
                    torch.sub(w, buf, out=gv)  # ε = (w + ε) − w_old
                else:
                    gv.copy_(buf)  # ε'
                gvs.append(gv)
                gss.append(g_s)
        dot = sum((torch.dot(a.reshape(-1), b.reshape(-1)).double() for a, b in zip(gvs, gss, strict=True)),
                  torch.zeros((), dtype=torch.float64))  # fmt: skip
        eps_sq = self._grad_norm(gvs).double().square()
        coef = float(dot / eps_sq) if float(eps_sq) > 0 else 0.0
        torch._foreach_mul_(gvs, -coef)
        torch._foreach_add_(gvs, gss)  # g_v = g_s − (⟨ε, g_s⟩ / ‖ε‖²)·ε
        self._look_norm = float(self._grad_norm(gvs))
        # the parameters whose g_v is this step's (a buffer of one without a gradient now is stale)
        self._look_params = [p for ps, _, _ in self._perturbed for p in ps if p.grad is not None]

    @torch.no_grad()
    def _add_orthogonal_part(self) -> None:
        """LookSAM between SAM steps: ``g ← g + α·‖g‖/‖g_v‖·g_v`` with the last SAM step's ``g_v``."""
        ps = [p for p in self._look_params if p.grad is not None]
        if not ps or self._look_norm is None:
            return
        gs = [_local(p.grad) for p in ps]
        scale = self.look_alpha * float(self._grad_norm(gs)) / max(self._look_norm, self.eps)
        torch._foreach_add_(gs, [self.state[p]["look_gv"] for p in ps], alpha=scale)

    @torch.no_grad()
    def restore(self) -> None:
        """Put the unperturbed weights back without stepping (e.g. when the second loss is NaN)."""
        if self._perturbed is None:
            return
        for _, ws, bufs in self._perturbed:
            if self.backup_dtype is None:
                torch._foreach_copy_(ws, bufs)  # exact
            else:
                torch._foreach_sub_(ws, bufs)  # fl(fl(w + ε') - ε'): within ~1 float32 ulp of w
        self._perturbed = None

    @torch.no_grad()
    def second_step(self, zero_grad: bool = False) -> None:
        """Restore ``w`` and apply the base optimizer with the gradient taken at ``w + ε``."""
        if self._perturbed is None:
            raise RuntimeError("SAM.second_step called without first_step")
        if self.look_alpha is not None:
            self._keep_orthogonal_part()
        self.restore()
        self.base_optimizer.step()
        self.steps_done += 1
        self._opt_called = True  # an LR scheduler attached to SAM knows a step happened
        if zero_grad:
            self.zero_grad(set_to_none=True)

    @torch.no_grad()
    def plain_step(self, zero_grad: bool = False) -> None:
        """A base-optimizer step on the gradient at ``w`` (no ascent): the in-between steps of ``every_k``."""
        if self._perturbed is not None:
            raise RuntimeError("SAM.plain_step called between first_step and second_step")
        if self.look_alpha is not None and self._look_norm is not None:
            self._add_orthogonal_part()
        self.base_optimizer.step()
        self.steps_done += 1
        self._opt_called = True
        if zero_grad:
            self.zero_grad(set_to_none=True)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """One SAM step: ``closure`` (forward+backward, returns the loss) runs at ``w`` and at ``w + ε``.

        Gradients must be zero on entry, as for any optimizer. Returns the loss at ``w``.
        """
        if closure is None:
            raise ValueError("SAM.step needs a closure that runs forward+backward; or use first_step/second_step")
        closure = torch.enable_grad()(closure)
        loss = closure()
        if not self.ascent_due:
            self.plain_step()
            return loss
        self.first_step(zero_grad=True)
        try:
            closure()
        except BaseException:
            self.restore()
            raise
        self.second_step()
        return loss

    def state_dict(self) -> dict[str, Any]:
        """The base optimizer's state; ``rho``/``adaptive`` travel in its (shared) param groups.

        The weight buffers are scratch space between the two passes and are not saved. With
        ``every_k`` > 1 the step count is saved too (it decides which step is a SAM step).
        """
        state = self.base_optimizer.state_dict()
        if self.every_k > 1:
            state["sam_steps_done"] = self.steps_done
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load into the base optimizer and re-share its (new) param-group list."""
        state_dict = dict(state_dict)
        self.steps_done = int(state_dict.pop("sam_steps_done", 0))
        self.base_optimizer.load_state_dict(state_dict)
        self.param_groups = self.base_optimizer.param_groups
        for group in self.param_groups:
            group.setdefault("rho", self.defaults["rho"])
            group.setdefault("adaptive", self.defaults["adaptive"])


def _flatten_params(params: Iterable[Any]) -> list[Tensor]:
    """Tensors from an iterable of tensors or of param-group dicts."""
    out: list[Tensor] = []
    for item in params:
        if isinstance(item, dict):
            out.extend(item["params"])
        else:
            out.append(item)
    return out
