"""Runs OpenCompass 0.5.4's own PPL pipeline inside the isolated venv (see test_opencompass_parity.py).

Usage: ``python _opencompass_worker.py DATA_DIR MODEL_PATH OUT_JSON TASK[:SUBSET,...] ...``

For each task it executes OpenCompass's shipped dataset config file (``opencompass/configs/datasets``),
loads the data with the config's own dataset class from ``DATA_DIR`` (OpenCompass's ``data/`` layout),
builds the config's prompt templates, retriever and ``PPLInferencer`` through OpenCompass's registries
exactly as ``opencompass/tasks/openicl_infer.py`` does, and scores with ``HuggingFaceCausalLM``
(one text per forward, float32, CPU). It writes, per item, every label's full prompt and PPL and the
prediction, as OpenCompass's inferencer recorded them.

``opencompass.datasets``' ``__init__`` imports every benchmark's loader and their optional
dependencies; the worker registers that package as a bare namespace so only the loaders used
here are imported (their code unchanged). Nothing from cfbench is imported here.
"""

from __future__ import annotations

import importlib
import json
import runpy
import sys
import tempfile
import types
from pathlib import Path

import opencompass  # the installed package; its __init__ is light

ROOT = Path(opencompass.__file__).parent
CONFIGS = ROOT / "configs" / "datasets"

# task -> (config file, variable, the config's dataset abbr (None: every entry), kwargs pointing it at DATA_DIR)
TASKS = {
    "arc_challenge": ("ARC_c/ARC_c_ppl_a450bd.py", "ARC_c_datasets", None,
                      lambda d: {"path": str(d / "ARC/ARC-c/ARC-Challenge-Dev.jsonl")}),
    "hellaswag": ("hellaswag/hellaswag_ppl_47bff9.py", "hellaswag_datasets", None,
                  lambda d: {"path": str(d / "hellaswag/hellaswag.jsonl")}),
    "boolq": ("SuperGLUE_BoolQ/SuperGLUE_BoolQ_ppl_314b96.py", "BoolQ_datasets", None,
              lambda d: {"data_files": str(d / "SuperGLUE/BoolQ/val.jsonl")}),
    "copa": ("SuperGLUE_COPA/SuperGLUE_COPA_ppl_9f3618.py", "COPA_datasets", None,
             lambda d: {"data_files": str(d / "SuperGLUE/COPA/val.jsonl")}),
    "mmlu": ("mmlu/mmlu_ppl_ac766d.py", "mmlu_datasets", None, lambda d: {"path": str(d / "mmlu")}),
    "rte": ("SuperGLUE_RTE/SuperGLUE_RTE_ppl_66caf3.py", "RTE_datasets", None,
            lambda d: {"data_files": str(d / "SuperGLUE/RTE/val.jsonl")}),
    "ax_b": ("SuperGLUE_AX_b/SuperGLUE_AX_b_ppl_6db806.py", "AX_b_datasets", None,
             lambda d: {"data_files": str(d / "SuperGLUE/AX-b/AX-b.jsonl")}),
    "ax_g": ("SuperGLUE_AX_g/SuperGLUE_AX_g_ppl_66caf3.py", "AX_g_datasets", None,
             lambda d: {"data_files": str(d / "SuperGLUE/AX-g/AX-g.jsonl")}),
    "siqa": ("siqa/siqa_ppl_ced5f6.py", "siqa_datasets", None, lambda d: {"path": str(d / "siqa")}),
    "openbookqa_fact": ("obqa/obqa_ppl_c7c154.py", "obqa_datasets", "openbookqa_fact",
                        lambda d: {"path": str(d / "openbookqa/Additional/test_complete.jsonl")}),
    "race_middle": ("race/race_ppl_a138cd.py", "race_datasets", "race-middle", lambda d: {"path": str(d / "race")}),
    "race_high": ("race/race_ppl_a138cd.py", "race_datasets", "race-high", lambda d: {"path": str(d / "race")}),
    "csl_dev": ("FewCLUE_csl/FewCLUE_csl_ppl_841b62.py", "csl_datasets", "csl_dev",
                lambda d: {"data_files": str(d / "FewCLUE/csl/dev_few_all.json")}),
}  # fmt: skip


def _namespace(name: str) -> None:
    """Make ``name`` importable as a package without running its ``__init__.py``."""
    mod = types.ModuleType(name)
    mod.__path__ = [str(ROOT / Path(*name.split(".")[1:]))]  # type: ignore[attr-defined]
    sys.modules[name] = mod


def _setup() -> None:
    _namespace("opencompass.datasets")
    ds = sys.modules["opencompass.datasets"]
    for mod, names in {"arc": ["ARCDataset"], "hellaswag": ["HellaswagDataset"], "boolq": ["BoolQDataset"],
                       "huggingface": ["HFDataset"], "mmlu": ["MMLUDataset"], "siqa": ["siqaDataset"],
                       "obqa": ["OBQADataset"], "race": ["RaceDataset"], "csl": ["CslDataset"]}.items():  # fmt: skip
        m = importlib.import_module(f"opencompass.datasets.{mod}")
        for n in names:
            setattr(ds, n, getattr(m, n))


def main(data_dir: str, model_path: str, out_json: str, specs: list[str]) -> None:
    _setup()
    import torch
    from opencompass.models.huggingface import HuggingFaceCausalLM
    from opencompass.openicl.icl_inferencer.icl_ppl_inferencer import PPLInferencer
    from opencompass.registry import ICL_PROMPT_TEMPLATES, ICL_RETRIEVERS

    model = HuggingFaceCausalLM(
        path=model_path,
        max_seq_len=2048,
        batch_padding=False,
        model_kwargs=dict(device_map="cpu", torch_dtype=torch.float32),
    )
    data = Path(data_dir)
    out: dict[str, list[dict]] = {}
    for spec in specs:
        task, _, subsets = spec.partition(":")
        cfg_file, var, abbr, where = TASKS[task]
        cfgs = runpy.run_path(str(CONFIGS / cfg_file))[var]
        if abbr:
            cfgs = [c for c in cfgs if c["abbr"] == abbr]
            assert len(cfgs) == 1, (cfg_file, abbr)
        if subsets:
            wanted = subsets.split(",")
            cfgs = [c for c in cfgs if c.get("name") in wanted]
        items: list[dict] = []
        for ds_cfg in cfgs:
            ds_cfg = dict(ds_cfg)
            cls = ds_cfg.pop("type")
            infer_cfg = ds_cfg.pop("infer_cfg")
            ds_cfg.pop("eval_cfg", None)
            ds_cfg.update(where(data))
            dataset = cls(**ds_cfg)
            ice, prompt = (
                ICL_PROMPT_TEMPLATES.build(infer_cfg[k]) if k in infer_cfg else None
                for k in ("ice_template", "prompt_template")
            )
            retriever = ICL_RETRIEVERS.build({**infer_cfg["retriever"], "dataset": dataset})
            inferencer = PPLInferencer(model=model, batch_size=1, max_seq_len=2048)
            with tempfile.TemporaryDirectory() as tmp:
                inferencer.inference(retriever, ice_template=ice, prompt_template=prompt,
                                     output_json_filepath=tmp, output_json_filename="out.json")  # fmt: skip
                res = json.loads((Path(tmp) / "out.json").read_text())
            for idx in sorted(res, key=int):
                row = res[idx]
                labels = [k for k in row if k.startswith("label: ")]
                items.append({
                    "subset": ds_cfg.get("name"),
                    "labels": [k.removeprefix("label: ") for k in labels],
                    "prompts": [row[k]["prompt"] for k in labels],
                    "ppl": [float(row[k]["PPL"]) for k in labels],
                    "prediction": str(row["prediction"]),
                    "gold": str(row["gold"]),
                })  # fmt: skip
        out[task] = items
    Path(out_json).write_text(json.dumps(out, ensure_ascii=False, indent=1))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:])
