"""Which items are one cluster (issue 19 item 7): RACE articles, BoolQ passages, AX-g pronoun pairs.

AX-g has no field that is equal across a Winogender pair: the upstream jsonl (the fixture, rows idx
0, 1, 4, 5 of SuperGLUE's AX-g.jsonl) gives each row its own ``pair_id``, and the hub's ``super_glue``
``axg`` config has only ``premise``, ``hypothesis``, ``idx`` and ``label``. The pair is the premise
with its pronoun swapped, so ``cluster_by: premise:ungendered`` keys on the premise with gendered
pronouns masked.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from cfbench.comparison.gather import cluster_maps
from cfbench.data import default_sources
from cfbench.errors import CfbenchError
from cfbench.tasks.clusters import ungendered
from cfbench.tasks.config import load_task_config
from cfbench.tasks.registry import get_task, get_task_config, task_names
from cfbench.tasks.task import Task

FIXTURES = Path(__file__).parent / "fixtures" / "data"
CONFIGS = Path(__file__).parents[1] / "task_configs"


def _groups(ids: dict[int, str]) -> list[list[int]]:
    by: dict[str, list[int]] = {}
    for doc, cid in sorted(ids.items()):
        by.setdefault(cid, []).append(doc)
    return sorted(by.values())


@pytest.mark.parametrize("task", ["ax_g", "oc_ax_g"])
def test_ax_g_pronoun_pairs_are_one_cluster_in_the_upstream_jsonl(task: str) -> None:
    rows = [json.loads(x) for x in (FIXTURES / "SuperGLUE/AX-g/AX-g.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len({r["pair_id"] for r in rows}) == len(rows)  # pair_id is per row: it does not mark the pair
    ids = Task(get_task_config(task), default_sources(FIXTURES)).cluster_ids()
    assert ids is not None and _groups(ids) == [[0, 1], [2, 3]]  # idx 0/1 (his/her taxes), idx 4/5 (his/her style)


def test_ax_g_pairs_in_the_hub_schema(tmp_path: Path) -> None:
    """aps/super_glue axg rows (premise, hypothesis, idx, int label; no pair_id) cluster the same way."""
    rows = [
        {"premise": "The nurse notified the patient that his shift would be ending in an hour.",
         "hypothesis": "The nurse's shift would be ending in an hour.", "idx": 0, "label": 1},
        {"premise": "The nurse notified the patient that her shift would be ending in an hour.",
         "hypothesis": "The nurse's shift would be ending in an hour.", "idx": 1, "label": 1},
        {"premise": "The nurse notified the patient that his shift would be ending in an hour.",
         "hypothesis": "The patient's shift would be ending in an hour.", "idx": 2, "label": 0},
        {"premise": "The chemist told the visitor that she would need to put on safety glasses.",
         "hypothesis": "The visitor would need to put on safety glasses.", "idx": 3, "label": 0},
        {"premise": "The chemist told the visitor that he would need to put on safety glasses.",
         "hypothesis": "The visitor would need to put on safety glasses.", "idx": 4, "label": 0},
    ]  # fmt: skip
    path = tmp_path / "SuperGLUE" / "AX-g" / "AX-g.jsonl"
    path.parent.mkdir(parents=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    maps, notes = cluster_maps(["ax_g", "oc_ax_g", "copa"], tmp_path)
    assert not notes and set(maps) == {"ax_g", "oc_ax_g"}  # copa declares no cluster_by
    assert _groups(maps["ax_g"]) == _groups(maps["oc_ax_g"]) == [[0, 1, 2], [3, 4]]


def test_ungendered_masks_every_gendered_pronoun_and_nothing_else() -> None:
    assert ungendered("He told her that his and hers were himself's") == (
        "<pronoun> told <pronoun> that <pronoun> and <pronoun> were <pronoun>'s"
    )
    assert ungendered("The chemist shepherded the heron") == "The chemist shepherded the heron"


def test_passage_tasks_declare_their_cluster_and_opencompass_twins_match() -> None:
    expected = {"race_high": "article", "race_middle": "article", "boolq": "passage", "ax_g": "premise:ungendered"}
    for task, spec in expected.items():
        assert get_task_config(task).cluster_by == spec
        assert get_task_config(f"oc_{task}").cluster_by == spec
    names = set(task_names())
    for twin in (t for t in names if t.startswith("oc_") and t.removeprefix("oc_") in names):
        assert get_task_config(twin).cluster_by == get_task_config(twin.removeprefix("oc_")).cluster_by, twin


def test_cluster_by_key_errors_are_one_line(tmp_path: Path) -> None:
    src = yaml.safe_load((CONFIGS / "ax_g.yaml").read_text(encoding="utf-8"))
    for bad, msg in (("premise:gendered", "unknown key 'gendered' after the colon; known: ungendered"),
                     (":ungendered", "names no document field before the colon")):  # fmt: skip
        path = tmp_path / "ax_g.yaml"
        path.write_text(yaml.safe_dump({**src, "cluster_by": bad}), encoding="utf-8")
        with pytest.raises(CfbenchError, match=msg) as exc:
            load_task_config(path)
        assert "\n" not in str(exc.value)
    path.write_text(yaml.safe_dump({**src, "cluster_by": "sentence1:ungendered"}), encoding="utf-8")
    task = Task(load_task_config(path), default_sources(FIXTURES))
    with pytest.raises(CfbenchError, match="cluster_by 'sentence1:ungendered': 'sentence1' is not a field") as exc:
        task.cluster_ids()
    assert "\n" not in str(exc.value) and "premise" in str(exc.value)  # the fields there are
    assert get_task("ax_g", default_sources(FIXTURES)).cluster_ids() is not None


# -- degenerate clusters: the cluster-level test must not claim what its data cannot show ---------------------
def _clustered_report(ref: list[float], other: list[float], clusters: list[str]):  # type: ignore[no-untyped-def]
    import numpy as np
    import pandas as pd

    from cfbench.report import build_report

    n = len(ref)
    items = pd.concat([
        pd.DataFrame({"run": run, "task": "race_high", "doc_id": np.arange(n), "score": s, "cluster": clusters})
        for run, s in (("base", ref), ("tuned", other))
    ])  # fmt: skip
    report = build_report("base", ["tuned"], {"U": ["race_high"]}, items=items, seed=0)
    return report.vs_base("tuned")


def test_one_cluster_is_untested_not_significant() -> None:
    """``--limit 5`` on RACE: five questions of one article. Before: p = 0, CI [−20, −20], MDE 0, starred."""
    cmp = _clustered_report([1, 1, 0, 0, 1], [0, 1, 0, 0, 1], ["a1"] * 5)
    row = cmp.task("race_high")
    assert row.delta == pytest.approx(-0.2) and row.forgotten == 1
    assert (row.p, row.ci, row.mde, row.significant) == (None, None, None, False)
    assert not cmp.avg.significant and cmp.avg.ci is None  # its category and AVG are not judged on a frozen task
    assert cmp.notes == ["race_high: its 5 paired items share one cluster (cluster_by): no CI or test; "
                         "score more of its documents for one"]  # fmt: skip


def test_few_clusters_never_claim_more_than_mcnemar() -> None:
    """Two articles each losing one of five questions: every cluster's Δ equals the mean, so the cluster
    SE is 0 and the z test said p = 0 (starred) on 2 forgotten items; McNemar's exact p is 0.5."""
    from cfbench.stats import mcnemar_exact, mde_mcnemar

    cmp = _clustered_report([1] * 10, [0, 1, 1, 1, 1, 0, 1, 1, 1, 1], ["a"] * 5 + ["b"] * 5)
    row = cmp.task("race_high")
    assert row.test == "cluster" and row.p == mcnemar_exact(2, 0) == 0.5 and not row.significant
    assert row.mde == pytest.approx(mde_mcnemar(10, 0.0))  # not 0: no test here detects a 1-item change
    same = _clustered_report([1, 0] * 10, [1, 0] * 10, [f"a{i // 2}" for i in range(20)]).task("race_high")
    assert same.p == 1.0 and same.mde == pytest.approx(mde_mcnemar(20, 0.0)) and same.mde > 0  # before: MDE 0.00
