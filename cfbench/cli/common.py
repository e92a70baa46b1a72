"""Options shared by the commands that score checkpoints (eval, compare, regress, pair --compare)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from cfbench.errors import CfbenchError

Suite = Annotated[str, typer.Option("--suite", help="Task suite (task_configs/suites/NAME.yaml).")]
Tasks = Annotated[str | None, typer.Option("--tasks", help="Comma-separated task names; overrides --suite.")]
Limit = Annotated[int | None, typer.Option("--limit", help="Score only the first N documents of each task.")]
TaskLimit = Annotated[
    list[str] | None,
    typer.Option("--task-limit", help="Per-task override of --limit as TASK=N (repeatable), e.g. mmlu=5."),
]
Backend = Annotated[str, typer.Option("--backend", help="Scoring backend: hf, vllm or openai.")]
ModelArgs = Annotated[
    str | None,
    typer.Option("--model-args", help="Backend options as k=v,k=v (lm-eval style), e.g. batch_size=16,base_url=..."),
]
Dtype = Annotated[str, typer.Option("--dtype", help="float32, bfloat16 or float16 (compare like with like).")]
NumFewshot = Annotated[
    int | None,
    typer.Option("--num-fewshot", help="Few-shot count, all tasks (default: the suite's fewshot:, else the task's)."),
]
DataDir = Annotated[
    Path | None, typer.Option("--data-dir", envvar="CFBENCH_DATA_DIR", help="OpenCompass-style data/ folder.")
]
Results = Annotated[Path, typer.Option("--results", envvar="CFBENCH_RESULTS", help="Results store (Parquet).")]
Workers = Annotated[
    int | None, typer.Option("--workers", help="Score on N worker processes (cuda:0..N-1 if present, else CPU).")
]
Devices = Annotated[
    str | None, typer.Option("--devices", help="One worker per device, e.g. cuda:0,cuda:1 (see docs/scale.md).")
]
Runner = Annotated[
    str,
    typer.Option(
        "--runner", help="local (worker processes on this machine) or ray (Ray actors, one per GPU; docs/scale.md)."
    ),
]
RayAddress = Annotated[
    str | None,
    typer.Option("--ray-address", help="Join this Ray cluster (implies --runner ray; default: a local cluster)."),
]
BaseArch = Annotated[
    str | None, typer.Option("--base", help="Architecture+tokenizer for raw state-dict checkpoints (.pt/.bin/...).")
]


def make_pool(workers: int | None, devices: str | None, runner: str, ray_address: str | None) -> Any:
    """The worker pool ``--workers/--devices/--runner/--ray-address`` ask for; None scores in this process."""
    if workers is None and devices is None and runner == "local" and not ray_address:
        return None
    from cfbench.scale.workers import make_runner

    return make_runner(workers, devices, runner, ray_address)


def parse_model_args(text: str | None, dtype: str) -> dict[str, Any]:
    """``k=v,k=v`` → dict with ints/floats/bools parsed, as lm-eval's ``--model_args``."""
    out: dict[str, Any] = {"dtype": dtype}
    if not text:
        return out
    for part in text.split(","):
        if not part.strip():
            continue
        if "=" not in part:
            raise CfbenchError(
                f"--model-args entry {part!r} is not key=value; write e.g. batch_size=16,max_length=2048"
            )
        k, v = (x.strip() for x in part.split("=", 1))
        out[k] = _parse_value(v)
    return out


def _parse_value(v: str) -> Any:
    if v.lower() in ("true", "false"):
        return v.lower() == "true"
    if v.lower() in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return v


def parse_task_limits(specs: list[str] | None) -> dict[str, int]:
    """``TASK=N`` entries → dict; task names are validated against the registry."""
    from cfbench.tasks.registry import get_task_config

    out: dict[str, int] = {}
    for spec in specs or []:
        task, sep, n = spec.partition("=")
        if not sep or not n.strip().isdigit():
            raise CfbenchError(f"--task-limit {spec!r} is not TASK=N; write e.g. --task-limit mmlu=5")
        get_task_config(task.strip())
        out[task.strip()] = int(n)
    return out


def check_out_path(path: Path | None, flag: str = "--out") -> None:
    """Fail before any scoring when an output file could not be written: one line, no partial work."""
    if path is None:
        return
    parent = path.expanduser().resolve().parent
    if path.is_dir():
        raise CfbenchError(f"{flag} {path} is a folder: give a file path, e.g. {path / 'report.md'}")
    if not parent.is_dir():
        raise CfbenchError(
            f"{flag} {path}: folder {parent} does not exist; create it (mkdir -p {parent}) or pick another path"
        )
