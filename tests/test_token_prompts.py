"""Prompt planning shared by the vllm and openai backends (pure Python, no model needed)."""

from __future__ import annotations

import pytest

from cfbench.backends.token_prompts import plan_prompts
from cfbench.errors import CfbenchError
from cfbench.requests import LoglikRequest


class CharTokenizer:
    """One token per character: makes positions easy to check by eye."""

    bos_token_id = None
    eos_token_id = 0

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [ord(c) for c in text]


def _text(ids: list[int]) -> str:
    return "".join(chr(i) for i in ids)


def test_duplicates_and_prefixes_share_one_prompt() -> None:
    reqs = [
        LoglikRequest("ab", "c"),
        LoglikRequest("ab", "cd"),  # "abc" is a prefix of "abcd": same prompt
        LoglikRequest("ab", "c"),  # duplicate
        LoglikRequest("ab", "x"),
        LoglikRequest("a", "bcd"),  # same tokens as "abcd", other split
    ]
    plan = plan_prompts(CharTokenizer(), reqs, max_prompt_len=100)
    assert [_text(p) for p in plan.prompts] == ["abcd", "abx"]  # lexicographic, prefixes merged
    spans = plan.spans
    assert [(s.prompt, s.start, s.end) for s in spans if s] == [(0, 2, 3), (0, 2, 4), (0, 2, 3), (1, 2, 3), (0, 1, 4)]
    assert plan.min_start == [1, 2]
    assert plan.served == [4, 1]


def test_empty_context_and_continuation() -> None:
    plan = plan_prompts(CharTokenizer(), [LoglikRequest("", "hi"), LoglikRequest("ctx", "")], 100)
    assert plan.prompts == [[0, ord("h"), ord("i")]]  # EOS stands in for the empty context
    assert plan.spans[1] is None
    span = plan.spans[0]
    assert span is not None and (span.start, span.end) == (1, 3)


def test_trailing_space_moves_to_the_continuation() -> None:
    plan = plan_prompts(CharTokenizer(), [LoglikRequest("Answer: ", "yes")], 100)
    span = plan.spans[0]
    assert span is not None
    assert _text(plan.prompts[0][span.start : span.end]) == " yes"


def test_left_truncation_keeps_the_continuation() -> None:
    plan = plan_prompts(CharTokenizer(), [LoglikRequest("0123456789", "ab")], max_prompt_len=5)
    assert _text(plan.prompts[0]) == "789ab"
    span = plan.spans[0]
    assert span is not None and (span.start, span.end) == (3, 5)
    with pytest.raises(CfbenchError, match="does not fit"):
        plan_prompts(CharTokenizer(), [LoglikRequest("x", "abcde")], max_prompt_len=5)
