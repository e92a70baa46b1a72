"""Issue 8.8: task configs are data. Each payload below ran code or leaked internals before the sandbox.

The old environment was a plain ``jinja2.Environment``: ``lipsum.__globals__['os'].system(...)``
ran a shell command during an ordinary eval that exited 0.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cfbench.errors import CfbenchError
from cfbench.tasks.config import load_task_config
from cfbench.tasks.templates import evaluate, render_text

REPO_TASKS = Path(__file__).resolve().parents[1] / "task_configs"

PAYLOADS = [
    "{{ lipsum.__globals__['os'].system('touch {marker}') }}",
    "{{ lipsum.__globals__.os.system('touch {marker}') }}",
    "{{ cycler.__init__.__globals__.os.system('touch {marker}') }}",
    "{{ joiner.__init__.__globals__.os.popen('touch {marker}').read() }}",
    "{{ namespace.__init__.__globals__.os.system('touch {marker}') }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ ''['__class__'] }}",
    "{{ self.__init__.__globals__ }}",
    "{{ question.__class__.__base__.__subclasses__() }}",
    "{{ question | attr('__class__') }}",
    "{% import 'os' as os %}{{ question }}",
    "{{ '{0.__class__}'.format(question) }}",
    "{{ question[('_' * 2) ~ 'class' ~ ('_' * 2)] }}",
]


@pytest.mark.parametrize("payload", PAYLOADS)
def test_payloads_are_refused_with_one_line_and_no_effect(payload: str, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    src = payload.replace("{marker}", str(marker))
    with pytest.raises(CfbenchError) as err:
        render_text(src, {"question": "q"}, "t.doc_to_text")
    assert "\n" not in str(err.value)
    with pytest.raises(CfbenchError):
        evaluate(src, {"question": "q"}, "t.doc_to_target")
    assert not marker.exists()


def test_shipped_templates_still_render() -> None:
    doc = {"choices": {"label": ["A", "B"], "text": ["x", "y"]}, "answerKey": "B", "answer": True,
           "subject": "high_school_physics", "keyword": ["a", "b"], "label": "2"}  # fmt: skip
    assert evaluate("{{choices.label.index(answerKey)}}", doc) == 1
    assert evaluate("{{answer | int}}", doc) == 1
    assert evaluate("{{(label | int) - 1}}", doc) == 1
    assert render_text("{{ subject | replace('_', ' ') }}", doc) == "high school physics"
    assert render_text("{{ keyword | join('，') }}", doc) == "a，b"


def _task_dir_with(tmp_path: Path, doc_to_text: str) -> Path:
    tasks = tmp_path / "tasks"
    shutil.copytree(REPO_TASKS, tasks)
    cfg = tasks / "copa.yaml"
    lines = [ln for ln in cfg.read_text(encoding="utf-8").splitlines() if not ln.startswith("doc_to_text:")]
    lines.append("doc_to_text: " + repr(doc_to_text).replace("\\\\", "\\"))
    cfg.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return tasks


def test_unsafe_yaml_is_refused_when_loaded(tmp_path: Path) -> None:
    tasks = _task_dir_with(tmp_path, "{{ lipsum.__globals__['os'].system('touch " + str(tmp_path / "x") + "') }}")
    with pytest.raises(CfbenchError, match="template refused"):
        load_task_config(tasks / "copa.yaml")


def test_eval_with_an_os_system_template_exits_2_in_one_line_and_runs_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    tasks = _task_dir_with(tmp_path, "{{ lipsum.__globals__['os'].system('touch " + str(marker) + "') }}")
    res = subprocess.run(
        [sys.executable, "-m", "cfbench", "eval", "smollm2-135m", "--tasks", "copa", "--limit", "1",
         "--results", str(tmp_path / "results")],
        capture_output=True, text=True, timeout=300, env={**os.environ, "CFBENCH_TASK_DIR": str(tasks)},
    )  # fmt: skip
    assert res.returncode == 2, res.stdout + res.stderr
    lines = [x for x in res.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "template refused" in lines[0], res.stderr
    assert not marker.exists()
    assert not (tmp_path / "results" / "items").exists()
