"""ComparisonReport: paper arithmetic, coverage, sub-groups, pairs, and every renderer."""

from __future__ import annotations

import io
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cfbench.errors import CfbenchError
from cfbench.report import MMLU_SUBGROUPS, build_report, detect_pairs, plot_report
from cfbench.report.html import to_html
from cfbench.report.render import print_report, report_to_frame, to_csv, to_json, to_markdown

PAPER_CATEGORIES = {
    "DK": ["mmlu"],
    "Understanding": ["race_middle", "race_high", "openbookqa_fact", "csl_dev"],
    "Reasoning": ["boolq", "ax_b", "ax_g", "rte", "copa", "hellaswag", "siqa"],
    "Exams": ["arc_challenge"],
}
TASK_ORDER = [t for members in PAPER_CATEGORIES.values() for t in members]
# OpenCompass-style summaries in percent (as OpenCompass prints them); None = not evaluated.
OC_PERCENT = {
    "base": [46.0, 40.0, 38.0, 60.0, 50.0, 70.0, 52.0, 55.0, 61.0, 67.0, 70.0, 45.0, 41.0],
    "w/o SAM": [43.0, 38.0, 35.0, 57.0, 47.0, 68.0, 50.0, 53.0, 59.0, 65.0, 69.0, 44.0, 39.0],
    "w/ SAM": [45.5, 39.5, 37.0, 59.0, None, 70.0, 51.0, 55.0, 60.0, 66.0, 70.0, 45.0, 40.5],
}


def _oc_scores() -> pd.DataFrame:
    rows = [
        {"run": run, "task": task, "value": v / 100}
        for run, values in OC_PERCENT.items()
        for task, v in zip(TASK_ORDER, values, strict=True)
        if v is not None
    ]
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def oc_report():
    return build_report("base", ["w/o SAM", "w/ SAM"], PAPER_CATEGORIES, task_scores=_oc_scores())


def _md_tables(markdown: str) -> dict[str, list[list[str]]]:
    """Markdown tables keyed by their ### title, as lists of cell lists (header first, rule dropped)."""
    tables: dict[str, list[list[str]]] = {}
    title = ""
    for line in markdown.splitlines():
        if line.startswith("### "):
            title = line[4:]
            tables[title] = []
        elif line.startswith("|") and not line.startswith("|:") and not line.startswith("|-"):
            tables[title].append([c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]])
    return tables


def test_opencompass_table_reproduces_hand_computed_numbers(oc_report) -> None:
    """Category = mean of tasks, AVG = mean of categories, Δ on tasks both runs have (2 decimals).

    base:    DK 46 | Und (40+38+60+50)/4 = 47 | Rea 420/7 = 60 | Exams 41 | AVG 194/4 = 48.50
    w/o SAM: DK 43 | Und 177/4 = 44.25 | Rea 408/7 = 58.2857 | Exams 39 | AVG 184.5357/4 = 46.1339
             Δ = 46.1339 − 48.50 = −2.3661
    w/ SAM:  csl_dev missing → Und (39.5+37+59)/3 = 45.1667 (3/4) | Rea 417/7 = 59.5714 | AVG 47.6845
             Δ vs base on the 12 common tasks: base AVG (46 + 138/3 + 60 + 41)/4 = 48.25 → −0.5655
             Δ vs w/o SAM: w/o AVG (43 + 130/3 + 58.2857 + 39)/4 = 45.9048 → +1.7798
    """
    md = _md_tables(to_markdown(oc_report))["Forgetting summary"]
    assert md[0] == ["Model", "DK", "Understanding", "Reasoning", "Exams", "AVG", "Δ", "Δ 95% CI"]
    assert md[1] == ["base", "46.00", "47.00", "60.00", "41.00", "48.50", "—", ""]
    assert md[2] == ["w/o SAM", "43.00", "44.25", "58.29", "39.00", "46.13", "-2.37", "n/a"]
    assert md[3] == ["w/ SAM", "45.50", "45.17†", "59.57", "40.50", "47.68†", "-0.57†", "n/a"]
    assert md[4] == ["Δ w/ SAM − w/o SAM", "+2.50", "+1.83†", "+1.29", "+1.50", "", "+1.78†", "n/a"]

    base_row = oc_report.row("base")
    assert base_row.avg.score == pytest.approx(0.485)
    assert oc_report.vs_base("w/o SAM").avg.delta == pytest.approx((184.535714 / 4 - 48.5) / 100, abs=1e-8)
    pair = oc_report.pair_comparisons[0]
    assert (pair.ref, pair.run) == ("w/o SAM", "w/ SAM")
    assert pair.categories["Reasoning"].delta == pytest.approx((417 - 408) / 7 / 100)
    assert oc_report.vs_base("w/ SAM").avg.delta == pytest.approx(-0.00565476, abs=1e-8)


def test_task_level_scores_have_no_item_statistics(oc_report) -> None:
    cmp = oc_report.vs_base("w/o SAM")
    row = cmp.task("boolq")
    assert row.delta == pytest.approx(-0.02)
    assert not row.item_level and row.ci is None and row.p_mcnemar is None and row.n is None
    assert not row.significant
    assert cmp.avg.ci is None and all(c.ci is None for c in cmp.categories.values())
    task_md = _md_tables(to_markdown(oc_report))["Per task: w/o SAM − base"]
    boolq = next(r for r in task_md if r[1] == "boolq")
    assert boolq == ["Reasoning", "boolq", "n/a", "70.00", "68.00", "-2.00", "n/a", "n/a", "n/a", "n/a", "n/a", "n/a"]


def test_partial_coverage_is_never_shown_as_complete(oc_report) -> None:
    row = oc_report.row("w/ SAM")
    assert row.categories["Understanding"].coverage.label == "3/4 tasks"
    assert row.categories["Understanding"].coverage.missing == ("csl_dev",)
    assert row.avg.coverage.partial and row.avg.coverage.label == "12/13 tasks"
    assert not oc_report.row("w/o SAM").avg.coverage.partial
    cmp = oc_report.vs_base("w/ SAM")
    assert cmp.avg.coverage.partial and cmp.task("csl_dev").missing
    md = to_markdown(oc_report)
    # issue 19 item 9: one coverage line per distinct (category, missing set), naming every row it applies to
    line = "† w/ SAM, w/ SAM − base, w/ SAM − w/o SAM Understanding: 3/4 tasks (missing: csl_dev)"
    assert md.count(line) == 1
    assert "csl_dev: no scores for w/ SAM; left out of Δ" in md


def test_missing_category_prints_dash_and_partial_avg() -> None:
    scores = _oc_scores()
    scores = scores[~((scores["run"] == "w/o SAM") & (scores["task"] == "arc_challenge"))]
    report = build_report("base", ["w/o SAM"], PAPER_CATEGORIES, task_scores=scores)
    row = report.row("w/o SAM")
    assert row.categories["Exams"].score is None and row.categories["Exams"].coverage.empty
    # AVG over the 3 categories it has: (43 + 44.25 + 58.2857) / 3
    assert row.avg.score == pytest.approx((43 + 44.25 + 408 / 7) / 300)
    md_row = _md_tables(to_markdown(report))["Forgetting summary"][2]
    assert md_row[4] == "—" and md_row[5].endswith("†") and md_row[6].endswith("†")
    assert report.vs_base("w/o SAM").categories["Exams"].delta is None


# -- item-level data ----------------------------------------------------------------------------------
ITEM_CATEGORIES = {"DK": ["mmlu"], "R": ["boolq", "copa"]}
SUBJECTS = {"abstract_algebra": 10, "philosophy": 4, "sociology": 0, "virology": 6}  # subject: forgotten


def _items(tuned_label: str = "tuned", drop_boolq: int = 0) -> pd.DataFrame:
    """Known flips. mmlu: 4 subjects × 100 items, base right on the first 60 of each; the tuned run
    forgets SUBJECTS[s] of those and gains 2 in abstract_algebra. boolq: 200 items, base right on 150,
    tuned forgets 30. copa: identical. truthfulqa_mc (extra, continuous): tuned = base − 0.02."""
    frames = []
    doc = 0
    for subject, forgotten in SUBJECTS.items():
        base = np.r_[np.ones(60), np.zeros(40)]
        tuned = base.copy()
        tuned[:forgotten] = 0
        if subject == "abstract_algebra":
            tuned[60:62] = 1
        ids = np.arange(doc, doc + 100)
        doc += 100
        for run, s in (("base", base), (tuned_label, tuned)):
            frames.append(pd.DataFrame({"run": run, "task": "mmlu", "doc_id": ids, "subset": subject, "score": s}))
    boolq = np.r_[np.ones(150), np.zeros(50)]
    boolq_t = boolq.copy()
    boolq_t[:30] = 0
    copa = np.tile([1.0, 0.0], 50)
    tqa = np.linspace(0.1, 0.9, 81)
    for run, b, c, t in (("base", boolq, copa, tqa), (tuned_label, boolq_t, copa, tqa - 0.02)):
        n_b = 200 - (drop_boolq if run != "base" else 0)
        frames += [
            pd.DataFrame({"run": run, "task": "boolq", "doc_id": np.arange(n_b), "subset": None, "score": b[:n_b]}),
            pd.DataFrame({"run": run, "task": "copa", "doc_id": np.arange(100), "subset": None, "score": c}),
            pd.DataFrame({"run": run, "task": "truthfulqa_mc", "doc_id": np.arange(81), "subset": None, "score": t}),
        ]
    return pd.concat(frames, ignore_index=True)


@pytest.fixture(scope="module")
def item_report():
    return build_report(
        "base",
        ["tuned"],
        ITEM_CATEGORIES,
        items=_items(),
        extras=["truthfulqa_mc"],
        subgroups={"mmlu": MMLU_SUBGROUPS},
        n_boot=1000,
        seed=3,
    )


def test_item_level_deltas_flips_and_pvalues(item_report) -> None:
    cmp = item_report.vs_base("tuned")
    mmlu = cmp.task("mmlu")
    assert (mmlu.ref_score, mmlu.score, mmlu.delta) == pytest.approx((0.60, 222 / 400, -18 / 400))
    assert (mmlu.forgotten, mmlu.gained, mmlu.n) == (20, 2, 400)
    assert mmlu.p_mcnemar == pytest.approx(2 * sum(__import__("math").comb(22, i) for i in range(3)) / 2**22)
    boolq = cmp.task("boolq")
    assert boolq.delta == pytest.approx(-0.15) and (boolq.forgotten, boolq.gained) == (30, 0)
    assert boolq.p_mcnemar == pytest.approx(2 * 0.5**30) and boolq.significant
    copa = cmp.task("copa")
    assert copa.delta == 0.0 and copa.ci == (0.0, 0.0) and copa.p_mcnemar == 1.0 and not copa.significant
    tqa = cmp.task("truthfulqa_mc")
    assert tqa.category is None and tqa.p_mcnemar is None and tqa.forgotten is None
    assert tqa.delta == pytest.approx(-0.02) and tqa.ci == pytest.approx((-0.02, -0.02))

    assert cmp.categories["DK"].delta == pytest.approx(-0.045)
    assert cmp.categories["R"].delta == pytest.approx((-0.15 + 0.0) / 2)
    assert cmp.avg.delta == pytest.approx((-0.045 - 0.075) / 2)
    assert cmp.avg.ci is not None and cmp.avg.ci[0] < cmp.avg.delta < cmp.avg.ci[1] < 0
    # Complete coverage, same items: Δ is exactly the difference of the printed AVGs.
    assert cmp.avg.delta == pytest.approx(item_report.row("tuned").avg.score - item_report.row("base").avg.score)


def test_mmlu_subgroups_follow_their_task_under_dk(item_report) -> None:
    cmp = item_report.vs_base("tuned")
    names = [(t.task, t.group) for t in cmp.tasks]
    assert names[:5] == [
        ("mmlu", None),
        ("mmlu", "stem"),
        ("mmlu", "humanities"),
        ("mmlu", "social_sciences"),
        ("mmlu", "other"),
    ]
    expected = {
        "stem": (-0.08, 10, 2),
        "humanities": (-0.04, 4, 0),
        "social_sciences": (0.0, 0, 0),
        "other": (-0.06, 6, 0),
    }
    for group, (delta, forgotten, gained) in expected.items():
        row = cmp.task("mmlu", group)
        assert row.category == "DK" and row.n == 100
        assert row.delta == pytest.approx(delta) and (row.forgotten, row.gained) == (forgotten, gained)
    table = _md_tables(to_markdown(item_report))["Per task: tuned − base"]
    assert [r[:2] for r in table[1:6]] == [
        ["DK", "mmlu"],
        ["", "↳ stem"],
        ["", "↳ humanities"],
        ["", "↳ social_sciences"],
        ["", "↳ other"],
    ]
    # stem: 10 forgotten vs 2 gained, raw McNemar p = 0.039; Holm over the comparison's 8 tested rows
    # (issue 19, item 6) lifts it above α (the step-down max with "other", 5 × 0.03125), so no star;
    # it had one before multiplicity was adjusted for.
    assert table[2][5] == "-8.00" and table[2][7] == "0.039"
    assert table[2][8] == "0.156" and cmp.task("mmlu", "stem").p_adj == pytest.approx(5 * 2 / 2**6)


def test_unmapped_subsets_get_their_own_group() -> None:
    items = _items()
    items.loc[(items["task"] == "mmlu") & (items["subset"] == "virology"), "subset"] = "not_a_subject"
    report = build_report(
        "base", ["tuned"], ITEM_CATEGORIES, items=items, subgroups={"mmlu": MMLU_SUBGROUPS}, n_boot=50
    )
    groups = [t.group for t in report.vs_base("tuned").tasks if t.task == "mmlu"]
    assert groups == [None, "stem", "humanities", "social_sciences", "(unmapped)"]


def test_dropped_items_are_counted_and_marked() -> None:
    report = build_report("base", ["tuned"], ITEM_CATEGORIES, items=_items(drop_boolq=10), n_boot=100)
    boolq = report.vs_base("tuned").task("boolq")
    assert (boolq.n, boolq.dropped_ref, boolq.dropped_other) == (190, 10, 0)
    assert boolq.ref_score == pytest.approx(150 / 190)  # compared on the common items only
    md = to_markdown(report)
    assert "| 190‡ |" in md
    assert "‡ boolq: compared on 190 common items; dropped 10 only in base, 0 only in tuned" in md


def test_items_and_task_scores_mix_without_faking_statistics() -> None:
    items = _items()
    items = items[~((items["run"] == "tuned") & (items["task"] == "boolq"))]
    imported = pd.DataFrame({"run": ["tuned"], "task": ["boolq"], "value": [0.60]})
    report = build_report("base", ["tuned"], ITEM_CATEGORIES, items=items, task_scores=imported, n_boot=100)
    cmp = report.vs_base("tuned")
    assert cmp.task("boolq").delta == pytest.approx(0.60 - 0.75) and cmp.task("boolq").ci is None
    assert cmp.categories["DK"].ci is not None  # fully item-level
    assert cmp.categories["R"].ci is None and cmp.avg.ci is None
    assert json.loads(to_json(report))["comparisons"][0]["avg"]["ci"] is None


def test_pairs_are_detected_and_compared_directly() -> None:
    assert detect_pairs(["w/o SAM", "w/ SAM", "other"]) == [("w/o SAM", "w/ SAM")]
    assert detect_pairs(["7B w/o SAM", "7B w/ SAM", "13B w/o SAM"]) == [("7B w/o SAM", "7B w/ SAM")]
    assert detect_pairs(["w/o SAM", "w/ LoRA"]) == []

    items = pd.concat([_items("w/o SAM"), _items("w/ SAM").query("run == 'w/ SAM'")], ignore_index=True)
    # make w/ SAM forget 10 fewer boolq items than w/o SAM
    mask = (items["run"] == "w/ SAM") & (items["task"] == "boolq") & (items["doc_id"] < 10)
    items.loc[mask, "score"] = 1.0
    report = build_report("base", ["w/o SAM", "w/ SAM"], ITEM_CATEGORIES, items=items, n_boot=200)
    pair = report.pair_comparisons[0]
    assert pair.task("boolq").delta == pytest.approx(10 / 200)
    assert (pair.task("boolq").forgotten, pair.task("boolq").gained) == (0, 10)
    assert pair.avg.delta == pytest.approx(report.vs_base("w/ SAM").avg.delta - report.vs_base("w/o SAM").avg.delta)
    assert (
        build_report("base", ["w/o SAM", "w/ SAM"], ITEM_CATEGORIES, items=items, pairs=[], n_boot=10).pair_comparisons
        == []
    )
    with pytest.raises(CfbenchError, match="not among the tuned runs"):
        build_report("base", ["w/o SAM"], ITEM_CATEGORIES, items=items, pairs=[("w/o SAM", "w/ SAM")])


def test_seed_makes_report_reproducible() -> None:
    a = build_report("base", ["tuned"], ITEM_CATEGORIES, items=_items(), n_boot=300, seed=1)
    b = build_report("base", ["tuned"], ITEM_CATEGORIES, items=_items(), n_boot=300, seed=1)
    c = build_report("base", ["tuned"], ITEM_CATEGORIES, items=_items(), n_boot=300, seed=2)
    assert to_json(a) == to_json(b)
    assert a.vs_base("tuned").avg.ci != c.vs_base("tuned").avg.ci


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"task_scores": pd.DataFrame({"run": ["base"], "task": ["mmlu"], "value": [46.0]})}, "divide by 100"),
        ({"task_scores": pd.DataFrame({"run": ["base"], "task": ["mmlu"]})}, "lack column.*value"),
        (
            {"items": pd.DataFrame({"run": ["base"], "task": ["mmlu"], "doc_id": [0], "score": [float("nan")]})},
            "not a fraction in \\[0, 1\\]",
        ),
        (
            {"task_scores": pd.DataFrame({"run": ["base"], "task": ["mmlu"], "value": [0.4]})},
            "run 'tuned' has no scores",
        ),
        ({}, "no scores given"),
    ],
)
def test_input_errors_name_problem_and_fix(kwargs: dict, message: str) -> None:
    with pytest.raises(CfbenchError, match=message):
        build_report("base", ["tuned"], ITEM_CATEGORIES, **kwargs)


def test_task_listed_twice_is_rejected() -> None:
    with pytest.raises(CfbenchError, match=r"boolq.*list each task once"):
        build_report("base", ["tuned"], {"A": ["boolq"], "B": ["boolq"]}, items=_items())


# -- renderers ----------------------------------------------------------------------------------------
def test_markdown_tables_are_well_formed(item_report) -> None:
    md = to_markdown(item_report)
    tables = _md_tables(md)
    assert list(tables) == ["Forgetting summary", "Δ by category (95% CI)", "Per task: tuned − base"]
    for title, rows in tables.items():
        assert len({len(r) for r in rows}) == 1, title  # every row has the header's column count
    summary = tables["Forgetting summary"]
    assert summary[2][0] == "tuned" and summary[2][-2] == "-6.00*"
    lo, hi = item_report.vs_base("tuned").avg.ci
    assert summary[2][-1] == f"[{100 * lo:+.2f}, {100 * hi:+.2f}]"
    assert "Scores ×100" in md and "B=1000, seed 3" in md


def test_json_is_strict_and_complete(item_report) -> None:
    data = json.loads(to_json(item_report))
    cmp = data["comparisons"][0]
    assert (data["base"], data["tuned"], data["scale"]) == ("base", ["tuned"], "fraction")
    assert cmp["avg"]["ci"] == pytest.approx(list(item_report.vs_base("tuned").avg.ci))
    boolq = next(t for t in cmp["tasks"] if t["task"] == "boolq")
    assert boolq["forgotten"] == 30 and boolq["p_mcnemar"] == pytest.approx(2 * 0.5**30)
    assert boolq["ci"][0] < -0.15 < boolq["ci"][1]
    stem = next(t for t in cmp["tasks"] if t["group"] == "stem")
    assert stem["delta"] == pytest.approx(-0.08)
    assert data["rows"][1]["avg"]["coverage"] == {
        "present": ["mmlu", "boolq", "copa"],
        "missing": [],
        "label": "3/3 tasks",
        "partial": False,
        "missing_reasons": {},
        "categories": 2,
        "categories_total": 2,
    }
    assert data["settings"]["n_boot"] == 1000


def test_csv_round_trips(item_report, oc_report, tmp_path: Path) -> None:
    for report in (item_report, oc_report):
        path = tmp_path / "r.csv"
        text = to_csv(report, path)
        assert path.read_text(encoding="utf-8") == text
        frame = report_to_frame(report)
        back = pd.read_csv(io.StringIO(text))
        assert list(back.columns) == list(frame.columns) and len(back) == len(frame)
        for col in frame.columns:
            if pd.api.types.is_float_dtype(frame[col]) or pd.api.types.is_integer_dtype(frame[col]):
                np.testing.assert_allclose(back[col].astype(float), frame[col].astype(float), equal_nan=True)
            else:
                left = back[col].astype(object).where(back[col].notna(), None).tolist()
                right = frame[col].astype(object).where(frame[col].notna(), None).tolist()
                assert left == right, col
    frame = report_to_frame(item_report)
    avg = frame.query("section == 'delta' and level == 'avg'").iloc[0]
    assert (avg["ci_low"], avg["ci_high"]) == item_report.vs_base("tuned").avg.ci


class _TagCounter(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.depth: dict[str, int] = {}

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self.depth[tag] = self.depth.get(tag, 0) + 1

    def handle_endtag(self, tag: str) -> None:
        self.depth[tag] = self.depth.get(tag, 0) - 1


def test_html_is_balanced_and_styled(item_report) -> None:
    page = to_html(item_report)
    assert page.startswith("<!DOCTYPE html>")
    parser = _TagCounter()
    parser.feed(page)
    assert all(parser.depth.get(t) == 0 for t in ("table", "tr", "td", "th", "html", "body"))
    assert page.count("<table") == 3
    assert '<meta charset="utf-8">' in page and "<title>cfbench: tuned vs base</title>" in page
    # colour only where significant: boolq -15 (McNemar p < 0.05) red, philosophy -4 (p = 0.125) neutral
    assert '<td class="r sig-neg" data-v="-15.0">-15.00*</td>' in page
    assert '<td class="r" data-v="-4.0">-4.00</td>' in page
    assert page.count('src="data:image/png;base64,') == 1  # the Δ plot, embedded
    assert "http://" not in page and "https://" not in page  # nothing to fetch
    fragment = to_html(item_report, full_page=False)
    assert "<html" not in fragment and "<table" in fragment and "<img" not in fragment


def test_rich_view_colours_deltas(item_report) -> None:
    from rich.console import Console

    console = Console(record=True, width=200, file=io.StringIO(), color_system="standard")
    print_report(item_report, console)
    text = console.export_text(clear=False)
    assert "Forgetting summary" in text and "-6.00*" in text and "↳ stem" in text
    styled = console.export_text(styles=True)
    assert "\x1b[1;31m-6.00*" in styled  # bold red: significant drop


def test_plot_writes_a_readable_png(item_report, oc_report, tmp_path: Path) -> None:
    import matplotlib.image as mpimg

    for report, name in ((item_report, "items.png"), (oc_report, "oc.png")):
        path = plot_report(report, tmp_path / "sub" / name, include_pairs=True)
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert path.stat().st_size > 20_000
        img = mpimg.imread(path)
        assert img.shape[0] > 600 and img.shape[1] > 600
        assert img[..., :3].std() > 0.05  # not a blank canvas


def _tick_texts(ax) -> list[str]:
    return [t.get_text() for t in ax.get_yticklabels()]


def test_plot_marks_zero_deltas_shares_the_scale_and_labels_partial(item_report, oc_report) -> None:
    """Artists, not pixels: a Δ of 0 still has a marker, one x range for both panels (said in the
    label), † on partial categories' ticks, suite and n in the title."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    from cfbench.report.plot import SHARED_XLABEL, report_figure

    fig = report_figure(item_report, suite="unit")
    try:
        ax_cat, ax_task = fig.axes[:2]
        labels = _tick_texts(ax_task)
        copa_y = labels.index("copa (R)")
        assert item_report.vs_base("tuned").task("copa").delta == 0.0
        markers = [
            ln for ln in ax_task.get_lines()
            if isinstance(ln, Line2D) and ln.get_marker() == "D" and len(ln.get_xdata()) == 1
        ]  # fmt: skip
        at_zero = [ln for ln in markers if ln.get_xdata()[0] == 0.0 and abs(ln.get_ydata()[0] - copa_y) < 0.5]
        assert at_zero and at_zero[0].get_markersize() > 0 and at_zero[0].get_visible()
        assert len(markers) == len(labels)  # one marker per drawn Δ, none missing
        assert ax_cat.get_xlim() == ax_task.get_xlim()
        assert ax_cat.get_xlabel() == ax_task.get_xlabel() == SHARED_XLABEL and "same x scale" in SHARED_XLABEL
        title = fig.get_suptitle()
        assert "suite unit" in title and "n = 781 paired items" in title  # mmlu 400 + boolq 200 + copa 100 + tqa 81
        assert _tick_texts(ax_cat) == ["DK", "R", "AVG"]  # complete: no †
    finally:
        plt.close(fig)

    fig = report_figure(oc_report, include_pairs=True)
    try:
        ax_cat = fig.axes[0]
        # w/ SAM lacks csl_dev: Understanding and AVG are partial in its series, so their ticks carry †
        assert _tick_texts(ax_cat) == ["DK", "Understanding†", "Reasoning", "Exams", "AVG†"]
        assert "task-level scores (no items)" in fig.get_suptitle() and "suite" not in fig.get_suptitle()
    finally:
        plt.close(fig)


def test_imported_subgroup_scores_show_under_their_task() -> None:
    """OpenCompass-style ``mmlu-stem`` imported as task mmlu, subset stem: shown, without statistics."""
    scores = _oc_scores().assign(subset=None)
    groups = pd.DataFrame(
        [
            {"run": run, "task": "mmlu", "subset": group, "value": v}
            for run, (stem, hum) in {"base": (0.40, 0.50), "w/o SAM": (0.35, 0.49)}.items()
            for group, v in (("stem", stem), ("humanities", hum))
        ]
    )
    report = build_report(
        "base",
        ["w/o SAM"],
        PAPER_CATEGORIES,
        task_scores=pd.concat([scores, groups], ignore_index=True),
        subgroups={"mmlu": MMLU_SUBGROUPS},
    )
    cmp = report.vs_base("w/o SAM")
    assert [(t.task, t.group) for t in cmp.tasks[:3]] == [("mmlu", None), ("mmlu", "stem"), ("mmlu", "humanities")]
    assert cmp.task("mmlu", "stem").delta == pytest.approx(-0.05) and cmp.task("mmlu", "stem").ci is None
    assert report.row("base").categories["DK"].score == pytest.approx(0.46)  # subsets never enter the mean
    with pytest.raises(CfbenchError, match="subset 'stem' more than once"):
        build_report("base", ["w/o SAM"], PAPER_CATEGORIES, task_scores=pd.concat([scores, groups, groups]))
