"""Named row adapters: convert a source's schema into the task's canonical (HF hub) schema.

Task YAMLs refer to these by name, in the spirit of lm-eval's ``process_docs``. Each adapter is a
pure function of one row (plus, for OpenCompass SIQA, a label read from a side file).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from cfbench.errors import CfbenchError

Row = dict[str, Any]
ADAPTERS: dict[str, Callable[[Row], Row]] = {}
_ENTAILMENT = {"entailment": 0, "not_entailment": 1}


def adapter(name: str) -> Callable[[Callable[[Row], Row]], Callable[[Row], Row]]:
    def deco(fn: Callable[[Row], Row]) -> Callable[[Row], Row]:
        ADAPTERS[name] = fn
        return fn

    return deco


def get_adapter(name: str) -> Callable[[Row], Row]:
    if name not in ADAPTERS:
        raise CfbenchError(f"unknown data adapter {name!r}; known: {', '.join(sorted(ADAPTERS))}")
    return ADAPTERS[name]


def _label_to_int(value: Any, names: dict[str, int]) -> int:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value in names:
        return names[value]
    if isinstance(value, str) and value.lstrip("-").isdigit():
        return int(value)
    raise ValueError(f"unexpected label {value!r}")


@adapter("superglue_entailment")
def superglue_entailment(row: Row) -> Row:
    """SuperGLUE jsonl (AX-b, AX-g, RTE) labels are strings; the hub uses 0=entailment, 1=not."""
    return {**row, "label": _label_to_int(row["label"], _ENTAILMENT)}


@adapter("glue_rte_to_superglue")
def glue_rte_to_superglue(row: Row) -> Row:
    """GLUE RTE (bundled) names the pair sentence1/sentence2; SuperGLUE RTE says premise/hypothesis."""
    return {
        "premise": row["sentence1"],
        "hypothesis": row["sentence2"],
        "idx": row["idx"],
        "label": _label_to_int(row["label"], _ENTAILMENT),
    }


def _ai2_nested(row: Row, stem_key: str) -> Row:
    q = row["question"]
    out = {
        "id": row.get("id"),
        stem_key: q["stem"],
        "choices": {"text": [c["text"] for c in q["choices"]], "label": [c["label"] for c in q["choices"]]},
        "answerKey": row["answerKey"],
    }
    if "fact1" in row:
        out["fact1"] = row["fact1"]
    return out


@adapter("arc_ai2_jsonl")
def arc_ai2_jsonl(row: Row) -> Row:
    """AI2's original ARC jsonl nests question.stem/choices; the hub flattens them."""
    return _ai2_nested(row, "question")


@adapter("obqa_ai2_jsonl")
def obqa_ai2_jsonl(row: Row) -> Row:
    """OpenBookQA's original jsonl (Main/Additional) → hub ``openbookqa`` schema (``question_stem``)."""
    return _ai2_nested(row, "question_stem")


@adapter("boolq_superglue")
def boolq_superglue(row: Row) -> Row:
    """SuperGLUE BoolQ jsonl has ``label`` (a bool upstream, the string "true"/"false" in OpenCompass's
    copy); the hub ``boolq`` dataset calls it ``answer``."""
    label = row["label"]
    if isinstance(label, str):
        if label.strip().lower() not in ("true", "false"):
            raise ValueError(f"unexpected BoolQ label {label!r}")
        label = label.strip().lower() == "true"
    return {"question": row["question"], "passage": row["passage"], "answer": bool(label)}


@adapter("copa_superglue")
def copa_superglue(row: Row) -> Row:
    return {**row, "label": _label_to_int(row["label"], {})}


@adapter("csl_fewclue")
def csl_fewclue(row: Row) -> Row:
    """FewCLUE CSL stores the label as the string "0"/"1"."""
    return {**row, "label": _label_to_int(row["label"], {})}


@adapter("mmlu_csv")
def mmlu_csv(row: Row) -> Row:
    """Hendrycks/OpenCompass MMLU csv: no header; question, A, B, C, D, answer letter."""
    return {
        "question": row["question"],
        "subject": row["subject"],
        "choices": [row["A"], row["B"], row["C"], row["D"]],
        "answer": "ABCD".index(str(row["answer"]).strip()),
    }


@adapter("siqa_opencompass")
def siqa_opencompass(row: Row) -> Row:
    """OpenCompass SIQA: dev.jsonl rows plus a label ("1".."3") from dev-labels.lst."""
    return {
        "context": row["context"],
        "question": row["question"],
        "answerA": row["answerA"],
        "answerB": row["answerB"],
        "answerC": row["answerC"],
        "label": str(row["label"]).strip(),
    }


@adapter("truthfulqa_upstream")
def truthfulqa_upstream(row: Row) -> Row:
    """TruthfulQA's ``data/mc_task.json`` keys answers by text; the hub lists choices and labels."""

    def conv(targets: dict[str, int]) -> dict[str, list[Any]]:
        return {"choices": list(targets), "labels": [int(v) for v in targets.values()]}

    return {
        "question": row["question"],
        "mc1_targets": conv(row["mc1_targets"]),
        "mc2_targets": conv(row["mc2_targets"]),
    }


@adapter("hellaswag_jsonl")
def hellaswag_jsonl(row: Row) -> Row:
    """HellaSwag jsonl: OpenCompass ships it pre-rendered as ``{query, choices, gold}``; Rowan's raw
    file has ``ctx_a/ctx_b/endings`` and an int label (the hub uses a string label)."""
    if "query" in row and "ctx_a" not in row:
        return {"query": row["query"], "choices": list(row["choices"]), "gold": int(row["gold"])}
    return {**row, "label": str(row["label"])}


# ---- task-level document processing (after any source), like lm-eval's process_docs ----

PROCESSORS: dict[str, Callable[[Row], Row | None]] = {}


def _hellaswag_clean(text: str) -> str:
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def _hellaswag(doc: Row) -> Row:
    """lm-eval's ``hellaswag/utils.py::process_docs``, verbatim in behaviour. Rows that arrive
    pre-rendered (OpenCompass's ``{query, choices, gold}``) get the same text clean-up only."""
    if "ctx_a" not in doc:
        return {
            **doc,
            "query": _hellaswag_clean(doc["query"]),
            "choices": [_hellaswag_clean(c) for c in doc["choices"]],
            "gold": int(doc["gold"]),
        }
    ctx = doc["ctx_a"] + " " + doc["ctx_b"].capitalize()
    return {
        **doc,
        "query": _hellaswag_clean(doc["activity_label"] + ": " + ctx),
        "choices": [_hellaswag_clean(e) for e in doc["endings"]],
        "gold": int(doc["label"]),
    }


PROCESSORS["hellaswag"] = _hellaswag


def _hellaswag_opencompass(doc: Row) -> Row:
    """OpenCompass ``HellaswagDataset``: its data file is lm-eval's rendering (``query``, ``choices``,
    ``gold``), read as is, and the prompt is ``query.split(': ', 2)[-1]`` (the activity label dropped).
    Raw rows (the hub's / bundled ``ctx_a``, ``endings``) are first rendered as lm-eval does, which is
    how that file was made."""
    out = _hellaswag(doc) if "ctx_a" in doc else {**doc, "choices": list(doc["choices"]), "gold": int(doc["gold"])}
    return {**out, "ctx": out["query"].split(": ", 2)[-1]}


PROCESSORS["hellaswag_opencompass"] = _hellaswag_opencompass


def _arc_opencompass(doc: Row) -> Row | None:
    """OpenCompass ``ARCDataset``: items without exactly four choices are skipped (3 + 1 of ARC-c's
    299 dev items), the rest keep their order; ``textA..textD`` and a letter ``answerKey``."""
    texts, labels = list(doc["choices"]["text"]), list(doc["choices"]["label"])
    if len(texts) != 4:
        return None
    return {
        "question": doc["question"],
        "answerKey": "ABCD"[labels.index(doc["answerKey"])],
        **{f"text{letter}": t for letter, t in zip("ABCD", texts, strict=True)},
    }


PROCESSORS["arc_opencompass"] = _arc_opencompass


def get_processor(name: str) -> Callable[[Row], Row | None]:
    if name not in PROCESSORS:
        raise CfbenchError(f"unknown process_docs {name!r}; known: {', '.join(sorted(PROCESSORS))}")
    return PROCESSORS[name]
