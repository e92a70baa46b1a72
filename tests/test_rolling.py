"""``loglikelihood_rolling``: lm-eval's windows exactly, and the hf backend equal to lm-eval's HFLM."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from cfbench.backends.hf import HFBackend
from cfbench.backends.rolling import plan_windows, rolling_windows, score_rolling
from cfbench.errors import CfbenchError
from cfbench.models.tiny import make_tiny_llama
from cfbench.requests import RollingRequest

TOL = 1e-3
TEXTS = [
    "The quick brown fox jumps over the lazy dog while the cat sleeps.",
    "A man is sitting on a roof. He starts pulling up roofing on the roof. " * 4,  # several windows
    "Answer: A",  # shorter than one window
    "Question: Which object rolls the farthest down a ramp? Answer: the ball. " * 9,  # many windows
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random llama whose context is 24 tokens, so the texts above really roll."""
    return make_tiny_llama(tmp_path_factory.mktemp("roll") / "tiny", max_position_embeddings=24)


def lmeval_windows(tokens: list[int], prefix: int, max_length: int) -> list[tuple[list[int], list[int]]]:
    from lm_eval import utils

    return [
        utils.make_disjoint_window(w)
        for w in utils.get_rolling_token_windows(tokens, prefix_token=prefix, max_seq_len=max_length, context_len=1)
    ]


def test_windows_equal_lm_evals_on_random_lengths() -> None:
    pytest.importorskip("lm_eval")
    rng = random.Random(0)
    for _ in range(300):
        max_length = rng.randint(1, 12)
        tokens = [rng.randrange(1000) for _ in range(rng.randint(1, 40))]
        got = rolling_windows(tokens, 7, max_length)
        assert got == lmeval_windows(tokens, 7, max_length)
        assert [t for _, cont in got for t in cont] == tokens  # every token scored exactly once
        assert all(len(ctx) + len(cont) <= max_length + 1 and ctx for ctx, cont in got)


def test_window_edge_cases() -> None:
    assert rolling_windows([5, 6, 7], 1, 8) == [([1], [5, 6, 7])]  # shorter than one window
    assert rolling_windows([5, 6, 7, 8], 1, 4) == [([1], [5, 6, 7, 8])]  # exactly one window
    # one token more than a window: the second window predicts it from the 4 tokens before it
    assert rolling_windows([5, 6, 7, 8, 9], 1, 4) == [([1], [5, 6, 7, 8]), ([5, 6, 7, 8], [9])]
    assert rolling_windows([], 1, 4) == []
    with pytest.raises(CfbenchError, match="max_length"):
        rolling_windows([5], 1, 0)


def test_empty_text_refused(tiny: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny)
    with pytest.raises(CfbenchError, match="request 1 has an empty text"):
        plan_windows(tok, [RollingRequest("fine"), RollingRequest("")], 8)
    with pytest.raises(CfbenchError, match="empty text"):
        score_rolling(tok, [RollingRequest("")], 8, lambda ws: [0.0] * len(ws))


def test_windows_feed_at_most_max_length(tiny: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny)
    windows, counts = plan_windows(tok, [RollingRequest(t) for t in TEXTS], 24)
    assert counts == [len(tok.encode(t)) for t in TEXTS]
    assert all(len(w.inp) <= 24 and len(w.targets) <= len(w.inp) for w in windows)
    assert sum(len(w.targets) for w in windows) == sum(counts)
    assert max(w.doc for w in windows) == len(TEXTS) - 1 and sum(w.doc == 3 for w in windows) >= 5


def hflm_rolling(folder: Path, texts: list[str], **kwargs: Any) -> list[float]:
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=str(folder), dtype="float32", batch_size=4, device="cpu", **kwargs)
    insts = [Instance("loglikelihood_rolling", {}, (t,), idx=0, metadata=("ppl", i, 1)) for i, t in enumerate(texts)]
    return lm.loglikelihood_rolling(insts, disable_tqdm=True)


@pytest.mark.parametrize("scoring_path", ["tree", "plain"])
def test_hf_rolling_equals_lm_eval_on_tiny_model(tiny: Path, scoring_path: str) -> None:
    pytest.importorskip("lm_eval")
    want = hflm_rolling(tiny, TEXTS)  # max_length 24 from the config on both sides
    be = HFBackend(tiny, dtype="float32", scoring_path=scoring_path)
    assert be.max_length == 24
    got = be.loglikelihood_rolling([RollingRequest(t) for t in TEXTS])
    worst = max(abs(g.logprob - w) for g, w in zip(got, want, strict=True))
    assert worst <= TOL, f"max |Δ| {worst:.2e}"
    assert [g.n_tokens for g in got] == [len(be.tokenizer.encode(t)) for t in TEXTS]


def test_hf_rolling_forced_max_length_and_progress(tiny: Path) -> None:
    """An explicit max_length on both sides (windows of 7 tokens); progress counts texts."""
    pytest.importorskip("lm_eval")
    want = hflm_rolling(tiny, TEXTS, max_length=7)
    be = HFBackend(tiny, dtype="float32", max_length=7)
    seen: list[int] = []
    got = be.loglikelihood_rolling([RollingRequest(t) for t in TEXTS], progress=seen.append)
    assert max(abs(g.logprob - w) for g, w in zip(got, want, strict=True)) <= TOL
    assert sum(seen) == len(TEXTS)
    # rolling really changes the number: a longer window sees more context
    wide = HFBackend(tiny, dtype="float32", max_length=24).loglikelihood_rolling([RollingRequest(TEXTS[3])])
    assert abs(wide[0].logprob - got[3].logprob) > 1e-2


class _EchoServer:
    """An OpenAI-style /v1/completions server whose echoed prompt log-probs come from an HF model.

    It answers exactly what a vLLM server answers for ``echo=true, logprobs=1``: ``token_logprobs``
    (None for the first prompt token) and ``top_logprobs``; prompts longer than the window the
    server announces are rejected, as vLLM rejects them.
    """

    def __init__(self, folder: Path, max_model_len: int) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        import torch
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        lock = threading.Lock()
        self.prompts: list[list[int]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _send(self, code: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                if self.path == "/v1/models":
                    self._send(200, {"data": [{"id": "tiny", "max_model_len": max_model_len}]})
                else:
                    self._send(404, {})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                prompt = body["prompt"]
                if len(prompt) + body["max_tokens"] > max_model_len:
                    self._send(400, {"error": f"prompt of {len(prompt)} tokens is too long"})
                    return
                with lock, torch.inference_mode():
                    outer.prompts.append(prompt)
                    lp = torch.log_softmax(model(torch.tensor([prompt])).logits[0].float(), -1)
                tokens = [None] + [float(lp[j - 1, prompt[j]]) for j in range(1, len(prompt))]
                tops = [None] + [{"t": float(lp[j - 1].max())} for j in range(1, len(prompt))]
                choice = {"logprobs": {"token_logprobs": tokens, "top_logprobs": tops}}
                self._send(200, {"choices": [choice]})

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_openai_rolling_equals_hf_in_windows_of_max_length_minus_2(tiny: Path) -> None:
    """Echoed prompt log-probs give the hf backend's numbers for windows two shorter than the server's
    length (one for the window's last target in the prompt, one for the generated token)."""
    from cfbench.backends import make_backend

    server = _EchoServer(tiny, max_model_len=12)
    try:
        be = make_backend("openai", tiny, base_url=server.url, concurrency=2)
        seen: list[int] = []
        got = be.loglikelihood_rolling([RollingRequest(t) for t in TEXTS], progress=seen.append)
        be.close()
    finally:
        server.close()
    want = HFBackend(tiny, dtype="float32", max_length=10).loglikelihood_rolling([RollingRequest(t) for t in TEXTS])
    assert max(abs(g.logprob - w.logprob) for g, w in zip(got, want, strict=True)) <= TOL
    assert [g.n_tokens for g in got] == [w.n_tokens for w in want] and sum(seen) == len(TEXTS)
    assert max(len(p) for p in server.prompts) == 11  # window of 10 plus its last target; room for 1 generated
