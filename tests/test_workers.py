"""Scoring over 2 worker processes gives exactly the items of one process (tiny model, CPU)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cfbench.errors import CfbenchError
from cfbench.scale.workers import parse_devices

TASKS = ["boolq", "copa", "arc_challenge"]
COLS = ["doc_id", "task", "pred", "logprobs"]


def _items(results: Path):
    from cfbench.store import ResultStore

    items = ResultStore(results).items()
    return items.sort_values(["task", "doc_id"]).reset_index(drop=True)


@pytest.mark.timeout(600)
def test_two_workers_give_the_items_of_one(tiny_model: Path, tmp_path: Path) -> None:
    from cfbench.engine import evaluate
    from cfbench.scale.workers import evaluate_parallel

    kw = dict(tasks=TASKS, limit=6, backend="hf", backend_options={"dtype": "float32"})
    one = evaluate(str(tiny_model), results=tmp_path / "one", progress="off", **kw)
    two = evaluate_parallel(str(tiny_model), ["cpu", "cpu"], results=tmp_path / "two", progress="off", **kw)
    a, b = _items(tmp_path / "one"), _items(tmp_path / "two")
    assert len(a) == len(b) == 6 * len(TASKS)
    assert two.scored_items == 6 * len(TASKS)
    cols = [c for c in a.columns if c not in ("scored_at", "created_at", "timestamp")]
    for c in cols:
        assert a[c].astype(str).tolist() == b[c].astype(str).tolist(), c  # exact, every column
    assert [(o.task, o.metrics) for o in one.outcomes] == [(o.task, o.metrics) for o in two.outcomes]
    assert all(o.n_scored == 6 for o in two.outcomes)


def test_parse_devices() -> None:
    assert parse_devices("cuda:0,cuda:1", None) == ["cuda:0", "cuda:1"]
    assert parse_devices(None, 2) in (["cpu", "cpu"], ["cuda:0", "cuda:1"])
    with pytest.raises(CfbenchError, match="cuda:N"):
        parse_devices("gpu0", None)
    with pytest.raises(CfbenchError, match="--workers 3"):
        parse_devices("cpu,cpu", 3)


@pytest.mark.timeout(600)
def test_one_task_split_over_two_workers_differs_only_by_rounding(tiny_model: Path, tmp_path: Path) -> None:
    import numpy as np

    from cfbench.engine import evaluate
    from cfbench.scale.workers import evaluate_parallel

    kw = dict(tasks=["hellaswag"], limit=8, backend="hf", backend_options={"dtype": "float32"})
    evaluate(str(tiny_model), results=tmp_path / "one", progress="off", **kw)
    two = evaluate_parallel(str(tiny_model), ["cpu", "cpu"], results=tmp_path / "two", progress="off", **kw)
    a, b = _items(tmp_path / "one"), _items(tmp_path / "two")
    assert two.scored_items == 8 and a["doc_id"].tolist() == b["doc_id"].tolist()
    pairs = zip(a["logprobs"], b["logprobs"], strict=True)
    worst = max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in pairs)
    assert worst < 1e-4, worst
    assert a["pred"].tolist() == b["pred"].tolist()
