"""Tokenizer variants for tests: the same weights with a tokenizer that adds BOS, as Llama's does."""

from __future__ import annotations

import json
from pathlib import Path


def with_bos(src: Path, dst: Path) -> Path:
    """``src`` with a tokenizer that adds BOS (``<|im_start|>``, id 1) like Llama's: weights shared by links."""
    dst.mkdir()
    for f in src.iterdir():
        if f.name != "tokenizer.json":
            (dst / f.name).symlink_to(f.resolve())
    tok = json.loads((src / "tokenizer.json").read_text())
    bos = {"SpecialToken": {"id": "<|im_start|>", "type_id": 0}}
    tok["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [bos, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [bos, {"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {"<|im_start|>": {"id": "<|im_start|>", "ids": [1], "tokens": ["<|im_start|>"]}},
    }
    (dst / "tokenizer.json").write_text(json.dumps(tok))
    return dst
