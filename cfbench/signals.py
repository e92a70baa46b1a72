"""One paired learned-or-forgot number for one tuned run, as every report section exchanges it.

``compare`` gathers these from several producers (continuous item metrics from stored items,
held-out perplexity drift, in-domain gain measured after a fine-tune) and renders them side by side
in every format, so a producer never touches a renderer and a renderer never knows a producer.

Conventions, so that renderers need no per-signal code:

* ``value`` is the tuned run's change against the base, in ``unit`` (e.g. ``Δ nats/token``), or for
  a divergence the divergence itself (which is never negative);
* ``ci`` is the paired bootstrap interval of ``value`` (``None`` where it cannot be computed);
* ``floor`` is the same statistic between the base and the base re-scored another way: a divergence
  is judged against it, not against zero (``None``: no floor was measured);
* ``significant`` is decided by the producer (CI excludes zero, or CI above the floor) and says why
  in ``note`` when that rule is not the obvious one;
* a floor below :data:`NIL_FLOOR` is *numerically nil* (float rounding of two ways to compute the same
  number, e.g. 9e-12 nats between two fp32 scoring paths): every divergence clears it, so clearing it
  says nothing and such a floor stars nothing. A floor that is not nil also gives each value as a
  multiple of it (:attr:`Signal.floor_multiple`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

SignalKind = Literal["learned", "forgot"]

#: A floor below this (in the signal's unit; nats for KL and JS) is numerically nil: rounding, not a
#: numeric change a user meets (bf16 against fp32 moves KL by ~6e-4, fp32 reorderings by ~1e-11).
NIL_FLOOR = 1e-6


@dataclass(frozen=True)
class Signal:
    """A paired change of one tuned run against its base, with its interval and noise floor."""

    name: str  # stable machine name, e.g. "kl", "gold_margin", "ppl_drift", "indomain_loss", "indomain_em"
    kind: SignalKind  # which half of the report it belongs to
    label: str  # short column header, e.g. "KL(base‖tuned)"
    value: float
    unit: str  # e.g. "nats", "Δ nats/token", "Δ pts"
    n: int  # paired units (items or documents) behind the value
    ci: tuple[float, float] | None = None
    floor: float | None = None
    significant: bool | None = None  # None: not judged (e.g. no floor for a divergence)
    better: Literal["higher", "lower"] = "lower"
    scope: str = "all"  # "all", a category ("DK") or a task ("arc_challenge")
    note: str | None = None
    floor_ci: tuple[float, float] | None = None  # the floor's own interval, where the producer measured one
    #: The test behind ``significant`` (bootstrap p against 0, or against the floor for a divergence) and
    #: its Holm-adjusted value over the signal's scopes of one run; ``significant`` uses ``p_adj``.
    p: float | None = None
    p_adj: float | None = None
    #: How many tests that Holm family holds (1: Holm adjusted nothing; a scope that *is* one task's value
    #: takes that task's test and is not counted twice).
    holm_m: int | None = None

    @property
    def floor_nil(self) -> bool:
        """The floor is numerically nil (below :data:`NIL_FLOOR`): it judges nothing."""
        return self.floor is not None and abs(self.floor) < NIL_FLOOR

    @property
    def floor_multiple(self) -> float | None:
        """``value / floor`` ("KL 0.092, 140× its floor"); None without a floor or with a nil one, where the
        ratio would only measure float rounding."""
        if self.floor is None or self.floor_nil:
            return None
        return self.value / self.floor

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["ci"] = list(self.ci) if self.ci is not None else None
        out["floor_ci"] = list(self.floor_ci) if self.floor_ci is not None else None
        out["floor_multiple"] = self.floor_multiple
        out["floor_nil"] = self.floor_nil if self.floor is not None else None
        return out


@dataclass(frozen=True)
class FloorFlips:
    """Items a numeric change alone flipped: the base against the base re-scored (the noise floor)."""

    forgotten: int  # right → wrong on the task's primary metric
    gained: int  # wrong → right
    n: int  # paired items

    @property
    def flips(self) -> int:
        return self.forgotten + self.gained


@dataclass(frozen=True)
class NoiseFloor:
    """The noise floor of a comparison: which run, what it changed, its own divergences and its own flips.

    Next to a tuned run's forgotten/gained counts, ``flips`` says how many of them numerics alone move
    (Dutta et al. 2024: flips move while accuracy does not). ``values`` is the floor's overall value of
    each divergence (the mean of category means, as AVG); ``tasks`` the flips per task, and ``flips``
    their sum over the tasks in AVG (as the tuned runs' Forgotten/Gained columns).
    """

    run: str
    change: str | None = None  # e.g. "dtype bfloat16 (base float32)"; None where the records do not say
    values: dict[str, float] = field(default_factory=dict)
    flips: FloorFlips | None = None
    tasks: dict[str, FloorFlips] = field(default_factory=dict)

    @property
    def nil(self) -> bool:
        """Every divergence of this floor is numerically nil: it stars nothing."""
        return bool(self.values) and all(abs(v) < NIL_FLOOR for v in self.values.values())

    def to_dict(self) -> dict[str, Any]:
        flips = None if self.flips is None else {**asdict(self.flips), "flips": self.flips.flips}
        return {
            "run": self.run, "change": self.change, "values": dict(self.values), "nil": self.nil, "flips": flips,
            "tasks": {t: {**asdict(f), "flips": f.flips} for t, f in self.tasks.items()},
        }  # fmt: skip
