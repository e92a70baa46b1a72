"""Fine-tuning data: read Alpaca / ShareGPT / chat-messages / plain-text files, mix in rehearsal data,
and tokenize with a loss mask on response tokens only.

Formats (detected from the first record; every record must match it):

* Alpaca (``.json`` list or ``.jsonl``): ``{"instruction", "input" (optional), "output"}``;
* ShareGPT: ``{"conversations": [{"from": "human"|"gpt"|"system", "value": ...}, ...]}``;
* chat messages: ``{"messages": [{"role": "user"|"assistant"|"system", "content": ...}, ...]}``;
* plain text: a ``.txt`` file, one document per blank-line-separated block, or JSON records
  ``{"text": ...}``; the loss covers every token (continued pre-training).

Chat examples are rendered with the tokenizer's chat template when it has one (what the model will
see at inference), else with a plain ``### User:`` / ``### Assistant:`` layout. Only assistant turns
(including the end-of-turn token the template puts after them) are trained on: prompt tokens get
label ``-100``. Which tokens are assistant tokens is found from character spans of the rendered
text and the tokenizer's offset mapping, so it is exact for any template that renders a
conversation prefix as a prefix of the whole (ChatML, Llama-3, Mistral, ...).
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cfbench.errors import CfbenchError
from cfbench.train.narrow import BUILTIN_PREFIX, builtin_version, load_builtin

IGNORE_INDEX = -100
FORMATS = ("alpaca", "sharegpt", "messages", "text")
_SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bard": "assistant",
    "bing": "assistant",
    "model": "assistant",
    "system": "system",
}
_EXPECTED = (
    "expected Alpaca records {instruction, input, output}, ShareGPT records {conversations: [{from, value}]}, "
    "chat records {messages: [{role, content}]}, text records {text}, or a .txt file"
)


@dataclass(frozen=True)
class Example:
    """One training example: a conversation (``messages``) or a plain ``text`` document."""

    messages: tuple[tuple[str, str], ...] = ()
    text: str | None = None
    where: str = ""

    def as_json(self) -> Any:
        return {"text": self.text} if self.text is not None else [list(m) for m in self.messages]


@dataclass
class LoadedData:
    """Examples read from one source, with what the manifest needs to identify them."""

    source: str
    format: str
    examples: list[Example]
    sha256: str


@dataclass
class Encoded:
    """Token ids and labels (``-100`` where no loss is taken) of one example."""

    input_ids: list[int]
    labels: list[int]
    n_target: int = field(init=False)

    def __post_init__(self) -> None:
        # Label at position 0 is never predicted (there is no previous token).
        self.n_target = sum(1 for t in self.labels[1:] if t != IGNORE_INDEX)


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def examples_sha256(examples: Sequence[Example]) -> str:
    """Hash of the examples' content in order (identifies the exact mixed training set)."""
    h = hashlib.sha256()
    for ex in examples:
        h.update(json.dumps(ex.as_json(), ensure_ascii=False, sort_keys=True).encode())
        h.update(b"\n")
    return h.hexdigest()


def _record_format(rec: Any, where: str) -> str:
    if not isinstance(rec, dict):
        raise CfbenchError(f"{where}: record is a {type(rec).__name__}, not an object; {_EXPECTED}")
    if "conversations" in rec:
        return "sharegpt"
    if "messages" in rec:
        return "messages"
    if "instruction" in rec or "output" in rec:
        return "alpaca"
    if "text" in rec:
        return "text"
    keys = ", ".join(sorted(map(str, rec))) or "none"
    raise CfbenchError(f"{where}: unrecognised record (keys: {keys}); {_EXPECTED}")


def _need_str(rec: dict[str, Any], key: str, where: str, optional: bool = False) -> str:
    value = rec.get(key)
    if value is None and optional:
        return ""
    if not isinstance(value, str):
        got = "missing" if key not in rec else f"a {type(value).__name__}"
        raise CfbenchError(f"{where}: field {key!r} is {got}, expected a string")
    return value


def _turns(rec: dict[str, Any], fmt: str, where: str) -> tuple[tuple[str, str], ...]:
    list_key, role_key, text_key = (
        ("conversations", "from", "value") if fmt == "sharegpt" else ("messages", "role", "content")
    )
    turns = rec[list_key]
    if not isinstance(turns, list) or not turns:
        raise CfbenchError(f"{where}: field {list_key!r} must be a non-empty list of {{{role_key}, {text_key}}}")
    out = []
    for j, turn in enumerate(turns):
        at = f"{where}, {list_key}[{j}]"
        if not isinstance(turn, dict):
            raise CfbenchError(f"{at}: expected an object {{{role_key}, {text_key}}}, got {type(turn).__name__}")
        role_raw = _need_str(turn, role_key, at)
        role = _SHAREGPT_ROLES.get(role_raw.lower()) if fmt == "sharegpt" else role_raw
        if role not in ("system", "user", "assistant"):
            allowed = ", ".join(_SHAREGPT_ROLES) if fmt == "sharegpt" else "system, user, assistant"
            raise CfbenchError(f"{at}: unknown {role_key} {role_raw!r}; expected one of {allowed}")
        out.append((role, _need_str(turn, text_key, at)))
    if not any(role == "assistant" for role, _ in out):
        raise CfbenchError(f"{where}: conversation has no assistant turn, so there is nothing to train on")
    return tuple(out)


def record_to_example(rec: Any, fmt: str, where: str) -> Example:
    """Validate one record of format ``fmt`` and turn it into an :class:`Example`."""
    got = _record_format(rec, where)
    if got != fmt:
        raise CfbenchError(f"{where}: record looks like {got} but the first record was {fmt}; use one format per file")
    if fmt == "alpaca":
        instruction = _need_str(rec, "instruction", where)
        extra = _need_str(rec, "input", where, optional=True)
        output = _need_str(rec, "output", where)
        prompt = f"{instruction}\n\n{extra}" if extra.strip() else instruction
        return Example(messages=(("user", prompt), ("assistant", output)), where=where)
    if fmt in ("sharegpt", "messages"):
        return Example(messages=_turns(rec, fmt, where), where=where)
    return Example(text=_need_str(rec, "text", where), where=where)


def _read_json_records(path: Path) -> list[tuple[Any, str]]:
    raw = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".jsonl":
        records = []
        for lineno, line in enumerate(raw.splitlines(), 1):
            if not line.strip():
                continue
            try:
                records.append((json.loads(line), f"{path}:{lineno}"))
            except json.JSONDecodeError as exc:
                raise CfbenchError(
                    f"{path}:{lineno}: invalid JSON ({exc.msg} at column {exc.colno}); "
                    "a .jsonl file needs one JSON object per line"
                ) from None
        return records
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise CfbenchError(
            f"{path}:{exc.lineno}: invalid JSON ({exc.msg} at column {exc.colno}); "
            "a .json file needs one list of records (use .jsonl for one record per line)"
        ) from None
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise CfbenchError(f"{path}: top level is a {type(data).__name__}; expected a list of records. {_EXPECTED}")
    return [(rec, f"{path}: record {i}") for i, rec in enumerate(data)]


def load_data(spec: str | Path) -> LoadedData:
    """Read ``spec`` (a file, or ``builtin:NAME``) into validated examples; errors name file and record."""
    spec_s = str(spec)
    if spec_s.startswith(BUILTIN_PREFIX):
        records = load_builtin(spec_s)
        examples = [record_to_example(r, "alpaca", f"{spec_s}: record {i}") for i, r in enumerate(records)]
        digest = _sha256_bytes((builtin_version() + "\n" + examples_sha256(examples)).encode())
        return LoadedData(spec_s, "alpaca", examples, digest)
    path = Path(spec_s).expanduser()
    if not path.is_file():
        raise CfbenchError(
            f"data file {path} not found: pass a .json/.jsonl/.txt file or a built-in name such as builtin:arithmetic"
        )
    suffix = path.suffix.lower()
    try:
        digest = _sha256_bytes(path.read_bytes())
        if suffix == ".txt":
            text = path.read_text(encoding="utf-8")
            blocks = [b.strip() for b in re.split(r"\n\s*\n", text)]
            examples = [Example(text=b, where=f"{path}: block {i}") for i, b in enumerate(blocks) if b]
            fmt = "text"
        elif suffix in (".json", ".jsonl"):
            records = _read_json_records(path)
            if not records:
                raise CfbenchError(f"{path}: no records; {_EXPECTED}")
            fmt = _record_format(records[0][0], records[0][1])
            examples = [record_to_example(rec, fmt, where) for rec, where in records]
        else:
            raise CfbenchError(f"{path}: unsupported extension {path.suffix!r}; use .json, .jsonl or .txt")
    except UnicodeDecodeError as exc:
        raise CfbenchError(f"{path}: not UTF-8 text (byte {exc.start}); save the file as UTF-8") from None
    if not examples:
        raise CfbenchError(f"{path}: no examples found; {_EXPECTED}")
    _refuse_empty_responses(path, examples)
    return LoadedData(str(path), fmt, examples, digest)


def _refuse_empty_responses(path: Path, examples: Sequence[Example]) -> None:
    """Refuse chat data whose every response is empty: it would train on end-of-turn tokens alone
    (the loss falls, "Learned" is reported, and the model learned only to stop)."""
    chats = [ex for ex in examples if ex.messages]
    if chats and all(not text.strip() for ex in chats for role, text in ex.messages if role == "assistant"):
        raise CfbenchError(
            f"{path}: every response (Alpaca 'output', assistant turn) is empty, so there is nothing to learn but "
            "the end-of-turn token: fill in the responses, or pass the right file"
        )


def rehearsal_count(n_task: int, ratio: float) -> int:
    """Number of rehearsal examples so that they are ``ratio`` of the mixed set."""
    if not 0.0 <= ratio < 1.0:
        raise CfbenchError(f"rehearsal ratio {ratio} is outside [0, 1): it is the rehearsal fraction of the mixed set")
    return round(ratio * n_task / (1.0 - ratio))


def mix_rehearsal(
    task: Sequence[Example], general: Sequence[Example], ratio: float, seed: int
) -> tuple[list[Example], int]:
    """Task examples plus general ones making up ``ratio`` of the result, shuffled with ``seed``.

    General examples are drawn without replacement; when the pool is too small it is used whole as
    many times as needed (each pass shuffled) so the ratio still holds. Returns ``(mixed, n_general)``.
    """
    n_general = rehearsal_count(len(task), ratio)
    if n_general and not general:
        raise CfbenchError("the rehearsal data has no examples: pass a --rehearsal file with at least one record")
    rng = random.Random(seed)
    drawn: list[Example] = []
    while len(drawn) < n_general:
        pool = list(general)
        rng.shuffle(pool)
        drawn.extend(pool[: n_general - len(drawn)])
    mixed = list(task) + drawn
    rng.shuffle(mixed)
    return mixed, n_general


def render_fallback(messages: Sequence[tuple[str, str]], eos: str) -> tuple[str, list[tuple[int, int]]]:
    """Plain layout for tokenizers without a chat template; returns text and assistant spans."""
    parts: list[str] = []
    spans: list[tuple[int, int]] = []
    pos = 0
    for role, content in messages:
        header = f"### {role.capitalize()}:\n"
        body = content + (eos if role == "assistant" else "") + "\n\n"
        if role == "assistant":
            spans.append((pos + len(header), pos + len(header) + len(body)))
        parts += [header, body]
        pos += len(header) + len(body)
    return "".join(parts), spans


def _render_template(tokenizer: Any, messages: Sequence[tuple[str, str]]) -> tuple[str, list[tuple[int, int]]]:
    """Chat-template text and the character spans of assistant turns (content + end-of-turn)."""

    def render(msgs: Sequence[tuple[str, str]], gen: bool) -> str:
        return tokenizer.apply_chat_template(
            [{"role": r, "content": c} for r, c in msgs], tokenize=False, add_generation_prompt=gen
        )

    full = render(messages, False)
    spans = []
    cursor = 0
    for i, (role, content) in enumerate(messages):
        if role != "assistant":
            continue
        before = render(messages[:i], True) if i else ""
        upto = render(messages[: i + 1], False)
        if full.startswith(before) and full.startswith(upto) and len(before) <= len(upto):
            spans.append((len(before), len(upto)))
            cursor = len(upto)
            continue
        # Template is not prefix-stable (e.g. it injects dates): fall back to the content itself.
        start = full.find(content, cursor)
        if start < 0:
            raise CfbenchError(
                "the tokenizer's chat template changes assistant text, so prompt tokens cannot be masked: "
                "fine-tune from a checkpoint whose template keeps messages verbatim"
            )
        end = start + len(content)
        eos = tokenizer.eos_token or ""
        if eos and full.startswith(eos, end):
            end += len(eos)
        spans.append((start, end))
        cursor = end
    return full, spans


def encode_example(tokenizer: Any, example: Example, max_length: int) -> Encoded:
    """Token ids and response-only labels, truncated to ``max_length`` tokens."""
    if example.text is not None:
        ids = list(tokenizer(example.text, add_special_tokens=True)["input_ids"])
        if tokenizer.eos_token_id is not None:
            ids.append(int(tokenizer.eos_token_id))
        ids = ids[:max_length]
        return Encoded(ids, list(ids))
    if getattr(tokenizer, "chat_template", None):
        text, spans = _render_template(tokenizer, example.messages)
    else:
        text, spans = render_fallback(example.messages, tokenizer.eos_token or "")
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc["input_ids"])[:max_length]
    offsets = enc["offset_mapping"][: len(ids)]
    labels = [IGNORE_INDEX] * len(ids)
    k = 0
    for i, (start, end) in enumerate(offsets):
        while k < len(spans) and start >= spans[k][1]:
            k += 1
        if k < len(spans) and spans[k][0] <= start < spans[k][1] and end > start:
            labels[i] = ids[i]
    return Encoded(ids, labels)


def collate(batch: Sequence[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` tensors."""
    width = max(len(e.input_ids) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, e in enumerate(batch):
        n = len(e.input_ids)
        ids[i, :n] = torch.tensor(e.input_ids)
        labels[i, :n] = torch.tensor(e.labels)
        mask[i, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def micro_batches(batch: Sequence[Encoded], micro_batch: int) -> list[list[Encoded]]:
    """Split a global batch into micro-batches of similar length (less padding, same gradient)."""
    ordered = sorted(batch, key=lambda e: len(e.input_ids))
    return [ordered[i : i + micro_batch] for i in range(0, len(ordered), micro_batch)]
