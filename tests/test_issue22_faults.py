"""Issue 22: faults, bad input and hostile files, each class pinned at its mechanism.

Every test here fails on the code before the fix (main at 07a3ec0); the report names how.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

from cfbench.cli import store_cmds
from cfbench.cli.output import to_csv as rows_to_csv
from cfbench.errors import CfbenchError
from cfbench.importers import import_opencompass
from cfbench.report import build_report
from cfbench.report.render import to_csv as report_to_csv
from cfbench.report.render import to_json as report_to_json
from cfbench.store import ResultStore

HOSTILE = [
    '=HYPERLINK("http://127.0.0.1:9/x?"&A1;"click")',
    "+cmd|' /C calc'!A0",
    "-2+3+cmd|' /C calc'!A0",
    "@SUM(1+1)*cmd|' /C calc'!A0",
    "\t=1+1",
    "\r=1+1",
]


def _cells(text: str) -> list[str]:
    return [c for row in csv.reader(io.StringIO(text, newline="")) for c in row]


def _no_live_formula(text: str) -> None:
    """No cell of the CSV ``text`` starts with a character a spreadsheet evaluates (numbers aside)."""
    for cell in _cells(text):
        if cell[:1] in ("=", "+", "-", "@", "\t", "\r"):
            float(cell)  # a number written as text is the only allowed exception


# ---------------------------------------------------------------- 1. CSV formula injection


@pytest.mark.parametrize("value", HOSTILE)
def test_safe_cell_quotes_every_formula_trigger(value: str) -> None:
    from cfbench.csvsafe import safe_cell

    assert safe_cell(value) == "'" + value


@pytest.mark.parametrize("value", [-0.25, 3, None, "-0.25", "+1.5e-3", "plain name", "a=b", "", "'quoted"])
def test_safe_cell_leaves_numbers_and_plain_text(value: object) -> None:
    from cfbench.csvsafe import safe_cell

    assert safe_cell(value) == value


def test_row_csv_neutralises_cells_and_headers() -> None:
    rows = [{"name": v, "score": -0.5, "tags": [v, "x"]} for v in HOSTILE] + [{"=col": "@x"}]
    text = rows_to_csv(rows)
    _no_live_formula(text)
    back = list(csv.DictReader(io.StringIO(text)))
    assert [r["name"] for r in back[: len(HOSTILE)]] == ["'" + v for v in HOSTILE]
    assert back[0]["score"] == "-0.5"  # numbers keep their sign
    assert "'=col" in back[0]


def test_a_carriage_return_inside_a_cell_cannot_start_a_row() -> None:
    """A bare CR is a row break to a spreadsheet: "ok\r=1+1" must stay one quoted cell, not a new row."""
    text = rows_to_csv([{"name": "ok\r=1+1", "n": 1}])
    assert list(csv.reader(io.StringIO(text, newline=""))) == [["name", "n"], ["ok\r=1+1", "1"]]
    assert text.endswith("\n") and "\r\n" not in text
    frame = pd.DataFrame({"name": ["ok\r=1+1", "b"], "v": [0.5, -0.5]})
    from cfbench.csvsafe import frame_to_csv

    text = frame_to_csv(frame)
    assert list(csv.reader(io.StringIO(text, newline=""))) == [["name", "v"], ["ok\r=1+1", "0.5"], ["b", "-0.5"]]


def test_compare_csv_neutralises_run_labels_and_json_keeps_them() -> None:
    tasks = ["boolq", "copa"]
    runs = {"base": [0.6, 0.7], HOSTILE[0]: [0.5, 0.6], HOSTILE[3]: [0.55, 0.65]}
    scores = pd.DataFrame([{"run": r, "task": t, "value": v}
                           for r, vs in runs.items() for t, v in zip(tasks, vs, strict=True)])  # fmt: skip
    report = build_report("base", [HOSTILE[0], HOSTILE[3]], {"R": tasks}, task_scores=scores)
    text = report_to_csv(report)
    _no_live_formula(text)
    assert "'" + HOSTILE[0] in _cells(text)
    assert HOSTILE[0] in json.loads(report_to_json(report))["tuned"]  # JSON keeps the value as it was


def test_leaderboard_csv_of_a_hostile_opencompass_import(tmp_path: Path) -> None:
    summary = tmp_path / "summary.csv"
    model = HOSTILE[0]
    with summary.open("w", newline="") as f:
        csv.writer(f).writerows([["dataset", "version", "metric", "mode", model], ["BoolQ", "314797", "accuracy",
                                 "ppl", "61.25"], ["ARC-c", "d52a21", "accuracy", "ppl", "30.51"]])  # fmt: skip
    store = ResultStore(tmp_path / "r")
    import_opencompass(summary, store)
    app = typer.Typer()
    store_cmds.register(app)
    runner = CliRunner()
    for cmd in (["leaderboard", "--paper", "none"], ["runs"]):
        res = runner.invoke(app, [*cmd, "--results", str(tmp_path / "r"), "--format", "csv"])
        assert res.exit_code == 0, res.output
        _no_live_formula(res.stdout)
        assert "'" + model in _cells(res.stdout), cmd
    res = runner.invoke(app, ["leaderboard", "--paper", "none", "--results", str(tmp_path / "r"), "--format", "json"])
    assert model in [r["name"] for r in json.loads(res.stdout)]


# ---------------------------------------------------------------- 2. task data paths stay inside --data-dir

COPA_YAML = Path(__file__).resolve().parents[1] / "cfbench" / "task_configs" / "copa.yaml"
ESCAPING = ["../secret/secret.jsonl", "SuperGLUE/../../secret/secret.jsonl", "/etc/passwd", "..", "", "C:\\x\\y.jsonl"]


def _copa_raw(local: object) -> dict[str, object]:
    import yaml

    raw = yaml.safe_load(COPA_YAML.read_text())
    raw["data"] = {"local": {"validation": local}}
    return raw


@pytest.mark.parametrize("bad", ESCAPING)
@pytest.mark.parametrize("key", ["path", "labels_path"])
def test_task_yaml_with_an_escaping_data_path_is_refused(tmp_path: Path, bad: str, key: str) -> None:
    from cfbench.tasks.config import parse_task_config

    entry = {"path": "SuperGLUE/COPA/val.jsonl", key: bad}
    with pytest.raises(CfbenchError, match="must be relative and stay inside the data folder") as err:
        parse_task_config(_copa_raw([entry]), tmp_path / "copa.yaml")
    assert "\n" not in str(err.value)


def test_bundled_path_escaping_is_refused(tmp_path: Path) -> None:
    from cfbench.tasks.config import parse_task_config

    raw = _copa_raw([])
    raw["data"] = {"bundled": {"path": "../../../etc"}}
    with pytest.raises(CfbenchError, match=r"data\.bundled\.path"):
        parse_task_config(raw, tmp_path / "copa.yaml")


def test_data_dir_source_never_reads_outside_its_root(tmp_path: Path) -> None:
    """The source itself refuses, whatever built the config: a ``{subset}`` substituted into a path, a
    config object made in code. The file outside is never opened."""
    import dataclasses

    from cfbench.data.local_dir import DataDirSource
    from cfbench.tasks.config import LocalFile, parse_task_config

    (tmp_path / "secret").mkdir()
    (tmp_path / "secret" / "secret.jsonl").write_text('{"premise": "s", "choice1": "a", "choice2": "b", "label": 0}\n')
    data = tmp_path / "data"
    data.mkdir()
    cfg = parse_task_config(_copa_raw([{"path": "SuperGLUE/COPA/val.jsonl"}]), tmp_path / "copa.yaml")
    variants = [
        LocalFile("../secret/secret.jsonl", "jsonl", None, None),
        LocalFile(str(tmp_path / "secret" / "secret.jsonl"), "jsonl", None, None),
        LocalFile("{subset}.jsonl", "jsonl", None, None),  # subset "../secret/secret"
        LocalFile("SuperGLUE/COPA/val.jsonl", "jsonl", None, "../secret/secret.jsonl"),
    ]
    (data / "SuperGLUE" / "COPA").mkdir(parents=True)
    (data / "SuperGLUE" / "COPA" / "val.jsonl").write_text('{"premise": "p", "choice1": "a", "choice2": "b"}\n')
    for entry in variants:
        bad = dataclasses.replace(cfg, subsets=("../secret/secret",), data=dataclasses.replace(
            cfg.data, local={"validation": [entry]}))  # fmt: skip
        with pytest.raises(CfbenchError, match=r"leaves .*data.* stay inside the data folder"):
            hit = DataDirSource(data).locate(bad, "validation")
            if hit is not None:
                hit.load()
    ok = DataDirSource(data).locate(cfg, "validation")
    assert ok is not None and "SuperGLUE/COPA/val.jsonl" in ok.where


# ---------------------------------------------------------------- 5. impossible log-probs are refused


def test_impossible_logprob_rule() -> None:
    from cfbench.requests import impossible_logprob

    assert impossible_logprob(-3.2, 4) is None and impossible_logprob(0.0, 0) is None
    assert impossible_logprob(2e-4, 1) is None  # a low-precision log-softmax may round a hair above 0
    for bad in (5.0, 95.0, 0.01, float("inf")):
        assert impossible_logprob(bad, 3) is not None
    assert impossible_logprob(float("nan"), 3) == "not finite"


def _copa_task(tmp_path: Path):  # -> Task
    from cfbench.data import default_sources
    from cfbench.tasks.registry import get_task

    data = tmp_path / "data" / "copa"
    data.mkdir(parents=True, exist_ok=True)
    (data / "validation.jsonl").write_text(
        '{"premise": "p", "choice1": "a", "choice2": "b", "question": "cause", "label": 0}\n')
    return get_task("copa", sources=default_sources(tmp_path / "data"))


@pytest.mark.parametrize("bad", [5.0, 0.5, float("nan"), float("-inf")])
def test_task_score_refuses_a_log_prob_above_zero_or_not_finite(tmp_path: Path, bad: float) -> None:
    from cfbench.requests import LoglikResult

    task = _copa_task(tmp_path)
    (inst,) = task.instances(limit=1)
    good = [LoglikResult(-1.0, False, 1) for _ in inst.requests]
    task.score(inst, good)
    results = [*good[:-1], LoglikResult(bad, False, 1)]
    with pytest.raises(CfbenchError, match="log-prob"):
        task.score(inst, results)


class _PlusFiveServer:
    """An OpenAI-compatible /v1/completions whose every token log-prob is +5.0 (the probe's server)."""

    @staticmethod
    def start() -> tuple[str, object]:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = json.dumps({"data": [{"id": "fake", "max_model_len": 512}]})
                self.send_response(200)
                self.end_headers()
                self.wfile.write(body.encode())

            def do_POST(self) -> None:
                req = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
                lps = [None] + [5.0 for _ in req["prompt"][1:]]
                body = json.dumps({"choices": [{"logprobs": {"token_logprobs": lps,
                                                             "top_logprobs": [None] + [{"x": 5.0}] * (len(lps) - 1)}}]})
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.end_headers()
                self.wfile.write(body.encode())

            def log_message(self, *args: object) -> None:
                pass

        httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{httpd.server_address[1]}/v1", httpd


def test_openai_server_returning_positive_log_probs_stores_nothing(tiny_model: Path, tmp_path: Path) -> None:
    from cfbench.engine import evaluate

    _copa_task(tmp_path)
    url, httpd = _PlusFiveServer.start()
    try:
        with pytest.raises(CfbenchError, match="above 0"):
            evaluate(str(tiny_model), tasks=["copa"], suite=None, backend="openai", backend_options={"base_url": url},
                     data_dir=tmp_path / "data", results=tmp_path / "r", progress=False)  # fmt: skip
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert not (tmp_path / "r").exists() or ResultStore(tmp_path / "r").runs().empty


# ---------------------------------------------------------------- 3. bootstrap replicate counts


@pytest.mark.parametrize(("n_boot", "confidence"), [(-5, 0.95), (1, 0.95), (2, 0.95), (39, 0.95), (150, 0.99),
                                                    (2.5, 0.95), ("100", 0.95), (True, 0.95)])  # fmt: skip
def test_too_few_or_bad_bootstrap_counts_are_refused(n_boot: object, confidence: float) -> None:
    from cfbench.comparison.boot import check_n_boot

    with pytest.raises(CfbenchError, match="--n-boot") as err:
        check_n_boot(n_boot, confidence)
    assert "2000" in str(err.value)


@pytest.mark.parametrize(("n_boot", "confidence"), [(0, 0.95), (40, 0.95), (2000, 0.95), (200, 0.99), (0, 0.99)])
def test_enough_bootstrap_replicates_or_none_pass(n_boot: int, confidence: float) -> None:
    from cfbench.comparison.boot import check_n_boot

    assert check_n_boot(n_boot, confidence) == n_boot


@pytest.mark.parametrize("n_boot", [-5, 1, 10])
def test_compare_refuses_the_count_before_scoring(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, n_boot: int) -> None:
    from cfbench.comparison import compare

    def must_not_score(*a: object, **k: object) -> None:
        raise AssertionError("scored before the bootstrap count was checked")

    monkeypatch.setattr("cfbench.comparison.pipeline.resolve_runs", must_not_score)
    with pytest.raises(CfbenchError, match="bootstrap replicates"):
        compare("smollm2-135m", ["smollm2-135m-instruct"], results=tmp_path, n_boot=n_boot)


@pytest.mark.parametrize(("n_boot", "needle"), [(0, "--n-boot 0 computes none"), (1, "at least 40"),
                                                (-5, "at least 40"), (100, "at least 200")])  # fmt: skip
def test_regress_refuses_a_gate_without_a_usable_ci_before_scoring(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, n_boot: int, needle: str
) -> None:
    from cfbench.comparison import regress

    def must_not_score(*a: object, **k: object) -> None:
        raise AssertionError("scored before the bootstrap count was checked")

    import sys

    monkeypatch.setattr(sys.modules["cfbench.comparison.gate"], "compare", must_not_score)
    significance = 0.01 if n_boot == 100 else 0.05
    with pytest.raises(CfbenchError, match=needle):
        regress("a", "b", max_drop=["AVG=1"], n_boot=n_boot, significance=significance, results=tmp_path)


def test_gate_without_ci_on_an_item_level_baseline_names_n_boot_not_task_level() -> None:
    import numpy as np

    from cfbench.comparison import Budget, gate

    base = np.r_[np.ones(80), np.zeros(20)]
    tuned = base.copy()
    tuned[:30] = 0
    items = pd.concat([pd.DataFrame({"run": r, "task": "boolq", "doc_id": np.arange(100), "subset": None, "score": s})
                       for r, s in (("base", base), ("tuned", tuned))], ignore_index=True)  # fmt: skip
    report = build_report("base", ["tuned"], {"R": ["boolq"]}, items=items, n_boot=0)
    (line,) = gate(report, [Budget("R", 1.0)], 0.05)
    assert line.failed and "--n-boot 0" in line.reason and "task-level" not in line.reason


# ---------------------------------------------------------------- 6. argument values that ran something else


def _plan(**kw: object) -> None:
    """``plan_evaluation`` of a checkpoint that does not exist: an argument error must come first."""
    from cfbench.engine import plan_evaluation

    plan_evaluation("/nonexistent/checkpoint", **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("k", [-1, -297, 1.5, True])
def test_negative_or_non_integer_num_fewshot_is_refused_before_the_checkpoint(tmp_path: Path, k: object) -> None:
    with pytest.raises(CfbenchError, match="--num-fewshot must be 0 or more"):
        _plan(tasks=["copa"], num_fewshot=k, results=tmp_path)


def test_task_instances_refuse_a_negative_shot_count(tmp_path: Path) -> None:
    task = _copa_task(tmp_path)
    with pytest.raises(CfbenchError, match="--num-fewshot must be 0 or more"):
        task.instances(limit=1, num_fewshot=-1)


@pytest.mark.parametrize("tasks", [[""], [",", " "], "", " , "])
def test_tasks_naming_no_task_is_refused_not_the_whole_suite(tmp_path: Path, tasks: object) -> None:
    from cfbench.tasks.registry import resolve_task_names

    with pytest.raises(CfbenchError, match="names no task"):
        _plan(tasks=tasks, results=tmp_path)
    with pytest.raises(CfbenchError, match="names no task"):
        resolve_task_names("paper", tasks)  # type: ignore[arg-type]


def _cli(*args: str) -> tuple[int, str]:
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-m", "cfbench", *args], capture_output=True, text=True, timeout=300)
    lines = [x for x in res.stderr.splitlines() if x.strip() and not x.startswith("[cfbench]")]
    assert "Traceback" not in res.stderr and len(lines) == 1, res.stderr
    return res.returncode, lines[0]


def test_cli_eval_with_empty_tasks_is_one_line(tmp_path: Path) -> None:
    rc, line = _cli("eval", "/nonexistent/ckpt", "--tasks", "", "--results", str(tmp_path / "r"))
    assert rc == 2 and "names no task" in line
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("labels", [["", ""], ["base", " "], [" ", "tuned"]])
def test_blank_labels_are_refused_before_scoring(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 labels: list[str]) -> None:  # fmt: skip
    from cfbench.comparison import compare

    def must_not_score(*a: object, **k: object) -> None:
        raise AssertionError("scored before the labels were checked")

    monkeypatch.setattr("cfbench.comparison.pipeline.resolve_runs", must_not_score)
    with pytest.raises(CfbenchError, match="is empty; give every run a name"):
        compare("a", ["b"], labels=labels, results=tmp_path)


def test_cli_compare_labels_comma_is_one_line(tmp_path: Path) -> None:
    rc, line = _cli("compare", "a", "b", "--labels", ",", "--results", str(tmp_path / "r"))
    assert rc == 2 and "is empty" in line


@pytest.mark.parametrize(("backend", "opts", "listed"), [
    ("hf", {"bogus_key": 1}, "batch_size, batch_tokens, dense_limit"),
    ("hf", {"batchsize": 16, "dtype": "float32"}, "trust_remote_code"),
    ("openai", {"base_url": "http://x/v1", "concurency": 8}, "api_key, base_url"),
])  # fmt: skip
def test_unknown_model_args_are_refused_with_the_backend_s_keys(backend: str, opts: dict, listed: str) -> None:
    from cfbench.backends import check_backend_options

    with pytest.raises(CfbenchError, match=f"not an option of the {backend} backend") as err:
        check_backend_options(backend, opts)
    assert listed in str(err.value) and sorted(set(opts) - {"dtype", "base_url"})[0] in str(err.value)


def test_known_model_args_pass() -> None:
    from cfbench.backends import check_backend_options

    check_backend_options("hf", {"dtype": "float32", "batch_size": 8, "max_length": 2048, "device": "cpu"})
    check_backend_options("openai", {"dtype": "bfloat16", "base_url": "http://x/v1", "concurrency": 2, "model": "m"})


def test_unknown_model_args_stop_eval_compare_and_ppl_before_the_checkpoint(tmp_path: Path) -> None:
    from cfbench.comparison import compare
    from cfbench.probes.ppl import measure_ppl

    opts = {"dtype": "float32", "bogus_key": 1}
    with pytest.raises(CfbenchError, match="bogus_key: not an option of the hf backend"):
        _plan(tasks=["copa"], backend_options=opts, results=tmp_path)
    with pytest.raises(CfbenchError, match="bogus_key: not an option of the hf backend"):
        compare("/nonexistent/a", ["/nonexistent/b"], results=tmp_path,
                eval_kwargs={"backend": "hf", "backend_options": opts})  # fmt: skip
    with pytest.raises(CfbenchError, match="bogus_key: not an option of the hf backend"):
        measure_ppl("/nonexistent/a", data="lambada", backend_options=opts, results=tmp_path)


# ---------------------------------------------------------------- 13. a dangling symlink among the store's parts


@pytest.mark.parametrize("table", ["runs", "task_scores"])
def test_dangling_symlink_part_is_named_with_the_repair_not_a_traceback(tmp_path: Path, table: str) -> None:
    from cfbench.store import RunRecord, TaskScore
    from cfbench.store.check import check_store, move_aside

    store = ResultStore(tmp_path)
    store.append_run(RunRecord(name="a", checkpoint_name="a"), [TaskScore(task="copa", metric="acc", value=0.5)])
    link = tmp_path / table / "part-zzzz-dangling.parquet"
    link.symlink_to(tmp_path / "gone.parquet")
    first = (lambda s: s.runs()) if table == "runs" else (lambda s: s.task_scores())
    for read in (first, lambda s: s.compact()):
        with pytest.raises(CfbenchError) as err:
            read(ResultStore(tmp_path))
        assert str(link) in str(err.value) and "does not exist" in str(err.value) and "store check" in str(err.value)
    (bad,) = check_store(tmp_path)
    move_aside(tmp_path, [bad])
    assert ResultStore(tmp_path).runs()["name"].tolist() == ["a"]


def test_cfbench_runs_with_a_dangling_part_is_one_line(tmp_path: Path) -> None:
    from cfbench.store import RunRecord

    ResultStore(tmp_path).append_run(RunRecord(name="a", checkpoint_name="a"), [])
    (tmp_path / "runs" / "part-dangling.parquet").symlink_to(tmp_path / "nowhere")
    rc, line = _cli("runs", "--results", str(tmp_path))
    assert rc == 2 and "part-dangling.parquet" in line and "store check" in line


# ---------------------------------------------------------------- 10 (+16 span). landscape grid and span


@pytest.mark.parametrize(("grid", "span", "needle"), [
    (4, 0.5, "must be an odd number"), (10, 0.5, "must be an odd number"), (2, 0.5, "must be an odd number"),
    (1, 0.5, "must be an odd number"), (-3, 0.5, "must be an odd number"),
    (5, float("nan"), "positive finite"), (5, float("inf"), "positive finite"), (5, -0.1, "positive finite"),
])  # fmt: skip
def test_landscape_refuses_even_grids_and_bad_spans_before_any_model_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, grid: int, span: float, needle: str
) -> None:
    import cfbench.analysis.run as run

    def must_not_load(*a: object, **k: object) -> None:
        raise AssertionError("a model was loaded before the grid was checked")

    monkeypatch.setattr(run, "load_model", must_not_load)
    settings = run.LandscapeSettings(grid=grid, span=span)
    with pytest.raises(CfbenchError, match=needle):
        run.landscape(["smollm2-135m"], settings=settings, interpolate_from="smollm2-135m", results=tmp_path)


def test_odd_grid_has_theta0_at_its_centre() -> None:
    from cfbench.analysis.landscape import grid_axis

    for grid in (3, 5, 11):
        axis = grid_axis(grid, 0.5)
        assert axis[grid // 2] == 0.0 and len(axis) == grid


# ---------------------------------------------------------------- 16. hints name the right flag (values first)


@pytest.mark.parametrize(("field", "value", "flag"), [
    ("rho", float("inf"), "--rho"), ("rho", float("nan"), "--rho"), ("lr", float("inf"), "--lr"),
    ("warmup", float("inf"), "--warmup"), ("weight_decay", float("inf"), "--weight-decay"),
    ("weight_decay", float("nan"), "--weight-decay"),
])  # fmt: skip
def test_finetune_non_finite_hyperparameters_name_their_own_flag(field: str, value: float, flag: str) -> None:
    from cfbench.train.finetune import FinetuneRequest, check_request

    req = FinetuneRequest(base="smollm2-135m", data="x.jsonl", out="out", optimizer="sam", **{field: value})
    with pytest.raises(CfbenchError) as err:
        check_request(req)
    assert str(err.value).startswith(f"{flag} must be") and "--lr (now" not in str(err.value)


# ---------------------------------------------------------------- 9. merge refuses NaN inputs


def _nan_copy(src: Path, dst: Path, value: float = float("nan")) -> Path:
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    sd = load_file(dst / "model.safetensors")
    name = sorted(sd)[-1]
    sd[name] = sd[name].clone()
    sd[name].view(-1)[0] = value
    save_file(sd, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


@pytest.mark.parametrize(("bad_side", "value"), [("tuned", float("nan")), ("base", float("nan")),
                                                 ("tuned", float("inf"))])  # fmt: skip
def test_merge_refuses_non_finite_inputs_and_writes_nothing(tiny_model: Path, tmp_path: Path, bad_side: str,
                                                            value: float) -> None:  # fmt: skip
    from cfbench.train.merge import merge

    bad = _nan_copy(tiny_model, tmp_path / "bad", value)
    base, tuned = (bad, tiny_model) if bad_side == "base" else (tiny_model, bad)
    with pytest.raises(CfbenchError, match=f"checkpoint {bad_side} .*non-finite.*merge with it would be non-finite"):
        merge(base, tuned, 0.5, tmp_path / "merged")
    assert not (tmp_path / "merged").exists()


# ---------------------------------------------------------------- 4. held-out documents never come back as rehearsal


@pytest.mark.parametrize("rehearsal_kind", ["same_file", "json_copy_plus_others"])
def test_heldout_documents_are_removed_from_rehearsal(tiny_model: Path, tmp_path: Path, rehearsal_kind: str) -> None:
    from cfbench.train.finetune import FinetuneRequest, encode_train_set, load_inputs
    from cfbench.train.indomain import example_hash

    records = [{"instruction": f"what is {i} plus {i}?", "input": "", "output": f"{2 * i}"} for i in range(40)]
    data = tmp_path / "task.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    if rehearsal_kind == "same_file":
        reh = data
    else:  # the same documents in another format (a JSON array), among other documents
        reh = tmp_path / "general.json"
        others = [{"instruction": f"name colour {i}", "input": "", "output": "blue"} for i in range(20)]
        reh.write_text(json.dumps(records + others))
    req = FinetuneRequest(base=str(tiny_model), data=data, out=tmp_path / "out", rehearsal=reh, heldout=8,
                          rehearsal_ratio=0.5)  # fmt: skip
    inputs = load_inputs(req)
    held = set(inputs.split.hashes)
    assert inputs.reh_heldout_removed == 8 and inputs.hyper["rehearsal_heldout_removed"] == 8
    assert not held & {example_hash(ex) for ex in inputs.reh_data.examples}
    train = encode_train_set(req, inputs)
    assert not held & {example_hash(ex) for ex in train.examples}  # not in the mixed training set either


def test_rehearsal_of_only_heldout_documents_is_refused(tiny_model: Path, tmp_path: Path) -> None:
    from cfbench.train.data import load_data
    from cfbench.train.finetune import FinetuneRequest, load_inputs
    from cfbench.train.indomain import split_data

    records = [{"instruction": f"q{i}", "input": "", "output": f"a{i}"} for i in range(20)]
    data = tmp_path / "task.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    _, split = split_data(load_data(data), 4, 0)
    held = [r for r in records if any(ex.messages[0][1].startswith(r["instruction"]) and
                                      ex.messages[-1][1] == r["output"] for ex in split.examples)]  # fmt: skip
    assert len(held) == 4
    reh = tmp_path / "reh.jsonl"  # exactly the 4 documents that seed 0 holds out
    reh.write_text("".join(json.dumps(r) + "\n" for r in held))
    req = FinetuneRequest(base=str(tiny_model), data=data, out=tmp_path / "out", rehearsal=reh, heldout=4)
    with pytest.raises(CfbenchError, match="is one of the held-out documents"):
        load_inputs(req)


# ---------------------------------------------------------------- 15. Ctrl-C says what was kept and how to resume


@pytest.mark.parametrize(("argv", "needles"), [
    (["eval", "m", "--results", "R"], ["kept in the results store R", "rerun the same command to resume"]),
    (["compare", "a", "b"], ["results store results", "not scored again"]),
    (["pair", "b", "--data", "d", "--out", "O"], ["under O", "finished runs are reused"]),
    (["finetune", "b", "--data", "d", "--out=O"], ["O was left as it was", "whole or not at all"]),
    (["leaderboard"], ["nothing was written"]),
])  # fmt: skip
def test_interrupt_note_names_what_was_kept(argv: list[str], needles: list[str]) -> None:
    from cfbench.cli.interrupt import interrupt_note

    note = interrupt_note(argv)
    assert note.startswith("interrupted: ") and all(n in note for n in needles), note


def test_ctrl_c_exits_130_with_the_note(tmp_path: Path) -> None:
    import subprocess
    import sys

    code = ("import sys, cfbench.engine as e\n"
            "def stop(*a, **k):\n    raise KeyboardInterrupt\n"
            "e.plan_evaluation = stop\n"
            "from cfbench.cli import main\n"
            f"sys.argv = ['cfbench', 'eval', 'x', '--tasks', 'copa', '--results', {str(tmp_path)!r}]\n"
            "main()\n")  # fmt: skip
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 130, res.stderr
    assert f"is kept in the results store {tmp_path}; rerun the same command to resume" in res.stderr
    assert "Traceback" not in res.stderr


# ---------------------------------------------------------------- 17. data that trains on nothing, scores that vanish


@pytest.mark.parametrize(("name", "text"), [
    ("alpaca.jsonl", "".join(json.dumps({"instruction": f"q{i}", "input": "", "output": ""}) + "\n" for i in range(5))),
    ("blank.json", json.dumps([{"instruction": "q", "input": "", "output": "  \n"}] * 3)),
    ("chat.jsonl", json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}]})
     + "\n"),
])  # fmt: skip
def test_data_whose_every_response_is_empty_is_refused(tmp_path: Path, name: str, text: str) -> None:
    from cfbench.train.data import load_data

    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(CfbenchError, match=r"every response .* is empty"):
        load_data(path)
    ok = tmp_path / "ok.jsonl"  # one non-empty response is enough to learn from
    ok.write_text("".join(json.dumps({"instruction": "q", "input": "", "output": o}) + "\n" for o in ("", "a")))
    load_data(ok)


@pytest.mark.parametrize("bad", ["NaN", "N/A"])
def test_lmeval_results_with_a_nan_score_are_refused_not_dropped(tmp_path: Path, bad: str) -> None:
    from cfbench.importers import import_lmeval

    src = Path(__file__).parent / "fixtures" / "imports" / "lmeval" / "org__tiny-sft"
    (results_file,) = sorted(src.glob("results_*.json"))
    doc = json.loads(results_file.read_text())
    task = next(t for t, e in doc["results"].items() if "acc,none" in e)
    doc["results"][task]["acc,none"] = float("nan") if bad == "NaN" else bad
    one = tmp_path / "lm" / results_file.name
    one.parent.mkdir()
    one.write_text(json.dumps(doc))
    with pytest.raises(CfbenchError, match=f"task {task}'s acc is .*not a number"):
        import_lmeval(one, "x", ResultStore(tmp_path / "r"))
    assert not (tmp_path / "r").exists() or ResultStore(tmp_path / "r").runs().empty


# ------------------------------------------------ 8. weights swapped in place are not taken as the old ones


@pytest.mark.parametrize("how", ["in_place", "replaced_by_copy"])
def test_hash_cache_sees_same_size_weights_with_restored_mtime(tmp_path: Path, how: str) -> None:
    import os
    import shutil
    import time

    from cfbench.models.hashing import HashCache

    f = tmp_path / "model.safetensors"
    f.write_bytes(b"A" * 4096)
    st = f.stat()
    cache = HashCache(tmp_path / "hashes.json")
    old = cache.file_sha256(f)
    cache.save()
    time.sleep(0.01)
    if how == "in_place":
        with open(f, "r+b") as fh:
            fh.write(b"B" * 4096)
    else:
        other = tmp_path / "other"
        other.write_bytes(b"B" * 4096)
        shutil.copy(other, tmp_path / "swap")
        os.replace(tmp_path / "swap", f)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))  # the mtime as it was: size and mtime both match
    assert f.stat().st_size == st.st_size and f.stat().st_mtime_ns == st.st_mtime_ns
    assert HashCache(tmp_path / "hashes.json").file_sha256(f) != old  # a later run, from the saved cache
    assert cache.file_sha256(f) != old  # and this process's own cache
    cache.save()
    assert HashCache(tmp_path / "hashes.json").file_sha256(f) == cache.file_sha256(f)  # and it is remembered


# ------------------------------------------------ 3. --n-boot 0: no CIs and no stars on any row, in any format


def _strong_drop_report(n_boot: int):  # -> ComparisonReport
    """boolq: 30 of 100 correct items flip to wrong (McNemar p ~ 1e-9), copa unchanged."""
    import numpy as np

    base = np.r_[np.ones(80), np.zeros(20)]
    tuned = base.copy()
    tuned[:30] = 0
    frames = [pd.DataFrame({"run": r, "task": t, "doc_id": np.arange(100), "subset": None, "score": s})
              for t in ("boolq", "copa") for r, s in (("base", base), ("tuned", tuned if t == "boolq" else base))]
    return build_report("base", ["tuned"], {"R": ["boolq", "copa"]}, items=pd.concat(frames, ignore_index=True),
                        n_boot=n_boot)  # fmt: skip


def test_n_boot_zero_stars_no_task_row_in_any_format() -> None:
    from cfbench.report.html import to_html
    from cfbench.report.render import to_markdown

    starred = _strong_drop_report(200)
    (row,) = [t for t in starred.base_comparisons[0].tasks if t.task == "boolq"]
    assert row.significant  # the same data with CIs is starred: the rule, not the data, removes the star
    report = _strong_drop_report(0)
    cmp = report.base_comparisons[0]
    assert not any(t.significant for t in cmp.tasks)
    assert not any(report.aggregate_significant(a) for a in [*cmp.categories.values(), cmp.avg])
    assert all(t.ci is None for t in cmp.tasks)
    md = to_markdown(report)
    assert "-30.00 |" in md and "-30.00*" not in md and "-15.00*" not in md
    assert "untested: --n-boot 0" in md and "no item-level scores" not in md  # the summary's reason is the rule
    assert '"significant": true' not in report_to_json(report)
    rows = [r for r in csv.DictReader(io.StringIO(report_to_csv(report))) if r["section"] == "delta"]
    assert rows and {r["significant"] for r in rows} == {"False"} and {r["ci_low"] for r in rows} == {""}
    html = to_html(report)
    assert ">-30.00</td>" in html and "-30.00*" not in html and 'class="r sig-neg"' not in html


# ------------------------------------------------ 7. a deleted items part is named, not compared around


def _item_frame(key: str, run_id: str | None, task: str, doc_ids: list[int], correct: list[bool]) -> pd.DataFrame:
    return pd.DataFrame({"cache_key": key, "run_id": run_id, "task": task, "task_hash": "t", "doc_id": doc_ids,
                         "gold": 0, "pred": [0 if c else 1 for c in correct], "acc": [float(c) for c in correct],
                         "logprobs": [[-1.0, -2.0]] * len(doc_ids), "n_tokens": [[1, 1]] * len(doc_ids),
                         "is_greedy": [[True, False]] * len(doc_ids)})  # fmt: skip


def _two_run_store(root: Path, limit: int | None = None) -> dict[str, list[Path]]:
    """Runs base and tuned on boolq and copa (40 items each), each task's items in two parts as the engine
    writes them (chunks); with ``limit`` the runs cover the first ``limit`` documents (``extra.doc_ids``).
    Returns each run's items parts in the order written."""
    from cfbench.store import RunRecord, TaskScore

    store, parts = ResultStore(root), {}
    for name, flip in (("base", 0), ("tuned", 10)):
        run = RunRecord(name=name, checkpoint_name=name, checkpoint_hash=name, suite="offline", limit=limit)
        if limit is not None:
            run.extra["doc_ids"] = {t: list(range(limit)) for t in ("boolq", "copa")}
        before = set((root / "items").glob("part-*.parquet"))
        scores = []
        for task in ("boolq", "copa"):
            key = f"k:{name}:{task}"
            correct = [i >= flip for i in range(40)]
            for lo, hi in ((0, 20), (20, 40)):  # two chunks, two parts
                store.append_items(_item_frame(key, None, task, list(range(lo, hi)), correct[lo:hi]))
            n = limit or 40
            scores.append(TaskScore(task=task, metric="acc", value=sum(correct[:n]) / n, n_items=n, cache_key=key))
        store.append_run(run, scores)
        parts[name] = sorted(set((root / "items").glob("part-*.parquet")) - before)
    return parts


@pytest.mark.parametrize(("limit", "which"), [(None, 0), (None, 3), (30, 1), (30, 2)])
def test_store_check_names_a_run_whose_items_part_was_deleted(tmp_path: Path, limit: int | None, which: int) -> None:
    from cfbench.store.check import check_store, missing_items

    parts = _two_run_store(tmp_path, limit)
    assert missing_items(tmp_path) == []
    parts["tuned"][which].unlink()  # boolq 0-19, boolq 20-39, copa 0-19, copa 20-39
    task = "boolq" if which < 2 else "copa"
    expected = limit or 40
    stored = expected - 20 if limit is None or which % 2 == 0 else expected - (limit - 20)
    assert check_store(tmp_path) == []  # every remaining part is readable: the parts check cannot see it
    (short,) = missing_items(tmp_path)
    assert (short.run, short.task, short.stored, short.expected) == ("tuned", task, stored, expected)
    line = short.message(tmp_path)
    assert "\n" not in line and "run 'tuned'" in line and f"scored {expected} {task} items but only {stored}" in line
    assert str(tmp_path / "items") in line and "cfbench eval" in line
    rc, out = _check_cli(tmp_path)
    assert rc == 1 and f"scored {expected} {task} items but only {stored}" in out and "all parts readable" not in out


def _check_cli(root: Path) -> tuple[int, str]:
    app = typer.Typer()
    store_cmds.register(app)
    res = CliRunner().invoke(app, ["store", "check", "--results", str(root)])
    return res.exit_code, res.output


def test_a_deleted_items_part_stops_compare_and_regress_in_one_line(tmp_path: Path) -> None:
    from cfbench.comparison import compare, regress

    parts = _two_run_store(tmp_path)
    ok = compare("base", ["tuned"], suite="offline", results=tmp_path, n_boot=50)
    assert ok.report.base_comparisons[0].avg.ci is not None
    assert _check_cli(tmp_path) == (0, f"{tmp_path}: all parts readable, every run's items present\n")
    parts["base"][2].unlink()  # base's copa 0-19
    for call in (lambda: compare("base", ["tuned"], suite="offline", results=tmp_path, n_boot=50),
                 lambda: regress("base", "tuned", max_drop=["AVG=1"], n_boot=50, suite="offline", results=tmp_path)):
        with pytest.raises(CfbenchError, match=r"run 'base' .* scored 40 copa items but only 20 are stored") as err:
            call()
        assert "\n" not in str(err.value)
    rc, line = _cli("compare", "base", "tuned", "--suite", "offline", "--n-boot", "50", "--results", str(tmp_path))
    assert rc == 2 and "scored 40 copa items but only 20" in line


def test_check_fix_moves_a_bad_items_part_then_names_the_runs_that_lost_items(tmp_path: Path) -> None:
    parts = _two_run_store(tmp_path)
    parts["tuned"][1].write_bytes(b"not parquet")
    app = typer.Typer()
    store_cmds.register(app)
    res = CliRunner().invoke(app, ["store", "check", "--results", str(tmp_path), "--fix"])
    assert res.exit_code == 1 and "moved 1 bad part(s)" in res.output
    assert "run 'tuned'" in res.output and "scored 40 boolq items but only 20" in res.output


def test_task_level_imports_and_complete_runs_are_not_short(tmp_path: Path) -> None:
    from cfbench.importers import import_lmeval
    from cfbench.store.check import missing_items

    src = Path(__file__).parent / "fixtures" / "imports" / "lmeval" / "org__tiny-sft"
    import_lmeval(src, "sft", ResultStore(tmp_path))  # items from lm-eval's samples files
    summary = tmp_path / "summary.csv"
    summary.write_text("dataset,version,metric,mode,m\nBoolQ,314797,accuracy,ppl,61.25\n")
    import_opencompass(summary, ResultStore(tmp_path))  # task-level only: no items to miss
    assert missing_items(tmp_path) == []


# ------------------------------------------------ 14. temps of killed writers are removed, wherever they were


def _killed_save(out: Path, cache: Path) -> Path:
    """A process that is kill -9-ed in the middle of an atomic save into ``out``; returns the temp it left."""
    import os
    import subprocess
    import sys

    code = ("import os, sys\nfrom pathlib import Path\nfrom cfbench.train._io import atomic_dir\n"
            "with atomic_dir(Path(sys.argv[1])) as tmp:\n"
            "    (tmp / 'model.safetensors').write_bytes(b'0' * 4096)\n    os.kill(os.getpid(), 9)\n")  # fmt: skip
    res = subprocess.run([sys.executable, "-c", code, str(out)], env={**os.environ, "CFBENCH_CACHE": str(cache)},
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert res.returncode == -9, res.stderr
    (left,) = [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.tmp-pid")]
    assert (left / "model.safetensors").exists()
    return left


def test_a_killed_save_s_temp_is_removed_by_a_later_save_into_another_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cfbench.train._io import atomic_dir

    monkeypatch.setenv("CFBENCH_CACHE", str(tmp_path / "cache"))
    left = _killed_save(tmp_path / "runs-a" / "ft", tmp_path / "cache")
    with atomic_dir(tmp_path / "runs-b" / "merged") as tmp:  # another --out, in another folder
        (tmp / "config.json").write_text("{}")
    assert not left.exists() and (tmp_path / "runs-b" / "merged" / "config.json").exists()
    assert list((tmp_path / "cache" / "writers").iterdir()) == []  # its ledger entry went with it, and ours


def test_the_writers_ledger_deletes_only_a_dead_writer_s_own_temp(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    import os
    import subprocess
    import sys

    from cfbench.fsutil import sweep_dead_writers

    monkeypatch.setenv("CFBENCH_CACHE", str(tmp_path / "cache"))
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)  # fmt: skip
    ledger = tmp_path / "cache" / "writers"
    ledger.mkdir(parents=True)
    keep = [tmp_path / "precious", tmp_path / f".x.tmp-pid{dead + 1}-abc", tmp_path / f".y.tmp-pid{os.getppid()}-abc"]
    for i, p in enumerate(keep):  # not a temp; another pid's temp; a live writer's temp
        p.mkdir()
        pid = os.getppid() if i == 2 else dead
        (ledger / f"{pid}-{i}").write_text(str(p))
    gone = tmp_path / f".z.tmp-pid{dead}-abc"
    gone.mkdir()
    (ledger / f"{dead}-9").write_text(str(gone))
    assert sweep_dead_writers() == [gone]
    assert not gone.exists() and all(p.exists() for p in keep)


def test_store_check_lists_and_fix_deletes_a_dead_writer_s_temp_part(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    _two_run_store(tmp_path)
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)  # fmt: skip
    stale = tmp_path / "items" / f".tmp-pid{dead}-0123abcd.partial"
    stale.write_bytes(b"PAR1 half a part")
    live = tmp_path / "items" / f".tmp-pid{os.getppid()}-4567abcd.partial"  # a writer still at work
    live.write_bytes(b"PAR1 being written")
    rc, out = _check_cli(tmp_path)
    assert rc == 1 and str(stale) in out and str(live) not in out and stale.exists()
    app = typer.Typer()
    store_cmds.register(app)
    res = CliRunner().invoke(app, ["store", "check", "--results", str(tmp_path), "--fix"])
    assert res.exit_code == 0 and "deleted 1 temp(s)" in res.output, res.output
    assert not stale.exists() and live.exists()
    stale.write_bytes(b"PAR1 again")
    ResultStore(tmp_path).compact()  # compact removes it at once too (not only after an hour)
    assert not stale.exists() and live.exists()


def test_the_store_s_own_temp_names_carry_the_writer_pid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from cfbench.fsutil import tmp_writer_pid

    seen: list[str] = []
    real = os.replace

    def spy(src: object, dst: object) -> None:
        seen.append(Path(str(src)).name)
        real(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    _two_run_store(tmp_path)
    assert seen and all(tmp_writer_pid(n) == os.getpid() for n in seen)


# ------------------------------------------------ 12. output that cannot be written is refused before the work


@pytest.fixture
def readonly_dir(tmp_path: Path):  # -> Iterator[Path]
    """A folder nobody may create files in: chmod 555, or for root (whom chmod does not stop) ``chattr +i``."""
    import os
    import subprocess

    d = tmp_path / "readonly"
    d.mkdir()
    if os.geteuid() != 0:
        d.chmod(0o555)
        undo = ["chmod", "755", str(d)]
    else:
        if subprocess.run(["chattr", "+i", str(d)], capture_output=True).returncode != 0:
            pytest.skip("running as root where chattr +i is not permitted: no way to make a read-only folder")
        undo = ["chattr", "-i", str(d)]
    try:
        yield d
    finally:
        subprocess.run(undo, check=False)


def _full_disk(monkeypatch: pytest.MonkeyPatch, free: int = 1000) -> None:
    """Every file system reports ``free`` bytes left (a disk without room for a checkpoint)."""
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**12, 10**12 - free, free))


def _must_not_run(monkeypatch: pytest.MonkeyPatch, target: str, what: str) -> None:
    import importlib

    def stop(*a: object, **k: object) -> None:
        raise AssertionError(f"{what} started before the output was checked")

    module, name = target.rsplit(".", 1)
    monkeypatch.setattr(importlib.import_module(module), name, stop)  # the module, not a same-named function


def test_float32_weight_bytes_is_four_bytes_a_parameter(tiny_model: Path) -> None:
    from transformers import AutoModelForCausalLM

    from cfbench.models.checkpoint import float32_weight_bytes

    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    assert float32_weight_bytes(tiny_model) == 4 * sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("where", ["readonly", "full", "under_a_file"])
def test_merge_refuses_an_unwritable_or_full_output_before_reading_weights(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest, where: str
) -> None:
    from cfbench.train.merge import merge

    out = {"full": tmp_path / "merged", "under_a_file": tmp_path / "file" / "merged"}.get(where)
    if where == "readonly":
        out = request.getfixturevalue("readonly_dir") / "merged"
    elif where == "full":
        _full_disk(monkeypatch)
    else:
        (tmp_path / "file").write_text("x")
    _must_not_run(monkeypatch, "cfbench.train.merge.load_safetensors_folder", "merging")
    needle = {"readonly": "cannot write in", "full": "needs about", "under_a_file": "is a file, not a folder"}[where]
    with pytest.raises(CfbenchError, match=needle) as err:
        merge(tiny_model, tiny_model, 0.5, out)
    assert "\n" not in str(err.value) and str(out) in str(err.value) and not out.exists()


def test_merge_sums_the_room_of_every_alpha_on_one_disk(tiny_model: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    from cfbench.train.merge import merge_sweep

    one = (tiny_model / "model.safetensors").stat().st_size
    _full_disk(monkeypatch, free=int(one * 2.5))  # room for two merged folders, not three
    _must_not_run(monkeypatch, "cfbench.train.merge.load_safetensors_folder", "merging")
    with pytest.raises(CfbenchError, match="needs about"):
        merge_sweep(tiny_model, tiny_model, [0.25, 0.5, 0.75], tmp_path / "sweep")


@pytest.mark.parametrize("where", ["readonly", "full"])
def test_finetune_refuses_an_unwritable_or_full_output_before_training(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest, where: str
) -> None:
    from cfbench.train.finetune import finetune

    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"instruction": f"q{i}", "input": "", "output": "a"}) + "\n" for i in range(8)))
    if where == "readonly":
        out = request.getfixturevalue("readonly_dir") / "ft"
    else:
        out = tmp_path / "ft"
        _full_disk(monkeypatch, free=(tiny_model / "model.safetensors").stat().st_size)  # bf16/f32 base: f32 saved
    _must_not_run(monkeypatch, "cfbench.train.finetune.encode_train_set", "training")
    with pytest.raises(CfbenchError, match="cannot write in" if where == "readonly" else "needs about") as err:
        finetune(tiny_model, data, out, max_steps=1, batch_size=2, micro_batch=2)
    assert "--out" in str(err.value) and not out.exists()


@pytest.mark.parametrize("where", ["readonly", "full"])
def test_eval_refuses_an_unwritable_or_full_results_store_before_scoring(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest, where: str
) -> None:
    from cfbench.engine import plan_evaluation

    _copa_task(tmp_path)
    results = request.getfixturevalue("readonly_dir") / "r" if where == "readonly" else tmp_path / "r"
    if where == "full":
        _full_disk(monkeypatch)
    with pytest.raises(CfbenchError, match=r"--results .*(cannot write in|needs about)"):
        plan_evaluation(str(tiny_model), tasks=["copa"], data_dir=tmp_path / "data", results=results)
    assert not results.exists()


# ------------------------------------------------ 11. checkpoint defects: one line before any work


def _tiny_copy(tiny_model: Path, dst: Path, **config: object) -> Path:
    import shutil

    shutil.copytree(tiny_model, dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg.update(config)
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def _bin_only(tiny_model: Path, dst: Path, legacy: bool = False, nan: bool = False) -> Path:
    import shutil

    import torch
    from safetensors.torch import load_file

    shutil.copytree(tiny_model, dst)
    sd = load_file(dst / "model.safetensors")
    (dst / "model.safetensors").unlink()
    if nan:
        name = sorted(sd)[-1]
        sd[name] = sd[name].clone()
        sd[name].view(-1)[0] = float("nan")
    torch.save(sd, dst / "pytorch_model.bin", _use_new_zipfile_serialization=not legacy)
    return dst


def test_unknown_model_type_is_one_line_before_the_model_loads(tiny_model: Path, tmp_path: Path) -> None:
    from cfbench.backends.hf_load import load_causal_lm
    from cfbench.models.checkpoint import check_model_type

    bad = _tiny_copy(tiny_model, tmp_path / "m", model_type="llama9000")
    with pytest.raises(CfbenchError, match=r"model_type 'llama9000', which transformers .* does not know"):
        check_model_type(bad)
    with pytest.raises(CfbenchError, match="llama9000"):
        load_causal_lm(bad)
    check_model_type(tiny_model)
    _copa_task(tmp_path)
    rc, line = _cli("eval", str(bad), "--tasks", "copa", "--data-dir", str(tmp_path / "data"),
                    "--results", str(tmp_path / "r"))  # fmt: skip
    assert rc == 2 and "llama9000" in line and "upgrade transformers" in line
    assert not (tmp_path / "r").exists() or ResultStore(tmp_path / "r").runs().empty


def test_config_vocab_smaller_than_the_tokenizer_is_refused_at_resolution(tiny_model: Path, tmp_path: Path) -> None:
    from cfbench.models.checkpoint import resolve_checkpoint

    bad = _tiny_copy(tiny_model, tmp_path / "m", vocab_size=1000)
    with pytest.raises(CfbenchError, match=r"vocab_size 1000 but its tokenizer produces ids up to 491\d\d") as err:
        resolve_checkpoint(str(bad), cache_dir=tmp_path / "cache")
    assert "\n" not in str(err.value)
    resolve_checkpoint(str(_tiny_copy(tiny_model, tmp_path / "ok", vocab_size=49152 + 64)), cache_dir=tmp_path / "c")


@pytest.mark.parametrize("legacy", [True, False])
def test_pytorch_model_bin_only_folders_resolve_and_their_weights_are_checked(tiny_model: Path, tmp_path: Path,
                                                                               legacy: bool) -> None:  # fmt: skip
    """A .bin-only folder (torch's pre-1.6 legacy format too) loads as transformers loads it; the NaN scan
    reads it (no "mmap can only be used ..." RuntimeError) and names a bad tensor."""
    from cfbench.models.checkpoint import resolve_checkpoint
    from cfbench.models.hashing import first_bad_tensor, require_finite_weights

    good = _bin_only(tiny_model, tmp_path / "good", legacy)
    ck = resolve_checkpoint(str(good), cache_dir=tmp_path / "cache")
    require_finite_weights(ck.path, ck.content_hash, ck.name, cache_dir=tmp_path / "cache")
    assert first_bad_tensor(good) is None
    nan = _bin_only(tiny_model, tmp_path / "nan", legacy, nan=True)
    assert "(nan)" in str(first_bad_tensor(nan))


def test_a_malicious_pickle_in_an_hf_folder_is_one_line_and_never_runs(tiny_model: Path, tmp_path: Path) -> None:
    import shutil

    import torch

    from cfbench.models.checkpoint import resolve_checkpoint

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self) -> tuple[object, tuple[str, str]]:
            return (open, (str(marker), "w"))

    evil = tmp_path / "evil"
    shutil.copytree(tiny_model, evil)
    (evil / "model.safetensors").unlink()
    torch.save({"model.embed_tokens.weight": Evil()}, evil / "pytorch_model.bin")
    with pytest.raises(CfbenchError, match=r"holds more than tensors.*safetensors from a source you trust") as err:
        resolve_checkpoint(str(evil), cache_dir=tmp_path / "cache")
    assert "\n" not in str(err.value) and not marker.exists()
    (tmp_path / "doc.txt").write_text("The cat sat on the mat. " * 20)
    rc, line = _cli("ppl", str(evil), "--data", str(tmp_path / "doc.txt"), "--results", str(tmp_path / "r"))
    assert rc == 2 and "holds more than tensors" in line and not marker.exists()


@pytest.mark.parametrize("damage", ["claims_2gb", "bad_json", "truncated", "empty"])
def test_a_corrupt_raw_safetensors_with_base_is_one_line(tiny_model: Path, tmp_path: Path, damage: str) -> None:
    from cfbench.models.checkpoint import resolve_checkpoint

    raw = tmp_path / "sd.safetensors"
    good = (tiny_model / "model.safetensors").read_bytes()
    raw.write_bytes({"claims_2gb": (2 * 1024**3).to_bytes(8, "little") + good[8:],
                     "bad_json": good[:8] + b"{" * int.from_bytes(good[:8], "little") + good[8 + int.from_bytes(
                         good[:8], "little"):],
                     "truncated": good[: len(good) // 2], "empty": b""}[damage])  # fmt: skip
    with pytest.raises(CfbenchError, match=r"sd\.safetensors") as err:
        resolve_checkpoint(str(raw), base=str(tiny_model), cache_dir=tmp_path / "cache")
    assert "\n" not in str(err.value)


def test_diff_against_a_nan_checkpoint_names_the_tensor_before_any_diff(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cfbench.analysis.run import diff_checkpoints

    monkeypatch.setenv("CFBENCH_CACHE", str(tmp_path / "cache"))
    bad = _nan_copy(tiny_model, tmp_path / "bad")
    with pytest.raises(CfbenchError, match=r"checkpoint bad has non-finite .*\(tensor .*\(nan\)\)") as err:
        diff_checkpoints(str(tiny_model), [str(tiny_model), str(bad)], results=tmp_path / "r")
    assert "\n" not in str(err.value) and not (tmp_path / "r").exists()
