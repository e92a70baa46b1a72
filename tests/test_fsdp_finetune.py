"""``torchrun --nproc-per-node 2 -m cfbench pair ...`` on CPU (gloo, FSDP2) must equal one process.

One torchrun launch runs the compute-matched pair (AdamW for 4 steps, then SAM for 2) on the tiny
llama; the same call in this process is the reference. The global batch of 5 examples splits 3 + 2
over the ranks with micro-batch 2, so rank 1 runs an all-ignored padding micro-batch: if the
padding, the gradient scaling (divide factor 1, global token count) or the global SAM norm were
wrong, the weights would differ by far more than the tolerance.

Tolerance: 1e-5 absolute on every float32 weight (lr 1e-3 moves the weights by ~1e-3 per step; the
observed difference is float32 summation order, ~1e-8).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ARGS = dict(batch_size=5, micro_batch=2, max_steps=2, lr=1e-3, rho=0.05, warmup=0.0, max_length=64, seed=0)
TOL = 1e-5


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(f))
    return out


@pytest.fixture(scope="module")
def runs(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from cfbench.train.pair import pair

    tmp = tmp_path_factory.mktemp("fsdp")
    one, two = tmp / "one", tmp / "two"
    pair(str(tiny_model), "builtin:arithmetic", one, progress=False, device="cpu", **ARGS)
    cli = [
        "--batch-size", "5", "--micro-batch", "2", "--max-steps", "2", "--lr", "1e-3", "--rho", "0.05",
        "--warmup", "0", "--max-length", "64", "--seed", "0", "--device", "cpu", "-q",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
        "--master-port", str(_free_port()), "-m", "cfbench", "pair", str(tiny_model), "--data", "builtin:arithmetic",
        "--out", str(two), *cli,
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return one, two


@pytest.mark.parametrize("run", ["wo_sam", "w_sam"])
def test_two_fsdp_ranks_match_one_process(runs: tuple[Path, Path], tiny_model: Path, run: str) -> None:
    one, two = (_weights(r / run) for r in runs)
    base = _weights(tiny_model)
    assert one.keys() == two.keys()
    moved = max(float((one[k] - base[k]).abs().max()) for k in one if k in base)
    assert moved > 1e-4  # the runs really trained
    worst = max(float((one[k] - two[k]).abs().max()) for k in one)
    print(f"{run}: max |Δw| 2 ranks vs 1 process = {worst:.2e} (weights moved up to {moved:.2e})")
    assert worst < TOL


def test_fsdp_manifest_and_loss_curve(runs: tuple[Path, Path]) -> None:
    for run in ("wo_sam", "w_sam"):
        m1 = json.loads((runs[0] / run / "cfbench_manifest.json").read_text())
        m2 = json.loads((runs[1] / run / "cfbench_manifest.json").read_text())
        assert m1["distributed"] is None and m2["distributed"]["world_size"] == 2
        assert m2["status"] == "completed" and m2["steps"] == m1["steps"]
        for a, b in zip(m1["loss_curve"], m2["loss_curve"], strict=True):  # the global loss on rank 0
            assert abs(a["loss"] - b["loss"]) < 1e-5 and abs(a["grad_norm"] - b["grad_norm"]) < 1e-4


def test_consolidated_checkpoint_loads_with_plain_transformers(runs: tuple[Path, Path], tiny_model: Path) -> None:
    from transformers import AutoModelForCausalLM

    folder = runs[1] / "w_sam"
    assert not list(folder.parent.glob("*.tmp*"))  # the atomic write left no temporary folder
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    ref = AutoModelForCausalLM.from_pretrained(runs[0] / "w_sam", dtype=torch.float32)
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    assert torch.allclose(model(ids).logits, ref(ids).logits, atol=1e-4)
