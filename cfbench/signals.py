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
  in ``note`` when that rule is not the obvious one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

SignalKind = Literal["learned", "forgot"]


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

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["ci"] = list(self.ci) if self.ci is not None else None
        out["floor_ci"] = list(self.floor_ci) if self.floor_ci is not None else None
        return out
