"""Every command in the README's ```bash blocks (and in the docs/ blocks moved there from the README, each
marked by ``MARKER`` on the line before it) either runs here as shown or is listed below with the
reason it cannot (network, GPU, long) — and those are still parsed by the real argument parsers
(cfbench's click commands, lm-eval's argparse), so a renamed option or command fails this test.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
# The line right before a docs/ ```bash block that came from the README: those blocks are checked as the README's.
MARKER = "<!-- tests/test_readme.py parses (or runs) this block: keep it in step with NOT_RUNNABLE there -->"

# Command prefix → why it cannot run in CI. Everything else in a ```bash block is run.
NOT_RUNNABLE: dict[str, str] = {
    "bash scripts/install.sh && .venv/bin/cfbench demo": "long: install + the ~8 min demo",
    "bash .ci/run": "long: the whole CI",
    "cfbench compare meta-llama/": "network: hub model and hub data",
    "cfbench compare base-run ": "needs the user's run and checkpoints",
    "cfbench eval ./my-sft-checkpoint": "needs the user's checkpoint and vLLM",
    "cfbench regress --baseline nightly-base": "needs the user's runs",
    "cfbench pair smollm2-135m --data my_alpaca.jsonl": "long (real fine-tune) and the user's data",
    "cfbench finetune BASE": "placeholders for the user's model and data",
    "cfbench merge BASE TUNED": "placeholders for the user's checkpoints",
    "cfbench-lm-eval run": "network: lm-eval's own tasks read their data from the hub",
}


def _bash_blocks() -> list[str]:
    """The README's ```bash blocks, then the marked ones of docs/*.md (sections moved out of the README)."""
    blocks = re.findall(r"^```bash\n(.*?)^```", README.read_text(encoding="utf-8"), re.S | re.M)
    marked = re.escape(MARKER) + r"\n```bash\n(.*?)^```"
    for page in sorted(DOCS.glob("*.md")):
        blocks += re.findall(marked, page.read_text(encoding="utf-8"), re.S | re.M)
    return blocks


def readme_text() -> str:
    """The README and the docs/ pages its moved sections now live in, as one text."""
    return "\n".join(p.read_text(encoding="utf-8") for p in [README, *sorted(DOCS.glob("*.md"))])


def readme_commands() -> list[str]:
    """Commands of the ```bash blocks: comments dropped, backslash continuations joined."""
    commands = []
    for block in _bash_blocks():
        text = re.sub(r"\\\n\s*", " ", block)
        for line in text.splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line and not line.startswith("#"):
                commands.append(line)
    return commands


def reason(command: str) -> str | None:
    return next((why for prefix, why in NOT_RUNNABLE.items() if command.startswith(prefix)), None)


def parse_check(command: str) -> None:
    """Validate every cfbench / lm-eval invocation in ``command`` with the real parsers, running nothing."""
    for part in re.split(r"\s*(?:&&|\|\||;)\s*", command):
        argv = shlex.split(part)
        prog = Path(argv[0]).name
        if prog == "cfbench":
            _parse_cfbench(argv[1:])
        elif prog == "cfbench-lm-eval":
            _parse_lm_eval(argv[1:])
        elif prog == "bash":
            assert (ROOT / argv[1]).is_file(), f"{argv[1]} does not exist"
            subprocess.run(["bash", "-n", str(ROOT / argv[1])], check=True)
        else:
            pytest.fail(f"no parser known for {prog!r} in README command {command!r}")


def _parse_cfbench(args: list[str]) -> None:
    """Resolve the (sub)command and let it parse ``args`` (typer vendors click, so no isinstance checks)."""
    import typer

    from cfbench.cli import app

    cmd = typer.main.get_command(app)
    parent = None
    while hasattr(cmd, "get_command") and hasattr(cmd, "list_commands"):  # a group such as `store`
        assert args, "a command group needs a subcommand"
        parent = cmd.make_context(cmd.name or "cfbench", [], parent=parent, resilient_parsing=True)
        name, args = args[0], args[1:]
        sub = cmd.get_command(parent, name)
        assert sub is not None, f"cfbench has no command {name!r}"
        cmd = sub
    try:
        cmd.make_context(cmd.name, list(args), parent=parent)
    except Exception as exc:  # click's UsageError family (vendored by typer)
        raise AssertionError(f"cfbench rejects {args}: {exc}") from exc


def _parse_lm_eval(args: list[str]) -> None:
    from lm_eval._cli import HarnessCLI

    parser = HarnessCLI()
    try:
        ns = parser._parser.parse_args(args)
    except SystemExit as exc:  # argparse reports on stderr and exits 2
        raise AssertionError(f"lm-eval rejects {args}") from exc
    assert ns.model in {"cfbench-hf", "cfbench-vllm", "cfbench-openai"}
    from lm_eval.api.registry import get_model

    import cfbench.backends.lmeval_models  # noqa: F401  registers the models

    assert get_model(ns.model) is not None


COMMANDS = readme_commands()


def test_readme_has_commands() -> None:
    assert len(COMMANDS) >= 10
    stale = [p for p in NOT_RUNNABLE if not any(c.startswith(p) for c in COMMANDS)]
    assert not stale, f"NOT_RUNNABLE entries no longer in the README: {stale}"


@pytest.mark.parametrize("command", [c for c in COMMANDS if reason(c)], ids=lambda c: c[:60])
def test_not_runnable_commands_parse(command: str) -> None:
    parse_check(command)


@pytest.mark.parametrize("command", [c for c in COMMANDS if not reason(c)], ids=lambda c: c[:60])
def test_runnable_commands_run(command: str, tmp_path: Path) -> None:
    """Run as shown (scratch paths under /tmp redirected to a private folder), from the checkout."""
    parse_check(command)
    shown = re.sub(r"/tmp/(\w+)", lambda m: str(tmp_path / m.group(1)), command)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "COLUMNS": "200"}  # fmt: skip
    # The README's own import fixture must give the README's table when both commands run in order.
    if shown.startswith("cfbench compare llama-2-7b-hf"):
        prior = next(c for c in COMMANDS if c.startswith("cfbench import tests/fixtures/imports/opencompass_summary"))
        subprocess.run(re.sub(r"/tmp/(\w+)", lambda m: str(tmp_path / m.group(1)), prior), shell=True, cwd=ROOT,
                       env=env, check=True, capture_output=True, timeout=300)  # fmt: skip
    proc = subprocess.run(shown, shell=True, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{command}\n{proc.stdout[-1500:]}\n{proc.stderr[-1500:]}"
    if shown.startswith("cfbench compare llama-2-7b-hf"):
        readme = readme_text()
        rows = re.findall(r"^\| llama-2-7b-sft[^\n]*", proc.stdout, re.M)
        assert rows, proc.stdout[-1500:]
        for row in rows:
            assert row in readme, f"README's example table differs from the real output: {row}"


@pytest.mark.parametrize(
    "command",
    ["cfbench eval ./ckpt --no-such-option 1", "cfbench no-such-command", "cfbench-lm-eval run --model_argz x=1",
     "bash scripts/no-such.sh"],
)  # fmt: skip
def test_parse_check_catches_renamed_options(command: str) -> None:
    """The parse check is real: an unknown option, command or script fails it."""
    with pytest.raises(AssertionError):
        parse_check(command)
