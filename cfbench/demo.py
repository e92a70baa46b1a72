"""``cfbench demo`` as a library: fine-tune, merge, score, and the learning-vs-forgetting picture.

SmolLM2-135M-Instruct is fine-tuned twice on one narrow offline data set, compute-matched as in
the paper (AdamW for 2× the steps vs SAM), the w/o SAM run is Wise-FT-merged back towards the base
at one or more alphas, and base plus every tuned checkpoint are compared on the offline suite. The
defaults come from the measured sweep in ``docs/demo.md`` (``benchmarks/demo_sweep.py``): the
smallest run on a 2-core CPU whose w/o SAM checkpoint both measurably learns and measurably drifts.

Signals, all :class:`cfbench.signals.Signal` records from the producers on main: learned — the
in-domain gain on a held-out split of the fine-tune data (:mod:`cfbench.train.indomain`; the
Wise-FT merges inherit w/o SAM's split); forgot — accuracy Δ AVG (:func:`accuracy_signals`), the
item-metric drift compare attaches (choice KL / JS / gold margin, judged against a re-score of the
base in bfloat16 as noise floor, ``--floor``; :mod:`cfbench.metrics`) and held-out LAMBADA
perplexity drift (:mod:`cfbench.metrics.ppl_drift`). The trade-off plot (:mod:`cfbench.report.frontier`)
draws in-domain gain against accuracy Δ AVG, overall KL and perplexity drift.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cfbench.errors import CfbenchError
from cfbench.signals import Signal

BASE = "smollm2-135m"
BASE_LABEL = "SmolLM2-135M-Instruct"
WO, W = "w/o SAM", "w/ SAM"
#: Forgetting signals drawn as panels of the trade-off plot (all stay in the report).
PANELS = ("acc_avg", "kl", "ppl_drift")
#: ``--floor`` choices (the first is the default; measured in docs/metrics.md).
DEMO_FLOORS = ("dtype", "plain", "none")


@dataclass(frozen=True)
class DemoConfig:
    """What the demo trains and scores; defaults are the sweep's choice (docs/demo.md)."""

    base: str = BASE  # tests pass a tiny checkpoint
    data: str = "builtin:arithmetic"
    steps: int = 8  # SAM steps; AdamW gets 2×
    lr: float = 3e-4
    batch_size: int = 8
    max_length: int = 128
    sam_optimizer: str = "sam"
    rho: float = 0.05
    alphas: tuple[float, ...] = (0.5,)
    limit: int = 50
    mmlu_limit: int = 2
    seed: int = 0
    heldout: int = 100  # in-domain documents held out of training (cfbench.train.indomain)
    #: The noise floor drift is judged against (compare --noise-floor): ``dtype`` re-scores the base in bfloat16
    #: (KL 7.7e-4 on this setup, 36-77 s on a 2-core CPU with AMX; docs/metrics.md), ``plain`` the fp32 plain path
    #: (~1e-11: numerically nil, stars nothing), ``none`` leaves divergences unjudged.
    floor: str = "dtype"
    ppl_limit: int = 64  # LAMBADA passages for the held-out perplexity drift (0: skip)

    def check(self) -> None:
        from cfbench.train.merge import parse_alphas

        if self.steps < 1 or self.batch_size < 1 or self.max_length < 8:
            raise CfbenchError("--steps and --batch-size must be >= 1 and --max-length >= 8")
        if self.heldout < 1 or self.ppl_limit < 0:
            raise CfbenchError("--heldout must be >= 1 (the learned axis needs it) and --ppl-limit >= 0")
        if self.floor not in DEMO_FLOORS:
            raise CfbenchError(f"--floor {self.floor!r}: choose one of {', '.join(DEMO_FLOORS)}")
        if self.limit < 1 or self.mmlu_limit < 1:
            raise CfbenchError("--limit and --mmlu-limit must be >= 1 (documents per task / per MMLU subject)")
        alphas = parse_alphas(list(self.alphas))
        if any(a in (0.0, 1.0) for a in alphas):
            raise CfbenchError("--alpha values 0 and 1 are the base and w/o SAM themselves: pick values inside (0, 1)")


@dataclass
class DemoResult:
    """The checkpoints (label → path), the report, the signals behind the plot and the timings."""

    checkpoints: dict[str, Path]
    report: Any
    learned: dict[str, list[Signal]]
    forgot: dict[str, list[Signal]]
    seconds: dict[str, float]
    files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def wise_label(alpha: float) -> str:
    return f"Wise-FT α={alpha:g}"


def accuracy_signals(report: Any) -> dict[str, Signal]:
    """Accuracy Δ AVG of every tuned run against the base, as a ``forgot`` :class:`Signal` (Δ points)."""
    out: dict[str, Signal] = {}
    for cmp in report.base_comparisons:
        avg = cmp.avg
        if avg.delta is None:
            continue
        n = sum(t.n for t in cmp.tasks if t.n is not None)
        ci = None if avg.ci is None else (100 * avg.ci[0], 100 * avg.ci[1])
        out[cmp.run] = Signal(
            name="acc_avg", kind="forgot", label="accuracy Δ AVG", value=100 * avg.delta, unit="Δ pts", n=n, ci=ci,
            significant=report.aggregate_significant(avg), better="higher", scope="all",
            note="mean of category means (paper AVG), stratified paired bootstrap over items",
        )  # fmt: skip
    return out


def learned_signals(report: Any, labels: Sequence[str]) -> dict[str, list[Signal]]:
    """In-domain gain per tuned run (``kind="learned"``): what ``compare`` attached from the store's
    held-out rows (:mod:`cfbench.train.indomain`; measured by :func:`run_demo` before comparing)."""
    return {lb: [s for s in report.signals.get(lb, []) if s.kind == "learned"] for lb in labels}


def drift_signals(report: Any, labels: Sequence[str]) -> dict[str, list[Signal]]:
    """``kind="forgot"`` signals compare attached: the item-metric drift (KL, JS, gold margin, judged
    against the noise floor) and held-out LAMBADA perplexity drift (:mod:`cfbench.metrics.ppl_drift`)."""
    return {lb: [s for s in report.signals.get(lb, []) if s.kind == "forgot"] for lb in labels}


def frontier_points(
    labels: Sequence[str],
    learned: Mapping[str, Sequence[Signal]],
    forgot: Mapping[str, Sequence[Signal]],
    series: Mapping[str, str] | None = None,
    prefer: Sequence[str] = ("indomain_loss", "indomain_em"),
    panels: Sequence[str] | None = None,
) -> list[Any]:
    """Trade-off points: per label, its preferred learned signal against each overall forgetting signal.

    The learned signal is the first of ``prefer`` that *every* label has (one x for the whole plot);
    labels without it are left out. Forgetting signals: overall ones (``scope == "all"``), restricted
    to ``panels`` names when given.
    """
    from cfbench.report.frontier import FrontierPoint

    names = [n for n in prefer if all(any(s.name == n for s in learned.get(lb, ())) for lb in labels)]
    if not names:
        common = set.intersection(*({s.name for s in learned.get(lb, ())} for lb in labels)) if labels else set()
        names = sorted(common)
    if not names:
        return []
    points = []
    for lb in labels:
        x = next(s for s in learned[lb] if s.name == names[0])
        for y in forgot.get(lb, ()):
            if y.scope == "all" and (panels is None or y.name in panels):
                points.append(FrontierPoint.from_signals(lb, x, y, (series or {}).get(lb)))
    return points


def run_demo(cfg: DemoConfig, out: Path, results: Path, *, progress: Any = None) -> DemoResult:
    """Fine-tune the pair, merge, compare on the offline suite, collect signals and write the plots.

    ``progress``: a ``rich`` console for section rules (None: quiet).
    """
    from cfbench.comparison import compare
    from cfbench.comparison.attach import PplDrift
    from cfbench.train.merge import merge_sweep
    from cfbench.train.pair import pair

    cfg.check()
    say = progress.rule if progress is not None else (lambda *_: None)
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    say(f"1/4  fine-tune on {cfg.data}: w/o SAM (AdamW, {2 * cfg.steps} steps) and w/ SAM ({cfg.steps} steps)")
    base_label = BASE_LABEL if cfg.base == BASE else Path(cfg.base).name
    pr = pair(
        cfg.base, cfg.data, out / "pair", sam_optimizer=cfg.sam_optimizer, rho=cfg.rho, lr=cfg.lr,
        batch_size=cfg.batch_size, micro_batch=min(8, cfg.batch_size), max_length=cfg.max_length, warmup=0.1,
        max_steps=cfg.steps, seed=cfg.seed, progress=sys.stderr.isatty(), heldout=cfg.heldout,
    )  # fmt: skip
    seconds["fine-tuning"] = time.perf_counter() - t0
    t = time.perf_counter()
    say(f"2/4  Wise-FT: w/o SAM merged with the base at α = {', '.join(f'{a:g}' for a in cfg.alphas)}")
    merges = merge_sweep(cfg.base, pr.wo_sam.path, list(cfg.alphas), out / "wise_ft", overwrite=True)
    seconds["merging"] = time.perf_counter() - t
    checkpoints = {WO: pr.wo_sam.path, pr.w_sam.label: pr.w_sam.path}
    manifests = {WO: pr.wo_sam.manifest, pr.w_sam.label: pr.w_sam.manifest}
    series = {WO: WO}
    for m in merges:
        label = wise_label(m.manifest["alpha"])
        checkpoints[label] = m.path
        manifests[label] = m.manifest
        series[label] = WO
    labels = list(checkpoints)
    t = time.perf_counter()
    runs = [(lb, checkpoints[lb], manifests[lb]) for lb in labels]
    say(f"3/4  in-domain: base and every tuned checkpoint on {cfg.heldout} held-out {cfg.data} documents")
    from cfbench.train.indomain import learned_after_finetune

    learned_after_finetune(results, runs)  # stored: compare attaches the learned signals
    seconds["in-domain"] = time.perf_counter() - t
    t = time.perf_counter()
    floor = None if cfg.floor == "none" else cfg.floor
    extra = f" (+ noise floor: {floor})" if floor else ""
    say(f"4/4  score base and every tuned checkpoint on the offline suite{extra}")
    eval_kwargs = {"limit": cfg.limit, "task_limits": {"mmlu": cfg.mmlu_limit}, "progress": "auto"}
    res = compare(
        f"ckpt:{cfg.base}", [f"ckpt:{p}" for p in checkpoints.values()], suite="offline", results=results,
        labels=[base_label, *labels], pairs=[(WO, pr.w_sam.label)], eval_kwargs=eval_kwargs, noise_floor=floor,
        contrasts=[(WO, pr.w_sam.label)], ppl=PplDrift("lambada", cfg.ppl_limit) if cfg.ppl_limit else None,
    )  # fmt: skip
    seconds["scoring"] = time.perf_counter() - t
    t = time.perf_counter()
    learned = learned_signals(res.report, labels)
    forgot: dict[str, list[Signal]] = {lb: [] for lb in labels}
    for lb, s in accuracy_signals(res.report).items():
        forgot.setdefault(lb, []).append(s)
    for lb, sigs in drift_signals(res.report, labels).items():
        forgot.setdefault(lb, []).extend(sigs)
    seconds["signals"] = time.perf_counter() - t
    result = DemoResult(checkpoints, res.report, learned, forgot, seconds, notes=list(res.notes))
    write_outputs(result, out, series, base_label)
    seconds["total"] = time.perf_counter() - t0
    return result


def write_outputs(result: DemoResult, out: Path, series: Mapping[str, str], base_label: str = BASE_LABEL) -> None:
    """report.md / report.json / demo.png always; frontier.png when every tuned run has a learned signal."""
    from cfbench.report import plot_report
    from cfbench.report.frontier import plot_frontier
    from cfbench.report.render import to_json, to_markdown

    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text(to_markdown(result.report), encoding="utf-8")
    to_json(result.report, out / "report.json")
    result.files += [out / "report.md", out / "report.json"]
    result.files.append(plot_report(result.report, out / "demo.png", include_pairs=True))
    labels = list(result.checkpoints)
    points = frontier_points(labels, result.learned, result.forgot, series, panels=PANELS)
    if points:
        arrows = result.report.contrasts
        result.files.append(plot_frontier(points, out / "frontier.png", base_label=base_label, arrows=arrows))
    else:
        result.notes.append(
            "frontier.png not written: no learned (in-domain) signal for every tuned checkpoint, so the "
            "trade-off plot would have no x axis"
        )
