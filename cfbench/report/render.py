"""Text renderers for a ``ComparisonReport``: Markdown, HTML, rich, CSV (tidy frame) and JSON.

Layout is decided once (``layout``) as tables of plain ``Cell``s; each backend only translates
cells, so the formats cannot drift apart. Markdown/HTML/CSV/JSON use only the standard library and
pandas; rich is imported lazily by ``to_rich`` alone.

Display conventions follow the paper: scores ×100 with 2 decimals. Markers: ``*`` significant
(the Holm-adjusted p of the row's own test < α: McNemar exact for a 0/1 item mean, else the
bootstrap p), ``†`` partial coverage, ``‡`` items dropped because the two runs were not evaluated on
identical item sets. A task whose runs scored different items shows ``unpaired`` in its n column (and
``"unpaired": true`` in JSON/CSV): its Δ is of task means, with no CI, McNemar p or flips.

Learned/forgot signals (:class:`cfbench.signals.Signal`, attached with ``ComparisonReport.add_signals``)
are rendered generically: a "Learned vs forgot" table (one row per tuned run, accuracy Δ AVG and flips,
then one column per signal name at scope ``all``), a by-category table for other scopes, and one
column per signal in each per-task table. No renderer knows a signal by name.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pandas as pd

from cfbench.csvsafe import frame_to_csv
from cfbench.report.contrast import ContrastLine, ContrastResult, SeedGroup
from cfbench.report.table import Comparison, ComparisonReport, TaskRow
from cfbench.signals import NIL_FLOOR, NoiseFloor, Signal
from cfbench.stats import AggregateDelta, Coverage

if TYPE_CHECKING:
    from rich.console import Console, Group

MISSING = "—"
NA = "n/a"
UNPAIRED = "unpaired"
EXTRA_LABEL = "extra"


@dataclass(frozen=True)
class Cell:
    """A formatted value plus the two hints renderers may style: sign and significance."""

    text: str
    tone: Literal["neg", "pos"] | None = None
    strong: bool = False


@dataclass
class TableSpec:
    """A renderer-neutral table: title, header, per-column alignment, rows of cells, footnotes."""

    title: str
    columns: list[str]
    align: list[Literal["l", "r"]]
    rows: list[list[Cell]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: Columns whose cells may wrap in the terminal (long signal cells), so the others stay readable.
    wrap: set[int] = field(default_factory=set)


# -- number formatting ------------------------------------------------------------------------------
def fmt_score(x: float | None) -> str:
    """A fraction shown ×100 with 2 decimals, as in the paper."""
    return MISSING if x is None else f"{100 * x:.2f}"


def fmt_delta(x: float | None) -> str:
    """Signed ×100 with 2 decimals; values that round to zero print as 0.00 (no '-0.00')."""
    if x is None:
        return MISSING
    text = f"{100 * x:+.2f}"
    return "0.00" if text in ("+0.00", "-0.00") else text


def fmt_ci(ci: tuple[float, float] | None) -> str:
    return NA if ci is None else f"[{fmt_delta(ci[0])}, {fmt_delta(ci[1])}]"


def fmt_p(p: float | None) -> str:
    if p is None:
        return NA
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def fmt_test_p(p: float | None, test: str | None) -> str:
    """A row's p with its test: bare for McNemar, ``ᵇ`` bootstrap, ``ᶜ`` cluster-level (legend)."""
    marks = {"bootstrap": "ᵇ", "cluster": "ᶜ"}
    return fmt_p(p) + (marks.get(test or "", "") if p is not None else "")


def _tone(x: float | None) -> Literal["neg", "pos"] | None:
    if x is None or fmt_delta(x) == "0.00":
        return None
    return "neg" if x < 0 else "pos"


def _delta_cell(x: float | None, significant: bool, partial: bool = False) -> Cell:
    text = fmt_delta(x)
    if x is not None:
        text += ("*" if significant else "") + ("†" if partial else "")
    return Cell(text, _tone(x), significant)


def _prior_mark(cell: Cell, flagged: bool) -> Cell:
    """``‡`` on a Δ whose task measures the label prior in either run (a 0.00 there is not "no change")."""
    return Cell(cell.text + "‡", cell.tone, cell.strong) if flagged else cell


# -- layout -----------------------------------------------------------------------------------------
def _legend(report: ComparisonReport) -> str:
    s = report.settings
    level = f"{100 * s.confidence:g}%"
    return (
        f"Scores ×100. Δ = run − reference on the items both were evaluated on. {level} CI: paired "
        f"percentile bootstrap (B={s.n_boot}, seed {s.seed}; categories and AVG stratified by task). "
        f"* significant at α={s.alpha:g} by the Holm-adjusted p (families: the task rows of one comparison; "
        f"its categories + AVG). p: McNemar exact for a 0/1 item mean; ᵇ bootstrap p (subject means, non-0/1 "
        f"metrics, categories, AVG); ᶜ cluster-level test (tasks with cluster_by: items sharing a passage are "
        f"resampled and tested by passage); a category or AVG made of one task takes that task's test. "
        f"† partial coverage. "
        f"‡ on a task's Δ: its accuracy measures the label prior (≥90% of predictions on one choice, or accuracy "
        f"= majority-label share within its CI) in either run; ‡k/m on a category or AVG: k of its m tasks are. "
        f"‡ on n: items dropped (not on both runs). "
        f"MDE: smallest |Δ| its test detects with 80% power at α={s.alpha:g} for its n and observed discordance. "
        f"{NA}: task-level scores only, no item statistics; "
        f"{UNPAIRED}: runs scored different items, Δ of task means without item statistics."
    )


def summary_table(report: ComparisonReport) -> TableSpec:
    """The paper's table: category scores, AVG and Δ vs base; w/–w/o pairs as signed Δ rows."""
    cats = list(report.categories)
    level = f"{100 * report.settings.confidence:g}%"
    spec = TableSpec(
        "Forgetting summary", ["Model", *cats, "AVG", "Δ", f"Δ {level} CI"], ["l"] + ["r"] * (len(cats) + 3)
    )
    for row in report.rows:
        cells = [Cell(row.run)]
        for name in cats:
            cs = row.categories[name]
            cells.append(Cell(fmt_score(cs.score) + ("†" if cs.coverage.partial and cs.score is not None else "")))
        avg_partial = row.avg.coverage.partial and row.avg.score is not None
        cells.append(Cell(fmt_score(row.avg.score) + ("†" if avg_partial else "")))
        if row.run == report.base:
            cells += [Cell(MISSING), Cell("")]
        else:
            cmp = report.vs_base(row.run)
            sig = report.aggregate_significant(cmp.avg)
            cells += [_delta_cell(cmp.avg.delta, sig, cmp.avg.coverage.partial), Cell(fmt_ci(cmp.avg.ci))]
            if cmp.avg.coverage.partial and cmp.avg.delta is not None:
                spec.notes.append(f"† Δ of {row.run} uses {cmp.avg.coverage.label} common to both runs")
        spec.rows.append(cells)
    for cmp in report.pair_comparisons:
        cells = [Cell(f"Δ {cmp.label}")]
        for name in cats:
            agg = cmp.categories[name]
            cells.append(_delta_cell(agg.delta, report.aggregate_significant(agg), agg.coverage.partial))
        cells.append(Cell(""))
        sig = report.aggregate_significant(cmp.avg)
        cells += [_delta_cell(cmp.avg.delta, sig, cmp.avg.coverage.partial), Cell(fmt_ci(cmp.avg.ci))]
        spec.rows.append(cells)
    spec.notes[:0] = coverage_lines(report)
    spec.notes += label_prior_lines(report)
    spec.notes += holm_lines(report)
    spec.notes.append(_legend(report))
    return spec


def coverage_lines(report: ComparisonReport) -> list[str]:
    """Each distinct coverage footnote once: rows (runs' scores, comparisons' Δ) lacking the same tasks
    of the same category share one line that names them all."""
    entries = [(r.run, name, r.categories[name].coverage) for r in report.rows for name in report.categories]
    entries += [(c.label, a.name, a.coverage) for c in report.comparisons for a in [*c.categories.values(), c.avg]]
    groups: dict[tuple[str, str, str], list[str]] = {}
    for who, name, cov in entries:
        if cov.partial:
            groups.setdefault((name, cov.label, cov.missing_text()), []).append(who)
    return [f"† {', '.join(whos)} {name}: {label} (missing: {text})" for (name, label, text), whos in groups.items()]


def summary_sentences(report: ComparisonReport) -> list[str]:
    """One sentence per tuned run: what it lost and gained against the base, and how sure that is."""
    out = []
    for run in report.tuned:
        cmp = report.vs_base(run)
        avg = cmp.avg
        if avg.delta is None:
            out.append(f"{run}: no task is scored for both it and {report.base}, so nothing can be said.")
            continue
        sure = _sureness(report, avg)
        cats = [a for a in cmp.categories.values() if a.delta is not None]
        worst = min(cats, key=lambda a: a.delta)  # type: ignore[arg-type, return-value]
        best = max(cats, key=lambda a: a.delta)  # type: ignore[arg-type, return-value]
        rows = [t for t in cmp.tasks if t.group is None and t.category is not None]
        lost = sum(t.forgotten or 0 for t in rows)
        won = sum(t.gained or 0 for t in rows)
        flips = f"; it forgot {lost} items and gained {won}" if any(t.forgotten is not None for t in rows) else ""
        moves = f"largest drop {worst.name} {fmt_delta(worst.delta)} ({_sureness(report, worst)})"
        if best is not worst and (best.delta or 0) > 0:
            moves += f", largest gain {best.name} {fmt_delta(best.delta)} ({_sureness(report, best)})"
        flagged = report.flagged(cmp, avg)
        prior = f"; {flagged} of its tasks measure the label prior (‡)" if flagged else ""
        part = f" over {avg.coverage.label}" if avg.coverage.partial else ""
        out.append(
            f"{run} vs {report.base}: AVG {fmt_delta(avg.delta)} points{part} {fmt_ci(avg.ci)} ({sure}); "
            f"{moves}{flips}{prior}."
        )
    return out + floor_lines(report)


def floor_lines(report: ComparisonReport) -> list[str]:
    """What the noise floor is: its change, its overall divergences and the flips numerics alone made
    (next to the tuned runs' forgotten/gained counts), or that it is numerically nil and stars nothing."""
    nf = report.noise_floor
    if nf is None:
        return []
    change = f", which changed {nf.change}," if nf.change else ""
    values = ", ".join(f"{_metric_label(report, k)} {fmt_signal(v)}" for k, v in nf.values.items())
    if nf.nil:
        head = (
            f"Noise floor {nf.run}{change} is numerically nil ({values}; every value below {NIL_FLOOR:g}): it stars "
            "no divergence; re-score the base under a numeric change a user meets (compare --noise-floor dtype)"
        )
    else:
        head = f"Noise floor {nf.run}{change} is {values or 'no divergence paired'} overall"
    if nf.flips is not None:
        head += (
            f"; numerics alone flipped {nf.flips.forgotten} items right→wrong and {nf.flips.gained} wrong→right "
            f"of {nf.flips.n} (compare each run's forgotten/gained)"
        )
    return [head + "."]


def _metric_label(report: ComparisonReport, name: str) -> str:
    """A signal's display label (e.g. ``KL(base‖tuned)``) from any run that has it, else its name."""
    for sigs in report.signals.values():
        for s in sigs:
            if s.name == name:
                return s.label
    return name


def _sureness(report: ComparisonReport, agg: AggregateDelta) -> str:
    """``significant, Holm p 0.003`` / ``not significant, Holm p 0.41`` / ``untested (no item scores)``."""
    if report.settings.n_boot == 0:  # "no CIs, no stars": the gate says the same
        return "untested: --n-boot 0"
    if agg.p is None:
        return "untested: no item-level scores"
    word = "significant" if report.aggregate_significant(agg) else "not significant"
    return f"{word}, Holm p {fmt_p(agg.p_adj)}" if agg.p_adj is not None else f"{word}, p {fmt_p(agg.p)}"


def label_prior_lines(report: ComparisonReport) -> list[str]:
    """One line per flagged task: which runs' accuracy there is the label prior, and what to read instead."""
    by_task: dict[str, dict[str, list[str]]] = {}
    for (run, task), flag in report.label_prior.items():
        by_task.setdefault(task, {}).setdefault(flag.describe(), []).append(run)
    return [
        f"‡ {task}: " + "; ".join(f"{what} ({', '.join(runs)})" for what, runs in parts.items())
        + ": accuracy measures the label prior here; read gold log-p / KL"
        for task, parts in by_task.items()
    ]


def _signal_singletons(report: ComparisonReport) -> dict[tuple[str, str], list[str]]:
    """(family, its one test's scope) → runs, for drift signals whose scopes hold one test."""
    groups: dict[tuple[str, str], list[str]] = {}
    for run, sigs in report.signals.items():
        ones = [s for s in sigs if s.holm_m == 1]
        by_member: dict[str, list[str]] = {}
        for name in dict.fromkeys(s.name for s in ones):
            mine = [s for s in ones if s.name == name]
            tasks = [s.scope for s in mine if s.scope != "all" and s.scope not in report.categories]
            by_member.setdefault(tasks[0] if tasks else mine[0].scope, []).append(mine[0].label)
        for member, labels in by_member.items():
            groups.setdefault((f"scopes of {', '.join(labels)}", member), []).append(run)
    return groups


def holm_lines(report: ComparisonReport) -> list[str]:
    """One line naming every Holm family that holds a single test (``Comparison.singletons``, drift
    signals with ``holm_m == 1``), or none: Holm is the identity there, so that star is at raw α and the
    legend's "Holm-adjusted" must not read as a correction that happened."""
    groups: dict[tuple[str, str], list[str]] = {}
    for cmp in report.comparisons:
        for family, member in cmp.singletons:
            groups.setdefault((family, member), []).append(cmp.label)
    for key, runs in _signal_singletons(report).items():
        groups.setdefault(key, []).extend(runs)
    if not groups:
        return []
    parts = [f"{family} of {', '.join(who)} ({member})" for (family, member), who in groups.items()]
    return [
        f"Holm: one test in its family, so Holm adjusts nothing and its star is at raw α={report.settings.alpha:g}: "
        + "; ".join(parts)
    ]


def delta_table(report: ComparisonReport) -> TableSpec:
    """Δ of every category and AVG with its stratified-bootstrap CI, one row per comparison."""
    cats = list(report.categories)
    level = f"{100 * report.settings.confidence:g}%"
    spec = TableSpec(f"Δ by category ({level} CI)", ["Comparison", *cats, "AVG"], ["l"] + ["r"] * (len(cats) + 1))
    for cmp in report.comparisons:
        cells = [Cell(cmp.label)]
        for agg in [*(cmp.categories[c] for c in cats), cmp.avg]:
            cell = _delta_cell(agg.delta, report.aggregate_significant(agg), agg.coverage.partial)
            if agg.delta is not None:
                k = report.flagged(cmp, agg)
                flagged = f" ‡{k}/{len(agg.coverage.present)}" if k else ""
                cell = Cell(f"{cell.text} {fmt_ci(agg.ci)}{flagged}", cell.tone, cell.strong)
            cells.append(cell)  # its † notes are the summary table's coverage lines (each distinct one once)
        spec.rows.append(cells)
    return spec


def task_table(report: ComparisonReport, cmp: Comparison) -> TableSpec:
    """Per-task (and sub-group) Δ of one comparison: scores, CI, McNemar p and flips."""
    level = f"{100 * report.settings.confidence:g}%"
    cols = signal_columns(report) if cmp.kind == "base" else []
    spec = TableSpec(
        f"Per task: {cmp.label}",
        ["Category", "Task", "n", cmp.ref, cmp.run, "Δ", f"{level} CI", "p", "p Holm", "MDE", "Forgotten", "Gained",
         *(h for _, h in cols)],
        ["l", "l", "r", "r", "r", "r", "r", "r", "r", "r", "r", "r", *("r" for _ in cols)],
        wrap=set(range(12, 12 + len(cols))),
    )  # fmt: skip

    def signal_cells(task: str | None) -> list[Cell]:
        """Compact (value and mark; CI and floor are in the json/csv formats) so the Δ columns stay readable."""
        if task is None:
            return [Cell("") for _ in cols]
        return [_signal_cell(_signal_at(report, cmp.run, name, task), compact=True) for name, _ in cols]

    last_category: str | None = None
    spec.notes.extend(cmp.notes)
    for t in cmp.tasks:
        category = t.category if t.category is not None else EXTRA_LABEL
        shown_category = category if category != last_category else ""
        last_category = category
        name = f"↳ {t.group}" if t.group else t.task
        if t.missing:
            absent = [r for r, s in ((cmp.ref, t.ref_score), (cmp.run, t.score)) if s is None]
            scores = [Cell(fmt_score(t.ref_score)), Cell(fmt_score(t.score)), Cell(MISSING)]
            blank = [Cell("") for _ in range(6)]
            spec.rows.append([Cell(shown_category), Cell(name), Cell(""), *scores, *blank, *signal_cells(None)])
            spec.notes.append(f"{t.task}: no scores for {', '.join(absent)}; left out of Δ")
            continue
        n_text = NA if t.n is None else str(t.n) + ("‡" if t.dropped_ref or t.dropped_other else "")
        n_text = UNPAIRED if t.unpaired else n_text
        if t.dropped_ref or t.dropped_other:
            spec.notes.append(
                f"‡ {t.task}: compared on {t.n} common items; dropped {t.dropped_ref} only in {cmp.ref}, "
                f"{t.dropped_other} only in {cmp.run}"
            )
        flips_na = NA if not t.item_level else MISSING
        spec.rows.append(
            [
                Cell(shown_category),
                Cell(name),
                Cell(n_text),
                Cell(fmt_score(t.ref_score)),
                Cell(fmt_score(t.score)),
                _prior_mark(_delta_cell(t.delta, t.significant), t.label_prior),
                Cell(fmt_ci(t.ci)),
                Cell(fmt_test_p(t.p, t.test) if t.p is not None or not t.item_level else MISSING),
                Cell(fmt_p(t.p_adj) if t.p_adj is not None or not t.item_level else MISSING),
                Cell(fmt_score(t.mde) if t.mde is not None else (NA if not t.item_level else MISSING)),
                Cell(str(t.forgotten) if t.forgotten is not None else flips_na),
                Cell(str(t.gained) if t.gained is not None else flips_na),
                *signal_cells(None if t.group else t.task),
            ]
        )
    if any(t.item_level and t.forgotten is None for t in cmp.tasks):
        spec.notes.append(f"{MISSING} in flips: metric is not 0/1 (e.g. TruthfulQA mc2)")
    if any(t.category is None for t in cmp.tasks):
        spec.notes.append(f"{EXTRA_LABEL}: reported, not part of any category or AVG")
    if cols:
        spec.notes.append(
            f"Signal columns: value and * as in the Learned vs forgot table (per-task CI and floor: --format json "
            f"or csv); {MISSING}: not computed for this task"
        )
    return spec


# -- learned / forgot signals (generic: no code knows a signal by name) -----------------------------
def fmt_signal(x: float) -> str:
    """Four significant digits in the signal's own unit (not ×100: units differ, e.g. nats)."""
    text = f"{x:.4g}"
    return "0" if text in ("-0", "0", "+0") else text


def fmt_multiple(s: Signal) -> str:
    """``140×`` (the value as a multiple of its floor), ``nil floor`` for a numerically nil one, else ''."""
    if s.floor is None:
        return ""
    if s.floor_nil:
        return "nil floor"
    m = s.floor_multiple
    return "" if m is None or not math.isfinite(m) else f"{m:.3g}×"


def signal_text(s: Signal) -> str:
    """``value* [lo, hi] (140× floor f)``; an unjudged signal says why: ``(no floor)``, ``(no CI)`` or a
    ``numerically nil`` floor (below 1e-6: it judges nothing).

    A signal with a CI is left unjudged only for want of a floor that means something (a divergence);
    without a CI nothing can be judged, floor or not.
    """
    text = fmt_signal(s.value) + ("*" if s.significant else "")
    if s.ci is not None:
        text += f" [{fmt_signal(s.ci[0])}, {fmt_signal(s.ci[1])}]"
    if s.floor is not None and s.floor_nil:
        text += f" (floor {fmt_signal(s.floor)}: numerically nil)"
    elif s.floor is not None:
        times = fmt_multiple(s)
        text += f" ({times} floor {fmt_signal(s.floor)})" if times else f" (floor {fmt_signal(s.floor)})"
    if s.significant is None:
        text += " (no CI)" if s.ci is None else ("" if s.floor is not None else " (no floor)")
    return text


def _signal_tone(s: Signal) -> Literal["neg", "pos"] | None:
    """Coloured only when significant: red if the tuned run moved the bad way (``better``), else green."""
    if not s.significant:
        return None
    ref = s.floor if s.floor is not None else 0.0
    worse = s.value > ref if s.better == "lower" else s.value < ref
    return "neg" if worse else "pos"


def _signal_cell(s: Signal | None, *, compact: bool = False) -> Cell:
    if s is None:
        return Cell(MISSING)
    if compact:
        times = fmt_multiple(s)
        text = fmt_signal(s.value) + ("*" if s.significant else "") + (f" ({times})" if times else "")
    else:
        text = signal_text(s)
    return Cell(text, _signal_tone(s), bool(s.significant))


def signal_columns(report: ComparisonReport) -> list[tuple[str, str]]:
    """(name, header) of every attached signal: learned first, then forgot, each in first-seen order."""
    seen: dict[str, Signal] = {}
    for sigs in report.signals.values():
        for s in sigs:
            seen.setdefault(s.name, s)
    ordered = sorted(seen.values(), key=lambda s: 0 if s.kind == "learned" else 1)  # stable
    return [(s.name, f"{s.kind}: {s.label} ({s.unit})") for s in ordered]


def _signal_at(report: ComparisonReport, run: str, name: str, scope: str) -> Signal | None:
    for s in report.signals.get(run, []):
        if s.name == name and s.scope == scope:
            return s
    return None


def _signal_legend(report: ComparisonReport) -> str:
    level = f"{100 * report.settings.confidence:g}%"
    return (
        f"Signals in their own units, value [{level} CI]. * significant as its producer judges it: a signed "
        "change when its CI excludes 0, a divergence (never below 0) when its CI lies above the noise floor "
        "(the same statistic between the base and the base scored another way, compare --noise-floor); "
        "drift signals judge that by its bootstrap p, Holm-adjusted over the signal's scopes of one run "
        "(p, p_holm in json/csv); "
        "(no floor): a divergence without a floor is not judged; (no CI): --n-boot 0; N× floor: the value as a "
        f"multiple of its floor; a floor below {NIL_FLOOR:g} is numerically nil and stars nothing. Forgotten/Gained: "
        "0/1 items flipped right→wrong / wrong→right, summed over the tasks in AVG; the noise floor row counts "
        "the flips numerics alone make."
    )


def signals_table(report: ComparisonReport) -> TableSpec | None:
    """One row per tuned run: accuracy Δ AVG and flips next to every overall (``scope="all"``) signal."""
    cols = signal_columns(report)
    if not cols:
        return None
    level = f"{100 * report.settings.confidence:g}%"
    spec = TableSpec(
        "Learned vs forgot",
        ["Run", f"Δ AVG ({level} CI)", "Forgotten", "Gained", *(h for _, h in cols)],
        ["l", "r", "r", "r", *("r" for _ in cols)],
        wrap=set(range(4, 4 + len(cols))),
    )
    for run in report.tuned:
        cmp = report.vs_base(run)
        sig = report.aggregate_significant(cmp.avg)
        d = _delta_cell(cmp.avg.delta, sig, cmp.avg.coverage.partial)
        if cmp.avg.delta is not None:
            d = Cell(f"{d.text} {fmt_ci(cmp.avg.ci)}", d.tone, d.strong)
        flips = [t for t in cmp.tasks if t.group is None and t.category is not None and t.forgotten is not None]
        forgotten = str(sum(t.forgotten or 0 for t in flips)) if flips else NA
        gained = str(sum(t.gained or 0 for t in flips)) if flips else NA
        found = [_signal_at(report, run, name, "all") for name, _ in cols]
        spec.rows.append([Cell(run), d, Cell(forgotten), Cell(gained), *(_signal_cell(s) for s in found)])
        spec.notes += _signal_notes(run, found)
    if report.noise_floor is not None:
        spec.rows.append(_floor_row(report.noise_floor, cols))
    spec.notes.append(_signal_legend(report))
    return spec


def _floor_row(nf: NoiseFloor, cols: list[tuple[str, str]]) -> list[Cell]:
    """The floor's own row: its flips under Forgotten/Gained and its overall divergence per signal column."""
    flips = [Cell(NA), Cell(NA)] if nf.flips is None else [Cell(str(nf.flips.forgotten)), Cell(str(nf.flips.gained))]
    cells = []
    for name, _ in cols:
        v = nf.values.get(name)
        nil = " (numerically nil)" if v is not None and abs(v) < NIL_FLOOR else ""
        cells.append(Cell(MISSING if v is None else fmt_signal(v) + nil))
    return [Cell(f"noise floor: {nf.run}"), Cell(MISSING), *flips, *cells]


def _signal_notes(where: str, signals: list[Signal | None]) -> list[str]:
    """``where · label, label: note`` — signals sharing a note (e.g. the same partial coverage) share a line."""
    by_note: dict[str, list[str]] = {}
    for s in signals:
        if s is not None and s.note:
            by_note.setdefault(s.note, []).append(s.label)
    return [f"{where} · {', '.join(labels)}: {note}" for note, labels in by_note.items()]


def _task_scopes(report: ComparisonReport) -> set[str]:
    return {t.task for c in report.base_comparisons for t in c.tasks}


def signal_scope_table(report: ComparisonReport) -> TableSpec | None:
    """Signals of every other scope (categories first, then any scope that is not a task of the report)."""
    cols = signal_columns(report)
    tasks = _task_scopes(report)
    scopes: list[str] = []
    for sigs in report.signals.values():
        for s in sigs:
            if s.scope != "all" and s.scope not in tasks and s.scope not in scopes:
                scopes.append(s.scope)
    if not scopes:
        return None
    scopes.sort(key=lambda x: list(report.categories).index(x) if x in report.categories else len(report.categories))
    level = f"{100 * report.settings.confidence:g}%"
    spec = TableSpec(
        "Learned vs forgot by category",
        ["Run", "Scope", f"Δ ({level} CI)", *(h for _, h in cols)],
        ["l", "l", "r", *("r" for _ in cols)],
        wrap=set(range(3, 3 + len(cols))),
    )
    for run in report.tuned:
        cmp = report.vs_base(run)
        for scope in scopes:
            found = [_signal_at(report, run, name, scope) for name, _ in cols]
            if not any(found):
                continue
            d = Cell("")
            if scope in cmp.categories and cmp.categories[scope].delta is not None:
                agg = cmp.categories[scope]
                c = _delta_cell(agg.delta, report.aggregate_significant(agg), agg.coverage.partial)
                d = Cell(f"{c.text} {fmt_ci(agg.ci)}", c.tone, c.strong)
            spec.rows.append([Cell(run), Cell(scope), d, *(_signal_cell(s) for s in found)])
            spec.notes += _signal_notes(f"{run} · {scope}", found)
    return spec


# -- contrasts B − A and seed groups ---------------------------------------------------------------
def _contrast_legend(report: ComparisonReport) -> str:
    s = report.settings
    level = f"{100 * s.confidence:g}%"
    return (
        f"Contrast = B − A on the items (documents) both arms scored, in each signal's unit (accuracy ×100, "
        f"flips in items). {level} CI: one run per arm, a paired item bootstrap (the same resampled items for "
        f"both, B={s.n_boot}); seeds per arm, a two-level bootstrap (seeds within each arm, then items) with a "
        "t interval; seeds that scored their own items (each seed's held-out split), their run means with a "
        "Welch t interval. Categories and AVG: means of the task contrasts, from the same resamples. * significant at "
        f"α={s.alpha:g} by the Holm-adjusted p (families: the overall lines of one contrast; each signal's "
        "categories and tasks). per nat learned: each forgetting signal ÷ the in-domain gain (loss decrease, "
        "nats/token), B's ratio − A's, from the same resamples. Seed SD: between-seed SD of each arm's value."
    )


def _contrast_value(x: ContrastLine) -> Cell:
    text = fmt_signal(x.estimate) + ("*" if x.significant else "")
    if x.ci is not None:
        text += f" [{fmt_signal(x.ci[0])}, {fmt_signal(x.ci[1])}]"
    tone = None
    if x.significant:
        b_better = x.estimate < 0 if x.better == "lower" else x.estimate > 0
        tone = "pos" if b_better else "neg"
    return Cell(text, tone, bool(x.significant))  # type: ignore[arg-type]


def _sd_text(sd: tuple[float | None, float | None]) -> str:
    return " / ".join(NA if v is None else fmt_signal(v) for v in sd)


def contrast_table(report: ComparisonReport, c: ContrastResult) -> TableSpec:
    """One contrast: every signal's B − A at every scope, its arms' values, p (Holm) and the verdicts."""
    level = f"{100 * report.settings.confidence:g}%"
    seeds = c.level != "items"
    cols = ["Signal", "Scope", f"{c.b} − {c.a} ({level} CI)", f"A: {c.a}", f"B: {c.b}", "p (Holm)", "n"]
    spec = TableSpec(
        f"Contrast {c.label} ({c.level}: {len(c.runs_a)} vs {len(c.runs_b)} run(s))",
        cols + (["Seed SD A / B"] if seeds else []),
        ["l", "l", "r", "r", "r", "r", "r"] + (["r"] if seeds else []),
    )
    for x in c.lines:
        row = [Cell(f"{x.label} ({x.unit})"), Cell(x.scope), _contrast_value(x), Cell(fmt_signal(x.mean_a)),
               Cell(fmt_signal(x.mean_b)), Cell(f"{fmt_p(x.p)} ({fmt_p(x.p_adj)})"), Cell(str(x.n))]  # fmt: skip
        spec.rows.append(row + ([Cell(_sd_text(x.seed_sd))] if seeds else []))
    line_notes = dict.fromkeys(f"{x.label}: {x.note}" for x in c.lines if x.note and not x.per_nat)
    spec.notes = [*c.verdicts, *c.notes, *line_notes]
    if seeds:
        spec.notes.append(f"A = {c.a}: {', '.join(c.runs_a)}; B = {c.b}: {', '.join(c.runs_b)}")
    spec.notes.append(_contrast_legend(report))
    return spec


def seed_group_table(report: ComparisonReport) -> TableSpec | None:
    """Seeds as replicates: each method's mean and between-seed SD of every signal, with each seed's value."""
    if not report.groups:
        return None
    spec = TableSpec(
        "Seeds as replicates (vs base)",
        ["Group", "Seeds", "Signal", "Scope", "Mean", "Seed SD", "Per seed"],
        ["l", "r", "l", "l", "r", "r", "l"],
    )
    for g in report.groups:
        for r in g.rows:
            per = ", ".join(MISSING if v is None else fmt_signal(v) for v in r.values)
            spec.rows.append([Cell(g.name), Cell(str(len(g.runs))), Cell(f"{r.label} ({r.unit})"), Cell(r.scope),
                              Cell(MISSING if r.mean is None else fmt_signal(r.mean)),
                              Cell(NA if r.sd is None else fmt_signal(r.sd)), Cell(per)])  # fmt: skip
        spec.notes.append(f"{g.name}: {', '.join(g.runs)} ({g.source})")
        if g.note:
            spec.notes.append(g.note)
    spec.notes.append("Seed SD: sample SD (n − 1) over the group's seeds of each run's value against the base; "
                      f"{NA} for a group of one seed (no estimate of seed noise).")  # fmt: skip
    return spec


def layout(report: ComparisonReport) -> list[TableSpec]:
    """All tables of a report, in display order; a footnote already printed under an earlier table is not repeated."""
    signal_specs = [t for t in (signals_table(report), signal_scope_table(report)) if t is not None]
    seed_specs = [t for t in (seed_group_table(report),) if t is not None]
    specs = [
        summary_table(report),
        delta_table(report),
        *signal_specs,
        *seed_specs,
        *(contrast_table(report, c) for c in report.contrasts),
        *(task_table(report, c) for c in report.comparisons),
    ]
    seen: set[str] = set()
    for spec in specs:
        spec.notes = [n for n in _dedup(spec.notes) if n not in seen]
        seen.update(spec.notes)
    return specs


def _dedup(notes: list[str]) -> list[str]:
    return list(dict.fromkeys(notes))


# -- Markdown / HTML / rich -------------------------------------------------------------------------
def _md_escape(text: str) -> str:
    return text.replace("|", r"\|")


def to_markdown(report: ComparisonReport) -> str:
    """GitHub-flavoured Markdown, paste-ready for a README.

    No bold for significance: ``*`` already marks it, and ``**-1.23***`` parses ambiguously.
    """
    out: list[str] = ["**Summary**\n", *(f"{_md_escape(x)}  " for x in summary_sentences(report)), ""]
    for spec in layout(report):
        out.append(f"### {_md_escape(spec.title)}\n")
        out.append("| " + " | ".join(_md_escape(c) for c in spec.columns) + " |")
        out.append("|" + "|".join(":---" if a == "l" else "---:" for a in spec.align) + "|")
        for row in spec.rows:
            out.append("| " + " | ".join(_md_escape(c.text) for c in row) + " |")
        notes = _dedup(spec.notes)
        if notes:
            out.append("")
            out.extend(f"{_md_escape(n)}  " for n in notes)
        out.append("")
    return "\n".join(out).rstrip() + "\n"


#: Widest a terminal table may be; wider specs are split into column groups that repeat the key columns.
TERMINAL_WIDTH = 120


def _rich_table(spec: TableSpec, cols: list[int], title: str) -> Any:
    from rich.table import Table
    from rich.text import Text

    styles = {"neg": "red", "pos": "green", None: ""}
    table = Table(title=title, title_justify="left", title_style="bold", show_edge=False, pad_edge=False)
    for i in cols:
        a = spec.align[i]
        table.add_column(spec.columns[i], justify="left" if a == "l" else "right", no_wrap=i not in spec.wrap)
    for row in spec.rows:
        cells = [row[i] for i in cols]
        table.add_row(*(Text(c.text, style=(styles[c.tone] + (" bold" if c.strong else "")).strip()) for c in cells))
    return table


def _fit_columns(spec: TableSpec, limit: int = TERMINAL_WIDTH) -> list[Any]:
    """The spec as one or more rich tables, each at most ``limit`` columns wide at its natural width.

    Columns are added greedily after the key columns (the row labels: Category and Task, Signal and
    Scope, or the first column), which every part repeats so each part reads alone.
    """
    from rich.console import Console

    key = [0, 1] if spec.columns[:2] in (["Category", "Task"], ["Signal", "Scope"]) else [0]
    parts: list[list[int]] = [list(key)]
    with open(os.devnull, "w", encoding="utf-8") as sink:
        measure = Console(width=4 * limit, file=sink)
        for i in range(len(key), len(spec.columns)):
            trial = [*parts[-1], i]
            if len(parts[-1]) > len(key) and measure.measure(_rich_table(spec, trial, spec.title)).maximum > limit:
                parts.append([*key, i])
            else:
                parts[-1] = trial
    titles = [spec.title] + [f"{spec.title} (cont.)"] * (len(parts) - 1)
    return [_rich_table(spec, cols, title) for cols, title in zip(parts, titles, strict=True)]


def to_rich(report: ComparisonReport) -> Group:
    """Terminal view: Δ red (worse) / green (better), bold when significant; tables ≤ 120 columns."""
    from rich.console import Group
    from rich.text import Text

    renderables: list[Any] = [Text(x) for x in summary_sentences(report)] + [Text("")]
    for spec in layout(report):
        renderables.extend(_fit_columns(spec))
        renderables.extend(Text(n, style="dim") for n in _dedup(spec.notes))
        renderables.append(Text(""))
    return Group(*renderables)


# -- machine-readable -------------------------------------------------------------------------------
def _finite(x: float | None) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def _coverage_dict(cov: Coverage) -> dict[str, Any]:
    out = {"present": list(cov.present), "missing": list(cov.missing), "label": cov.label, "partial": cov.partial}
    out["missing_reasons"] = dict(cov.reasons)
    if cov.categories_total is not None:
        out["categories"] = cov.categories
        out["categories_total"] = cov.categories_total
    return out


def _agg_dict(report: ComparisonReport, agg: AggregateDelta) -> dict[str, Any]:
    return {
        "ref_score": _finite(agg.ref_mean),
        "score": _finite(agg.other_mean),
        "delta": _finite(agg.delta),
        "ci": list(agg.ci) if agg.ci is not None else None,
        "p": _finite(agg.p),
        "test": agg.test,
        "p_holm": _finite(agg.p_adj),
        "holm_m": agg.holm_m,
        "mde": _finite(agg.mde),
        "significant": report.aggregate_significant(agg),
        "coverage": _coverage_dict(agg.coverage),
    }


def _label_prior_dicts(report: ComparisonReport) -> list[dict[str, Any]]:
    return [
        {"run": run, "task": task, "n": f.n, "top_choice": f.top_choice, "top_count": f.top_count,
         "accuracy": f.accuracy, "majority_share": f.majority_share, "ci": list(f.ci), "one_choice": f.one_choice,
         "at_majority": f.at_majority, "text": f.describe()}
        for (run, task), f in report.label_prior.items()
    ]  # fmt: skip


def _task_dict(t: TaskRow) -> dict[str, Any]:
    return {
        "task": t.task,
        "category": t.category,
        "group": t.group,
        "ref_score": _finite(t.ref_score),
        "score": _finite(t.score),
        "delta": _finite(t.delta),
        "ci": list(t.ci) if t.ci is not None else None,
        "p_mcnemar": _finite(t.p_mcnemar),
        "p": _finite(t.p),
        "test": t.test,
        "p_holm": _finite(t.p_adj),
        "holm_m": t.holm_m,
        "mde": _finite(t.mde),
        "significant": t.significant,
        "forgotten": t.forgotten,
        "gained": t.gained,
        "n": t.n,
        "dropped_ref": t.dropped_ref,
        "dropped_run": t.dropped_other,
        "item_level": t.item_level,
        "unpaired": t.unpaired,
        "label_prior": t.label_prior,
    }


def report_to_dict(report: ComparisonReport) -> dict[str, Any]:
    """Everything, including CIs and coverage; values are fractions in [0, 1] (not ×100)."""
    s = report.settings
    return {
        "scale": "fraction",
        "base": report.base,
        "tuned": list(report.tuned),
        "categories": {k: list(v) for k, v in report.categories.items()},
        "extras": list(report.extras),
        "settings": {
            "n_boot": s.n_boot,
            "seed": s.seed,
            "confidence": s.confidence,
            "alpha": s.alpha,
            "ci_method": "paired percentile bootstrap, stratified by task for aggregates",
            "test": (
                "per quantity: McNemar exact (two-sided binomial on discordant pairs) for a 0/1 item mean; "
                "two-sided bootstrap p otherwise (subject means, non-0/1 metrics, categories, AVG); an aggregate "
                "of one task takes that task's test"
            ),
            "multiplicity": "Holm within families: the task rows of one comparison; its categories + AVG; "
            "significant = Holm-adjusted p < alpha; holm_m = tests in the family (1: nothing adjusted, see holm_lines)",
        },
        "rows": [
            {
                "run": r.run,
                "categories": {
                    c.name: {"score": _finite(c.score), "coverage": _coverage_dict(c.coverage)}
                    for c in r.categories.values()
                },
                "avg": {"score": _finite(r.avg.score), "coverage": _coverage_dict(r.avg.coverage)},
                "tasks": {k: _finite(v) for k, v in r.tasks.items()},
            }
            for r in report.rows
        ],
        "comparisons": [
            {
                "ref": c.ref,
                "run": c.run,
                "kind": c.kind,
                "label": c.label,
                "categories": {
                    name: {**_agg_dict(report, a), "flagged_tasks": report.flagged(c, a)}
                    for name, a in c.categories.items()
                },
                "avg": {**_agg_dict(report, c.avg), "flagged_tasks": report.flagged(c, c.avg)},
                "tasks": [_task_dict(t) for t in c.tasks],
                "notes": list(c.notes),
            }
            for c in report.comparisons
        ],
        "signals": {run: [_signal_dict(x) for x in sigs] for run, sigs in report.signals.items()},
        "contrasts": [_contrast_dict(c) for c in report.contrasts],
        "groups": [_group_dict(g) for g in report.groups],
        "noise_floor": report.noise_floor.to_dict() if report.noise_floor is not None else None,
        "summary": summary_sentences(report),
        "label_prior": _label_prior_dicts(report),
        "label_prior_lines": label_prior_lines(report),
        "holm_lines": holm_lines(report),
    }


def _line_dict(x: ContrastLine) -> dict[str, Any]:
    return {
        "signal": x.signal, "label": x.label, "unit": x.unit, "kind": x.kind, "better": x.better, "scope": x.scope,
        "per_nat": x.per_nat, "estimate": _finite(x.estimate), "ci": list(x.ci) if x.ci is not None else None,
        "p": _finite(x.p), "p_holm": _finite(x.p_adj), "significant": x.significant, "n": x.n,
        "mean_a": _finite(x.mean_a), "mean_b": _finite(x.mean_b), "seed_sd": list(x.seed_sd), "level": x.level,
        "note": x.note,
    }  # fmt: skip


def _contrast_dict(c: ContrastResult) -> dict[str, Any]:
    """A contrast as report.json holds it: both arms and their runs, every line, the verdicts."""
    return {"a": c.a, "b": c.b, "label": c.label, "runs_a": list(c.runs_a), "runs_b": list(c.runs_b),
            "level": c.level, "lines": [_line_dict(x) for x in c.lines], "verdicts": list(c.verdicts),
            "notes": list(c.notes)}  # fmt: skip


def _group_dict(g: SeedGroup) -> dict[str, Any]:
    rows = [{"signal": r.signal, "label": r.label, "unit": r.unit, "scope": r.scope, "values": list(r.values),
             "mean": _finite(r.mean), "sd": _finite(r.sd)} for r in g.rows]  # fmt: skip
    return {"name": g.name, "runs": list(g.runs), "source": g.source, "note": g.note, "rows": rows}


def _signal_dict(s: Signal) -> dict[str, Any]:
    out = s.to_dict()
    for key in ("value", "floor", "floor_multiple"):
        out[key] = _finite(out[key])
    return out


FRAME_COLUMNS = [
    "section",
    "kind",
    "ref",
    "run",
    "level",
    "category",
    "task",
    "group",
    "ref_score",
    "score",
    "delta",
    "ci_low",
    "ci_high",
    "p_mcnemar",
    "p",
    "test",
    "p_holm",
    "holm_m",
    "mde",
    "significant",
    "forgotten",
    "gained",
    "n",
    "dropped_ref",
    "dropped_run",
    "coverage_present",
    "coverage_total",
    "partial",
    "item_level",
    "unpaired",
    "label_prior",
    "flagged_tasks",
    # section="signal" rows (learned/forgot signals attached to the report), in the signal's unit:
    "signal",
    "signal_kind",
    "scope",
    "value",
    "unit",
    "floor",
    "floor_ci_low",
    "floor_ci_high",
    "floor_multiple",
    "floor_nil",
    "better",
    "note",
    # section="contrast" rows (ref = arm A, run = arm B, value = B − A) and section="group" rows (seed groups):
    "seed_sd_ref",
    "seed_sd_run",
]


def _score_records(report: ComparisonReport) -> list[dict[str, Any]]:
    """``section="score"`` rows: what each run scored per category, AVG and task."""
    recs: list[dict[str, Any]] = []
    cat_of = {t: c for c, m in report.categories.items() for t in m}
    for r in report.rows:
        for c in [*r.categories.values(), r.avg]:
            recs.append(
                {
                    "section": "score",
                    "run": r.run,
                    "level": "avg" if c.name == "AVG" else "category",
                    "category": c.name,
                    "score": c.score,
                    "coverage_present": len(c.coverage.present),
                    "coverage_total": c.coverage.total,
                    "partial": c.coverage.partial,
                }
            )
        for task, value in r.tasks.items():
            recs.append(
                {
                    "section": "score",
                    "run": r.run,
                    "level": "task",
                    "category": cat_of.get(task),
                    "task": task,
                    "score": value,
                }
            )
    return recs


def _delta_records(report: ComparisonReport) -> list[dict[str, Any]]:
    """``section="delta"`` rows: every comparison's Δ per task, subgroup, category and AVG."""
    recs: list[dict[str, Any]] = []
    for cmp in report.comparisons:
        common = {"section": "delta", "kind": cmp.kind, "ref": cmp.ref, "run": cmp.run}
        for t in cmp.tasks:
            recs.append(
                {
                    **common,
                    "level": "subgroup" if t.group else "task",
                    "category": t.category,
                    "task": t.task,
                    "group": t.group,
                    "ref_score": t.ref_score,
                    "score": t.score,
                    "delta": t.delta,
                    "ci_low": t.ci[0] if t.ci else None,
                    "ci_high": t.ci[1] if t.ci else None,
                    "p_mcnemar": t.p_mcnemar,
                    "p": t.p,
                    "test": t.test,
                    "p_holm": t.p_adj,
                    "holm_m": t.holm_m,
                    "mde": t.mde,
                    "significant": t.significant,
                    "forgotten": t.forgotten,
                    "gained": t.gained,
                    "n": t.n,
                    "dropped_ref": t.dropped_ref,
                    "dropped_run": t.dropped_other,
                    "item_level": t.item_level,
                    "unpaired": t.unpaired,
                    "label_prior": t.label_prior,
                }
            )
        for agg in [*cmp.categories.values(), cmp.avg]:
            recs.append(
                {
                    **common,
                    "level": "avg" if agg is cmp.avg else "category",
                    "category": agg.name,
                    "ref_score": agg.ref_mean,
                    "score": agg.other_mean,
                    "delta": agg.delta,
                    "ci_low": agg.ci[0] if agg.ci else None,
                    "ci_high": agg.ci[1] if agg.ci else None,
                    "p": agg.p,
                    "test": agg.test,
                    "p_holm": agg.p_adj,
                    "holm_m": agg.holm_m,
                    "mde": agg.mde,
                    "significant": report.aggregate_significant(agg),
                    "coverage_present": len(agg.coverage.present),
                    "coverage_total": agg.coverage.total,
                    "partial": agg.coverage.partial,
                    "flagged_tasks": report.flagged(cmp, agg),
                }
            )
    return recs


def report_to_frame(report: ComparisonReport) -> pd.DataFrame:
    """Tidy long table: ``section="score"`` rows hold what each run scored, ``"delta"`` rows the Δs."""
    recs = _score_records(report) + _delta_records(report)
    recs += _signal_records(report) + _floor_records(report) + _contrast_records(report) + _group_records(report)
    frame = pd.DataFrame.from_records(recs, columns=FRAME_COLUMNS)
    for col in ("forgotten", "gained", "n", "dropped_ref", "dropped_run", "coverage_present", "coverage_total",
                "flagged_tasks", "holm_m"):  # fmt: skip
        frame[col] = frame[col].astype("Int64")
    for col in ("significant", "partial", "item_level", "unpaired", "label_prior", "floor_nil"):
        frame[col] = frame[col].astype("boolean")
    for col in ("ref_score", "score", "delta", "ci_low", "ci_high", "p_mcnemar", "p", "p_holm", "mde", "value",
                "floor",
                "floor_ci_low", "floor_ci_high", "floor_multiple", "seed_sd_ref", "seed_sd_run"):  # fmt: skip
        frame[col] = frame[col].astype("float64")
    return frame


def _signal_records(report: ComparisonReport) -> list[dict[str, Any]]:
    """One ``section="signal"`` row per attached signal; ``level`` says what its scope is."""
    tasks = _task_scopes(report)
    cat_of = {t: c for c, m in report.categories.items() for t in m}
    recs = []
    for run, sigs in report.signals.items():
        for s in sigs:
            if s.scope == "all":
                level, category, task = "avg", None, None
            elif s.scope in report.categories:
                level, category, task = "category", s.scope, None
            elif s.scope in tasks:
                level, category, task = "task", cat_of.get(s.scope), s.scope
            else:
                level, category, task = "scope", None, None
            recs.append(
                {
                    "section": "signal", "kind": "base", "ref": report.base, "run": run, "level": level,
                    "category": category, "task": task, "ci_low": s.ci[0] if s.ci else None,
                    "ci_high": s.ci[1] if s.ci else None, "significant": s.significant, "n": s.n,
                    "signal": s.name, "signal_kind": s.kind, "scope": s.scope, "value": s.value, "unit": s.unit,
                    "floor": s.floor, "floor_ci_low": s.floor_ci[0] if s.floor_ci else None,
                    "floor_ci_high": s.floor_ci[1] if s.floor_ci else None, "better": s.better, "note": s.note,
                    "p": s.p, "p_holm": s.p_adj, "holm_m": s.holm_m, "floor_multiple": s.floor_multiple,
                    "floor_nil": s.floor_nil if s.floor is not None else None,
                }
            )  # fmt: skip
    return recs


def _floor_records(report: ComparisonReport) -> list[dict[str, Any]]:
    """``section="noise_floor"`` rows: the floor's flips (overall over the tasks in AVG, then per task; ``note``
    says what it changed) and its overall value per divergence (``signal``, ``value``, ``floor_nil``)."""
    nf = report.noise_floor
    if nf is None:
        return []
    common = {"section": "noise_floor", "kind": "floor", "ref": report.base, "run": nf.run, "note": nf.change}
    recs: list[dict[str, Any]] = []
    parts = [("avg", None, nf.flips), *(("task", t, f) for t, f in nf.tasks.items())]
    for level, task, f in parts:
        if f is not None:
            recs.append({**common, "level": level, "task": task, "forgotten": f.forgotten, "gained": f.gained,
                         "n": f.n})  # fmt: skip
    for name, v in nf.values.items():
        recs.append({**common, "level": "avg", "signal": name, "value": v, "floor_nil": abs(v) < NIL_FLOOR})
    return recs


def _contrast_records(report: ComparisonReport) -> list[dict[str, Any]]:
    """``section="contrast"`` rows: ref = arm A, run = arm B, value = B − A in the signal's unit, note = verdict."""
    recs = []
    for c in report.contrasts:
        verdicts = dict(zip([x for x in c.lines if x.scope == "all"], c.verdicts, strict=True))
        for x in c.lines:
            recs.append({
                "section": "contrast", "kind": "per_nat" if x.per_nat else c.level, "ref": c.a, "run": c.b,
                "level": "avg" if x.scope == "all" else "scope", "scope": x.scope, "signal": x.signal,
                "signal_kind": x.kind, "value": x.estimate, "unit": x.unit, "better": x.better,
                "ci_low": x.ci[0] if x.ci else None, "ci_high": x.ci[1] if x.ci else None, "p": x.p, "p_holm": x.p_adj,
                "significant": x.significant, "n": x.n, "ref_score": x.mean_a, "score": x.mean_b,
                "seed_sd_ref": x.seed_sd[0], "seed_sd_run": x.seed_sd[1], "note": verdicts.get(x, x.note),
            })  # fmt: skip
    return recs


def _group_records(report: ComparisonReport) -> list[dict[str, Any]]:
    """``section="group"`` rows: run = the group, value = the seeds' mean, seed_sd_run = their SD, n = seeds."""
    return [
        {"section": "group", "kind": "seeds", "ref": report.base, "run": g.name, "level": "avg" if r.scope == "all"
         else "scope", "scope": r.scope, "signal": r.signal, "value": r.mean, "unit": r.unit, "seed_sd_run": r.sd,
         "n": len(g.runs), "note": g.note}
        for g in report.groups for r in g.rows
    ]  # fmt: skip


# ---- whole-report writers: the data model holds no formatting, these functions do -------------------------


def to_json(report: ComparisonReport, path: str | Path | None = None, *, indent: int = 2) -> str:
    """Strict JSON (no NaN), fractions in [0, 1]; also written to ``path`` if given."""
    text = json.dumps(report_to_dict(report), indent=indent, ensure_ascii=False, allow_nan=False)
    if path is not None:
        Path(path).write_text(text + "\n", encoding="utf-8")
    return text


def to_csv(report: ComparisonReport, path: str | Path | None = None) -> str:
    """Tidy long table (one row per score or Δ), fractions in [0, 1] at full precision."""
    text = frame_to_csv(report_to_frame(report))
    if path is not None:
        Path(path).write_text(text, encoding="utf-8")
    return text


def report_console() -> Console:
    """stdout at most :data:`TERMINAL_WIDTH` columns: a narrower terminal keeps its width, a pipe or a log
    gets exactly that (rich would assume 80 there), so the prose around the tables wraps where they end."""
    import sys

    from rich.console import Console

    width = min(Console().width, TERMINAL_WIDTH) if sys.stdout.isatty() else TERMINAL_WIDTH
    return Console(width=width)


def print_report(report: ComparisonReport, console: Console | None = None) -> None:
    """Print the coloured terminal view (on :func:`report_console` unless a console is given)."""
    (console or report_console()).print(to_rich(report))
