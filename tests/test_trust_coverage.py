"""Issue 8 item 3: coverage is judged against the paper's categories, and the leaderboard agrees with compare.

The offline suite keeps the paper's category names with fewer tasks (Understanding has none), so a
report over it must never look complete: categories and AVG are partial (†), report.json says so,
and the missing tasks are listed with the reason.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cfbench.comparison import compare
from cfbench.importers import import_lmeval
from cfbench.report.leaderboard import leaderboard
from cfbench.report.render import to_json, to_markdown
from cfbench.store import ResultStore
from cfbench.tasks.registry import load_suite

LMEVAL_DIR = Path(__file__).parent / "fixtures" / "imports" / "lmeval" / "org__tiny-sft"


@pytest.fixture
def two_runs(tmp_path: Path) -> Path:
    store = ResultStore(tmp_path)
    import_lmeval(LMEVAL_DIR, "a", store)
    import_lmeval(LMEVAL_DIR, "b", store)
    return tmp_path


def test_offline_suite_is_partial_against_the_paper(two_runs: Path) -> None:
    res = compare("run:a", ["run:b"], suite="offline", results=two_runs, n_boot=50)
    row = res.report.row("a")
    und = row.categories["Understanding"]
    assert und.score is None and und.coverage.partial
    assert und.coverage.missing == ("race_middle", "race_high", "openbookqa_fact", "csl_dev")
    assert "not in suite offline" in und.coverage.reason("race_high")
    reasoning = row.categories["Reasoning"].coverage
    assert reasoning.partial and "ax_b" in reasoning.missing and "ax_g" in reasoning.missing
    assert row.avg.score is not None and row.avg.coverage.partial
    assert row.avg.coverage.label.startswith("3/4 categories")
    assert res.report.vs_base("b").avg.coverage.partial

    data = json.loads(to_json(res.report))
    avg = data["rows"][0]["avg"]["coverage"]
    assert avg["partial"] is True and avg["categories"] == 3 and avg["categories_total"] == 4
    assert data["comparisons"][0]["avg"]["coverage"]["partial"] is True
    md = to_markdown(res.report)
    summary_a = next(line for line in md.splitlines() if line.startswith("| a |"))
    assert summary_a.split("|")[-4].strip().endswith("†")  # AVG cell
    # issue 19 item 9: the runs and the comparison lacking the same tasks share one line, printed once
    want = "Understanding: 0/4 tasks (missing: race_middle (not in suite offline"
    line = next(x for x in md.splitlines() if want in x)
    assert line.startswith("† a, b, b − a Understanding") and md.count(line) == 1


def test_empty_category_without_reference_is_partial() -> None:
    from cfbench.report.table import category_scores

    cats, avg = category_scores({"boolq": 0.5}, {"R": ["boolq"], "U": []})
    assert cats["U"].coverage.partial and not cats["R"].coverage.partial
    assert avg.coverage.partial and avg.coverage.label == "1/2 categories, 1/1 tasks"


def test_leaderboard_shows_the_same_categories_and_avg_as_compare(two_runs: Path) -> None:
    res = compare("run:a", ["run:b"], suite="offline", results=two_runs, n_boot=0)
    offline = {k: list(v) for k, v in load_suite("offline").categories.items()}
    paper = load_suite(load_suite("offline").reference).categories  # lmeval: the paper's list, lm-eval rules
    board = leaderboard(ResultStore(two_runs), suite=offline, reference=paper).set_index("name")
    for run in ("a", "b"):
        row = res.report.row(run)
        for name, cs in [*row.categories.items(), ("AVG", row.avg)]:
            value = board.loc[run, name]
            assert (cs.score is None and math.isnan(value)) or value == pytest.approx(cs.score), (run, name)
            assert (name in board.loc[run, "partial"].split(",")) == cs.coverage.partial, (run, name)


def test_leaderboard_cli_marks_partial_and_states_the_scale(two_runs: Path) -> None:
    import typer

    from cfbench.cli import store_cmds

    app = typer.Typer()
    store_cmds.register(app)

    @app.command("noop")
    def _noop() -> None:  # a second command keeps typer from collapsing the app into one command
        pass

    runner = CliRunner()
    md = runner.invoke(app, ["leaderboard", "--results", str(two_runs), "--suite", "offline", "--format", "markdown"])
    assert md.exit_code == 0, md.output
    lines = md.stdout.splitlines()
    assert "×100" in lines[0]
    header = [c.strip() for c in lines[2].strip("|").split("|")]
    row = [c.strip() for c in lines[4].strip("|").split("|")]
    cells = dict(zip(header, row, strict=True))
    assert cells["AVG"].endswith("†") and cells["Reasoning"].endswith("†") and cells["Understanding"] == ""
    html = runner.invoke(app, ["leaderboard", "--results", str(two_runs), "--suite", "offline", "--format", "html"])
    assert "×100" in html.stdout and "†" in html.stdout
    csv = runner.invoke(app, ["leaderboard", "--results", str(two_runs), "--suite", "offline", "--format", "csv"])
    assert "partial" in csv.stdout.splitlines()[0] and "†" not in csv.stdout  # machine format: fractions
