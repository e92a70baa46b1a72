"""What a scoring worker runs, wherever it runs: a job (one shard of one task), the state a worker keeps
between jobs, and the progress line of the main process.

Shared by the local process pool (:mod:`.workers`) and Ray (:mod:`.ray_runner`), so neither imports
the other for it.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from cfbench.engine import LazyBackend, plan_evaluation, score_task
from cfbench.errors import CfbenchError
from cfbench.progress import Progress
from cfbench.store import ResultStore


@dataclass(frozen=True)
class Job:
    """One shard: these documents of one task of one checkpoint."""

    spec: str
    task: str
    doc_ids: tuple[Any, ...]
    requests: int
    plan_kwargs: dict[str, Any] = field(default_factory=dict)


def gpus_per_engine(backend: str, options: dict[str, Any]) -> int:
    """How many GPUs one scoring engine needs: vLLM's ``tensor_parallel_size``, else 1."""
    if backend != "vllm":
        return 1
    try:
        tp = int(options.get("tensor_parallel_size", 1) or 1)
    except (TypeError, ValueError) as exc:
        raise CfbenchError(
            f"tensor_parallel_size={options.get('tensor_parallel_size')!r} is not a whole number"
        ) from exc
    if tp < 1:
        raise CfbenchError(f"tensor_parallel_size must be >= 1, got {tp}")
    return tp


@dataclass
class WorkerState:
    """What one worker keeps between jobs: its device, the loaded engine, the plans it rendered."""

    device: str = "cpu"
    backend: Any = None  # (key, LazyBackend) of the checkpoint this worker has loaded
    plans: dict[tuple[str, str], Any] = field(default_factory=dict)

    def close(self) -> None:
        if self.backend is not None:
            self.backend[1].close()
            self.backend = None


def score_job(job: Job, state: WorkerState) -> tuple[str, int]:
    """Score one job's uncached documents into the store; returns (checkpoint spec, documents scored)."""
    key = (job.spec, job.task)
    if key not in state.plans:
        state.plans[key] = plan_evaluation(job.spec, tasks=[job.task], **job.plan_kwargs)
    plan = state.plans[key]
    tp = plan.tasks[0]
    wanted = set(job.doc_ids)
    store = ResultStore(plan.results)
    done = store.cached_doc_ids(tp.cache_key)
    todo = [i for i in tp.instances if i.doc_id in wanted and i.doc_id not in done]
    if not todo:
        return job.spec, 0
    bkey = (str(plan.checkpoint.path), plan.backend, repr(sorted(plan.options.items())))
    if state.backend is None or state.backend[0] != bkey:
        state.close()
        options = dict(plan.options)
        if plan.backend == "hf":
            options["device"] = "cuda" if state.device.startswith("cuda") else "cpu"
        state.backend = (bkey, LazyBackend(plan.backend, plan.checkpoint.path, options))
    bar = Progress(plan.checkpoint.name, sum(len(i.requests) for i in todo), mode="off")
    with bar:
        n = score_task(tp.task, todo, tp.cache_key, state.backend[1], store, bar)
    return job.spec, n


class Reporter:
    """The periodic ``[cfbench] workers: done/total requests`` line (stderr)."""

    def __init__(self, jobs: Sequence[Job], where: str, enabled: bool) -> None:
        self.total, self.done, self.where, self.enabled = sum(j.requests for j in jobs), 0, where, enabled
        self.t0 = time.perf_counter()

    def job_done(self, job: Job) -> None:
        self.done += job.requests
        if self.enabled:
            rate = self.done / max(1e-9, time.perf_counter() - self.t0)
            print(f"[cfbench] workers: {self.done:,}/{self.total:,} requests ({rate:,.1f}/s) on {self.where}",
                  file=sys.stderr, flush=True)  # fmt: skip
