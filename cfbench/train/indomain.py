"""In-domain gain: what a fine-tune *learned*, on a held-out split of its own training data.

A fine-tune that learned nothing also forgets nothing, so a forgetting number needs the gain next
to it. :func:`split_data` holds out a deterministic set of the fine-tune data before training;
:func:`measure` scores the base and each tuned checkpoint on it and stores one row per held-out
document (table ``indomain``); :func:`indomain_gain` turns two checkpoints' rows into paired
``kind="learned"`` :class:`~cfbench.signals.Signal` records.

The split rule, chosen so nothing can leak into training:

* every example is identified by the SHA-256 of its content (the same JSON that
  :func:`cfbench.train.data.examples_sha256` hashes), so the split depends on the content only,
  not on file order, and two identical records have one hash;
* the distinct hashes are ranked by ``sha256(f"{seed}:{hash}")`` and the first ``n`` are held out;
* *every* example whose hash is held out leaves the training set, so a duplicated record cannot be
  both trained on and tested on; the split keeps one copy of each.

Measured per held-out document, with the checkpoint's own tokenizer:

* ``loss``: mean next-token cross-entropy (nats/token) over the target tokens, with exactly the
  training masks and truncation (:func:`cfbench.train.data.encode_example`: prompt tokens masked,
  assistant turns and their end-of-turn token scored; plain text scores every token);
* ``em``: where the reference answer is checkable — GSM8K-style ``#### answer`` targets, or the
  built-in arithmetic set's ``a op b = c`` — 1.0 if the greedy answer (``generate_until`` from the
  rendered prompt) extracts to the same number, else 0.0. Other documents have no ``em``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F

from cfbench.backends.hf import HFBackend
from cfbench.errors import CfbenchError
from cfbench.metrics.indomain import TABLE, indomain_gain
from cfbench.models.checkpoint import MANIFEST, resolve_checkpoint
from cfbench.requests import GenerateRequest
from cfbench.signals import Signal
from cfbench.store import ResultStore
from cfbench.store.schema import utc_now
from cfbench.train.data import IGNORE_INDEX, Example, LoadedData, collate, encode_example, load_data, render_fallback

#: Held-out documents by default: enough for a paired CI, few enough to score in seconds.
DEFAULT_HELDOUT = 64
#: The default never takes more than this fraction of the distinct examples (tiny data: none).
DEFAULT_MAX_FRACTION = 0.1
RULE = "distinct sha256(example JSON) ranked by sha256(f'{seed}:{hash}'); first n held out; all copies removed"
MAX_GEN_TOKS_CAP = 256


def example_hash(ex: Example) -> str:
    """SHA-256 of one example's content (what makes two records the same document)."""
    return hashlib.sha256(json.dumps(ex.as_json(), ensure_ascii=False, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class HeldoutSplit:
    """The held-out documents of one fine-tune data set (one copy each, in split order)."""

    source: str
    data_sha256: str
    seed: int
    examples: tuple[Example, ...]
    hashes: tuple[str, ...]
    n_removed: int  # training examples removed: the held-out ones and every duplicate of them

    @property
    def n(self) -> int:
        return len(self.examples)

    @property
    def split_hash(self) -> str:
        """Identifies the held-out documents themselves (not how they were drawn): the store key."""
        return hashlib.sha256(json.dumps(list(self.hashes)).encode()).hexdigest()

    def manifest(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "rule": RULE,
            "seed": self.seed,
            "source": self.source,
            "data_sha256": self.data_sha256,
            "split_hash": self.split_hash,
            "n_removed_from_training": self.n_removed,
            "example_sha256": list(self.hashes),
        }


def heldout_count(requested: int | None, n_distinct: int) -> int:
    """How many documents to hold out: ``requested``, or by default min(64, 10% of the distinct ones)."""
    if requested is None:
        return min(DEFAULT_HELDOUT, int(n_distinct * DEFAULT_MAX_FRACTION))
    if requested < 0:
        raise CfbenchError(f"--heldout must be >= 0 (0: no held-out split), got {requested}")
    if requested and requested >= n_distinct:
        raise CfbenchError(
            f"--heldout {requested} leaves no training data: the data has {n_distinct} distinct examples; "
            f"hold out fewer (e.g. --heldout {max(1, n_distinct // 10)}) or --heldout 0"
        )
    return requested


def split_data(data: LoadedData, heldout: int | None, seed: int) -> tuple[list[Example], HeldoutSplit | None]:
    """Training examples (every copy of a held-out document removed) and the held-out split (None if n = 0)."""
    hashes = [example_hash(ex) for ex in data.examples]
    first: dict[str, Example] = {}
    for h, ex in zip(hashes, data.examples, strict=True):
        first.setdefault(h, ex)
    n = heldout_count(heldout, len(first))
    if n == 0:
        return list(data.examples), None
    ranked = sorted(first, key=lambda h: hashlib.sha256(f"{seed}:{h}".encode()).hexdigest())[:n]
    held = set(ranked)
    train = [ex for h, ex in zip(hashes, data.examples, strict=True) if h not in held]
    split = HeldoutSplit(
        data.source, data.sha256, seed, tuple(first[h] for h in ranked), tuple(ranked), len(data.examples) - len(train)
    )
    return train, split


def without_heldout(data: LoadedData, split: HeldoutSplit | None) -> tuple[LoadedData, int]:
    """``data`` (the rehearsal set) without any example whose content is held out, and how many left.

    ``--rehearsal X --data X --heldout 8`` mixed 7 of the 8 held-out documents back into training,
    then measured "Learned" on them. Held-out documents are matched by content hash, as the task
    data's duplicates are, so a copy in another file (or format) is caught too.
    """
    if split is None:
        return data, 0
    held = set(split.hashes)
    kept = [ex for ex in data.examples if example_hash(ex) not in held]
    if not kept and data.examples:
        raise CfbenchError(
            f"every example of the rehearsal data {data.source} is one of the held-out documents of the task "
            "data: pass other rehearsal data, or --heldout 0"
        )
    removed = len(data.examples) - len(kept)
    return (dataclasses.replace(data, examples=kept) if removed else data), removed


def split_from_manifest(manifest: dict[str, Any]) -> HeldoutSplit | None:
    """Rebuild a fine-tune's held-out split from its manifest (None when it had none), checking the data.

    The data are re-read from the recorded source and split again by the recorded rule; a source
    whose content changed since training is refused, since its split would not be the one held out.
    """
    info = manifest.get("heldout")
    if not info:
        return None
    data = load_data(info["source"])
    if data.sha256 != info["data_sha256"]:
        raise CfbenchError(
            f"fine-tune data {info['source']} changed since training (sha256 {data.sha256[:12]} != "
            f"{info['data_sha256'][:12]}): restore the original file to rebuild its held-out split"
        )
    _, split = split_data(data, int(info["n"]), int(info["seed"]))
    if split is None or split.split_hash != info["split_hash"]:
        raise CfbenchError(f"the held-out split of {info['source']} does not rebuild to the recorded one")
    return split


# ---------------------------------------------------------------------------------------------
# Checkable answers

_GSM = re.compile(r"####\s*(-?[$\d,]*\.?\d+)")
_ARITH_TARGET = re.compile(r"\s*-?\d+ [-+*/] -?\d+ = (-?\d+)\s*")
_ARITH_GEN = re.compile(r"=\s*(-?\d[\d,]*)")
_INT = re.compile(r"\s*(-?\d[\d,]*)\s*\.?\s*")


def _norm_number(s: str) -> str:
    s = s.replace(",", "").replace("$", "").strip().rstrip(".")
    try:
        return format(Decimal(s).normalize(), "f")
    except InvalidOperation:
        return s


def reference_answer(target: str) -> tuple[str, str] | None:
    """``(kind, answer)`` of a checkable target — ``("gsm8k", n)`` for ``#### n``, ``("arithmetic", c)``
    for ``a op b = c`` — or None when the target has no checkable answer."""
    found = _GSM.findall(target)
    if found:
        return "gsm8k", _norm_number(found[-1])
    m = _ARITH_TARGET.fullmatch(target)
    if m:
        return "arithmetic", _norm_number(m.group(1))
    return None


def generated_answer(text: str, kind: str) -> str | None:
    """The answer a generation gives: the first ``#### n`` (lm-eval's GSM8K strict match), or for
    arithmetic the number after ``=`` on the first line (or the first line itself if it is a number)."""
    if kind == "gsm8k":
        m = _GSM.search(text)
        return _norm_number(m.group(1)) if m else None
    line = text.strip().split("\n", 1)[0] if text.strip() else ""
    m = _ARITH_GEN.search(line)
    if m:
        return _norm_number(m.group(1))
    m = _INT.fullmatch(line)
    return _norm_number(m.group(1)) if m else None


def exact_match(generation: str, target: str) -> float | None:
    """1.0 / 0.0 when ``target`` is checkable, else None."""
    ref = reference_answer(target)
    if ref is None:
        return None
    kind, answer = ref
    return 1.0 if generated_answer(generation, kind) == answer else 0.0


def _target(ex: Example) -> str:
    if ex.text is not None:
        return ex.text
    return next(c for role, c in reversed(ex.messages) if role == "assistant")


def generation_prompt(tokenizer: Any, ex: Example) -> tuple[str, tuple[str, ...]] | None:
    """The prompt the model sees before the last assistant turn (as in training) and extra stop strings.

    None for plain-text documents (nothing to answer).
    """
    if ex.text is not None:
        return None
    last = max(i for i, (role, _) in enumerate(ex.messages) if role == "assistant")
    before = list(ex.messages[:last])
    if getattr(tokenizer, "chat_template", None):
        prompt = tokenizer.apply_chat_template(
            [{"role": r, "content": c} for r, c in before], tokenize=False, add_generation_prompt=True
        )
        return prompt, ()

    text, _ = render_fallback(before, tokenizer.eos_token or "")
    return text + "### Assistant:\n", ("\n\n### ",)


# ---------------------------------------------------------------------------------------------
# Measuring one checkpoint


def _doc_losses(model: Any, encoded: Sequence[Any], pad_id: int, batch_size: int) -> list[tuple[float, int]]:
    """(summed target-token loss, target tokens) per encoded example, like training's token_loss_sum."""
    device = next(model.parameters()).device
    out: list[tuple[float, int]] = []
    with torch.inference_mode():
        for start in range(0, len(encoded), batch_size):
            batch = collate(encoded[start : start + batch_size], pad_id)
            logits = model(
                input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)
            ).logits.float()
            labels = F.pad(batch["labels"][:, 1:], (0, 1), value=IGNORE_INDEX).to(device)
            ce = F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=IGNORE_INDEX, reduction="none")
            n_tok = (labels != IGNORE_INDEX).sum(dim=1)
            out += [(float(s), int(n)) for s, n in zip(ce.sum(dim=1).tolist(), n_tok.tolist(), strict=True)]
    return out


def default_max_gen_toks(tokenizer: Any, split: HeldoutSplit) -> int:
    """Room for twice the longest checkable reference answer (plus 8), at most 256 tokens."""
    lengths = [
        len(tokenizer(_target(ex), add_special_tokens=False)["input_ids"])
        for ex in split.examples
        if ex.text is None and reference_answer(_target(ex)) is not None
    ]
    return min(MAX_GEN_TOKS_CAP, 2 * max(lengths) + 8) if lengths else 0


def settings_hash(max_length: int, max_gen_toks: int, dtype: str) -> str:
    """Key of the measuring settings that change the numbers (truncation, generation budget, precision)."""
    blob = json.dumps({"max_length": max_length, "max_gen_toks": max_gen_toks, "dtype": dtype, "decoding": "greedy"})
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def evaluate_split(
    checkpoint: str,
    split: HeldoutSplit,
    *,
    max_length: int = 1024,
    max_gen_toks: int | None = None,
    device: str | None = None,
    dtype: str = "float32",
    batch_size: int = 16,
) -> pd.DataFrame:
    """One row per held-out document for ``checkpoint`` (loss always; em where checkable). No I/O but the model.

    ``max_length`` should be the fine-tune's ``--max-length`` (the same truncation as training);
    ``max_gen_toks`` defaults to :func:`default_max_gen_toks`.
    """
    resolved = resolve_checkpoint(str(checkpoint))
    backend = HFBackend(resolved.path, device=device, dtype=dtype, scoring_path="plain")
    try:
        tok = backend.tokenizer
        encoded = [encode_example(tok, ex, max_length) for ex in split.examples]
        pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        losses = _doc_losses(backend.model, encoded, int(pad_id or 0), batch_size)
        gen_toks = max_gen_toks if max_gen_toks is not None else default_max_gen_toks(tok, split)
        checkable = [i for i, ex in enumerate(split.examples)
                     if ex.text is None and reference_answer(_target(ex)) is not None]  # fmt: skip
        requests = []
        for i in checkable:
            prompt = generation_prompt(tok, split.examples[i])
            assert prompt is not None  # checkable examples are conversations
            requests.append(GenerateRequest(prompt[0], prompt[1], gen_toks))
        generations = backend.generate_until(requests, batch_size=batch_size) if requests else []
        settings = {
            "max_length": max_length,
            "max_gen_toks": gen_toks,
            "dtype": dtype,
            "decoding": "greedy",
            "batch_size": batch_size,
            "backend": backend.settings(),
        }
    finally:
        backend.close()
    key = settings_hash(max_length, gen_toks, dtype)
    gen_of = dict(zip(checkable, generations, strict=True))
    rows = []
    for i, (ex, h, (loss_sum, n_tok)) in enumerate(zip(split.examples, split.hashes, losses, strict=True)):
        target = _target(ex)
        gen = gen_of.get(i)
        ref = reference_answer(target) if i in gen_of else None
        rows.append({
            "checkpoint_hash": resolved.content_hash,
            "split_hash": split.split_hash,
            "settings_hash": key,
            "doc_id": i,
            "checkpoint_name": resolved.name,
            "data": split.source,
            "example_hash": h,
            "n_tokens": n_tok,
            "loss_sum": loss_sum,
            "loss": loss_sum / n_tok if n_tok else float("nan"),
            "checkable": ref is not None,
            "em": exact_match(gen, target) if gen is not None else None,
            "answer": ref[1] if ref else None,
            "generation": gen,
            "settings_json": json.dumps(settings, sort_keys=True),
        })  # fmt: skip
    return pd.DataFrame(rows)


def stored_rows(store: Any, checkpoint_hash: str, split_hash: str, key: str | None = None) -> pd.DataFrame:
    """The stored in-domain rows of one checkpoint on one split (one settings key, if given), in doc order."""
    df = store.read_table(TABLE)
    keep = (df["checkpoint_hash"] == checkpoint_hash) & (df["split_hash"] == split_hash)
    if key is not None:
        keep &= df["settings_hash"] == key
    return df[keep].sort_values(["created_at", "doc_id"]).reset_index(drop=True)


def measure(
    store: Any,
    checkpoint: str,
    split: HeldoutSplit,
    *,
    max_length: int = 1024,
    max_gen_toks: int | None = None,
    device: str | None = None,
    dtype: str = "float32",
    batch_size: int = 16,
) -> pd.DataFrame:
    """Rows of ``checkpoint`` on ``split``: the stored ones when complete for the same settings, else
    measured now and stored (so the base of a pair is scored once)."""
    import pyarrow as pa
    from transformers import AutoTokenizer


    resolved = resolve_checkpoint(str(checkpoint))
    if max_gen_toks is None:
        max_gen_toks = default_max_gen_toks(AutoTokenizer.from_pretrained(str(resolved.path)), split)
    key = settings_hash(max_length, max_gen_toks, dtype)
    have = stored_rows(store, resolved.content_hash, split.split_hash, key)
    if set(have["doc_id"]) == set(range(split.n)):
        return have.sort_values("doc_id").reset_index(drop=True)
    rows = evaluate_split(
        checkpoint, split, max_length=max_length, max_gen_toks=max_gen_toks, device=device, dtype=dtype,
        batch_size=batch_size,
    )  # fmt: skip
    rows.insert(4, "created_at", utc_now())
    store.append_table(TABLE, pa.Table.from_pandas(rows, preserve_index=False))
    return stored_rows(store, resolved.content_hash, split.split_hash, key).sort_values("doc_id").reset_index(drop=True)


# ---------------------------------------------------------------------------------------------
# Signals


def learned_lines(label: str, signals: Sequence[Signal]) -> list[str]:
    """The short "Learned" summary lines of one tuned run (what finetune / pair print)."""
    lines = []
    for s in signals:
        unit = s.unit.removeprefix("Δ").strip()
        ci = f" [{s.ci[0]:+.4f}, {s.ci[1]:+.4f}]" if s.ci is not None else " (no CI)"
        verdict = "" if s.significant is None else (", CI excludes 0" if s.significant else ", CI includes 0")
        lines.append(f"  {label}: {s.label} Δ {s.value:+.4f} {unit}{ci}{verdict} — {s.note}")
    return lines


@dataclass
class Learned:
    """What the fine-tunes of one split gained: the split and each tuned run's signals (by label)."""

    split: HeldoutSplit
    base_name: str
    signals: list[tuple[str, list[Signal]]]

    def lines(self) -> list[str]:
        head = (
            f"Learned (in-domain, {self.split.n} held-out docs of {self.split.source}, "
            f"split {self.split.split_hash[:12]}; tuned − {self.base_name}, paired 95% CI):"
        )
        return [head] + [line for label, sigs in self.signals for line in learned_lines(label, sigs)]


def learned_after_finetune(
    results: str | Any,
    runs: Sequence[tuple[str, str | Any, dict[str, Any]]],
    *,
    device: str | None = None,
    batch_size: int = 16,
) -> Learned | None:
    """Measure the base and every tuned run ``(label, path, manifest)`` on their held-out split, store
    the rows in the ``results`` store and return the paired signals; None when the runs hold out nothing.

    All runs must come from the same base and split (a pair does: same data, same seed).
    """
    from pathlib import Path


    split = split_from_manifest(runs[0][2])
    if split is None:
        return None
    base = runs[0][2]["base"]
    for label, _, manifest in runs[1:]:
        info = manifest.get("heldout") or {}
        if info.get("split_hash") != split.split_hash or manifest["base"]["content_hash"] != base["content_hash"]:
            raise CfbenchError(f"run {label!r} has another base or held-out split than {runs[0][0]!r}")
    store = ResultStore(Path(results))
    max_length = int(runs[0][2]["hyperparameters"]["max_length"])
    common = {"max_length": max_length, "device": device, "batch_size": batch_size}
    measure(store, base["path"], split, **common)
    out = []
    for label, path, _ in runs:
        measure(store, str(path), split, **common)
        out.append((label, indomain_gain(store, base["content_hash"], str(path), split)))
    return Learned(split, str(base.get("name") or base["spec"]), out)


def _heldout_groups(paths: Sequence[Any]) -> dict[tuple[str, str], list[tuple[str, dict[str, Any]]]]:
    """Checkpoint folders whose cfbench manifest records a held-out split, grouped by (split, base):
    each group is measured with one split rebuild and one base."""
    groups: dict[tuple[str, str], list[tuple[str, dict[str, Any]]]] = {}
    for path in paths:
        file = Path(path) / MANIFEST
        manifest = json.loads(file.read_text()) if file.is_file() else {}
        info = manifest.get("heldout")
        if info:
            key = (str(info["split_hash"]), str(manifest["base"]["content_hash"]))
            groups.setdefault(key, []).append((str(path), manifest))
    return groups


def measure_checkpoints(
    results: str | Any, paths: Sequence[Any], *, device: str | None = None, batch_size: int = 16
) -> list[str]:
    """Score every checkpoint in ``paths`` whose manifest holds a held-out split (``cfbench finetune``'s
    final folder and each ``step-N/`` snapshot), and its base, on that split; returns notes for splits
    that could not be rebuilt.

    Finetune measures only its final weights, so a sweep over ``--save-every`` snapshots must measure
    the others itself for :func:`cfbench.comparison.attach.attach_indomain` to find their rows. Rows
    are cached per (checkpoint, split, settings) by :func:`measure`: the base and every checkpoint are
    scored once, and a rerun scores only new checkpoints.
    """
    store = ResultStore(Path(results))
    notes: list[str] = []
    for group in _heldout_groups(paths).values():
        first = group[0][1]
        try:
            split = split_from_manifest(first)
        except CfbenchError as exc:
            names = ", ".join(Path(p).name for p, _ in group)
            notes.append(f"in-domain gain of {names}: not measured ({exc})")
            continue
        assert split is not None  # the group has a held-out split
        common = {"max_length": int(first["hyperparameters"]["max_length"]), "device": device,
                  "batch_size": batch_size}  # fmt: skip
        measure(store, first["base"]["path"], split, **common)
        for path, _ in group:
            measure(store, path, split, **common)
    return notes
