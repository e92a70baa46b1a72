"""``ForgettingCallback``: watch forgetting while a transformers ``Trainer`` (or TRL ``SFTTrainer``) trains.

    from cfbench.integrations.transformers import ForgettingCallback
    trainer = Trainer(model, args, train_dataset=ds, callbacks=[ForgettingCallback(every=50, stop_at={"kl": 0.2})])

At train begin the probe (:mod:`cfbench.integrations.probe`) is scored once on the base weights.
Every ``every`` optimizer steps it is scored on the model in memory and ``forgetting/kl``,
``forgetting/gold_margin``, ``forgetting/acc_delta`` and ``forgetting/ppl_drift`` go through the
Trainer's own ``log``, so tensorboard, wandb and every other ``report_to`` integration receive them
with no set-up. The checks' cost is kept within ``max_overhead`` (default 0.1: 10 %) of training
wall time: a scheduled check that would exceed it waits for the next scheduled step
(:class:`~cfbench.integrations.probe.OverheadBudget`; ``max_overhead=None`` checks at every
``every``-th step whatever it costs), and the end-of-training line says the overhead measured
(:attr:`ForgettingCallback.overhead`). When a budget of ``stop_at`` is exceeded, training stops
(``control.should_training_stop``) and the reason (which budget, which step) is logged and kept in
:attr:`ForgettingCallback.stopped`.

The callback API hands callbacks the model but not the Trainer; the Trainer is found once, at train
begin, as the object running the training loop (the caller of the callback handler). If it cannot
be found (a custom loop calling the callbacks itself), the values are added to the next ``on_log``
call's dict instead.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Mapping
from typing import Any

from transformers import TrainerCallback

from cfbench.errors import CfbenchError
from cfbench.integrations.probe import ForgettingMonitor, Probe


def _find_trainer() -> Any:
    """The ``transformers.Trainer`` whose training loop is calling us (walks up the call stack)."""
    from transformers import Trainer

    frame = inspect.currentframe()
    while frame is not None:
        owner = frame.f_locals.get("self")
        if isinstance(owner, Trainer):
            return owner
        frame = frame.f_back
    return None


class ForgettingCallback(TrainerCallback):
    """Score a fixed forgetting probe every ``every`` steps; stop when a ``stop_at`` budget is exceeded.

    ``probe``: a :class:`~cfbench.integrations.probe.Probe` (default: 64 offline-suite items + 32
    LAMBADA passages, built at train begin). ``stop_at``: the most forgetting allowed per signal,
    e.g. ``{"kl": 0.2, "acc_delta": 0.05}`` (accuracy and gold margin: the largest drop).
    ``max_overhead``: the checks' largest share of training wall time (0 < x <= 1; None: no budget).
    """

    def __init__(self, probe: Probe | None = None, every: int = 100, stop_at: Mapping[str, float] | None = None,
                 tokenizer: Any = None, max_overhead: float | None = 0.1) -> None:  # fmt: skip
        if int(every) < 1:
            raise CfbenchError(f"ForgettingCallback every={every}: give the number of steps between probes (>= 1)")
        self.every = int(every)
        self.monitor = ForgettingMonitor(probe, stop_at, max_overhead)
        self.tokenizer = tokenizer
        self.history: list[dict[str, float]] = []
        self._trainer: Any = None
        self._pending: dict[str, float] | None = None

    @property
    def stopped(self) -> str | None:
        """``"kl=0.31 > 0.2 at step 40"`` once a budget stopped training, else None."""
        return self.monitor.stopped

    @property
    def overhead(self) -> dict[str, Any]:
        """Checks run and deferred, their time, the training time, their share of it, and the base score's time."""
        return self.monitor.budget.summary()

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        tokenizer = self.tokenizer or kwargs.get("processing_class") or kwargs.get("tokenizer")
        if tokenizer is None:
            raise CfbenchError(
                "ForgettingCallback needs the tokenizer: pass processing_class=tokenizer to the Trainer, "
                "or ForgettingCallback(tokenizer=...)"
            )
        tokenizer = getattr(tokenizer, "tokenizer", tokenizer)  # a processor wraps its tokenizer
        self._trainer = _find_trainer()
        self.monitor.start(model, tokenizer)

    def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> Any:
        step = int(state.global_step)
        if step == 0 or step % self.every or not self.monitor.due(step):
            return control
        values = self.monitor.check(model, step)
        self.history.append({"step": step, **values})
        if self.stopped is not None:
            control.should_training_stop = True
            print(f"[cfbench] forgetting budget exceeded: {self.stopped}; stopping training", file=sys.stderr)
        if self._trainer is not None:
            # Trainer.log's on_log clears control.should_log, which would drop this step's loss line
            # (and fold its loss into the next one): keep the Trainer's own logging decision.
            should_log = control.should_log
            self._trainer.log(dict(values))
            control.should_log = should_log
        else:
            self._pending = values
        return control

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        print(f"[cfbench] {self.monitor.budget.line()}", file=sys.stderr)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if self._pending is not None and logs is not None:
            logs.update(self._pending)
            if state.log_history:
                state.log_history[-1].update(self._pending)
            self._pending = None
