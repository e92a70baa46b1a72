"""The openai backend over two local servers gives the items of one server, and fails over a dead one."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from cfbench.backends import LoglikRequest, make_backend

REQUESTS = [LoglikRequest(f"Question {i}: what is {i} plus {i}? Answer:", f" {2 * i + d}") for i in range(12)
            for d in (0, 1)]  # fmt: skip


class _FakeServer(BaseHTTPRequestHandler):
    """An OpenAI-compatible /v1/completions with echo: a deterministic log-prob per prompt token."""

    def do_GET(self) -> None:
        body = json.dumps({"data": [{"id": "fake", "max_model_len": 512}]}) if self.path == "/v1/models" else ""
        self.send_response(200 if body else 404)
        self.end_headers()
        self.wfile.write(body.encode())

    def do_POST(self) -> None:
        req = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
        type(self).hits += 1  # type: ignore[attr-defined]
        prompt = req["prompt"]
        lps = [None] + [-((t * 7919 + j) % 97) / 10.0 - 0.01 for j, t in enumerate(prompt[1:], 1)]
        tops = [None] + [{"x": v} for v in lps[1:]]
        body = json.dumps({"choices": [{"logprobs": {"token_logprobs": lps, "top_logprobs": tops}}]})
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def servers() -> Iterator[list[tuple[str, type, ThreadingHTTPServer]]]:
    out, httpds = [], []
    for _ in range(2):
        handler = type("Handler", (_FakeServer,), {"hits": 0})
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        httpds.append(httpd)
        out.append((f"http://127.0.0.1:{httpd.server_address[1]}/v1", handler, httpd))
    yield out
    for h in httpds:
        h.shutdown()
        h.server_close()  # a second shutdown/close is harmless


def _score(model: Path, base_url: str) -> list[tuple[float, bool, int]]:
    backend = make_backend("openai", model, base_url=base_url, concurrency=4, max_retries=2)
    try:
        return [(r.logprob, r.is_greedy, r.n_tokens) for r in backend.loglikelihood(REQUESTS)]
    finally:
        backend.close()


Servers = list[tuple[str, type, ThreadingHTTPServer]]


def test_two_servers_give_the_items_of_one(tiny_model: Path, servers: Servers) -> None:
    (u1, h1, _), (u2, h2, _) = servers
    one = _score(tiny_model, u1)
    hits_one = h1.hits
    two = _score(tiny_model, f"{u1};{u2}")
    assert two == one
    assert h2.hits > 0 and h1.hits - hits_one > 0  # both servers did part of the work


def test_dead_server_fails_over(tiny_model: Path, servers: list[tuple[str, type, ThreadingHTTPServer]]) -> None:
    (u1, _, _), (u2, h2, httpd2) = servers
    one = _score(tiny_model, u1)
    pool = make_backend("openai", tiny_model, base_url=f"{u1};{u2}", concurrency=4, max_retries=2)
    try:
        httpd2.shutdown()
        httpd2.server_close()  # server 2 dies after start-up: its requests must move to server 1
        got = [(r.logprob, r.is_greedy, r.n_tokens) for r in pool.loglikelihood(REQUESTS)]
    finally:
        pool.close()
    assert got == one and h2.hits == 0
