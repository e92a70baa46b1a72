"""Scoring over 2 worker processes gives exactly the items of one process at the workers' thread count (tiny model)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from _threads import torch_threads

from cfbench.errors import CfbenchError
from cfbench.scale.workers import parse_devices

TASKS = ["boolq", "copa", "arc_challenge"]
COLS = ["doc_id", "task", "pred", "logprobs"]


def _items(results: Path):
    from cfbench.store import ResultStore

    items = ResultStore(results).items()
    return items.sort_values(["task", "doc_id"]).reset_index(drop=True)


@pytest.mark.timeout(600)
def test_two_workers_give_the_items_of_one(tiny_model: Path, tmp_path: Path) -> None:
    from cfbench.engine import evaluate
    from cfbench.scale.workers import LocalRunner, evaluate_parallel

    kw = dict(tasks=TASKS, limit=6, backend="hf", backend_options={"dtype": "float32"})
    runner = LocalRunner(["cpu", "cpu"])
    with torch_threads(runner.threads):  # exact only at the workers' thread count (tests/_threads.py)
        one = evaluate(str(tiny_model), results=tmp_path / "one", progress="off", **kw)
    two = evaluate_parallel(str(tiny_model), runner, results=tmp_path / "two", progress="off", **kw)
    a, b = _items(tmp_path / "one"), _items(tmp_path / "two")
    assert len(a) == len(b) == 6 * len(TASKS)
    assert two.scored_items == 6 * len(TASKS)
    cols = [c for c in a.columns if c not in ("scored_at", "created_at", "timestamp")]
    for c in cols:
        assert a[c].astype(str).tolist() == b[c].astype(str).tolist(), c  # exact, every column
    assert [(o.task, o.metrics) for o in one.outcomes] == [(o.task, o.metrics) for o in two.outcomes]
    assert all(o.n_scored == 6 for o in two.outcomes)


_AT_WORKER_THREADS = """
import sys
from pathlib import Path
from _threads import torch_threads
from cfbench.engine import evaluate
from cfbench.scale.workers import LocalRunner, evaluate_parallel
from cfbench.store import ResultStore

model, out = sys.argv[1], Path(sys.argv[2])
kw = dict(tasks=["arc_challenge", "copa"], limit=6, backend="hf", backend_options={"dtype": "float32"}, progress="off")
runner = LocalRunner(["cpu", "cpu"])
with torch_threads(runner.threads):
    evaluate(model, results=out / "one", **kw)
evaluate_parallel(model, runner, results=out / "two", **kw)
a, b = (ResultStore(out / r).items().sort_values(["task", "doc_id"]) for r in ("one", "two"))
assert len(a) == len(b) == 12
assert a["logprobs"].astype(str).tolist() == b["logprobs"].astype(str).tolist(), "not bit for bit"
"""


@pytest.mark.timeout(600)
def test_workers_match_one_process_on_thread_sensitive_kernels(tiny_model: Path, tmp_path: Path) -> None:
    """MKL's AVX2 float32 sgemm rounds differently at 1 and 2 threads (forced onto it, 1-thread workers and
    a 2-thread process differ by 1 ulp, as CI once showed). On those kernels, one process at
    ``runner.threads`` still gives the workers' items bit for bit."""
    import torch

    if not torch.backends.mkl.is_available():
        pytest.skip("MKL's instruction-set switch is what makes the kernels thread-sensitive")
    # Its own inductor cache: kernels compiled at avx2 and reused at AVX-512 are wrong (see vllm._checked_rank).
    env = {**os.environ, "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ATEN_CPU_CAPABILITY": "avx2",
           "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor"),
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}  # fmt: skip
    run = subprocess.run([sys.executable, "-c", _AT_WORKER_THREADS, str(tiny_model), str(tmp_path)], env=env,
                         capture_output=True, text=True, timeout=540)  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]


def test_parse_devices() -> None:
    assert parse_devices("cuda:0,cuda:1", None) == ["cuda:0", "cuda:1"]
    assert parse_devices(None, 2) in (["cpu", "cpu"], ["cuda:0", "cuda:1"])
    with pytest.raises(CfbenchError, match="cuda:N"):
        parse_devices("gpu0", None)
    with pytest.raises(CfbenchError, match="--workers 3"):
        parse_devices("cpu,cpu", 3)


@pytest.mark.timeout(600)
def test_one_task_split_over_two_workers_differs_only_by_rounding(tiny_model: Path, tmp_path: Path) -> None:
    import numpy as np

    from cfbench.engine import evaluate
    from cfbench.scale.workers import evaluate_parallel

    kw = dict(tasks=["hellaswag"], limit=8, backend="hf", backend_options={"dtype": "float32"})
    evaluate(str(tiny_model), results=tmp_path / "one", progress="off", **kw)
    two = evaluate_parallel(str(tiny_model), ["cpu", "cpu"], results=tmp_path / "two", progress="off", **kw)
    a, b = _items(tmp_path / "one"), _items(tmp_path / "two")
    assert two.scored_items == 8 and a["doc_id"].tolist() == b["doc_id"].tolist()
    pairs = zip(a["logprobs"], b["logprobs"], strict=True)
    worst = max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in pairs)
    assert worst < 1e-4, worst
    assert a["pred"].tolist() == b["pred"].tolist()


def _tuned_copy(tiny_model: Path, out: Path) -> Path:
    """The tiny model with its weights nudged: a second checkpoint with different scores."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(out)
    return out


@pytest.mark.timeout(600)
def test_compare_on_two_workers_gives_the_items_and_report_of_one(tiny_model: Path, tmp_path: Path) -> None:
    """compare's (checkpoint, task) jobs of base *and* tuned go through the pool; the same checkpoint
    listed twice is scored once."""
    from cfbench.comparison import compare
    from cfbench.scale.workers import LocalRunner

    tuned = _tuned_copy(tiny_model, tmp_path / "tuned")
    kw = dict(suite="offline", n_boot=200, eval_kwargs={"limit": 3, "backend_options": {"dtype": "float32"},
                                                        "progress": "off"})  # fmt: skip
    runner = LocalRunner(["cpu", "cpu"])
    with torch_threads(runner.threads):
        one = compare(str(tiny_model), [str(tuned)], results=tmp_path / "one", **kw)  # type: ignore[arg-type]
    two = compare(str(tiny_model), [str(tuned), str(tiny_model)], results=tmp_path / "two",
                  runner=runner, **kw)  # type: ignore[arg-type]  # fmt: skip
    from cfbench.store import ResultStore

    a, b = (ResultStore(tmp_path / r).items().sort_values(["cache_key", "task", "doc_id"]).reset_index(drop=True)
            for r in ("one", "two"))  # fmt: skip
    n_one = [r.scored_items for r in one.runs]
    assert len(a) == len(b) == sum(n_one) > 0  # two checkpoints; the repeated base was not scored again
    cols = [c for c in a.columns if c not in ("scored_at", "created_at", "timestamp")]
    for c in cols:
        assert a[c].astype(str).tolist() == b[c].astype(str).tolist(), c
    assert n_one[0] == n_one[1] and [r.scored_items for r in two.runs] == [*n_one, 0]
    ra, rb = one.report.base_comparisons[0], two.report.base_comparisons[0]
    assert ra.avg.delta == rb.avg.delta and ra.avg.ci == rb.avg.ci
    assert two.report.base_comparisons[1].avg.delta == 0.0


def test_make_runner_refuses_bad_combinations() -> None:
    from cfbench.scale.workers import check_devices, make_runner

    with pytest.raises(CfbenchError, match="unknown"):
        make_runner(2, None, "slurm")
    with pytest.raises(CfbenchError, match="Ray places workers itself"):
        make_runner(None, "cuda:0", "ray")
    assert parse_devices("cuda:0+cuda:1,cuda:2+cuda:3", None) == ["cuda:0+cuda:1", "cuda:2+cuda:3"]
    check_devices(["cuda:0+cuda:1"], "vllm", {"tensor_parallel_size": 2})
    with pytest.raises(CfbenchError, match="tensor_parallel_size=2 but --devices entry 'cuda:0' has 1"):
        check_devices(["cuda:0", "cuda:1"], "vllm", {"tensor_parallel_size": 2})
    with pytest.raises(CfbenchError, match="uses one"):
        check_devices(["cuda:0+cuda:1"], "hf", {})
