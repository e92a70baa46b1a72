"""FSDP2 with ``--bf16`` (MixedPrecisionPolicy: bf16 compute, fp32 master weights) on CPU/gloo, 2 ranks.

1. ``torchrun --nproc-per-node 2 -m cfbench pair --bf16`` (AdamW, then SAM) against the same pair in one
   process with ``--bf16`` (autocast). The two paths round differently (FSDP casts every parameter,
   RMSNorm weights included, to bf16; autocast casts matmul inputs only), so weights are not equal to
   1e-5 as in fp32 (tests/test_fsdp_finetune.py). Measured on the tiny llama (lr 1e-3, 4 AdamW / 2 SAM
   steps): ‖Δw(2 ranks) − Δw(1 process)‖ / ‖Δw(1 process)‖ = 0.014 (AdamW) and 0.045 (SAM); one
   process bf16 against one process fp32 is 0.008 / 0.020, and a different data order (seed 1) is 0.66.
   Tolerance 0.15 on that relative update difference: 3× the measured rounding, 4× below a run that
   saw different data. Loss curves agree to 5e-3 (measured 2e-4).
2. One FSDP bf16 SAM step, inspected (tests/_fsdp_bf16_probe.py): the forward sees bf16 weights, the
   sharded master weights and SAM's restore buffers are float32, ε measured on the float32 shards has
   global norm ρ (to 1e-6 relative), and restore puts the exact weights back.
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

ROOT = Path(__file__).resolve().parents[1]
ARGS = dict(batch_size=5, micro_batch=2, max_steps=2, lr=1e-3, rho=0.05, warmup=0.0, max_length=64, seed=0)
REL_TOL = 0.15
LOSS_TOL = 5e-3


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def _torchrun(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(_free_port()), *args]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc


@pytest.fixture(scope="module")
def runs(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from cfbench.train.pair import pair

    tmp = tmp_path_factory.mktemp("fsdp_bf16")
    one, two = tmp / "one", tmp / "two"
    pair(str(tiny_model), "builtin:arithmetic", one, progress=False, device="cpu", bf16=True, **ARGS)
    cli = [
        "--batch-size", "5", "--micro-batch", "2", "--max-steps", "2", "--lr", "1e-3", "--rho", "0.05",
        "--warmup", "0", "--max-length", "64", "--seed", "0", "--device", "cpu", "-q", "--bf16",
    ]  # fmt: skip
    _torchrun("-m", "cfbench", "pair", str(tiny_model), "--data", "builtin:arithmetic", "--out", str(two), *cli)
    return one, two


@pytest.mark.parametrize("run", ["wo_sam", "w_sam"])
def test_bf16_fsdp_two_ranks_match_one_process(runs: tuple[Path, Path], tiny_model: Path, run: str) -> None:
    one, two = (_weights(r / run) for r in runs)
    base = _weights(tiny_model)
    assert one.keys() == two.keys()
    assert all(t.dtype == torch.float32 for t in two.values())  # fp32 master weights were saved
    num = sum(float((one[k] - two[k]).double().norm() ** 2) for k in one) ** 0.5
    den = sum(float((one[k] - base[k]).double().norm() ** 2) for k in one if k in base) ** 0.5
    assert den > 1e-3  # the runs really trained
    print(f"{run}: bf16 ‖Δw(2 ranks) − Δw(1 process)‖/‖Δw‖ = {num / den:.3e}")
    assert num / den < REL_TOL
    m1 = json.loads((runs[0] / run / "cfbench_manifest.json").read_text())
    m2 = json.loads((runs[1] / run / "cfbench_manifest.json").read_text())
    assert m2["distributed"]["world_size"] == 2 and m2["distributed"]["mixed_precision"].startswith("bf16")
    for a, b in zip(m1["loss_curve"], m2["loss_curve"], strict=True):
        assert abs(a["loss"] - b["loss"]) < LOSS_TOL


def test_sam_perturbation_stays_float32_under_fsdp_mixed_precision(tiny_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "probe.json"
    _torchrun(str(ROOT / "tests" / "_fsdp_bf16_probe.py"), str(tiny_model), str(out))
    seen = json.loads(out.read_text())
    print(seen)
    assert seen["forward_weight_dtype"] == "torch.bfloat16"  # mixed precision is really on
    assert seen["master_dtypes"] == ["torch.float32"] and seen["buffer_dtypes"] == ["torch.float32"]
    assert abs(seen["eps_norm"] - seen["rho"]) < 1e-6 * seen["rho"]  # ε kept in fp32: its norm is ρ
    assert seen["eps_lost_in_bf16_rel"] > 0.01  # ...which a bf16 copy of ε would not be
    assert seen["restored_exactly"]
