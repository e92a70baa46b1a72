"""Score (checkpoint, task-shard) jobs on several devices at once: one engine per device, one process each.

``cfbench eval CKPT --devices cuda:0,cuda:1`` (or ``--workers N``) plans the evaluation as usual
(:func:`cfbench.engine.plan_evaluation`: data checked, cache looked up, no model loaded), cuts every
task's uncached documents into shards and hands the shards to a pool of ``spawn``-ed worker
processes (``concurrent.futures.ProcessPoolExecutor``), one per device. Each worker pins itself to its
device (``CUDA_VISIBLE_DEVICES`` for GPUs, so vLLM and hf both see exactly one; an entry
``cuda:0+cuda:1`` gives a vLLM engine with ``tensor_parallel_size=2`` both), loads each checkpoint
once, scores its shards with the engine's own chunked scorer and appends the items to the Parquet
store, which is safe for concurrent writers. When every shard is done, the main process re-plans
(now everything is cached) and :func:`cfbench.engine.run_plan` writes the run record as a
single-process evaluation would. ``cfbench compare ... --workers N`` does the same with the jobs of
every checkpoint it scores (:func:`score_plans`, called by :func:`cfbench.comparison.resolve_runs`).

Runners: :class:`LocalRunner` (this machine's process pool) and
:class:`cfbench.scale.ray_runner.RayRunner` (``--runner ray``: the same jobs as Ray actors, for
several nodes) share one interface: ``start(backend, options) -> n_workers``, ``run(jobs) ->
documents scored per checkpoint spec``, ``stop()``, ``describe()``.

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
from dataclasses import replace
from typing import Any

from cfbench.backends.reuse import keep_for_process
from cfbench.engine import plan_evaluation, progress_mode, run_plan
from cfbench.errors import CfbenchError
from cfbench.scale.jobs import Job, Reporter, WorkerState, gpus_per_engine, score_job
from cfbench.scale.ray_runner import RayRunner


def parse_devices(devices: str | None, workers: int | None) -> list[str]:
    """``--devices cuda:0,cuda:1`` or ``--workers N`` → one device string per worker.

    ``--workers N`` alone uses ``cuda:0..N-1`` when that many GPUs are visible, else N CPU workers.
    An entry ``cuda:0+cuda:1`` gives one worker two GPUs (a vLLM engine with ``tensor_parallel_size=2``).
    """
    if devices:
        out = [d.strip() for d in devices.split(",") if d.strip()]
        for d in out:
            parts = d.split("+")
            if d != "cpu" and not all(p.startswith("cuda:") and p[5:].isdigit() for p in parts):
                raise CfbenchError(
                    f"--devices entry {d!r} is not cpu, cuda:N or cuda:N+cuda:M: write e.g. --devices cuda:0,cuda:1"
                )
        if workers is not None and workers != len(out):
            raise CfbenchError(f"--workers {workers} but --devices names {len(out)}: give one of them")
        return out
    if workers is None or workers < 1:
        raise CfbenchError(f"--workers must be >= 1, got {workers}")
    import torch

    if torch.cuda.is_available() and torch.cuda.device_count() >= workers:
        return [f"cuda:{i}" for i in range(workers)]
    return ["cpu"] * workers


def check_devices(devices: Sequence[str], backend: str, options: dict[str, Any]) -> None:
    """Refuse device lists that do not match the engine: each worker gets exactly the GPUs it needs."""
    need = gpus_per_engine(backend, options)
    for d in devices:
        have = 0 if d == "cpu" else len(d.split("+"))
        if have > 1 and backend != "vllm":
            raise CfbenchError(f"--devices entry {d!r} gives one {backend} worker {have} GPUs; it uses one: "
                               "write --devices cuda:0,cuda:1 (one worker per GPU)")  # fmt: skip
        if have and have != need:
            raise CfbenchError(
                f"tensor_parallel_size={need} but --devices entry {d!r} has {have} GPU(s): give each worker "
                f"{need} GPUs joined by '+', e.g. --devices "
                + ",".join("+".join(f"cuda:{w * need + i}" for i in range(need)) for w in range(2))
            )


def make_jobs(
    plans: Sequence[Any], plan_kwargs: Sequence[dict[str, Any]], n_workers: int, specs: Sequence[str] | None = None
) -> list[Job]:
    """One job per (checkpoint, task); tasks are cut into shards only when there are fewer jobs than workers.

    Whole tasks are scored exactly as one process scores them (same chunks, same batches), so their
    items are bit-identical. A task cut into shards is batched differently, which moves float32
    log-probs by ~1e-6 (rounding only; tests/test_workers.py bounds it). Jobs are ordered by
    checkpoint, so the pool works through one checkpoint before the next and a worker loads each
    checkpoint about once (``specs``: how workers name each plan's checkpoint, default its own spec).
    A document two plans share (``compare A A``, or the same checkpoint under
    two names) is scored once: the cache key already names checkpoint content, task and settings.
    """
    jobs: list[Job] = []
    claimed: set[tuple[str, Any]] = set()
    todos = []
    for plan in plans:
        for tp in plan.tasks:
            todo = [i for i in tp.todo if (tp.cache_key, i.doc_id) not in claimed]
            claimed.update((tp.cache_key, i.doc_id) for i in todo)
            todos.append(todo)
    split = sum(1 for t in todos if t) < n_workers
    it = iter(todos)
    names = list(specs) if specs is not None else [plan.checkpoint.spec for plan in plans]
    for plan, kwargs, spec in zip(plans, plan_kwargs, names, strict=True):
        for tp in plan.tasks:
            todo = next(it)
            if not todo:
                continue
            size = max(1, math.ceil(len(todo) / n_workers)) if split else len(todo)
            for start in range(0, len(todo), size):
                shard = todo[start : start + size]
                jobs.append(
                    Job(spec, tp.name, tuple(i.doc_id for i in shard),
                        sum(len(i.requests) for i in shard), kwargs)
                )  # fmt: skip
    return jobs


# ------------------------------------------------------------------------------------------------
# Worker side (a spawned process of the local pool, or a Ray actor)


_STATE = WorkerState()


def _init_worker(devices: Any, threads: int) -> None:
    """Claim one device from the queue; pin CUDA to it before anything imports torch.cuda state."""
    _STATE.device = devices.get()
    if _STATE.device.startswith("cuda:"):
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(p.split(":", 1)[1] for p in _STATE.device.split("+"))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    torch.set_num_threads(max(1, threads))
    keep_for_process()  # this worker process ends with its pool: adapters of one base share one load of it


def _run_job(job: Job) -> tuple[str, int]:
    return score_job(job, _STATE)


# ------------------------------------------------------------------------------------------------
# Main process side


class LocalRunner:
    """One spawned worker process per local device (``concurrent.futures.ProcessPoolExecutor``)."""

    name = "local"

    def __init__(self, devices: Sequence[str]) -> None:
        if not devices:
            raise CfbenchError("no devices to score on: give --workers N or --devices cuda:0,...")
        self.devices = list(devices)
        # torch threads per worker: the cores shared out. On some CPUs float32 kernels round differently
        # with another thread count (MKL's AVX2 sgemm does), so one process reproduces a worker's items
        # bit for bit at this thread count, and only to ~1 ulp at another.
        self.threads = max(1, (os.cpu_count() or 1) // len(self.devices))

    def start(self, backend: str, options: dict[str, Any]) -> int:
        """Check the devices fit the engine; returns the number of workers."""
        check_devices(self.devices, backend, options)
        return len(self.devices)

    def describe(self) -> str:
        return f"{len(self.devices)} worker(s): {', '.join(self.devices)}"

    def run(self, jobs: Sequence[Job], progress: bool = True) -> dict[str, int]:
        """Run ``jobs``; returns documents scored per checkpoint spec."""
        scored: dict[str, int] = {}
        if not jobs:
            return scored
        ctx = mp.get_context("spawn")  # CUDA and vLLM cannot be forked
        queue = ctx.Manager().Queue()
        for d in self.devices:
            queue.put(d)
        report = Reporter(jobs, f"{len(self.devices)} device(s)", progress)
        with ProcessPoolExecutor(len(self.devices), mp_context=ctx, initializer=_init_worker,
                                 initargs=(queue, self.threads)) as pool:  # fmt: skip
            futures = {pool.submit(_run_job, j): j for j in jobs}
            try:
                for fut in as_completed(futures):
                    spec, n = fut.result()  # re-raises a worker's error (CfbenchError travels as itself)
                    scored[spec] = scored.get(spec, 0) + n
                    report.job_done(futures[fut])
            except BaseException:
                for f in futures:
                    f.cancel()
                raise
        return scored

    def stop(self) -> None:
        """Nothing to tear down: the pool ends with :meth:`run`."""


def make_runner(
    workers: int | None = None, devices: str | None = None, runner: str = "local", ray_address: str | None = None
) -> Any:
    """The CLI's ``--workers/--devices/--runner/--ray-address`` → a runner (validated, nothing started)."""
    if ray_address and runner == "local":
        runner = "ray"
    if runner == "local":
        return LocalRunner(parse_devices(devices, workers))
    if runner == "ray":
        if devices:
            raise CfbenchError("--devices is for the local runner; Ray places workers itself: give --workers N "
                               "(or nothing: one worker per GPU of the cluster)")  # fmt: skip
        if workers is not None and workers < 1:
            raise CfbenchError(f"--workers must be >= 1, got {workers}")
        return RayRunner(address=ray_address, workers=workers)
    raise CfbenchError(f"--runner {runner!r} is unknown: choose local or ray")


def as_runner(devices: Any) -> Any:
    """A runner object as is; a list of device strings as a :class:`LocalRunner`."""
    return devices if hasattr(devices, "run") else LocalRunner(list(devices))


def _portable(spec: str, kwargs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Absolute paths for the checkpoint, the store and the data, so workers started elsewhere
    (another working directory, another node of a Ray cluster with a shared filesystem) find them."""
    from pathlib import Path

    out = dict(kwargs)
    for k in ("results", "data_dir"):
        if out.get(k) is not None:
            out[k] = Path(out[k]).absolute()
    bare = spec.removeprefix("ckpt:")
    if Path(bare).exists():
        spec = str(Path(bare).absolute())
    return spec, out


def score_plans(plans: Sequence[Any], plan_kwargs: dict[str, Any], runner: Any, progress: bool = True) -> list[int]:
    """Score every uncached document of ``plans`` on ``runner`` (started and stopped here).

    Returns the documents scored for each plan (a checkpoint listed twice is credited once).
    """
    if not plans:
        return []
    worker_kwargs = {k: v for k, v in plan_kwargs.items() if k not in ("tasks", "suite", "strict_data")}
    portable = [_portable(plan.checkpoint.spec, {**worker_kwargs, "results": plan.results}) for plan in plans]
    n_workers = runner.start(plans[0].backend, plans[0].options)
    try:
        if progress:
            print(f"[cfbench] scoring on {runner.describe()}", file=sys.stderr, flush=True)
        jobs = make_jobs(plans, [kw for _, kw in portable], n_workers, specs=[s for s, _ in portable])
        by_spec = runner.run(jobs, progress=progress)
    finally:
        runner.stop()
    return [by_spec.pop(spec, 0) for spec, _ in portable]


def run_jobs(jobs: Sequence[Job], devices: Sequence[str], progress: bool = True) -> int:
    """Run ``jobs`` on one local worker process per device; returns the number of documents scored."""
    return sum(LocalRunner(devices).run(jobs, progress=progress).values())


def evaluate_parallel(
    checkpoint: str, devices: Any, *, progress: bool | str = "auto", name: str | None = None,
    method: str | None = None, hparams: dict[str, Any] | None = None, tuned_from: str | None = None,
    **plan_kwargs: Any,
) -> Any:  # fmt: skip
    """:func:`cfbench.engine.evaluate` with the scoring spread over workers (same items, same run).

    ``devices``: a list of device strings (local worker processes) or a runner from :func:`make_runner`
    (e.g. :class:`cfbench.scale.ray_runner.RayRunner`).
    """
    t0 = time.perf_counter()
    mode = progress_mode(progress)
    runner = as_runner(devices)
    plan = plan_evaluation(checkpoint, **plan_kwargs)
    if mode != "off":
        print(f"[cfbench] {plan.describe()}", file=sys.stderr, flush=True)
    n_todo = {tp.name: len(tp.todo) for tp in plan.tasks}
    (scored,) = score_plans([plan], plan_kwargs, runner, progress=mode != "off")
    final = plan_evaluation(checkpoint, **plan_kwargs)  # everything is cached now
    res = run_plan(final, name=name, method=method, hparams=hparams, tuned_from=tuned_from, progress="off", t0=t0)
    outcomes = [replace(o, n_scored=n_todo.get(o.task, 0)) if o.missing is None else o for o in res.outcomes]
    return replace(res, outcomes=outcomes, scored_items=scored)
