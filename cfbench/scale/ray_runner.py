"""Score (checkpoint, task-shard) jobs on a Ray cluster: one actor (one engine) per GPU, across nodes.

``cfbench eval|compare ... --runner ray [--ray-address ADDRESS] [--workers N]`` plans exactly as the
local runner does (:mod:`cfbench.scale.workers`) and hands the same :class:`~cfbench.scale.workers.Job`
list to Ray instead of a local process pool. Ray is the runtime vLLM itself uses across nodes, so
no scheduler is written here: Ray places the actors (``num_gpus=G`` each, ``G`` = vLLM's
``tensor_parallel_size`` or 1; ``num_cpus=1`` on a cluster without GPUs), sets each actor's
``CUDA_VISIBLE_DEVICES``, and :class:`ray.util.ActorPool` hands the next job to whichever actor is
free. Each actor keeps its engine loaded between jobs of the same checkpoint (jobs are ordered by
checkpoint) and appends items to the Parquet store, which is safe for concurrent writers.

* ``--ray-address ADDRESS`` (or ``RAY_ADDRESS``) joins an existing cluster (``ray start --head`` on
  one node, ``ray start --address HEAD:6379`` on the others). Every node needs the same cfbench
  installed and must see the checkpoint, the data and the ``--results`` folder at the same absolute
  path (a shared filesystem): paths are made absolute before the jobs leave the driver.
* Without an address cfbench starts a private local cluster on 127.0.0.1 (no dashboard, no network)
  with this machine's CPUs and GPUs, and shuts it down afterwards. Start-up costs ~5 s (measured on
  the 2-core CI machine, ray 2.60), so ``--runner local`` stays the default on one machine.

The results are the ones a single worker gives: the jobs, and so the batches, are the same as the
local runner's (tests/test_ray_runner.py compares every item column exactly).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from cfbench.backends.reuse import keep_for_process
from cfbench.errors import CfbenchError
from cfbench.scale.jobs import Job, Reporter, WorkerState, gpus_per_engine, score_job


def _require_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise CfbenchError("--runner ray needs the ray package: pip install 'cfbench[ray]'") from exc
    return ray


class ScoringActor:
    """One engine on the GPUs (or CPU) Ray gave this actor; scores jobs one at a time."""

    def __init__(self, threads: int) -> None:
        import ray
        import torch

        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        torch.set_num_threads(max(1, threads))
        gpus = ray.get_gpu_ids()  # Ray already restricted CUDA_VISIBLE_DEVICES to these
        self.state = WorkerState(device="+".join(f"cuda:{i}" for i in range(len(gpus))) if gpus else "cpu")
        keep_for_process()  # the actor's process: adapters of one base share one load of it

    def score(self, index: int, job: Job) -> tuple[int, str, int]:
        """``(index, spec, documents scored)``: the index tells the driver which job finished."""
        return (index, *score_job(job, self.state))

    def where(self) -> str:
        import ray

        return f"{ray.util.get_node_ip_address()}:{self.state.device}"


class RayRunner:
    """Runs :class:`~cfbench.scale.workers.Job` lists as Ray actor calls (see the module docstring)."""

    name = "ray"

    def __init__(self, address: str | None = None, workers: int | None = None) -> None:
        self.address = address or os.environ.get("RAY_ADDRESS") or None
        self.workers = workers
        self._ray: Any = _require_ray()  # a missing ray fails before any checkpoint is planned
        self._started_cluster = False
        self._actors: list[Any] = []
        self._gpus_each = 0
        self._where: list[str] = []
        # torch threads per actor (each holds num_cpus=1): as LocalRunner.threads, the count one process
        # needs to reproduce an actor's items bit for bit.
        self.threads = int(os.environ.get("OMP_NUM_THREADS", "1") or 1)

    def start(self, backend: str, options: dict[str, Any]) -> int:
        """Connect (or start a local cluster), check the resources, create the actors; returns their number."""
        ray = self._ray
        if not ray.is_initialized():
            if self.address:
                try:
                    ray.init(address=self.address, log_to_driver=False)
                except (ConnectionError, RuntimeError, ValueError) as exc:
                    raise CfbenchError(
                        f"cannot join the Ray cluster at {self.address!r} ({exc}): start it with `ray start --head` "
                        "or drop --ray-address to use a local cluster"
                    ) from exc
            else:
                ray.init(include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
            self._started_cluster = True
        resources = ray.cluster_resources()
        gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 0))
        need = gpus_per_engine(backend, options)
        if gpus:
            fit = gpus // need
            n = self.workers or fit
            if n > fit:
                self.stop()
                raise CfbenchError(f"--workers {n} × {need} GPU(s) each but the Ray cluster has {gpus} GPU(s): "
                                   f"give --workers {fit} or fewer")  # fmt: skip
            if n < 1:
                self.stop()
                raise CfbenchError(f"one engine needs {need} GPUs (tensor_parallel_size) but the Ray cluster has "
                                   f"{gpus}: lower tensor_parallel_size")  # fmt: skip
            opts: dict[str, Any] = {"num_gpus": need, "num_cpus": 1}
            self._gpus_each = need
        else:
            if need > 1:
                self.stop()
                raise CfbenchError(f"tensor_parallel_size={need} needs GPUs but the Ray cluster has none")
            n = self.workers or cpus
            if n > cpus:
                self.stop()
                raise CfbenchError(f"--workers {n} CPU workers but the Ray cluster has {cpus} CPU(s): give "
                                   f"--workers {cpus} or fewer")  # fmt: skip
            opts = {"num_cpus": 1, "num_gpus": 0}
        actor_cls = ray.remote(ScoringActor)
        self._actors = [actor_cls.options(**opts).remote(self.threads) for _ in range(n)]
        self._where = ray.get([a.where.remote() for a in self._actors])
        return n

    def describe(self) -> str:
        head = f"Ray cluster {self.address}" if self.address else "a local Ray cluster"
        return f"{len(self._actors)} Ray worker(s) on {head}: {', '.join(self._where)}"

    def run(self, jobs: Sequence[Job], progress: bool = True) -> dict[str, int]:
        """Every job on some actor (``ActorPool.map_unordered``); returns documents scored per spec."""
        from ray.exceptions import RayTaskError
        from ray.util import ActorPool

        scored: dict[str, int] = {}
        if not jobs:
            return scored
        report = Reporter(jobs, f"{len(self._actors)} Ray worker(s)", progress)
        by_index = list(jobs)
        pool = ActorPool(self._actors)
        try:
            for i, spec, n in pool.map_unordered(lambda a, ij: a.score.remote(*ij), list(enumerate(by_index))):
                scored[spec] = scored.get(spec, 0) + n
                report.job_done(by_index[i])
        except RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, CfbenchError):
                raise CfbenchError(str(cause)) from None  # the worker's one-line message, not Ray's traceback
            raise
        return scored

    def stop(self) -> None:
        """Kill the actors (frees their GPUs); shut down the cluster if this runner started it."""
        ray = self._ray
        if ray is None:
            return
        for a in self._actors:
            ray.kill(a)
        self._actors = []
        if self._started_cluster:
            ray.shutdown()
            self._started_cluster = False
