"""OpenAI-compatible completions server backend (vLLM's api_server, SGLang, TGI, llama.cpp, ...).

Log-likelihoods come from ``POST /v1/completions`` with ``echo=true, logprobs=1, max_tokens=1`` and
a *token-id* prompt (a list of ints): the server reports the log-prob of every prompt token, and
because cfbench tokenises locally with ``encode_pair`` and the tokenizer in ``model_path``, the
context/continuation split is exactly the ``hf`` backend's (a text prompt would be re-tokenised by
the server and could merge tokens across the boundary).

``is_greedy`` uses vLLM's ``prompt_logprobs`` (token ids with their rank) when the server sends
them, else the OpenAI ``top_logprobs`` field: the token is greedy when no top-1 entry beats it.
Identical prompts, and prompts that are a prefix of another, are sent once
(:mod:`cfbench.backends.token_prompts`). Requests run ``concurrency`` at a time; connection
errors, timeouts, 429 and 5xx answers are retried with exponential backoff.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import httpx

from cfbench.backends import rolling
from cfbench.backends.token_prompts import PromptPlan, plan_prompts
from cfbench.errors import CfbenchError
from cfbench.requests import LoglikRequest, LoglikResult, ProgressFn, RollingRequest, RollingResult

_RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}


class Retryable(Exception):
    """A failure worth retrying (the server may be overloaded or restarting)."""


def probe_server(
    base_url: str, api_key: str | None = None, timeout: float = 10.0
) -> tuple[list[dict[str, Any]], str | None]:
    """``(GET /v1/models data, GET /version)`` in two short requests: cheap facts about what is served.

    Used for the result cache key before anything is scored; an unreachable server is a one-line
    error naming how to start one.
    """
    root = _api_root(base_url)
    key = api_key or os.environ.get("OPENAI_API_KEY")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        with httpx.Client(timeout=httpx.Timeout(timeout), headers=headers) as client:
            reply = client.get(root + "/models")
            if reply.status_code >= 400:
                raise CfbenchError(
                    f"the server at {base_url} answered GET /models with HTTP {reply.status_code}: is base_url an "
                    "OpenAI-compatible API (it usually ends in /v1), and is the api_key right?"
                )
            try:
                listed = reply.json().get("data") or []
            except (ValueError, AttributeError) as exc:
                raise CfbenchError(
                    f"the server at {base_url} answered /models with non-JSON: is base_url an OpenAI-compatible "
                    "API (it usually ends in /v1)?"
                ) from exc
            version: str | None = None
            try:
                v = client.get(root.removesuffix("/v1") + "/version")
                version = str(v.json().get("version")) if v.status_code == 200 else None
            except (httpx.HTTPError, ValueError, AttributeError):
                version = None  # vLLM answers /version; other servers may not, which is fine
    except httpx.HTTPError as exc:
        raise CfbenchError(
            f"cannot reach an OpenAI-compatible server at {base_url} ({type(exc).__name__}: {exc}): start one, e.g. "
            "`python -m vllm.entrypoints.openai.api_server --model DIR --host 127.0.0.1 --port 8000 --dtype "
            "float32`, then pass base_url=http://127.0.0.1:8000/v1"
        ) from exc
    return [m for m in listed if isinstance(m, dict)], version


def _api_root(base_url: str) -> str:
    """Accept ``http://host:port`` as well as the OpenAI-style ``http://host:port/v1``."""
    root = base_url.strip().rstrip("/")
    if not root.startswith(("http://", "https://")):
        raise CfbenchError(f"base_url {base_url!r} is not an http(s) URL: pass e.g. http://127.0.0.1:8000/v1")
    return root if root.endswith("/v1") else root + "/v1"


class OpenAIBackend:
    """Scores log-likelihood requests on a running OpenAI-compatible completions server.

    ``model`` defaults to the first model the server lists; ``max_length`` (the longest prompt plus
    one generated token) defaults to the server's ``max_model_len`` (vLLM lists it) or else the
    model config's context length. Longer requests are left-truncated like in the other backends.
    """

    name = "openai"

    @classmethod
    def key_settings(cls, model_path: str | Path, options: dict[str, Any]) -> dict[str, Any]:
        """What changes the numbers, from the server's own answers (the cache key's backend part).

        The served model id, its ``root`` (the checkpoint vLLM loaded) and ``max_model_len``, the
        server version and the truncation length. The server's dtype is invisible through the API,
        so it is never assumed: ``dtype`` is the user's claim (backend option ``dtype=...``) or
        ``"unknown"``, and two different claims are two different keys.
        """
        base_url = options.get("base_url")
        if not base_url:
            raise CfbenchError("the openai backend needs the server's address: pass base_url=http://HOST:PORT/v1")
        if isinstance(base_url, list | tuple) or ";" in str(base_url):  # a pool: all serve one model (checked)
            base_url = str(base_url[0] if isinstance(base_url, list | tuple) else base_url.split(";")[0]).strip()
        listed, version = probe_server(str(base_url), options.get("api_key"))
        model = options.get("model")
        if model is None:
            if not listed:
                raise CfbenchError(f"the server at {base_url} lists no models: pass the served name with model=NAME")
            model = str(listed[0].get("id"))
        card = next((m for m in listed if m.get("id") == model), {})
        max_length = options.get("max_length") or card.get("max_model_len")
        return {
            "backend": cls.name,
            "dtype": str(options.get("dtype") or "unknown"),
            "model": str(model),
            "served_root": card.get("root"),
            "server_max_model_len": card.get("max_model_len"),
            "max_length": None if max_length is None else int(max_length),
            "server_version": version,
        }

    def __init__(
        self,
        model_path: str | Path,
        *,
        base_url: str,
        model: str | None = None,
        api_key: str | None = None,
        concurrency: int = 4,
        timeout: float = 600.0,
        max_retries: int = 5,
        max_length: int | None = None,
        **_: Any,
    ) -> None:
        from transformers import AutoTokenizer

        self.base_url = base_url
        self.model_path = str(model_path)
        self.root = _api_root(base_url)
        self.concurrency = max(1, int(concurrency))
        self.max_retries = max(0, int(max_retries))
        key = api_key or os.environ.get("OPENAI_API_KEY")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
        self._client: httpx.Client | None = httpx.Client(
            timeout=httpx.Timeout(float(timeout), connect=10.0), headers=headers, limits=limits
        )
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        try:
            listed = self._call("GET", "/models", retry_connect=False).get("data") or []
        except BaseException:
            self.close()
            raise
        ids = [str(m.get("id")) for m in listed if isinstance(m, dict)]
        if model is None and not ids:
            self.close()
            raise CfbenchError(f"the server at {base_url} lists no models: pass the served name with model=NAME")
        self.model = model or ids[0]
        card = next((m for m in listed if isinstance(m, dict) and m.get("id") == self.model), {})
        user_max_length = max_length
        if max_length is None:
            max_length = card.get("max_model_len") or self._config_max_length()
        self.max_length = int(max_length)
        self.server_version = self._server_version()
        self._settings = {
            "backend": self.name,
            "dtype": str(_.get("dtype") or "unknown"),
            "model": self.model,
            "served_root": card.get("root"),
            "server_max_model_len": card.get("max_model_len"),
            "max_length": self.max_length if user_max_length is not None or card.get("max_model_len") else None,
            "server_version": self.server_version,
        }
        self.http_requests = 0  # completions requests sent (for benchmarks/tests)

    def _config_max_length(self) -> int:
        from transformers import AutoConfig

        from cfbench.backends.hf import resolve_max_length

        return resolve_max_length(AutoConfig.from_pretrained(self.model_path), self.tokenizer)

    def _server_version(self) -> str | None:
        """vLLM answers ``GET /version``; other servers may not, which is fine."""
        assert self._client is not None
        try:
            reply = self._client.get(self.root.removesuffix("/v1") + "/version", timeout=10.0)
            return str(reply.json().get("version")) if reply.status_code == 200 else None
        except (httpx.HTTPError, ValueError, AttributeError):
            return None

    def settings(self) -> dict[str, Any]:
        """The same facts as :meth:`key_settings` (served model, root, lengths, server version, dtype claim).

        ``max_length`` is ``None`` when it came from the model config (which the checkpoint hash covers).
        The server's dtype is not visible through the API: start it with ``--dtype float32`` to match
        the other backends' defaults, and say so with ``dtype=float32``.
        """
        return dict(self._settings)

    def close(self) -> None:
        """Close the HTTP connection pool (the server keeps running: it is not ours)."""
        client, self._client = self._client, None
        if client is not None:
            client.close()

    # ------------------------------------------------------------------------------------------
    # HTTP

    def _unreachable(self, reason: str) -> CfbenchError:
        return CfbenchError(
            f"cannot reach an OpenAI-compatible server at {self.base_url} ({reason}): start one, e.g. "
            f"`python -m vllm.entrypoints.openai.api_server --model {self.model_path} --host 127.0.0.1 "
            "--port 8000 --dtype float32`, then pass base_url=http://127.0.0.1:8000/v1"
        )

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None, retry_connect: bool = True) -> Any:
        """One API call with retries; a clear CfbenchError when it cannot succeed."""
        if self._client is None:
            raise CfbenchError("this OpenAIBackend was closed: create a new one")
        url = self.root + path
        for attempt in range(self.max_retries + 1):
            try:
                try:
                    reply = self._client.request(method, url, json=body)
                except (httpx.ConnectError, httpx.UnsupportedProtocol) as exc:
                    if not retry_connect:
                        raise self._unreachable(f"{type(exc).__name__}: {exc}") from exc
                    raise Retryable(f"{type(exc).__name__}: {exc}") from exc
                except (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError) as exc:
                    raise Retryable(f"{type(exc).__name__}: {exc}") from exc
                if reply.status_code in _RETRY_STATUS:
                    raise Retryable(f"HTTP {reply.status_code}: {reply.text[:200]}")
                if reply.status_code >= 400:
                    raise CfbenchError(
                        f"the server at {self.base_url} rejected {method} {path} with HTTP {reply.status_code}: "
                        f"{' '.join(reply.text.split())[:300]}"
                    )
                try:
                    return reply.json()
                except ValueError as exc:
                    raise CfbenchError(
                        f"the server at {self.base_url} answered {path} with non-JSON: is base_url an "
                        "OpenAI-compatible API (it usually ends in /v1)?"
                    ) from exc
            except Retryable as exc:
                if attempt == self.max_retries:
                    raise self._unreachable(f"{exc}; gave up after {attempt + 1} attempts") from exc
                time.sleep(min(30.0, 0.5 * 2**attempt) * (0.5 + random.random()))
        raise AssertionError("unreachable")  # pragma: no cover

    # ------------------------------------------------------------------------------------------
    # Scoring

    def _score_prompt(self, prompt: list[int], start: int) -> tuple[list[float], list[bool]]:
        """Log-prob and greedy flag of every token of ``prompt`` from position ``start`` on."""
        body = {
            "model": self.model,
            "prompt": prompt,
            "echo": True,
            "logprobs": 1,
            "max_tokens": 1,
            "temperature": 0.0,
        }
        self.http_requests += 1
        data = self._call("POST", "/completions", body)
        try:
            choice = data["choices"][0]
            vllm_rows = choice.get("prompt_logprobs")
            if vllm_rows is not None and len(vllm_rows) >= len(prompt):
                entries = [vllm_rows[j][str(prompt[j])] for j in range(start, len(prompt))]
                return [float(e["logprob"]) for e in entries], [int(e["rank"]) == 1 for e in entries]
            lp = choice["logprobs"]
            token_lps, tops = lp["token_logprobs"], lp["top_logprobs"]
            if len(token_lps) < len(prompt):
                raise KeyError("token_logprobs shorter than the prompt")
            values = [float(token_lps[j]) for j in range(start, len(prompt))]
            greedy = [v >= max(tops[j].values()) for j, v in zip(range(start, len(prompt)), values, strict=True)]
            return values, greedy
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise CfbenchError(
                f"the server at {self.base_url} did not return prompt log-probs ({type(exc).__name__}: {exc}): "
                "it must support /v1/completions with echo=true and logprobs (vLLM does)"
            ) from exc

    def loglikelihood(
        self, requests: Sequence[LoglikRequest], progress: ProgressFn | None = None
    ) -> list[LoglikResult]:
        """Results in request order; one HTTP request per distinct token sequence."""
        # The server needs room for the one generated token.
        return self._score_plan(plan_prompts(self.tokenizer, requests, self.max_length - 1), progress)

    def loglikelihood_rolling(
        self, requests: Sequence[RollingRequest], progress: ProgressFn | None = None
    ) -> list[RollingResult]:
        """Whole-text log-likelihoods from echoed prompt log-probs, in lm-eval's windows.

        A window's prompt is its input plus its last target (``window + 1`` tokens) and must leave
        room for the generated token, so windows are ``max_length - 2`` tokens, as lm-eval's vllm model.
        """

        def score(windows: list[rolling.Window]) -> list[float]:
            return [r.logprob for r in self._score_plan(rolling.window_plan(windows))]

        return rolling.score_rolling(self.tokenizer, requests, self.max_length - 2, score, progress)

    def _score_plan(self, plan: PromptPlan, progress: ProgressFn | None = None) -> list[LoglikResult]:
        """Score the planned prompts (``concurrency`` at a time) and read each span's log-probs."""
        rows: list[tuple[list[float], list[bool]] | None] = [None] * len(plan.prompts)
        empty = sum(s is None for s in plan.spans)
        if progress and empty:
            progress(empty)
        lock = threading.Lock()

        def run(p: int) -> int:
            got = self._score_prompt(plan.prompts[p], plan.min_start[p])
            with lock:
                rows[p] = got
            return p

        with ThreadPoolExecutor(self.concurrency, thread_name_prefix="cfbench-openai") as pool:
            futures = [pool.submit(run, p) for p in range(len(plan.prompts))]
            try:
                for fut in as_completed(futures):
                    p = fut.result()  # re-raises the first failure
                    if progress:
                        progress(plan.served[p])
            finally:
                for fut in futures:
                    fut.cancel()  # after a failure: do not start the rest

        results = []
        for span in plan.spans:
            if span is None:
                results.append(LoglikResult(0.0, True, 0))
                continue
            row = rows[span.prompt]
            assert row is not None
            offset = plan.min_start[span.prompt]
            values, greedy = row[0][span.start - offset :], row[1][span.start - offset :]
            n = span.end - span.start
            results.append(LoglikResult(float(sum(values[:n])), all(greedy[:n]), n))
        return results
