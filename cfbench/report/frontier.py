"""The learning-forgetting trade-off picture: one point per tuned checkpoint, gain on x, forgetting on y.

x is what the fine-tune learned (an in-domain signal, oriented so that right = learned more); y is
what it cost on general ability (accuracy Δ AVG, perplexity drift, choice KL, ... in the signal's
own unit, with the axis saying which way is better). The base model is the origin. Both whiskers
are the producers' paired bootstrap intervals, so a point claims no more than its numbers; Wise-FT
merges of one run form a ``series`` drawn as a line, tracing the path from the tuned run back to
the base. Inputs are :class:`cfbench.signals.Signal` records (``kind`` learned / forgot) or plain
numbers, never a producer's internals: a new signal needs no code here.

One panel per forgetting signal (e.g. accuracy Δ AVG next to text drift), all sharing the x signal.
Each contrast B − A of the report (:class:`cfbench.report.contrast.ContrastResult`) can be drawn as an
arrow from A's point to B's (a seed group's point: the mean of its seeds' points).
matplotlib is imported inside the functions (Agg backend), as in :mod:`cfbench.report.plot`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from cfbench.errors import CfbenchError
from cfbench.report.contrast import ContrastResult
from cfbench.signals import Signal

if TYPE_CHECKING:
    from matplotlib.figure import Figure

POINT_GID = "frontier-point"
BASE_GID = "frontier-base"
ARROW_GID = "frontier-arrow"


@dataclass(frozen=True)
class Measure:
    """One axis value of one point: the number, its 95% interval, unit and which way is better."""

    name: str
    label: str
    value: float
    unit: str
    ci: tuple[float, float] | None = None
    better: Literal["higher", "lower"] = "higher"
    significant: bool | None = None

    @classmethod
    def from_signal(cls, s: Signal) -> Measure:
        return cls(s.name, s.label, s.value, s.unit, s.ci, s.better, s.significant)

    def oriented(self) -> Measure:
        """The same measure with ``better == "higher"`` (negated when lower was better): a gain."""
        if self.better == "higher":
            return self
        ci = None if self.ci is None else (-self.ci[1], -self.ci[0])
        return replace(self, label=f"−{self.label}", value=-self.value, ci=ci, better="higher")


@dataclass(frozen=True)
class FrontierPoint:
    """A tuned checkpoint: what it learned, what it forgot; ``series`` joins e.g. one run's Wise-FT merges."""

    label: str
    learned: Measure
    forgot: Measure
    series: str | None = None

    @classmethod
    def from_signals(cls, label: str, learned: Signal, forgot: Signal, series: str | None = None) -> FrontierPoint:
        """Build from producers' records; refuses a learned/forgot mix-up rather than plot it."""
        if learned.kind != "learned":
            raise CfbenchError(f"{label}: x signal {learned.name!r} is kind {learned.kind!r}; pass a 'learned' signal")
        if forgot.kind != "forgot":
            raise CfbenchError(f"{label}: y signal {forgot.name!r} is kind {forgot.kind!r}; pass a 'forgot' signal")
        return cls(label, Measure.from_signal(learned), Measure.from_signal(forgot), series)


def _check(points: Sequence[FrontierPoint]) -> None:
    if not points:
        raise CfbenchError("the trade-off plot needs at least one tuned checkpoint (point)")
    keys = [(p.label, p.forgot.name) for p in points]
    if len(set(keys)) != len(keys):
        dup = sorted({k[0] for k in keys if keys.count(k) > 1})
        raise CfbenchError(
            f"trade-off points must have distinct labels within one forgetting signal; repeated: {', '.join(dup)}"
        )
    x0 = points[0].learned
    for p in points:
        for axis, m in (("learned", p.learned), ("forgot", p.forgot)):
            if not math.isfinite(m.value):
                raise CfbenchError(f"{p.label}: {axis} value {m.name} is {m.value}; only finite numbers can be drawn")
            if m.ci is not None and not (m.ci[0] <= m.value <= m.ci[1]):
                raise CfbenchError(
                    f"{p.label}: {axis} interval {m.ci} of {m.name} does not contain its value {m.value}: "
                    "pass (low, high) around the value"
                )
        if (p.learned.name, p.learned.unit, p.learned.better) != (x0.name, x0.unit, x0.better):
            raise CfbenchError(
                f"{p.label}: x signal {p.learned.name} ({p.learned.unit}) differs from {points[0].label}'s "
                f"{x0.name} ({x0.unit}): every point of one plot needs the same learned signal"
            )


def _panels(points: Sequence[FrontierPoint]) -> list[list[FrontierPoint]]:
    """Points grouped by forgetting signal (name, unit), in first-seen order."""
    order: dict[tuple[str, str], list[FrontierPoint]] = {}
    for p in points:
        order.setdefault((p.forgot.name, p.forgot.unit), []).append(p)
    for (name, _), ps in order.items():
        if len({p.forgot.better for p in ps}) > 1:
            raise CfbenchError(f"forgetting signal {name} is 'higher is better' for some points and not others")
    return list(order.values())


def _err(m: Measure) -> list[list[float]] | None:
    if m.ci is None:
        return None
    return [[m.value - m.ci[0]], [m.ci[1] - m.value]]


def _centroid(ps: Sequence[FrontierPoint], runs: Sequence[str]) -> tuple[float, float] | None:
    """Where an arm sits in one panel: the mean of its runs' points (None if one of them is not drawn there)."""
    mine = [p for p in ps if p.label in runs]
    if len(mine) != len(runs):
        return None
    xs = [p.learned.oriented().value for p in mine]
    ys = [p.forgot.value for p in mine]
    return sum(xs) / len(xs), sum(ys) / len(ys)


def _draw_arrows(ax: object, ps: Sequence[FrontierPoint], arrows: Sequence[ContrastResult]) -> None:
    """One arrow per contrast, from A to B, labelled ``B − A``; gid :data:`ARROW_GID`."""
    for c in arrows:
        start, end = _centroid(ps, c.runs_a), _centroid(ps, c.runs_b)
        if start is None or end is None or start == end:
            continue
        ann = ax.annotate(  # type: ignore[attr-defined]
            "", xy=end, xytext=start, arrowprops={"arrowstyle": "->", "color": "0.25", "lw": 1.3}, zorder=3
        )
        ann.set_gid(ARROW_GID)
        mid = ((start[0] + end[0]) / 2, (start[1] + end[1]) / 2)
        ax.annotate(c.label, mid, xytext=(4, -10), textcoords="offset points", fontsize=7, color="0.25")  # type: ignore[attr-defined]


def frontier_figure(
    points: Sequence[FrontierPoint], *, title: str | None = None, base_label: str = "base",
    arrows: Sequence[ContrastResult] = (),
) -> Figure:  # fmt: skip
    """The trade-off figure (not saved): one axes per forgetting signal, one errorbar per point.

    Each point is one ``errorbar`` container whose line carries gid :data:`POINT_GID`; the base at
    the origin carries :data:`BASE_GID`; each contrast in ``arrows`` is an arrow from A to B with gid
    :data:`ARROW_GID` (tests and callers can count what was drawn).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    _check(points)
    panels = _panels(points)
    fig, axes = plt.subplots(1, len(panels), figsize=(6.2 * len(panels), 5.0), squeeze=False)
    keys = list(dict.fromkeys(p.series or p.label for p in points))
    colors = {k: f"C{i % 10}" for i, k in enumerate(keys)}
    for ax, ps in zip(axes[0], panels, strict=True):
        ax.axhline(0, color="0.6", lw=0.8, zorder=0)
        ax.axvline(0, color="0.6", lw=0.8, zorder=0)
        (base,) = ax.plot([0], [0], marker="*", ms=13, color="black", ls="none", label=base_label, zorder=5)
        base.set_gid(BASE_GID)
        ax.annotate(base_label, (0, 0), xytext=(6, -12), textcoords="offset points", fontsize=8)
        series: dict[str, list[tuple[float, float]]] = {}
        for p in ps:
            x, y = p.learned.oriented(), p.forgot
            color = colors[p.series or p.label]
            # Hollow marker: the general-ability change is not significant (CI includes 0 / not above floor).
            sig = y.significant if y.significant is not None else (y.ci is not None and (y.ci[0] > 0 or y.ci[1] < 0))
            cont = ax.errorbar(
                x.value, y.value, xerr=_err(x), yerr=_err(y), fmt="o", ms=7, capsize=3, color=color,
                mfc=color if sig else "white", mec=color, elinewidth=1.1, zorder=4,
            )  # fmt: skip
            cont.lines[0].set_gid(POINT_GID)
            ax.annotate(p.label, (x.value, y.value), xytext=(6, 5), textcoords="offset points", fontsize=8)
            if p.series is not None:
                series.setdefault(p.series, []).append((x.value, y.value))
        for name, xy in series.items():
            if len(xy) > 1:
                xs, ys = zip(*xy, strict=True)
                ax.plot(xs, ys, ls="--", lw=0.9, color=colors[name], zorder=2)
        _draw_arrows(ax, ps, arrows)
        x0, y0 = ps[0].learned.oriented(), ps[0].forgot
        ax.set_xlabel(f"learned: {x0.label} ({x0.unit}), → more learned")
        arrow = "↑" if y0.better == "higher" else "↓"
        ax.set_ylabel(f"general: {y0.label} ({y0.unit}), {arrow} better")
        ax.set_title(f"{y0.label} vs {x0.label}", fontsize=10)
        ax.grid(alpha=0.3)
    fig.suptitle(title or "Learning vs forgetting (95% CIs; filled: general change significant)", fontsize=11)
    fig.tight_layout()
    return fig


def plot_frontier(
    points: Sequence[FrontierPoint],
    path: str | Path,
    *,
    title: str | None = None,
    base_label: str = "base",
    dpi: int = 150,
    arrows: Sequence[ContrastResult] = (),
) -> Path:
    """Write the trade-off PNG to ``path`` (atomically) and return the path; ``arrows``: contrasts A → B."""
    import os

    import matplotlib.pyplot as plt

    path = Path(path)
    if not path.parent.is_dir():
        raise CfbenchError(
            f"cannot write {path}: folder {path.parent} does not exist; create it or choose another path"
        )
    fig = frontier_figure(points, title=title, base_label=base_label, arrows=arrows)
    tmp = path.with_name(f".{path.name}.tmp-pid{os.getpid()}-png")  # a killed writer's is found by its pid
    try:
        fig.savefig(tmp, dpi=dpi, format="png")
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if tmp.exists():
            tmp.unlink()
    return path
