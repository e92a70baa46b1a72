"""The hf backend's cross-forward prefix cache against scoring every prompt whole.

Few-shot prompts of one task (one MMLU subject) share their exemplars; with ``batch_tokens`` far
below a task's size, the planner caches each shared prefix's keys/values and later forwards start
from them. These tests check that this gives the numbers of one full causal forward per request
(|Δ| ≤ 1e-4 in float32, same ``is_greedy``), forwards every trie node exactly once, shares only
common *token* ids when two prompts' common *string* prefix ends inside a BPE merge, and stays
right when forwards run out of the planned order (the cache is cut back and extended).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cfbench.backends.hf import HFBackend, Trie
from cfbench.models.tiny import make_tiny_llama
from cfbench.models.tokenize import encode_pair
from cfbench.requests import LoglikRequest, LoglikResult

TOL = 1e-4
HEADER = "The following are multiple choice questions (with answers) about {}.\n\n"
SHOTS = {
    "physics": [
        ("Which object rolls the farthest down a ramp?", "A"),
        ("A man is sitting on a roof. What does he start?", "C"),
        ("The quick brown fox jumps over what?", "B"),
    ],
    "roofing": [
        ("A man starts pulling up roofing on the roof because?", "D"),
        ("The cat sleeps while the quick brown fox jumps. Therefore?", "A"),
        ("Which ball rolls down the lazy ramp?", "B"),
    ],
}
QUESTIONS = [
    "Which object rolls the farthest down a hill?",
    "The lazy dog sleeps on the roof because?",
    "A man is pulling up the ball. He starts?",
    "The quick brown cat rolls over the fox?",
]
LETTERS = [" A", " B", " C", " D"]
LONG = [" the ball.", " the ball and the cat.", " pulling up roofing on the roof."]


def prompt(subject: str, question: str) -> str:
    body = "".join(f"{q}\nA. yes\nB. no\nC. true\nD. false\nAnswer: {a}\n\n" for q, a in SHOTS[subject])
    return HEADER.format(subject) + body + f"{question}\nA. yes\nB. no\nC. true\nD. false\nAnswer:"


def few_shot_requests() -> list[LoglikRequest]:
    reqs = []
    for subject in SHOTS:
        for q in QUESTIONS:
            ctx = prompt(subject, q)
            reqs += [LoglikRequest(ctx, c) for c in LETTERS + LONG]
    return reqs


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_llama(tmp_path_factory.mktemp("tiny-prefix"), max_position_embeddings=1024)


@pytest.fixture(scope="module")
def plain(tiny: Path) -> HFBackend:
    return HFBackend(tiny, dtype="float32", scoring_path="plain")


def whole(be: HFBackend, requests: list[LoglikRequest]) -> list[LoglikResult]:
    """One ordinary causal forward of each whole prompt (lm-eval's algorithm), no cfbench code."""
    out = []
    with torch.no_grad():
        for req in requests:
            ctx, cont = encode_pair(be.tokenizer, req.context, req.continuation)
            inp = (ctx + cont)[-(be.max_length + 1) :][:-1]
            logp = torch.log_softmax(be.model(torch.tensor([inp])).logits[0, -len(cont) :].float(), dim=-1)
            tgt = torch.tensor(cont)
            lp = float(logp[torch.arange(len(cont)), tgt].sum())
            out.append(LoglikResult(lp, bool((logp.argmax(-1) == tgt).all()), len(cont)))
    return out


def assert_same(got: list[LoglikResult], want: list[LoglikResult]) -> None:
    assert len(got) == len(want)
    worst = max(abs(g.logprob - w.logprob) for g, w in zip(got, want, strict=True))
    assert worst <= TOL, worst
    assert [g.is_greedy for g in got] == [w.is_greedy for w in want]
    assert [g.n_tokens for g in got] == [w.n_tokens for w in want]


def distinct_nodes(be: HFBackend, requests: list[LoglikRequest]) -> int:
    trie = Trie()
    for item in be.prepare(requests):
        trie.add(item)
    return len(trie)


@pytest.mark.parametrize(
    "options",
    [{"batch_tokens": 64}, {"batch_tokens": 64, "dense_limit": 4}, {"batch_size": 1}, {"batch_tokens": 200}],
    ids=["small-forwards", "small-units", "one-request-per-forward", "subject-per-forward"],
)
def test_cached_prefix_equals_whole_prompts(tiny: Path, plain: HFBackend, options: dict) -> None:
    reqs = few_shot_requests()
    be = HFBackend(tiny, dtype="float32", **options)
    tries = be.plan(be.prepare(reqs))
    prefix_len = len(be.tokenizer.encode(prompt("physics", "")[: -len("\nA. yes\nB. no\nC. true\nD. false\nAnswer:")]))
    assert len(tries) > 2
    assert max(len(t.prefix) for t in tries) >= prefix_len - 2  # forwards really start from a cached prompt
    assert sum(t.capture > 0 for t in tries) >= 2  # each subject's prompt is captured once
    got = be.loglikelihood(reqs)
    assert_same(got, whole(plain, reqs))
    assert_same(got, plain.loglikelihood(reqs))
    distinct = distinct_nodes(be, reqs)
    if "batch_size" not in options:
        # Every distinct token is forwarded once: the shared prompts are not re-encoded per forward.
        assert be.tokens_forwarded == distinct
    else:  # one request per forward: only choices sharing tokens below a scored position repeat them
        assert distinct < be.tokens_forwarded < 1.2 * distinct


def test_prefix_ending_mid_merge_shares_only_common_token_ids(tiny: Path, plain: HFBackend) -> None:
    """Two prompts whose common string prefix ends inside a BPE merge (" the far|thest" vs " the
    far| away"): their common token prefix is shorter than the string's, and scoring through the
    cache gives each prompt its own tokens' numbers."""
    base = prompt("physics", QUESTIONS[0]) + " Which object rolls the"
    a, b = base + " farthest?", base + " far away?"
    tok = plain.tokenizer
    ta, tb = tok.encode(a), tok.encode(b)
    common_str = len(base + " far")
    common_tok = next(i for i, (x, y) in enumerate(zip(ta, tb, strict=False)) if x != y)
    assert len(tok.decode(ta[:common_tok])) < common_str  # the merge straddles the string boundary
    reqs = [LoglikRequest(c, k) for c in (a, b) for k in LETTERS + LONG]
    reqs += [LoglikRequest(base + " f", "arthest?"), LoglikRequest(base + " f", "ar away?")]  # context cut mid-word
    be = HFBackend(tiny, dtype="float32", batch_tokens=24)
    tries = be.plan(be.prepare(reqs))
    assert any(t.prefix for t in tries)
    for t in tries:  # a cached prefix is always a common *token* prefix of its forward's inputs
        assert all(item.inp[: len(t.prefix)] == t.prefix for item, _ in t.items)
    assert_same(be.loglikelihood(reqs), whole(plain, reqs))


def test_forwards_out_of_planned_order_extend_and_cut_the_cache(tiny: Path, plain: HFBackend) -> None:
    """After an out-of-memory split the remaining forwards no longer follow the cache; each one then
    cuts the cache back to what it shares and forwards the rest of its prefix first."""
    reqs = few_shot_requests()
    be = HFBackend(tiny, dtype="float32", batch_tokens=64)
    items = be.prepare(reqs)
    tries = be.plan(items)
    got: dict[int, LoglikResult] = {}
    with torch.inference_mode():
        for trie in reversed(tries):  # every capture is now missing when its followers run
            got.update(be._run_trie(trie))
    assert_same([got[i] for i in range(len(reqs))], whole(plain, reqs))
    assert be.tokens_forwarded > distinct_nodes(be, reqs)  # the missing prefixes were forwarded


def test_out_of_memory_mid_task_keeps_the_numbers(tiny: Path, plain: HFBackend, monkeypatch) -> None:
    reqs = few_shot_requests()
    be = HFBackend(tiny, dtype="float32", batch_tokens=120)
    real = be._run_trie
    failed: list[int] = []

    def limited(trie: Trie) -> list:
        if len(trie) > 70 and not failed:
            failed.append(len(trie))
            raise torch.OutOfMemoryError("simulated")
        return real(trie)

    monkeypatch.setattr(be, "_run_trie", limited)
    assert_same(be.loglikelihood(reqs), whole(plain, reqs))
    assert failed and be.batch_tokens <= failed[0] // 2


def test_cache_does_not_outlive_a_call(tiny: Path) -> None:
    be = HFBackend(tiny, dtype="float32", batch_tokens=64)
    be.loglikelihood(few_shot_requests()[:8])
    assert be._prefix_tokens == () and be._prefix_kv == []


def test_model_mishandling_the_cached_prefix_is_refused(tiny: Path, monkeypatch) -> None:
    """Attention that gets the cached keys wrong gives other numbers on the self-check's cached
    forwards; the tree path is then refused, naming the fix."""
    from cfbench.backends import hf as hf_module
    from cfbench.errors import CfbenchError

    real = hf_module.tree_attention

    def no_prefix(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                  mask: torch.Tensor | None, **kw: object) -> object:  # fmt: skip
        ctx = kw.get(hf_module._UNITS_KW)
        if ctx is not None and ctx.prefix:
            ctx.prefix = [(k.clone().zero_(), v.clone().zero_()) for k, v in ctx.prefix]
        return real(module, query, key, value, mask, **kw)

    monkeypatch.setattr(hf_module, "tree_attention", no_prefix)
    try:
        with pytest.raises(CfbenchError, match="scoring_path=plain"):
            HFBackend(tiny, dtype="float32")
    finally:
        monkeypatch.undo()
        hf_module._register_attention()  # later backends get the real attention again


def test_batched_tokenisation_equals_encode_pair(plain: HFBackend) -> None:
    """``prepare`` tokenises in batches with each distinct string once; the ids are encode_pair's."""
    from cfbench.models import tokenize

    pairs = [(r.context, r.continuation) for r in few_shot_requests()]
    pairs += [("", " the ball."), ("The quick brown fox ", "jumps over"), ("Answer:  ", "A"), ("x", "")]
    pairs = pairs * 12  # more than one batch of _PAIRS_PER_BATCH
    assert len(pairs) > tokenize._PAIRS_PER_BATCH
    tok = plain.tokenizer
    assert tokenize.encode_pairs(tok, pairs) == [tokenize.encode_pair(tok, c, k) for c, k in pairs]
