"""Greedy ``generate_until`` for a transformers causal LM, with lm-eval's ``HFLM.generate_until`` semantics.

The in-domain exact match (:mod:`cfbench.train.indomain`) needs free-form answers, and the lm-eval
protocol's request type for them is ``generate_until``. This module mirrors what lm-eval 0.4's
``hf`` model does, so an answer generated here is the answer ``lm_eval --model hf`` would give:

* the EOS token's text is added to the stop strings (``handle_stop_sequences``);
* contexts are encoded with the tokenizer's default special tokens (none when the string already
  starts with BOS), left-padded, and left-truncated to ``max_length - max_gen_toks`` tokens;
* decoding is greedy (``do_sample=False``), at most ``max_gen_toks`` new tokens, with the KV cache;
* the generated ids are decoded with ``skip_special_tokens=True`` and cut at the first occurrence
  of any stop string (``postprocess_generated_text``): the stop string itself is not returned.

One deliberate difference, which changes no returned string: lm-eval stops a batch only when every
row has produced a stop string (each row's later tokens are then cut off), while here each row is
finished as soon as its own decoded output contains one of its stop strings (a per-row stopping
criterion), so a batch does not keep paying for rows that are done, and each request may carry its
own stop strings. Requests are grouped by ``max_gen_toks`` (it sets the context truncation) and
sorted longest-first within a group, as lm-eval does, to bound padding.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from cfbench.errors import CfbenchError
from cfbench.requests import GenerateRequest, ProgressFn


def stop_strings(until: Sequence[str], eos: str | None) -> list[str]:
    """``until`` plus the EOS text, without empty strings (lm-eval's ``handle_stop_sequences``)."""
    stops = [s for s in until if s]
    if eos and eos not in stops:
        stops.append(eos)
    return stops


def truncate_at_stop(text: str, stops: Sequence[str]) -> str:
    """``text`` up to (not including) the earliest occurrence of any stop string."""
    cut = len(text)
    for s in stops:
        if s:
            at = text.find(s)
            if 0 <= at < cut:
                cut = at
    return text[:cut]


class _StopPerRow(StoppingCriteria):
    """Per-row stopping criterion: a row is done once its decoded continuation contains a stop string.

    transformers (>= 4.39) accepts a bool tensor per row and marks those rows finished (their later
    tokens become padding). The whole continuation is decoded (not a window of the last tokens, as
    lm-eval's ``MultiTokenEOSCriteria`` does), so a stop string split over any number of tokens is
    found; continuations are at most ``max_gen_toks`` tokens, so this stays cheap.
    """

    def __init__(self, tokenizer: Any, start: int, stops: Sequence[Sequence[str]]) -> None:
        self.tokenizer = tokenizer
        self.start = start
        self.stops = stops
        self.done = [False] * len(stops)

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.start :], skip_special_tokens=True)
        for i, text in enumerate(texts):
            if not self.done[i]:
                self.done[i] = any(s in text for s in self.stops[i])
        return torch.tensor(self.done, dtype=torch.bool, device=input_ids.device)


def _encode(tokenizer: Any, text: str) -> list[int]:
    bos = getattr(tokenizer, "bos_token", None)
    if bos and text.startswith(bos):
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    return list(tokenizer(text)["input_ids"])


def generate_until(
    model: Any,
    tokenizer: Any,
    requests: Sequence[GenerateRequest],
    *,
    max_length: int,
    batch_size: int = 16,
    progress: ProgressFn | None = None,
) -> list[str]:
    """Greedy continuations of ``requests`` in request order, each cut at its first stop string.

    ``max_length`` is the model's context length (prompt + generated tokens must fit); a request
    whose ``max_gen_toks`` leaves no room for a prompt is refused.
    """
    if batch_size < 1:
        raise CfbenchError(f"generation batch size must be >= 1, got {batch_size}")
    for req in requests:
        if req.max_gen_toks < 1:
            raise CfbenchError(f"max_gen_toks must be >= 1, got {req.max_gen_toks}")
        if req.max_gen_toks >= max_length:
            raise CfbenchError(
                f"max_gen_toks={req.max_gen_toks} leaves no room for the prompt in the model's "
                f"max_length={max_length}: lower max_gen_toks"
            )
    eos = tokenizer.eos_token
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad_id is None:
        raise CfbenchError("the tokenizer has neither a pad nor an EOS token: generation cannot pad a batch")
    device = next(model.parameters()).device
    encoded = [_encode(tokenizer, req.context) for req in requests]
    out: list[str | None] = [None] * len(requests)
    groups: dict[int, list[int]] = {}
    for i, req in enumerate(requests):
        groups.setdefault(req.max_gen_toks, []).append(i)
    for max_gen_toks, idx in groups.items():
        limit = max_length - max_gen_toks
        order = sorted(idx, key=lambda i: (-len(encoded[i]), requests[i].context))
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            rows = [encoded[i][-limit:] for i in chunk]
            width = max(len(r) for r in rows)
            if width == 0:
                raise CfbenchError("a generation prompt encodes to no tokens: give every request a non-empty context")
            ids = torch.full((len(rows), width), int(pad_id), dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for r, row in enumerate(rows):
                if row:
                    ids[r, width - len(row) :] = torch.tensor(row)
                    mask[r, width - len(row) :] = 1
            stops = [stop_strings(requests[i].until, eos) for i in chunk]
            criterion = _StopPerRow(tokenizer, width, stops)
            with torch.inference_mode():
                gen = model.generate(
                    input_ids=ids.to(device),
                    attention_mask=mask.to(device),
                    max_new_tokens=max_gen_toks,
                    do_sample=False,
                    temperature=None,
                    top_p=None,
                    top_k=None,
                    num_beams=1,
                    stopping_criteria=StoppingCriteriaList([criterion]),
                    pad_token_id=int(pad_id),
                    use_cache=True,
                )
            texts = tokenizer.batch_decode(gen[:, width:].tolist(), skip_special_tokens=True)
            for r, i in enumerate(chunk):
                out[i] = truncate_at_stop(texts[r], stops[r])
            if progress is not None:
                progress(len(chunk))
    return [s if s is not None else "" for s in out]
