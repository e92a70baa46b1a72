"""HFBackend against a naive one-request-at-a-time causal forward, on a tiny random llama."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from cfbench.backends import hf as hf_module
from cfbench.backends import make_backend
from cfbench.backends.hf import HFBackend, Trie, Unit, _Item, plan_units
from cfbench.errors import CfbenchError
from cfbench.models.tiny import make_tiny_llama
from cfbench.models.tokenize import encode_pair
from cfbench.requests import LoglikRequest, LoglikResult

CONTEXTS = [
    "Question: Which object rolls the farthest down a ramp?\nAnswer:",
    "Question: Which object rolls the farthest down a hill?\nAnswer:",  # shares a long prefix
    "A man is sitting on a roof. He",
    "The quick brown fox ",  # trailing space moves to the continuation
]
CHOICES = [" the ball.", " the ball and the cat.", " a dog", " pulling up roofing on the roof.", "jumps over", " B"]


def _requests() -> list[LoglikRequest]:
    reqs = [LoglikRequest(c, k) for c in CONTEXTS for k in CHOICES]
    reqs.append(LoglikRequest(CONTEXTS[0], CHOICES[0]))  # exact duplicate
    return reqs


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_llama(tmp_path_factory.mktemp("tiny"), max_position_embeddings=128)


@pytest.fixture(scope="module")
def backend(tiny: Path) -> HFBackend:
    return HFBackend(tiny, dtype="float32")


def naive(be: HFBackend, requests: list[LoglikRequest]) -> list[LoglikResult]:
    """lm-eval's algorithm: one full causal forward of (ctx + cont)[-(L+1):][:-1] per request."""
    model = be.model
    out = []
    with torch.no_grad():
        for req in requests:
            ctx, cont = encode_pair(be.tokenizer, req.context, req.continuation)
            inp = (ctx + cont)[-(be.max_length + 1) :][:-1]
            logits = model(torch.tensor([inp])).logits[0, -len(cont) :].float()
            logp = torch.log_softmax(logits, dim=-1)
            tgt = torch.tensor(cont)
            out.append(
                LoglikResult(
                    float(logp[torch.arange(len(cont)), tgt].sum()),
                    bool((logp.argmax(-1) == tgt).all()),
                    len(cont),
                )
            )
    return out


def assert_same(got: list[LoglikResult], want: list[LoglikResult], tol: float) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert abs(g.logprob - w.logprob) <= tol, (g, w)
        assert g.is_greedy == w.is_greedy, (g, w)
        assert g.n_tokens == w.n_tokens


@pytest.mark.parametrize(
    "options",
    [{}, {"batch_tokens": 40, "dense_limit": 8}, {"dense_limit": 1}, {"batch_size": 1}],
    ids=["default", "small-forwards", "all-chains", "one-request-per-forward"],
)
def test_shared_prefix_equals_naive(tiny: Path, backend: HFBackend, options: dict) -> None:
    be = HFBackend(tiny, dtype="float32", **options)
    assert be.tree
    reqs = _requests()
    seen: list[int] = []
    got = be.loglikelihood(reqs, progress=seen.append)
    assert sum(seen) == len(reqs)
    assert_same(got, naive(backend, reqs), 1e-4)
    naive_tokens = 0
    for r in reqs:
        ctx, cont = encode_pair(be.tokenizer, r.context, r.continuation)
        naive_tokens += len(ctx) + len(cont) - 1
    distinct = _distinct_nodes(be, reqs)
    # Sharing, even one request per forward (the prefix cache carries shared prefixes across
    # forwards): far fewer tokens than one full forward per request, never fewer than the trie has.
    assert distinct <= be.tokens_forwarded < 0.6 * naive_tokens


def _distinct_nodes(be: HFBackend, reqs: list[LoglikRequest]) -> int:
    trie = Trie()
    for item in be.prepare(reqs):
        trie.add(item)
    return len(trie)


def _ancestors(trie: Trie, i: int) -> set[int]:
    out = set()
    while i >= 0:
        out.add(i)
        i = trie.parents[i]
    return out


@pytest.mark.parametrize("dense_limit", [1, 3, 8, 1000])
def test_units_cover_exactly_the_ancestor_pairs(dense_limit: int) -> None:
    """Whatever the split, every node attends to exactly its ancestors (and itself), once."""
    rng = random.Random(dense_limit)
    seqs = {tuple(rng.choice("abc") for _ in range(rng.randint(1, 9))) for _ in range(40)}
    trie = Trie()
    for k, seq in enumerate(sorted(seqs)):
        trie.add(_Item(k, tuple(ord(c) for c in seq), [0]))
    seen: dict[int, list[int]] = {}
    for u in plan_units(trie, dense_limit):
        keys = list(range(u.start, u.end)) if u.kidx is None else u.kidx.tolist()
        for r, q in enumerate(range(u.start, u.end)):
            if u.mask is None:
                allowed = keys[: r + 1]
            else:
                allowed = [k for k, ok in zip(keys, u.mask[r].tolist(), strict=True) if ok]
            assert q not in seen, "a node is queried by two units"
            seen[q] = allowed
    assert sorted(seen) == list(range(len(trie)))
    for q, allowed in seen.items():
        assert sorted(allowed) == sorted(_ancestors(trie, q)), q


def test_model_ignoring_tree_attention_is_refused(tiny: Path, backend: HFBackend, monkeypatch) -> None:
    """If the units are not honoured, the self-check refuses (no silent switch of the keyed scoring
    path) and names the fix; with scoring_path=plain the numbers are right."""

    def plan_broken(trie: Trie, dense_limit: int, device: object = "cpu") -> list[Unit]:
        return [Unit(0, len(trie), None, None)]  # plain causal over the flattened trie: wrong at branches

    monkeypatch.setattr(hf_module, "plan_units", plan_broken)
    with pytest.raises(CfbenchError, match="scoring_path=plain"):
        HFBackend(tiny, dtype="float32")
    be = HFBackend(tiny, dtype="float32", scoring_path="plain")
    assert not be.tree
    reqs = _requests()
    assert_same(be.loglikelihood(reqs), naive(backend, reqs), 1e-4)


def test_greedy_continuation_is_greedy(backend: HFBackend) -> None:
    """A continuation decoded greedily from the model must score as greedy; a perturbed one must not."""
    tok = backend.tokenizer
    checked = 0
    for ctx in CONTEXTS[:3]:
        ids = tok.encode(ctx, add_special_tokens=False)
        n_ctx = len(ids)
        with torch.no_grad():
            for _ in range(3):
                ids.append(int(backend.model(torch.tensor([ids])).logits[0, -1].argmax()))
        cont = tok.decode(ids[n_ctx:])
        if encode_pair(tok, ctx, cont)[1] != ids[n_ctx:]:
            continue  # the greedy tokens do not survive a decode/encode round trip
        other = tok.decode([*ids[n_ctx:-1], (ids[-1] + 1) % len(tok)])
        res, bad = backend.loglikelihood([LoglikRequest(ctx, cont), LoglikRequest(ctx, other)])
        assert res.is_greedy and res.n_tokens == 3
        assert not bad.is_greedy and bad.logprob < res.logprob
        checked += 1
    assert checked >= 1


def test_single_token_choices_cost_one_context_forward(tiny: Path, backend: HFBackend) -> None:
    be = HFBackend(tiny, dtype="float32")
    letters = [" B", " C", " D"]  # single tokens in the tiny vocabulary
    contexts = [CONTEXTS[0], CONTEXTS[2]]  # no common prefix
    reqs = [LoglikRequest(c, k) for c in contexts for k in letters]
    assert all(len(encode_pair(be.tokenizer, r.context, r.continuation)[1]) == 1 for r in reqs)
    got = be.loglikelihood(reqs)
    assert_same(got, naive(backend, reqs), 1e-4)
    lengths = [len(encode_pair(be.tokenizer, c, " B")[0]) for c in contexts]
    assert be.tokens_forwarded == sum(lengths)  # each context forwarded once, nothing else
    assert be.head_rows == len(contexts)  # the LM head ran at one row per context (three letters each)


def test_left_truncation_matches_lmeval_rule(tiny: Path) -> None:
    be = HFBackend(tiny, dtype="float32", max_length=12)
    assert be.settings()["max_length"] == 12
    reqs = [LoglikRequest(c, k) for c in CONTEXTS[:2] for k in CHOICES[:2]]
    got = be.loglikelihood(reqs)
    assert_same(got, naive(be, reqs), 1e-4)
    full = HFBackend(tiny, dtype="float32").loglikelihood(reqs)
    assert max(abs(a.logprob - b.logprob) for a, b in zip(got, full, strict=True)) > 1e-3
    with pytest.raises(CfbenchError, match="max_length"):
        be.loglikelihood([LoglikRequest("x", " the ball" * 10)])


def test_empty_context_uses_prefix_token(backend: HFBackend) -> None:
    reqs = [LoglikRequest("", " the ball."), LoglikRequest("", "The quick brown fox")]
    ctx, _ = encode_pair(backend.tokenizer, "", " the ball.")
    assert ctx == [backend.tokenizer.eos_token_id]  # no BOS in this tokenizer
    assert_same(backend.loglikelihood(reqs), naive(backend, reqs), 1e-4)


def test_empty_continuation_is_certain(backend: HFBackend) -> None:
    assert backend.loglikelihood([LoglikRequest("The quick", "")]) == [LoglikResult(0.0, True, 0)]


def test_bfloat16_runs_and_tracks_float32(tiny: Path, backend: HFBackend) -> None:
    be = make_backend("hf", tiny, dtype="bfloat16")
    assert be.tree  # the self-check passes in bfloat16 too
    assert {k: be.settings()[k] for k in ("backend", "dtype", "max_length", "scoring_path")} == {
        "backend": "hf", "dtype": "bfloat16", "max_length": 128, "scoring_path": "tree"}
    reqs = _requests()
    got = be.loglikelihood(reqs)
    assert be.model.dtype == torch.bfloat16
    want = naive(backend, reqs)
    for g, w in zip(got, want, strict=True):
        assert g.n_tokens == w.n_tokens
        assert abs(g.logprob - w.logprob) <= 0.05 * max(1.0, abs(w.logprob)), (g, w)


def test_out_of_memory_splits_the_forward(tiny: Path, backend: HFBackend, monkeypatch) -> None:
    be = HFBackend(tiny, dtype="float32")
    real = be._run_trie
    sizes: list[int] = []

    def limited(trie: Trie) -> list:
        sizes.append(len(trie))
        if len(trie) > 60:
            raise torch.OutOfMemoryError("simulated")
        return real(trie)

    monkeypatch.setattr(be, "_run_trie", limited)
    reqs = _requests()
    assert_same(be.loglikelihood(reqs), naive(backend, reqs), 1e-4)
    assert sizes[0] > 60 and be.batch_tokens <= sizes[0] // 2


def test_bad_options_are_user_errors(tiny: Path) -> None:
    with pytest.raises(CfbenchError, match="dtype"):
        HFBackend(tiny, dtype="float8")
    with pytest.raises(CfbenchError, match="batch_size"):
        HFBackend(tiny, batch_size="many")
