"""The hf backend's model loading: a full model, or a base with a LoRA adapter on, shared across adapters.

A LoRA adapter is scored as its base with the adapter injected in memory (``PeftModel``), never
merged to disk. Scored one at a time, every adapter of a run loads the base again. Inside a
:func:`cfbench.backends.reuse.reuse_loads` scope (``compare``, ``sweep``) the base is loaded once
(:class:`SharedBase`): the first adapter wraps it in a ``PeftModel``, every later adapter of the same
base is added to that model (``load_adapter``) and switched to (``set_adapter``), and the base
itself is scored with every adapter layer disabled — the switch ``PeftModel.disable_adapter()``
flips for the length of a ``with`` block, held here for as long as the base's backend scores. Each
LoRA layer then returns exactly its wrapped base layer's output, and an active adapter adds exactly
its own ``B·A·x`` term (layers it does not adapt skip it), so the numbers are those of a separate
load, bit for bit (tests/test_adapters.py).

Adapters with ``bias`` other than ``"none"`` train the base's own bias vectors, which disabling the
adapter layers does not undo (peft warns as much): they are loaded on a fresh base, as outside a
scope. An adapter no backend uses any more is deleted when the next one is added, so a long sweep
holds one base and at most the adapters of live backends plus one.
"""

from __future__ import annotations

import gc
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cfbench.backends import reuse
from cfbench.errors import CfbenchError
from cfbench.models.adapter import ADAPTER_CONFIG, adapter_marker
from cfbench.models.checkpoint import check_model_type

_HELD_AS = "hf"  # this backend's entry in cfbench.backends.reuse


def load_pretrained(path: str | Path, **kwargs: Any) -> Any:
    """``AutoModelForCausalLM.from_pretrained``: the one place the hf backend reads weights."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path), **kwargs)


def _peft_model_class(model_path: str | Path) -> Any:
    try:
        from peft import PeftModel
    except ImportError as exc:
        raise CfbenchError(f"{model_path} is a LoRA adapter, which needs peft: pip install 'cfbench[lora]'") from exc
    return PeftModel


def load_causal_lm(model_path: str | Path, **kwargs: Any) -> Any:
    """``AutoModelForCausalLM.from_pretrained``, or for a LoRA adapter view its base with the adapter on.

    The adapter is injected into the base's layers in memory (``PeftModel``), never merged to
    disk; the returned module is the base's own class (so its attention and head code run as
    usual). An adapter that does not change the logits is refused rather than scored as the base.
    """
    marker = adapter_marker(model_path)
    check_model_type(Path(model_path) if marker is None else Path(marker["base_path"]))  # one line, not a ValueError
    if marker is None:
        return load_pretrained(model_path, **kwargs)
    peft_cls = _peft_model_class(model_path)
    base = load_pretrained(marker["base_path"], **kwargs)
    peft_model = peft_cls.from_pretrained(base, str(model_path), is_trainable=False)
    peft_model.eval()
    _refuse_inert_adapter(peft_model, marker)
    return peft_model.get_base_model()


def _refuse_inert_adapter(peft_model: Any, marker: dict[str, Any]) -> None:
    """One forward with and without the adapter: identical logits mean it is not applied (lm-eval #2432)."""
    ids = torch.arange(1, 9, device=peft_model.device).unsqueeze(0) % max(2, peft_model.config.vocab_size)
    with torch.no_grad():
        on = peft_model(input_ids=ids).logits
        with peft_model.disable_adapter():
            off = peft_model(input_ids=ids).logits
    if torch.equal(on, off):
        raise CfbenchError(
            f"adapter {marker.get('adapter')} leaves the logits of base {marker.get('base_spec')} unchanged, so its "
            "scores would be the base's: pass a trained adapter (or the right --base)"
        )


class SharedBase:
    """One loaded base and the LoRA adapters added to it, kept in a reuse scope between backends."""

    def __init__(self, key: tuple[str, ...], model: Any, device: torch.device) -> None:
        self.key, self.model, self.device = key, model, device
        self.peft: Any = None  # the PeftModel around ``model``, from the first adapter on
        self.users: dict[str, int] = {}  # adapter name -> backends scoring with it
        self.active: str | None = None  # the adapter now on (None: the plain base)

    def activate(self, adapter: str | None) -> None:
        """Put the model in ``adapter``'s state (None: every adapter layer off, i.e. the base)."""
        if self.peft is None or self.active == adapter:
            return
        if adapter is None:
            self.peft.base_model.disable_adapter_layers()
        else:
            self.peft.base_model.enable_adapter_layers()
            self.peft.set_adapter(adapter, inference_mode=True)
        self.active = adapter

    def add_adapter(self, view: Path, marker: dict[str, Any]) -> str:
        """Load the adapter of ``view`` into the shared model (once) and count one more user of it."""
        name = "cfb_" + hashlib.sha256(str(Path(view).resolve()).encode()).hexdigest()[:16]
        if name not in self.users:
            try:
                if self.peft is None:
                    self.peft = _peft_model_class(view).from_pretrained(
                        self.model, str(view), adapter_name=name, is_trainable=False
                    )
                else:
                    self.peft.load_adapter(str(view), adapter_name=name, is_trainable=False)
                self.model.to(self.device)
                self.peft.eval()
                self.active = "\0"  # unknown until activated
                self.activate(name)
                _refuse_inert_adapter(self.peft, marker)
            except BaseException:
                reuse.drop(_HELD_AS)  # half-added: the next backend loads the base afresh
                raise
            self.users[name] = 0
        self.users[name] += 1
        self._prune(keep=name)
        return name

    def done_with(self, adapter: str) -> None:
        """A backend closed; its adapter is deleted when the next one is added (one always stays)."""
        if adapter in self.users:
            self.users[adapter] = max(0, self.users[adapter] - 1)

    def _prune(self, keep: str) -> None:
        for name, n in list(self.users.items()):
            if n == 0 and name != keep:
                self.peft.delete_adapter(name)
                del self.users[name]

    def release(self) -> None:
        """No longer kept: the memory goes when the last backend using it closes."""


@dataclass
class LoadedModel:
    """The module a backend scores with, and how to put it in this checkpoint's state before scoring."""

    model: Any
    shared: SharedBase | None = None
    adapter: str | None = None  # this checkpoint's adapter in ``shared`` (None: the plain base)

    def activate(self) -> None:
        if self.shared is not None:
            self.shared.activate(self.adapter)

    def release(self) -> None:
        if self.shared is not None and self.adapter is not None:
            self.shared.done_with(self.adapter)
        self.model = self.shared = None


def _switchable(view: Path) -> bool:
    """Whether an adapter can be switched off exactly (its config trains no bias of the base)."""
    cfg = json.loads((Path(view) / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    return str(cfg.get("bias") or "none") == "none"


def _free_kept() -> None:
    reuse.drop(_HELD_AS)
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def acquire_model(model_path: str | Path, device: torch.device, **kwargs: Any) -> LoadedModel:
    """The model of ``model_path`` on ``device``: loaded, or in a reuse scope the kept base (with the adapter on)."""
    marker = adapter_marker(model_path)
    if not reuse.reusing() or (marker is not None and not _switchable(Path(model_path))):
        if reuse.reusing():
            _free_kept()  # never two models in memory
        return LoadedModel(load_causal_lm(model_path, **kwargs).to(device))
    base_path = str(Path(marker["base_path"] if marker else model_path).resolve())
    key = (base_path, repr(sorted(kwargs.items())), str(device))
    shared = reuse.held(_HELD_AS)
    if not isinstance(shared, SharedBase) or shared.key != key:
        _free_kept()  # before loading the next one: never two models in memory
        shared = SharedBase(key, load_pretrained(base_path, **kwargs).to(device), device)
        reuse.hold(_HELD_AS, shared)
    if marker is None:
        return LoadedModel(shared.model, shared)
    return LoadedModel(shared.model, shared, shared.add_adapter(Path(model_path), marker))
