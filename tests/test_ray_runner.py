"""The Ray runner on a local 2-CPU Ray cluster (127.0.0.1, no dashboard) gives one worker's items exactly."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from _threads import torch_threads

from cfbench.errors import CfbenchError

ray = pytest.importorskip("ray")

TASKS = ["boolq", "copa", "arc_challenge"]


@pytest.fixture(scope="module")
def cluster():
    t0 = time.perf_counter()
    ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    print(f"local Ray cluster up in {time.perf_counter() - t0:.1f}s")
    yield
    ray.shutdown()


def _items(results: Path):
    from cfbench.store import ResultStore

    return ResultStore(results).items().sort_values(["cache_key", "task", "doc_id"]).reset_index(drop=True)


@pytest.mark.timeout(600)
def test_ray_workers_give_the_items_of_one_process(cluster: None, tiny_model: Path, tmp_path: Path) -> None:
    from cfbench.engine import evaluate
    from cfbench.scale.ray_runner import RayRunner
    from cfbench.scale.workers import evaluate_parallel

    kw = dict(tasks=TASKS, limit=6, backend="hf", backend_options={"dtype": "float32"})
    runner = RayRunner(workers=2)
    with torch_threads(runner.threads):  # exact only at the actors' thread count (tests/_threads.py)
        one = evaluate(str(tiny_model), results=tmp_path / "one", progress="off", **kw)
    two = evaluate_parallel(str(tiny_model), runner, results=tmp_path / "two", progress="off", **kw)
    assert len(runner._where) == 2 and all(w.endswith(":cpu") for w in runner._where)
    a, b = _items(tmp_path / "one"), _items(tmp_path / "two")
    assert len(a) == len(b) == 6 * len(TASKS) and two.scored_items == 6 * len(TASKS)
    for c in (c for c in a.columns if c not in ("scored_at", "created_at", "timestamp")):
        assert a[c].astype(str).tolist() == b[c].astype(str).tolist(), c  # exact, every column
    assert [(o.task, o.metrics) for o in one.outcomes] == [(o.task, o.metrics) for o in two.outcomes]
    assert ray.is_initialized()  # a cluster the runner did not start is left running


def test_ray_runner_refuses_more_workers_than_the_cluster_has(cluster: None) -> None:
    from cfbench.scale.ray_runner import RayRunner

    with pytest.raises(CfbenchError, match="--workers 3 CPU workers but the Ray cluster has 2"):
        RayRunner(workers=3).start("hf", {})
    with pytest.raises(CfbenchError, match="needs GPUs"):
        RayRunner(workers=1).start("vllm", {"tensor_parallel_size": 2})


def test_worker_errors_arrive_as_one_line(cluster: None, tiny_model: Path, tmp_path: Path) -> None:
    """A CfbenchError raised inside an actor reaches the driver as a CfbenchError, not a Ray traceback."""
    from cfbench.scale.ray_runner import RayRunner
    from cfbench.scale.workers import Job

    runner = RayRunner(workers=1)
    runner.start("hf", {})
    try:
        bad = Job(str(tmp_path / "no-such-checkpoint"), "copa", (0,), 2, {"results": tmp_path})
        with pytest.raises(CfbenchError) as exc:
            runner.run([bad], progress=False)
        assert "Traceback" not in str(exc.value)
    finally:
        runner.stop()
