"""Importers against fixtures in the exact lm-eval / OpenCompass formats, and the store CLI.

Expected values are worked out by hand from the fixture documents: the lm-eval fixture's stand-in
model scores a continuation ``-0.5 * len(continuation)`` (see ``make_lmeval_fixture.py``), so the
shortest choice wins and ties go to the first choice.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

from cfbench.cli import store_cmds
from cfbench.errors import CfbenchError
from cfbench.importers import detect_format, import_file, import_lmeval, import_opencompass
from cfbench.report.leaderboard import leaderboard
from cfbench.store import ResultStore

FIX = Path(__file__).parent / "fixtures" / "imports"
LMEVAL_DIR = FIX / "lmeval" / "org__tiny-sft"
(LMEVAL_RESULTS,) = sorted(LMEVAL_DIR.glob("results_*.json"))
OC_CSV = FIX / "opencompass_summary.csv"
OC_SINGLE = FIX / "opencompass_single.csv"
REPO = Path(__file__).resolve().parents[1]


def _scores(store: ResultStore, run_id: str) -> dict[tuple[str, str, str | None], float]:
    df = store.task_scores([run_id])
    return {(t, m, None if pd.isna(s) else s): v
            for t, m, s, v in zip(df["task"], df["metric"], df["subset"], df["value"], strict=True)}


# ------------------------------------------------------------------ lm-eval


def test_lmeval_scores(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    res = import_lmeval(LMEVAL_DIR.parent, "sft", store)  # the --output_path folder works too
    assert res.warnings == [] and res.names == ["sft"] and res.n_items == 77
    s = _scores(store, res.run_ids[0])
    # arc: golds C, A, B; picks C ("no"), B ("rock" ties "cold", first wins), B ("Sun") -> acc 2/3.
    # Every continuation costs 0.5/char, so per-byte acc_norm ties and picks A: only doc 1 -> 1/3.
    assert s[("arc_challenge", "acc", None)] == pytest.approx(2 / 3)
    assert s[("arc_challenge", "acc_norm", None)] == pytest.approx(1 / 3)
    assert s[("boolq", "acc", None)] == pytest.approx(2 / 3)  # " no" always; labels 1, 0, 0
    assert s[("copa", "acc", None)] == 0.5
    assert s[("rte", "acc", None)] == 0.5
    assert s[("hellaswag", "acc", None)] == 0.5 and s[("hellaswag", "acc_norm", None)] == 0.5
    assert s[("siqa", "acc", None)] == 0.5  # lm-eval's social_iqa
    assert s[("race_high", "acc", None)] == 0.5  # lm-eval's race is RACE-high
    assert s[("openbookqa", "acc", None)] == 0.5 and s[("openbookqa", "acc_norm", None)] == 0.5
    assert s[("truthfulqa_mc", "mc1", None)] == 0.5
    p0 = (math.exp(-2.0) + math.exp(-8.0)) / (math.exp(-2.0) + math.exp(-8.0) + math.exp(-2.5))
    p1 = math.exp(-5.5) / (math.exp(-5.5) + math.exp(-2.5))
    assert s[("truthfulqa_mc", "mc2", None)] == pytest.approx((p0 + p1) / 2)
    # MMLU: letters tie so A is picked; right for the 19 STEM subjects and formal_logic.
    assert s[("mmlu", "acc", None)] == pytest.approx(20 / 57)
    assert s[("mmlu", "acc", "stem")] == 1.0 and s[("mmlu", "acc", "humanities")] == pytest.approx(1 / 13)
    assert s[("mmlu", "acc", "social_sciences")] == 0.0 and s[("mmlu", "acc", "other")] == 0.0
    assert s[("mmlu", "acc", "anatomy")] == 1.0 and s[("mmlu", "acc", "virology")] == 0.0
    assert len(s) == 13 + 4 + 57 + 1

    df = store.task_scores(res.run_ids).set_index(["task", "metric", "subset"], drop=False)
    arc = df[(df.task == "arc_challenge") & (df.metric == "acc")].iloc[0]
    assert arc["n_items"] == 3 and arc["stderr"] == pytest.approx(1 / 3)  # sqrt(1/3) / sqrt(3)
    mmlu = df[(df.task == "mmlu") & df.subset.isna()].iloc[0]
    assert mmlu["n_items"] == 57 and pd.isna(mmlu["stderr"])  # lm-eval wrote "N/A"
    assert mmlu["task_hash"].startswith("lm-eval:") and mmlu["cache_key"].startswith("lm-eval:")


def test_lmeval_run_record(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    import_lmeval(LMEVAL_RESULTS, None, store)
    run = store.find_run("org/tiny-sft")  # default name: lm-eval's model name
    assert run.source == "lm-eval" and run.checkpoint_name == "org/tiny-sft"
    assert run.checkpoint_path == "org/tiny-sft" and run.dtype == "bfloat16" and run.num_fewshot == 0
    assert run.backend == "lm-eval/fixture-lm" and run.limit is None and run.checkpoint_hash is None
    assert run.backend_settings["model_args"] == "pretrained=org/tiny-sft,dtype=bfloat16"
    assert set(run.task_hashes) == {"arc_challenge", "boolq", "copa", "rte", "hellaswag", "siqa", "race_high",
                                    "openbookqa", "truthfulqa_mc", "mmlu"}
    assert run.extra["lm_eval_version"] == "0.4.13"
    assert run.extra["lm_eval_tasks"]["truthfulqa_mc"] == ["truthfulqa_mc1", "truthfulqa_mc2"]


def test_lmeval_items(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    rid = import_lmeval(LMEVAL_RESULTS, "sft", store).run_ids[0]
    items = store.items(run_ids=[rid])
    assert items.groupby("task").size().to_dict() == {
        "arc_challenge": 3, "boolq": 3, "copa": 2, "hellaswag": 2, "mmlu": 57, "openbookqa": 2, "race_high": 2,
        "rte": 2, "siqa": 2, "truthfulqa_mc": 2}
    copa = items[items.task == "copa"].sort_values("doc_id")
    # COPA targets are choice strings (" it rained."); continuations carry a second space.
    assert copa["gold"].tolist() == [0, 1] and copa["pred"].tolist() == [0, 0]
    assert copa["acc"].tolist() == [1.0, 0.0]
    assert list(copa.iloc[0]["logprobs"]) == [-6.0, -11.5]  # "  it rained." 12 chars, 23 chars
    assert copa.iloc[0]["n_tokens"] is None and list(copa.iloc[0]["is_greedy"]) == [False, False]
    arc = items[items.task == "arc_challenge"].sort_values("doc_id")
    assert arc["gold"].tolist() == [2, 0, 1] and arc["pred"].tolist() == [2, 1, 1]
    assert arc["acc_norm"].tolist() == [0.0, 1.0, 0.0]
    mmlu = items[items.task == "mmlu"].set_index("subset")
    # one id space for all subjects: offset = test-set sizes of the subjects before (alphabetical)
    assert mmlu.loc["abstract_algebra", "doc_id"] == 0 and mmlu.loc["anatomy", "doc_id"] == 100
    assert mmlu.loc["world_religions", "doc_id"] == 14042 - 171
    assert all(list(g) == [True] * 4 for g in mmlu["is_greedy"])  # one-letter continuations
    assert mmlu["acc"].sum() == 20
    tqa = items[items.task == "truthfulqa_mc"].sort_values("doc_id")
    assert tqa["mc1"].tolist() == [1.0, 0.0]
    assert tqa["mc2"].tolist() == pytest.approx([
        (math.exp(-2.0) + math.exp(-8.0)) / (math.exp(-2.0) + math.exp(-8.0) + math.exp(-2.5)),
        math.exp(-5.5) / (math.exp(-5.5) + math.exp(-2.5))])
    assert list(tqa.iloc[0]["logprobs"]) == [-2.0, -7.5]  # the mc1 choices " No.", " Yes, they can."
    assert tqa["acc"].isna().all()
    # scores point at their items
    ts = store.task_scores([rid])
    keys = dict(zip(ts["task"], ts["cache_key"], strict=True))
    assert len(set(keys.values())) == 10
    assert store.items(cache_keys=[keys["copa"]])["doc_id"].tolist() == [0, 1]


def _copy_results(out: Path, edit=None, with_samples: bool = True) -> Path:
    """The fixture results file (edited by ``edit``) in ``out``, with or without its samples files."""
    out.mkdir(parents=True)
    if with_samples:
        for f in LMEVAL_DIR.iterdir():
            shutil.copy(f, out / f.name)
    data = json.loads(LMEVAL_RESULTS.read_text())
    if edit:
        edit(data)
    (out / LMEVAL_RESULTS.name).write_text(json.dumps(data))
    return out / LMEVAL_RESULTS.name


def test_lmeval_without_samples_stores_scores_only(tmp_path: Path) -> None:
    store = ResultStore(tmp_path / "r")
    res = import_lmeval(_copy_results(tmp_path / "lm", with_samples=False), "x", store)
    assert res.n_items == 0 and res.n_scores == 75
    assert store.items().empty and store.task_scores()["cache_key"].isna().all()


def test_lmeval_unknown_tasks_warn_or_fail(tmp_path: Path) -> None:
    def add_gsm8k(d: dict) -> None:
        d["results"]["gsm8k"] = {"alias": "gsm8k", "exact_match,strict-match": 0.1}

    store = ResultStore(tmp_path / "r")
    res = import_lmeval(_copy_results(tmp_path / "a", add_gsm8k), "x", store)
    assert res.warnings == ["skipped lm-eval tasks with no cfbench equivalent: gsm8k"]
    assert "gsm8k" not in set(store.task_scores()["task"])

    def only_unknown(d: dict) -> None:
        d["results"] = {"gsm8k": {"exact_match,strict-match": 0.1}, "piqa": {"acc,none": 0.7}}

    with pytest.raises(CfbenchError, match=r"no task cfbench knows \(found: gsm8k, piqa\)"):
        import_lmeval(_copy_results(tmp_path / "b", only_unknown), "y", store)
    assert len(store.runs()) == 1


def test_lmeval_subjects_without_group_warn(tmp_path: Path) -> None:
    def drop_groups(d: dict) -> None:
        for g in ("mmlu", "mmlu_stem", "mmlu_humanities", "mmlu_other", "mmlu_social_sciences"):
            del d["results"][g]

    store = ResultStore(tmp_path / "r")
    res = import_lmeval(_copy_results(tmp_path / "lm", drop_groups), "x", store)
    assert any(w.startswith("mmlu: the results have MMLU subjects") for w in res.warnings)
    s = _scores(store, res.run_ids[0])
    assert ("mmlu", "acc", None) not in s and s[("mmlu", "acc", "anatomy")] == 1.0


def test_lmeval_path_errors(tmp_path: Path) -> None:
    store = ResultStore(tmp_path / "r")
    with pytest.raises(CfbenchError, match="does not exist"):
        import_lmeval(tmp_path / "missing.json", "x", store)
    (tmp_path / "d").mkdir()
    with pytest.raises(CfbenchError, match="no lm-eval results_"):
        import_lmeval(tmp_path / "d", "x", store)
    for stamp in ("a", "b"):
        (tmp_path / "d" / f"results_{stamp}.json").write_text("{}")
    with pytest.raises(CfbenchError, match="holds 2 lm-eval results files"):
        import_lmeval(tmp_path / "d", "x", store)
    with pytest.raises(CfbenchError, match="not an lm-eval results file"):
        import_lmeval(tmp_path / "d" / "results_a.json", "x", store)
    (tmp_path / "bad.json").write_text("{oops")
    with pytest.raises(CfbenchError, match=r"can't read .* as JSON"):
        import_lmeval(tmp_path / "bad.json", "x", store)
    assert not (tmp_path / "r").exists()


# ------------------------------------------------------------------ OpenCompass


def test_opencompass_two_models(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    res = import_opencompass(OC_CSV, store)
    assert res.names == ["llama-2-7b-hf", "llama-2-7b-sft"] and res.n_items == 0
    assert res.warnings == [
        "skipped OpenCompass datasets with no cfbench equivalent: gsm8k",
        "skipped metrics cfbench does not compute (only accuracy, and mc1/mc2 for truthfulqa): truthful_qa/truth",
    ]
    hf, sft = (_scores(store, r) for r in res.run_ids)
    assert hf[("oc_boolq", "acc", None)] == pytest.approx(0.7486)
    assert sft[("oc_boolq", "acc", None)] == pytest.approx(0.7043)
    assert hf[("oc_copa", "acc", None)] == pytest.approx(0.67) and ("oc_copa", "acc", None) not in sft  # '-'
    assert hf[("oc_arc_challenge", "acc", None)] == pytest.approx(0.3932)
    assert hf[("oc_ax_b", "acc", None)] == pytest.approx(0.5607)
    assert hf[("oc_ax_g", "acc", None)] == pytest.approx(0.5169)
    assert hf[("oc_race_middle", "acc", None)] == pytest.approx(0.4011)
    assert hf[("oc_openbookqa_fact", "acc", None)] == pytest.approx(0.578)
    assert sft[("oc_mmlu", "acc", None)] == pytest.approx(0.4405)  # accuracy and naive_average rows agree
    assert sft[("oc_mmlu", "acc", "stem")] == pytest.approx(0.356)
    assert sft[("oc_mmlu", "acc", "social_sciences")] == pytest.approx(0.5002)
    assert sft[("oc_mmlu", "acc", "anatomy")] == pytest.approx(0.4074)
    assert not any(t in ("oc_csl_dev", "truthfulqa_mc") for t, _, _ in hf)  # never evaluated / generative
    assert len(hf) == 6 + 12 and len(sft) == 6 + 11  # mmlu + groups + anatomy; 12 datasets (sft: no COPA)
    run = store.find_run("llama-2-7b-hf")
    assert run.source == "opencompass" and run.checkpoint_name == "llama-2-7b-hf"
    assert run.task_hashes["oc_boolq"] == "opencompass:314797" and "oc_mmlu" not in run.task_hashes
    assert run.extra["modes"]["oc_mmlu"] == "ppl" and run.extra["skipped_datasets"] == ["gsm8k"]
    ts = store.task_scores(res.run_ids[:1])
    assert ts["n_items"].isna().all() and ts["stderr"].isna().all()


def test_opencompass_paper_categories(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    import_opencompass(OC_CSV, store)
    paper = {"DK": ["oc_mmlu"], "Understanding": ["oc_race_middle", "oc_race_high", "oc_openbookqa_fact", "oc_csl_dev"],
             "Reasoning": ["oc_boolq", "oc_ax_b", "oc_ax_g", "oc_rte", "oc_copa", "oc_hellaswag", "oc_siqa"],
             "Exams": ["oc_arc_challenge"]}
    board = leaderboard(store, suite=paper, metrics={"oc_hellaswag": "acc_norm"}).set_index("name")
    hf, sft = board.loc["llama-2-7b-hf"], board.loc["llama-2-7b-sft"]
    assert hf["Reasoning"] == pytest.approx((74.86 + 56.07 + 51.69 + 51.26 + 67.00 + 74.03 + 50.36) / 700)
    assert hf["oc_hellaswag"] == pytest.approx(0.7403)  # accuracy stands in for acc_norm
    # COPA missing: the same partial mean `compare` shows, marked partial (issue 8 item 3)
    assert sft["Reasoning"] == pytest.approx((70.43 + 53.89 + 52.25 + 50.18 + 73.19 + 49.69) / 600)
    assert "Reasoning" in sft["partial"].split(",") and "Reasoning" not in hf["partial"].split(",")
    assert "Understanding" in hf["partial"].split(",") and "AVG" in hf["partial"].split(",")  # csl_dev never evaluated
    assert hf["DK"] == pytest.approx(0.4617) and sft["Exams"] == pytest.approx(0.3729)


def test_opencompass_name_rules(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    with pytest.raises(CfbenchError, match=r"has 2 model columns .* --name only applies to a single-model CSV"):
        import_opencompass(OC_CSV, store, name="x")
    res = import_opencompass(OC_SINGLE, store, name="qwen-base")
    assert res.names == ["qwen-base"]
    assert res.warnings == ["skipped OpenCompass datasets with no cfbench equivalent: mmlu-weighted"]
    run = store.find_run("qwen-base")
    assert run.checkpoint_name == "qwen1.5-0.5b-chat-hf"
    assert _scores(store, run.run_id) == {("oc_boolq", "acc", None): pytest.approx(0.6125),
                                          ("oc_arc_challenge", "acc", None): pytest.approx(0.3051)}
    assert import_opencompass(OC_SINGLE, store).names == ["qwen1.5-0.5b-chat-hf"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("dataset,version,metric,mode,m\ngsm8k,1d7fe4,accuracy,gen,14.63\n", "no dataset cfbench knows (found: gsm8k)"),
        ("name,score\nBoolQ,70\n", "not an OpenCompass summary CSV"),
        ("dataset,version,metric,mode,m\nBoolQ,314797,accuracy,ppl,seventy\n", "holds 'seventy', not a percentage"),
        ("dataset,version,metric,mode,m\nBoolQ,314797,accuracy,ppl,170.0\n", "not a percentage in [0, 100]"),
        ("dataset,version,metric,mode,m\nBoolQ,314797,accuracy,ppl\n", ":2 has 4 fields, the header 5"),
        ("dataset,version,metric,mode,a,b\nBoolQ,314797,accuracy,ppl,-,-\n", "no model column has a known score"),
    ],
)
def test_opencompass_errors_write_nothing(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "summary.csv"
    path.write_text(text)
    with pytest.raises(CfbenchError) as err:
        import_opencompass(path, ResultStore(tmp_path / "r"))
    assert message in str(err.value)
    assert not (tmp_path / "r").exists()


def test_detect_format(tmp_path: Path) -> None:
    assert detect_format(LMEVAL_DIR) == "lm-eval" and detect_format(LMEVAL_RESULTS) == "lm-eval"
    assert detect_format(OC_CSV) == "opencompass"
    renamed = tmp_path / "summary.txt"
    shutil.copy(OC_CSV, renamed)
    assert detect_format(renamed) == "opencompass"  # told by the header
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(CfbenchError, match=r"can't tell the format .* --from lm-eval or --from opencompass"):
        detect_format(tmp_path / "notes.txt")
    with pytest.raises(CfbenchError, match="unknown import format 'json'"):
        import_file(OC_CSV, ResultStore(tmp_path / "r"), fmt="json")


# ------------------------------------------------------------------ CLI


@pytest.fixture
def cli() -> typer.Typer:
    app = typer.Typer()
    store_cmds.register(app)
    return app


def test_cli_import_and_leaderboard(tmp_path: Path, cli: typer.Typer, monkeypatch: pytest.MonkeyPatch) -> None:
    runner = CliRunner()
    res = runner.invoke(cli, ["import", str(OC_CSV), "--results", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert "imported llama-2-7b-hf (run " in res.stdout and "35 task scores, 0 items" in res.stdout
    assert "warning: skipped OpenCompass datasets with no cfbench equivalent: gsm8k" in res.stderr
    res = runner.invoke(cli, ["import", str(LMEVAL_RESULTS), "--name", "tiny", "--results", str(tmp_path),
                              "--from", "lm-eval"])
    assert res.exit_code == 0 and "75 task scores, 77 items" in res.stdout

    # OpenCompass numbers land on the oc_* tasks, lm-eval numbers on the lm-eval ones: never one column.
    res = runner.invoke(cli, ["leaderboard", "--results", str(tmp_path), "--format", "csv", "--sort", "oc_boolq"])
    board = pd.read_csv(pd.io.common.StringIO(res.stdout))
    assert board["name"].tolist() == ["llama-2-7b-hf", "llama-2-7b-sft", "tiny"]
    assert board["oc_boolq"].tolist()[:2] == pytest.approx([0.7486, 0.7043])  # fractions for tools
    assert pd.isna(board["oc_boolq"].tolist()[2]) and board["boolq"].tolist()[2] == pytest.approx(2 / 3)

    suites = {"paper": {"DK": ["oc_mmlu"], "Exams": ["oc_arc_challenge"]}, "lmeval": {"DK": ["mmlu"],
              "Exams": ["arc_challenge"]}}  # fmt: skip
    fake = types.ModuleType("cfbench.tasks.registry")
    fake.load_suite = lambda name: types.SimpleNamespace(categories=suites[name], reference=name)
    monkeypatch.setattr("cfbench.report.board.load_suite", fake.load_suite)
    # --paper none: only this store's runs (by default --suite paper also shows the paper's Table 2(a) rows)
    res = runner.invoke(cli, ["leaderboard", "--results", str(tmp_path), "--suite", "paper", "--format", "markdown",
                              "--paper", "none"])
    caption, _, header, _, row1, *_ = res.stdout.splitlines()
    assert "×100" in caption
    assert header.endswith("| DK | Exams | AVG |")
    assert row1.startswith("| llama-2-7b-hf |") and "| 46.17 | 39.32 | 42.7" in row1  # AVG 42.745
    res = runner.invoke(cli, ["leaderboard", "--results", str(tmp_path), "--suite", "lmeval", "--format", "markdown",
                              "--paper", "none"])
    row3 = next(line for line in res.stdout.splitlines() if line.startswith("| tiny |"))
    assert row3.endswith("| 35.09 | 66.67 | 50.88 |")

    res = runner.invoke(cli, ["leaderboard", "--results", str(tmp_path), "--suite", "paper", "--format", "csv",
                              "--paper", "none"])
    board = pd.read_csv(pd.io.common.StringIO(res.stdout)).set_index("name")
    assert board.loc["llama-2-7b-hf", "AVG"] == pytest.approx((0.4617 + 0.3932) / 2)

    out = tmp_path / "board.parquet"
    res = runner.invoke(cli, ["leaderboard", "--results", str(tmp_path), "--format", "parquet", "--out", str(out)])
    assert res.exit_code == 0 and pd.read_parquet(out)["name"].tolist()[-1] == "tiny"
    res = runner.invoke(cli, ["leaderboard", "--results", str(tmp_path), "--format", "html", "--out",
                              str(tmp_path / "b.html")])
    assert res.exit_code == 0 and 'data-v="74.86">74.86</td>' in (tmp_path / "b.html").read_text()
    # oc_boolq (OpenCompass) and boolq (lm-eval) are two columns now: pick the one to show in the table.
    res = runner.invoke(cli, ["leaderboard", "--results", str(tmp_path), "--columns", "name,oc_boolq"])
    assert res.exit_code == 0 and "llama-2-7b-sft" in res.stdout and "74.86" in res.stdout

    res = runner.invoke(cli, ["leaderboard", "--results", str(tmp_path), "--format", "parquet"])
    assert isinstance(res.exception, CfbenchError) and "add --out FILE.parquet" in str(res.exception)

    parts = len(list((tmp_path / "task_scores").glob("part-*")))
    res = runner.invoke(cli, ["store", "compact", "--results", str(tmp_path)])
    assert res.exit_code == 0 and parts == 3 and len(list((tmp_path / "task_scores").glob("part-*"))) == 1


def test_cli_errors_are_one_line_exit_2(tmp_path: Path) -> None:
    """Through the real entry point: a CfbenchError is one ``error:`` line and exit code 2."""
    cmd = [sys.executable, "-c", "from cfbench.cli import main; main()", "import", str(tmp_path / "none.csv"),
           "--results", str(tmp_path / "r")]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'none.csv'} does not exist: pass an lm-eval results_*.json or an OpenCompass summary CSV"
    ]
