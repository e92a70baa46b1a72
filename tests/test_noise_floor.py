"""A noise floor that means something (issue 21, part 3): recipes, nil floors, multiples, the floor's own flips.

Stores are synthetic (no model is loaded) and built so every expected number is known by construction:
which items the floor flips, and the floor's KL written out with numpy next to the assertion.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cfbench.comparison import compare
from cfbench.comparison.runs import floor_change, floor_recipe, plan_floor
from cfbench.errors import CfbenchError
from cfbench.metrics import get_metric
from cfbench.metrics.drift import DriftSettings, _judge, drift_signals
from cfbench.metrics.floor import floor_flips
from cfbench.report.html import to_html
from cfbench.report.render import print_report, signal_text, to_csv, to_json, to_markdown
from cfbench.signals import NIL_FLOOR, FloorFlips, Signal
from cfbench.store import ResultStore, RunRecord, TaskScore

N = 30
#: (task, choices): boolq and mmlu are in AVG (Reasoning, DK); openbookqa is an extra of the offline suite.
TASKS = {"boolq": 2, "mmlu": 4, "openbookqa": 4}
#: Items the floor run flips, by construction: right → wrong (forgotten) and wrong → right (gained).
FORGOT = {"boolq": [0, 1, 2], "mmlu": [5], "openbookqa": [0, 1, 2, 3]}
GAINED = {"boolq": [25, 26], "mmlu": [], "openbookqa": []}


def _base_logprobs() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per task: log-probs (items 0-19 answered right, 20-29 wrong) and gold."""
    rng = np.random.default_rng(7)
    out = {}
    for task, k in TASKS.items():
        lp = rng.normal(-2.0, 1.0, (N, k))
        top = lp.argmax(1)
        gold = np.where(np.arange(N) < 20, top, (top + 1) % k)
        out[task] = (lp, gold)
    return out


def _floor_logprobs(lp: np.ndarray, gold: np.ndarray, task: str, scale: float) -> np.ndarray:
    """The base's log-probs sharpened by ``scale`` everywhere (the order of the choices stays, so no other
    prediction changes), and the FORGOT/GAINED items' answers flipped."""
    x = lp * scale
    for i in FORGOT[task]:  # the gold choice drops below every other
        x[i, gold[i]] = x[i].min() - 1.0
    for i in GAINED[task]:  # the gold choice rises above every other
        x[i, gold[i]] = x[i].max() + 1.0
    return x


def _append(store: ResultStore, name: str, ckpt: str, lps: dict[str, np.ndarray], gold: dict[str, np.ndarray],
            settings: dict[str, str] | None = None) -> None:  # fmt: skip
    run = RunRecord(name=name, checkpoint_name=name, checkpoint_hash=ckpt, suite="offline", backend="hf",
                    backend_settings=settings or {})  # fmt: skip
    run.extra = {"cache_keys": {t: f"k:{name}:{t}" for t in lps}}
    frames, scores = [], []
    for task, x in lps.items():
        k = x.shape[1]
        pred = x.argmax(1)
        acc = (pred == gold[task]).astype(float)
        frames.append(pd.DataFrame({
            "cache_key": f"k:{name}:{task}", "run_id": run.run_id, "task": task, "task_hash": "t",
            "doc_id": np.arange(N), "subset": "anatomy" if task == "mmlu" else None, "gold": gold[task],
            "pred": pred, "acc": acc, "acc_norm": acc, "mc1": None, "mc2": None,
            "logprobs": [list(r) for r in x], "n_tokens": [[1] * k] * N, "is_greedy": [[False] * k] * N,
            "item_hash": [f"{task}{i}" for i in range(N)],
        }))  # fmt: skip
        scores.append(TaskScore(task=task, metric="acc", value=float(acc.mean()), n_items=N,
                                cache_key=f"k:{name}:{task}"))  # fmt: skip
    store.append_run(run, scores, pd.concat(frames, ignore_index=True))


@pytest.fixture(scope="module")
def store_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """base (fp32), base-bf16 (a real floor: shifted + the flips above), base-plain (1e-9 away: nil), and 'far'."""
    root = tmp_path_factory.mktemp("floor-store")
    store = ResultStore(root)
    base = _base_logprobs()
    gold = {t: g for t, (_, g) in base.items()}
    fp32 = {"backend": "hf", "dtype": "float32", "scoring_path": "tree"}
    _append(store, "base", "B", {t: lp for t, (lp, _) in base.items()}, gold, fp32)
    rng = np.random.default_rng(1)
    floor = {t: _floor_logprobs(lp, gold[t], t, 1.05) for t, (lp, _) in base.items()}
    _append(store, "base-bf16", "B", floor, gold, {**fp32, "dtype": "bfloat16"})
    _append(store, "base-plain", "B", {t: lp + 1e-9 * rng.normal(0, 1, lp.shape) for t, (lp, _) in base.items()},
            gold, {**fp32, "scoring_path": "plain"})  # fmt: skip
    _append(store, "far", "F", {t: lp + rng.normal(0, 0.8, lp.shape) for t, (lp, _) in base.items()}, gold, fp32)
    return root


def _kl(p_lp: np.ndarray, q_lp: np.ndarray) -> np.ndarray:
    """KL(softmax p ‖ softmax q) per row, written out: Σ p (ln p − ln q)."""
    lp = p_lp - np.log(np.exp(p_lp).sum(1, keepdims=True))
    lq = q_lp - np.log(np.exp(q_lp).sum(1, keepdims=True))
    return (np.exp(lp) * (lp - lq)).sum(1)


# -- 1. the floor's own flips -----------------------------------------------------------------------
def test_floor_flips_count_right_to_wrong_and_back_over_the_tasks_in_avg() -> None:
    def items(task: str, scores: list[int]) -> pd.DataFrame:
        return pd.DataFrame({"task": task, "doc_id": range(len(scores)), "score": [float(s) for s in scores]})

    base = pd.concat([items("boolq", [1, 1, 1, 0, 0, 0, 1, 0]), items("mmlu", [1, 0, 1]), items("obqa", [1, 1])])
    floor = pd.concat([items("boolq", [1, 0, 1, 1, 0, 0, 1, 1]), items("mmlu", [0, 0, 1]), items("obqa", [0, 0])])
    total, per_task = floor_flips(base, floor, {"R": ["boolq"], "DK": ["mmlu"]}, extras=["obqa"])
    assert per_task == {"boolq": FloorFlips(1, 2, 8), "mmlu": FloorFlips(1, 0, 3), "obqa": FloorFlips(2, 0, 2)}
    assert total == FloorFlips(2, 2, 11) and total.flips == 4  # the extra obqa stays out, as in Forgotten/Gained
    partial = pd.DataFrame({"task": "boolq", "doc_id": [0, 1], "score": [0.5, 1.0]})  # no flip for partial credit
    assert floor_flips(partial, partial, {"R": ["boolq"]}) == (None, {})


def test_compare_reports_the_floors_flips_and_values_in_every_format(store_root: Path) -> None:
    res = compare("base", ["far"], suite="offline", results=store_root, n_boot=200, noise_floor="base-bf16")
    nf = res.report.noise_floor
    assert nf is not None and nf.run == "base-bf16" and nf.change == "dtype bfloat16 (base float32)"
    # By construction: boolq 3 forgotten + 2 gained, mmlu 1 forgotten; openbookqa (an extra) is not summed.
    assert nf.flips == FloorFlips(4, 2, 2 * N)
    assert nf.tasks["openbookqa"] == FloorFlips(4, 0, N) and nf.tasks["boolq"] == FloorFlips(3, 2, N)
    # The floor's overall KL is the mean of its category means (DK = mmlu, Reasoning = boolq), as AVG.
    store = ResultStore(store_root)
    lp = {r: store.items(cache_keys=[f"k:{r}:{t}" for t in ("boolq", "mmlu")]) for r in ("base", "base-bf16")}
    by_task = {t: {r: np.stack(lp[r][lp[r]["task"] == t].sort_values("doc_id")["logprobs"].map(np.array))
                   for r in lp} for t in ("boolq", "mmlu")}  # fmt: skip
    want = np.mean([_kl(by_task[t]["base"], by_task[t]["base-bf16"]).mean() for t in ("boolq", "mmlu")])
    assert nf.values["kl"] == pytest.approx(want, rel=1e-9) and not nf.nil
    md, page = to_markdown(res.report), to_html(res.report)
    console_text = _rich(res.report)
    for text in (md, page, console_text):
        assert "noise floor: base-bf16" in text  # its row in Learned vs forgot, flips under Forgotten/Gained
        assert "numerics alone flipped 4 items right→wrong and 2 wrong→right of 60" in text
    data = json.loads(to_json(res.report))
    assert data["noise_floor"]["flips"] == {"forgotten": 4, "gained": 2, "n": 60, "flips": 6}
    assert data["noise_floor"]["nil"] is False and data["noise_floor"]["values"]["kl"] == pytest.approx(want)
    frame = pd.read_csv(io.StringIO(to_csv(res.report)))
    rows = frame[frame["section"] == "noise_floor"]
    avg = rows[(rows["level"] == "avg") & rows["signal"].isna()].iloc[0]
    assert (avg["forgotten"], avg["gained"], avg["n"]) == (4, 2, 60)
    assert rows[rows["signal"] == "kl"].iloc[0]["value"] == pytest.approx(want)


def _rich(report) -> str:
    from rich.console import Console

    console = Console(file=io.StringIO(), width=400, color_system=None)
    print_report(report, console)
    return console.file.getvalue()  # type: ignore[attr-defined]


# -- 2. a numerically nil floor stars nothing --------------------------------------------------------
def test_a_nil_floor_judges_nothing() -> None:
    kl = get_metric("kl")
    sig, note, p = _judge(kl, (0.05, 0.09), 1e-11, (5e-12, 2e-11))
    assert (sig, p) == (None, None) and "numerically nil" in (note or "")
    assert _judge(kl, (0.05, 0.09), 2 * NIL_FLOOR, None)[0] is True  # just above nil: the ordinary floor rule
    assert _judge(get_metric("gold_margin"), (-0.3, -0.1), 1e-11, None)[0] is True  # a Δ never uses the floor


def test_compare_against_a_nil_floor_stars_no_divergence(store_root: Path) -> None:
    res = compare("base", ["far"], suite="offline", results=store_root, n_boot=200, noise_floor="base-plain")
    nf = res.report.noise_floor
    assert nf is not None and nf.nil and all(v < NIL_FLOOR for v in nf.values.values())
    divs = [s for s in res.report.signals["far"] if s.name in ("kl", "js")]
    assert divs and all(s.significant is None and s.floor_nil and "numerically nil" in (s.note or "") for s in divs)
    assert all(s.floor_multiple is None for s in divs)
    margin = [s for s in res.report.signals["far"] if s.name == "gold_margin"]
    assert any(s.significant is not None for s in margin)  # a signed Δ is still judged against 0
    md = to_markdown(res.report)
    assert "Noise floor base-plain, which changed scoring_path plain (base tree), is numerically nil" in md
    assert "numerically nil)" in md and "*" not in md.split("### Learned vs forgot")[1].split("|")[5]


def test_the_same_data_against_a_real_floor_does_star(store_root: Path) -> None:
    """Control for the test above: 'far' clears the bf16 floor, so only the nil rule took its star away."""
    res = compare("base", ["far"], suite="offline", results=store_root, n_boot=200, noise_floor="base-bf16")
    kl = next(s for s in res.report.signals["far"] if s.name == "kl" and s.scope == "all")
    assert kl.significant is True and not kl.floor_nil


# -- 3. each divergence as a multiple of its floor ---------------------------------------------------
def test_a_divergence_is_also_given_as_a_multiple_of_its_floor() -> None:
    s = Signal("kl", "forgot", "KL", 0.09, "nats", 100, ci=(0.08, 0.1), floor=0.0006, significant=True)
    assert s.floor_multiple == pytest.approx(150.0)
    assert signal_text(s) == "0.09* [0.08, 0.1] (150× floor 0.0006)"
    nil = Signal("kl", "forgot", "KL", 0.09, "nats", 100, ci=(0.08, 0.1), floor=9e-12)
    assert nil.floor_nil and nil.floor_multiple is None
    assert signal_text(nil) == "0.09 [0.08, 0.1] (floor 9e-12: numerically nil)"
    assert Signal("kl", "forgot", "KL", 0.09, "nats", 100).floor_multiple is None  # no floor, no multiple
    d = s.to_dict()
    assert d["floor_multiple"] == pytest.approx(150.0) and d["floor_nil"] is False


def test_compare_gives_the_multiple_in_json_and_csv(store_root: Path) -> None:
    res = compare("base", ["far"], suite="offline", results=store_root, n_boot=100, noise_floor="base-bf16")
    kl = next(s for s in res.report.signals["far"] if s.name == "kl" and s.scope == "all")
    assert kl.floor_multiple == pytest.approx(kl.value / kl.floor)
    data = json.loads(to_json(res.report))
    row = next(x for x in data["signals"]["far"] if x["name"] == "kl" and x["scope"] == "all")
    assert row["floor_multiple"] == pytest.approx(kl.value / kl.floor)
    frame = pd.read_csv(io.StringIO(to_csv(res.report)))
    sig = frame[(frame["section"] == "signal") & (frame["signal"] == "kl") & (frame["scope"] == "all")].iloc[0]
    assert sig["floor_multiple"] == pytest.approx(kl.value / kl.floor)
    assert f"{kl.value / kl.floor:.3g}× floor" in to_markdown(res.report)


# -- 4. recipes: compare re-scores the base itself ----------------------------------------------------
def test_floor_recipes_and_their_refusals(store_root: Path) -> None:
    assert floor_recipe("dtype", None).options == {"dtype": "bfloat16"}  # type: ignore[union-attr]
    assert floor_recipe("dtype", {"dtype": "bfloat16"}).options == {"dtype": "float32"}  # type: ignore[union-attr]
    assert floor_recipe("dtype:float16", None).options == {"dtype": "float16"}  # type: ignore[union-attr]
    assert floor_recipe("plain", None).options == {"scoring_path": "plain"}  # type: ignore[union-attr]
    assert floor_recipe("base-bf16", None) is None  # a stored run
    with pytest.raises(CfbenchError, match="unknown dtype 'fp8'"):
        floor_recipe("dtype:fp8", None)
    with pytest.raises(CfbenchError, match="its own dtype float32"):
        floor_recipe("dtype:float32", None)
    store = ResultStore(store_root)
    with pytest.raises(CfbenchError, match="is a stored run: pass the base as a checkpoint"):
        plan_floor("dtype", "base", store, None)
    with pytest.raises(CfbenchError, match=r"no run named 'no-such-run'.*or name a floor recipe: dtype"):
        plan_floor("no-such-run", "base", store, None)
    with pytest.raises(CfbenchError, match="not a stored run: pass `dtype`"):
        plan_floor("ckpt:smollm2-135m", "base", store, None)
    assert plan_floor("base-bf16", "base", store, None).name == "base-bf16"  # type: ignore[union-attr]
    with pytest.raises(CfbenchError, match="the openai backend cannot re-score with scoring_path=plain"):
        plan_floor("plain", "ckpt:smollm2-135m", store, {"backend": "openai"})


def test_a_recipe_that_is_also_a_run_name_is_refused(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    store.append_run(RunRecord(name="plain", checkpoint_name="x", checkpoint_hash="B"), [], pd.DataFrame())
    with pytest.raises(CfbenchError, match="ambiguous: it is a floor recipe and the stored run 'plain'"):
        plan_floor("plain", "ckpt:smollm2-135m", store, None)


def test_floor_change_names_what_differs() -> None:
    a = RunRecord(name="a", checkpoint_name="x", backend="hf", backend_settings={"dtype": "float32", "torch": "2"})
    b = RunRecord(name="b", checkpoint_name="x", backend="hf", backend_settings={"dtype": "bfloat16", "torch": "2"})
    assert floor_change(a, b) == "dtype bfloat16 (base float32)"
    assert floor_change(a, RunRecord(name="c", checkpoint_name="x")) is None  # an import: nothing to compare


def test_compare_scores_a_dtype_floor_itself(tiny_model: Path, tmp_path: Path, monkeypatch) -> None:
    """``--noise-floor dtype``: the base re-scored in bfloat16 and stored as a run, then used as the floor."""
    pytest.importorskip("transformers")
    monkeypatch.setenv("CFBENCH_CACHE", str(tmp_path / "cache"))
    res = compare(f"ckpt:{tiny_model}", [f"ckpt:{tiny_model}"], suite="offline", results=tmp_path / "r",
                  n_boot=0, noise_floor="dtype",
                  eval_kwargs={"tasks": ["boolq", "copa"], "limit": 4, "progress": "off"})  # fmt: skip
    nf = res.report.noise_floor
    assert nf is not None and nf.change == "dtype bfloat16 (base float32)"
    runs = ResultStore(tmp_path / "r").runs()
    floor_run = runs[runs["name"] == f"{tiny_model} (dtype=bfloat16)"]
    assert len(floor_run) == 1 and set(floor_run["dtype"]) == {"bfloat16"}
    assert nf.flips is not None and nf.flips.n > 0


def test_drift_signals_report_the_floors_own_values() -> None:
    """DriftResult.floor_values: the floor's overall divergence (mean of category means), empty without one."""
    def frame(lps: list[list[float]]) -> pd.DataFrame:
        return pd.DataFrame({"doc_id": range(len(lps)), "choices": [np.array(x) for x in lps], "gold": 0,
                             "rule": "acc", "item_hash": [f"h{i}" for i in range(len(lps))]})  # fmt: skip

    base = frame([[-1.0, -2.0], [0.0, 0.0]])
    floor = frame([[-2.0, -1.0], [0.0, 0.0]])  # item 0 reversed: KL = 0.4621171573 (tests/test_drift_metrics.py)
    frames = {"b": {"boolq": base}, "f": {"boolq": floor}, "t": {"boolq": floor}}
    res = drift_signals(frames, "b", ["t"], {"R": ["boolq"]}, floor="f", settings=DriftSettings(n_boot=0))
    assert res.floor_values["kl"] == pytest.approx(0.4621171573 / 2)
    assert "gold_margin" not in res.floor_values  # a signed Δ has no floor
    assert drift_signals(frames, "b", ["t"], {"R": ["boolq"]}, settings=DriftSettings(n_boot=0)).floor_values == {}


def test_compare_refuses_a_bad_floor_before_scoring(store_root: Path) -> None:
    before = len(ResultStore(store_root).runs())
    with pytest.raises(CfbenchError, match="is a stored run: pass the base as a checkpoint"):
        compare("base", ["far"], suite="offline", results=store_root, n_boot=0, noise_floor="dtype")
    with pytest.raises(CfbenchError, match="unknown dtype 'int4'"):
        compare("ckpt:smollm2-135m", ["far"], suite="offline", results=store_root, n_boot=0, noise_floor="dtype:int4")
    assert len(ResultStore(store_root).runs()) == before  # nothing was scored or written


def test_the_demo_floor_is_a_choice_checked_before_any_work() -> None:
    from cfbench.demo import DEMO_FLOORS, DemoConfig

    assert DemoConfig().floor == "dtype" and DEMO_FLOORS == ("dtype", "plain", "none")
    with pytest.raises(CfbenchError, match="--floor 'batch': choose one of dtype, plain, none"):
        DemoConfig(floor="batch").check()
