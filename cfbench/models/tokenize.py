"""lm-eval-exact request tokenisation, shared by every backend so all see the same token ids."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def prefix_token_id(tokenizer: Any) -> int:
    """Token that stands in for an empty context: BOS when the tokenizer has one, else EOS (lm-eval)."""
    if tokenizer.bos_token_id is not None:
        return int(tokenizer.bos_token_id)
    return int(tokenizer.eos_token_id)


def encode_pair(tokenizer: Any, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Return ``(context_ids, continuation_ids)`` exactly as lm-eval's ``HFLM._encode_pair``.

    Trailing whitespace moves from context to continuation; the whole string is encoded once so
    that merges across the boundary match what the model saw in training. An empty context becomes
    the prefix token.
    """
    if context == "":
        cont = tokenizer.encode(continuation, add_special_tokens=False)
        return [prefix_token_id(tokenizer)], list(cont)
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces > 0:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = tokenizer.encode(context + continuation, add_special_tokens=False)
    ctx = tokenizer.encode(context, add_special_tokens=False)
    return list(whole[: len(ctx)]), list(whole[len(ctx) :])


_PAIRS_PER_BATCH = 512  # bounds the ids held at once (a whole 5-shot MMLU would be millions)


def encode_pairs(tokenizer: Any, pairs: Sequence[tuple[str, str]]) -> list[tuple[list[int], list[int]]]:
    """:func:`encode_pair` for many requests at once, same ids.

    Each distinct string of a batch is encoded once (the choices of a question share their context;
    a 5-shot MMLU question sends four requests with one ~700-token context), through the
    tokenizer's batch call (Rust, parallel unless ``TOKENIZERS_PARALLELISM=false``). On an
    accelerator, tokenising request by request costs more than the forwards of a few-shot task.
    """
    out: list[tuple[list[int], list[int]]] = []
    for start in range(0, len(pairs), _PAIRS_PER_BATCH):
        out += _encode_batch(tokenizer, pairs[start : start + _PAIRS_PER_BATCH])
    return out


def _encode_batch(tokenizer: Any, pairs: Sequence[tuple[str, str]]) -> list[tuple[list[int], list[int]]]:
    texts: dict[str, int] = {}
    where: list[tuple[int, int] | None] = []
    for context, continuation in pairs:
        if context == "":
            where.append(None)
            continue
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces > 0:
            continuation = context[-n_spaces:] + continuation
            context = context[:-n_spaces]
        where.append((texts.setdefault(context + continuation, len(texts)), texts.setdefault(context, len(texts))))
    ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"] if texts else []
    out = []
    for (_, continuation), w in zip(pairs, where, strict=True):
        if w is None:
            out.append(([prefix_token_id(tokenizer)], list(tokenizer.encode(continuation, add_special_tokens=False))))
            continue
        whole, n_ctx = ids[w[0]], len(ids[w[1]])
        out.append((list(whole[:n_ctx]), list(whole[n_ctx:])))
    return out
