"""Score (checkpoint, task-shard) jobs on several devices at once: one engine per device, one process each.

``cfbench eval CKPT --devices cuda:0,cuda:1`` (or ``--workers N``) plans the evaluation as usual
(:func:`cfbench.engine.plan_evaluation`: data checked, cache looked up, no model loaded), cuts every
task's uncached documents into shards and hands the shards to a pool of ``spawn``-ed worker
processes (``concurrent.futures.ProcessPoolExecutor``), one per device. Each worker pins itself to its
device (``CUDA_VISIBLE_DEVICES`` for GPUs, so vLLM and hf both see exactly one), loads each
checkpoint once, scores its shards with the engine's own chunked scorer and appends the items to
the Parquet store, which is safe for concurrent writers. When every shard is done, the main process
re-plans (now everything is cached) and :func:`cfbench.engine.run_plan` writes the run record as a
single-process evaluation would.

Why the results are identical to one worker's: jobs are whole (checkpoint, task) units scored by the
engine's own chunked scorer, so every batch is the one a single process would form, and cache keys
do not include the device (tests/test_workers.py compares every item column exactly). Only when
there are fewer units than workers is a task cut into document shards; batches then differ and
float32 log-probs move by rounding (~1e-6).

Tasks hold unpicklable data loaders, so jobs travel as (checkpoint spec, planning arguments, task,
document ids) and each worker re-plans the one task it scores (rendering is cheap next to scoring).
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from typing import Any

from cfbench.errors import CfbenchError


@dataclass(frozen=True)
class Job:
    """One shard: these documents of one task of one checkpoint."""

    spec: str
    task: str
    doc_ids: tuple[Any, ...]
    requests: int
    plan_kwargs: dict[str, Any] = field(default_factory=dict)


def parse_devices(devices: str | None, workers: int | None) -> list[str]:
    """``--devices cuda:0,cuda:1`` or ``--workers N`` → one device string per worker.

    ``--workers N`` alone uses ``cuda:0..N-1`` when that many GPUs are visible, else N CPU workers.
    """
    if devices:
        out = [d.strip() for d in devices.split(",") if d.strip()]
        for d in out:
            if d != "cpu" and not (d.startswith("cuda:") and d[5:].isdigit()):
                raise CfbenchError(f"--devices entry {d!r} is not cpu or cuda:N: write e.g. --devices cuda:0,cuda:1")
        if workers is not None and workers != len(out):
            raise CfbenchError(f"--workers {workers} but --devices names {len(out)}: give one of them")
        return out
    if workers is None or workers < 1:
        raise CfbenchError(f"--workers must be >= 1, got {workers}")
    import torch

    if torch.cuda.is_available() and torch.cuda.device_count() >= workers:
        return [f"cuda:{i}" for i in range(workers)]
    return ["cpu"] * workers


def make_jobs(plans: Sequence[Any], plan_kwargs: Sequence[dict[str, Any]], n_workers: int) -> list[Job]:
    """One job per (checkpoint, task); tasks are cut into shards only when there are fewer jobs than workers.

    Whole tasks are scored exactly as one process scores them (same chunks, same batches), so their
    items are bit-identical. A task cut into shards is batched differently, which moves float32
    log-probs by ~1e-6 (rounding only; tests/test_workers.py bounds it). Jobs are ordered by
    checkpoint, so the pool works through one checkpoint before the next and a worker loads each
    checkpoint about once.
    """
    jobs: list[Job] = []
    units = sum(1 for plan in plans for tp in plan.tasks if tp.todo)
    split = units < n_workers
    for plan, kwargs in zip(plans, plan_kwargs, strict=True):
        for tp in plan.tasks:
            if not tp.todo:
                continue
            size = max(1, math.ceil(len(tp.todo) / n_workers)) if split else len(tp.todo)
            for start in range(0, len(tp.todo), size):
                shard = tp.todo[start : start + size]
                jobs.append(
                    Job(plan.checkpoint.spec, tp.name, tuple(i.doc_id for i in shard),
                        sum(len(i.requests) for i in shard), kwargs)
                )  # fmt: skip
    return jobs


# ------------------------------------------------------------------------------------------------
# Worker process side

_DEVICE: str = "cpu"
_BACKEND: Any = None  # (key, _LazyBackend) of the checkpoint this worker has loaded
_PLANS: dict[tuple[str, str], Any] = {}


def _init_worker(devices: Any, threads: int) -> None:
    """Claim one device from the queue; pin CUDA to it before anything imports torch.cuda state."""
    global _DEVICE
    _DEVICE = devices.get()
    if _DEVICE.startswith("cuda:"):
        os.environ["CUDA_VISIBLE_DEVICES"] = _DEVICE.split(":", 1)[1]
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    torch.set_num_threads(max(1, threads))


def _run_job(job: Job) -> tuple[str, int]:
    global _BACKEND
    from cfbench.engine import _LazyBackend, _score_task, plan_evaluation
    from cfbench.progress import Progress
    from cfbench.store import ResultStore

    key = (job.spec, job.task)
    if key not in _PLANS:
        _PLANS[key] = plan_evaluation(job.spec, tasks=[job.task], **job.plan_kwargs)
    plan = _PLANS[key]
    tp = plan.tasks[0]
    wanted = set(job.doc_ids)
    store = ResultStore(plan.results)
    done = store.cached_doc_ids(tp.cache_key)
    todo = [i for i in tp.instances if i.doc_id in wanted and i.doc_id not in done]
    if not todo:
        return job.task, 0
    bkey = (str(plan.checkpoint.path), plan.backend, repr(sorted(plan.options.items())))
    if _BACKEND is None or _BACKEND[0] != bkey:
        if _BACKEND is not None:
            _BACKEND[1].close()
        options = dict(plan.options)
        if plan.backend == "hf":
            options["device"] = "cuda" if _DEVICE.startswith("cuda") else "cpu"
        _BACKEND = (bkey, _LazyBackend(plan.backend, plan.checkpoint.path, options))
    bar = Progress(plan.checkpoint.name, sum(len(i.requests) for i in todo), mode="off")
    with bar:
        n = _score_task(tp.task, todo, tp.cache_key, _BACKEND[1], store, bar)
    return job.task, n


# ------------------------------------------------------------------------------------------------
# Main process side


def run_jobs(jobs: Sequence[Job], devices: Sequence[str], progress: bool = True) -> int:
    """Run ``jobs`` on one worker process per device; returns the number of documents scored."""
    if not jobs:
        return 0
    ctx = mp.get_context("spawn")  # CUDA and vLLM cannot be forked
    queue = ctx.Manager().Queue()
    for d in devices:
        queue.put(d)
    threads = max(1, (os.cpu_count() or 1) // len(devices))
    total_req = sum(j.requests for j in jobs)
    scored, done_req, t0 = 0, 0, time.perf_counter()
    with ProcessPoolExecutor(len(devices), mp_context=ctx, initializer=_init_worker,
                             initargs=(queue, threads)) as pool:  # fmt: skip
        futures = {pool.submit(_run_job, j): j for j in jobs}
        try:
            for fut in as_completed(futures):
                _, n = fut.result()  # re-raises a worker's error (CfbenchError travels as itself)
                scored += n
                done_req += futures[fut].requests
                if progress:
                    rate = done_req / max(1e-9, time.perf_counter() - t0)
                    print(f"[cfbench] workers: {done_req:,}/{total_req:,} requests ({rate:,.1f}/s) on "
                          f"{len(devices)} device(s)", file=sys.stderr, flush=True)  # fmt: skip
        except BaseException:
            for f in futures:
                f.cancel()
            raise
    return scored


def evaluate_parallel(
    checkpoint: str, devices: Sequence[str], *, progress: bool | str = "auto", name: str | None = None,
    method: str | None = None, hparams: dict[str, Any] | None = None, tuned_from: str | None = None,
    **plan_kwargs: Any,
) -> Any:  # fmt: skip
    """:func:`cfbench.engine.evaluate` with the scoring spread over ``devices`` (same items, same run)."""
    from cfbench.engine import plan_evaluation, progress_mode, run_plan

    t0 = time.perf_counter()
    mode = progress_mode(progress)
    plan = plan_evaluation(checkpoint, **plan_kwargs)
    if mode != "off":
        print(f"[cfbench] {plan.describe()} — on {len(devices)} worker(s): {', '.join(devices)}",
              file=sys.stderr, flush=True)  # fmt: skip
    worker_kwargs = {k: v for k, v in plan_kwargs.items() if k not in ("tasks", "suite", "strict_data")}
    n_todo = {tp.name: len(tp.todo) for tp in plan.tasks}
    scored = run_jobs(make_jobs([plan], [worker_kwargs], len(devices)), devices, progress=mode != "off")
    final = plan_evaluation(checkpoint, **plan_kwargs)  # everything is cached now
    res = run_plan(final, name=name, method=method, hparams=hparams, tuned_from=tuned_from, progress="off", t0=t0)
    outcomes = [replace(o, n_scored=n_todo.get(o.task, 0)) if o.missing is None else o for o in res.outcomes]
    return replace(res, outcomes=outcomes, scored_items=scored)
