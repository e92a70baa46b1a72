"""``generate_until`` (cfbench/backends/generate.py) on tiny random llamas: stop strings (mid-output,
multi-token, EOS), batched = unbatched, the token budget, refusals, and parity with lm-eval's HFLM."""

from __future__ import annotations

from pathlib import Path

import pytest

from cfbench.backends.generate import stop_strings, truncate_at_stop
from cfbench.backends.hf import HFBackend
from cfbench.errors import CfbenchError
from cfbench.models.tiny import make_tiny_llama
from cfbench.requests import GenerateRequest

PROMPTS = [
    "Question: Which object rolls",
    "The quick brown",
    "A",
    "Answer: A Answer: B Answer: C and a longer prompt here",
    "The following are multiple choice questions",
]


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """BPE vocabulary of 320 (multi-character tokens) and large random weights: varied greedy output."""
    return make_tiny_llama(tmp_path_factory.mktemp("gen") / "llama")


@pytest.fixture(scope="module")
def backend(llama: Path) -> HFBackend:
    return HFBackend(llama, device="cpu", scoring_path="plain")


class ForwardCounter:
    """Counts the model's forward calls (one per generated token with the KV cache)."""

    def __init__(self, model) -> None:
        self.calls = 0
        self.handle = model.register_forward_hook(self._hook)

    def _hook(self, *_args) -> None:
        self.calls += 1

    def __enter__(self) -> ForwardCounter:
        return self

    def __exit__(self, *_exc) -> None:
        self.handle.remove()


def test_stop_strings_and_truncation_rules():
    assert stop_strings(["\n\n", "", "Q:"], "<eos>") == ["\n\n", "Q:", "<eos>"]
    assert stop_strings(["<eos>"], "<eos>") == ["<eos>"]
    assert stop_strings([], None) == []
    # the earliest occurrence of any stop wins, whatever the list order; the stop is not returned
    assert truncate_at_stop("a b. c\n\nd Q: e", ["Q:", "\n\n"]) == "a b. c"
    assert truncate_at_stop("abc", ["x"]) == "abc"
    assert truncate_at_stop("abc", ["a"]) == ""


def test_stops_mid_output_at_a_multi_token_stop_string(backend):
    tok = backend.tokenizer
    prompt = PROMPTS[0]
    with ForwardCounter(backend.model) as full_count:
        full = backend.generate_until([GenerateRequest(prompt, (), 32)])[0]
    assert len(full) > 12, full
    # a stop string from the middle of the free output that the tokenizer splits over >= 2 tokens
    stop = next(
        full[k : k + 4]
        for k in range(len(full) // 3, len(full) - 4)
        if "\ufffd" not in full[k : k + 4] and len(tok(full[k : k + 4], add_special_tokens=False)["input_ids"]) >= 2
    )
    cut = full.index(stop)
    assert 0 < cut < len(full) - len(stop)
    with ForwardCounter(backend.model) as stop_count:
        out = backend.generate_until([GenerateRequest(prompt, (stop,), 32)])[0]
    assert out == full[:cut]
    assert stop_count.calls < full_count.calls  # generation ended there, it was not merely cut afterwards


def test_batched_equals_unbatched(backend):
    free = backend.generate_until([GenerateRequest(p, (), 20) for p in PROMPTS], batch_size=1)
    stops = [(f[5:7],) if len(f) > 8 else () for f in free]  # some rows stop early, others run to the budget
    requests = [GenerateRequest(p, s, 20) for p, s in zip(PROMPTS, stops, strict=True)]
    one = [backend.generate_until([r], batch_size=1)[0] for r in requests]
    assert backend.generate_until(requests, batch_size=len(requests)) == one
    assert backend.generate_until(requests, batch_size=2) == one
    # mixed budgets in one call: grouped, still in request order
    mixed = [
        GenerateRequest(PROMPTS[0], (), 6),
        GenerateRequest(PROMPTS[1], (), 20),
        GenerateRequest(PROMPTS[2], (), 6),
    ]
    assert backend.generate_until(mixed, batch_size=3) == [backend.generate_until([r])[0] for r in mixed]


def test_max_gen_toks_is_respected(backend):
    for n in (1, 5):
        with ForwardCounter(backend.model) as count:
            out = backend.generate_until([GenerateRequest(PROMPTS[1], (), n)])[0]
        assert count.calls == n and out  # this model emits no EOS here: exactly the budget is generated
    long = backend.generate_until([GenerateRequest(PROMPTS[1], (), 20)])[0]
    short = backend.generate_until([GenerateRequest(PROMPTS[1], (), 5)])[0]
    assert long.startswith(short) and len(long) > len(short)


def test_eos_stops_a_row(tmp_path):
    """A model whose every next token is EOS returns the empty string after one step."""
    import torch

    from cfbench.train.tiny import make_tiny_checkpoint

    be = HFBackend(make_tiny_checkpoint(tmp_path / "eos"), device="cpu", scoring_path="plain")
    vocab, eos = be.model.config.vocab_size, be.tokenizer.eos_token_id

    class EosHead(torch.nn.Module):
        def forward(self, hidden: torch.Tensor) -> torch.Tensor:
            logits = torch.zeros(*hidden.shape[:-1], vocab)
            logits[..., eos] = 1.0
            return logits

    be.model.lm_head = EosHead()
    with ForwardCounter(be.model) as count:
        out = be.generate_until([GenerateRequest("hello", ("zz",), 10), GenerateRequest("hi", (), 10)])
    assert out == ["", ""] and count.calls == 1


def test_refusals(backend):
    with pytest.raises(CfbenchError, match="leaves no room for the prompt"):
        backend.generate_until([GenerateRequest("x", (), backend.max_length)])
    with pytest.raises(CfbenchError, match="max_gen_toks must be >= 1"):
        backend.generate_until([GenerateRequest("x", (), 0)])
    with pytest.raises(CfbenchError, match="batch size must be >= 1"):
        backend.generate_until([GenerateRequest("x", (), 3)], batch_size=0)


def test_parity_with_lm_eval_hflm(llama, backend):
    """Same strings as lm-eval's own ``HFLM.generate_until`` (greedy, same stops and budget)."""
    pytest.importorskip("lm_eval")
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    free = backend.generate_until([GenerateRequest(p, (), 24) for p in PROMPTS])
    until = [[f[8:10]] if len(f) > 12 else ["\n\n"] for f in free] + [[]]
    prompts = [*PROMPTS, PROMPTS[1]]
    ours = backend.generate_until(
        [GenerateRequest(p, tuple(u), 24) for p, u in zip(prompts, until, strict=True)], batch_size=3
    )
    lm = HFLM(pretrained=str(llama), dtype="float32", batch_size=3, device="cpu")
    instances = [
        Instance("generate_until", {}, (p, {"until": u, "max_gen_toks": 24, "do_sample": False}), i)
        for i, (p, u) in enumerate(zip(prompts, until, strict=True))
    ]
    theirs = lm.generate_until(instances, disable_tqdm=True)
    assert ours == theirs
    assert any(o != f for o, f in zip(ours, free, strict=False))  # some stop strings actually cut


def test_context_is_left_truncated_to_leave_room_for_the_budget(tmp_path):
    """prompt + generation fit max_length: the prompt keeps its last max_length - max_gen_toks tokens."""
    import torch

    from cfbench.backends.generate import generate_until
    from cfbench.train.tiny import make_tiny_checkpoint

    be = HFBackend(make_tiny_checkpoint(tmp_path / "bytes"), device="cpu", scoring_path="plain")
    torch.manual_seed(0)
    with torch.no_grad():  # large random weights: output that depends on the whole context
        for p in be.model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.3)
    prompt = "The quick brown fox jumps over the lazy dog. " * 4  # one token per byte (ASCII)
    assert len(be.tokenizer(prompt)["input_ids"]) == len(prompt) > 64
    got = generate_until(be.model, be.tokenizer, [GenerateRequest(prompt, (), 8)], max_length=64)
    assert got == generate_until(be.model, be.tokenizer, [GenerateRequest(prompt[-56:], (), 8)], max_length=64)
    # ... and that truncation is what made them equal: one more context byte changes the output
    assert got != generate_until(be.model, be.tokenizer, [GenerateRequest(prompt[-57:], (), 8)], max_length=1024)
