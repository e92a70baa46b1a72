"""The results store: schema round trips, lock-free concurrent appends, validation, leaderboard."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
import time
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cfbench.errors import CfbenchError
from cfbench.report.html import leaderboard_page as to_html
from cfbench.report.leaderboard import INFO_COLUMNS, leaderboard, natural_width, to_markdown
from cfbench.store import (
    ITEMS_SCHEMA,
    RUNS_SCHEMA,
    SCHEMA_VERSION,
    TASK_SCORES_SCHEMA,
    ResultStore,
    RunRecord,
    TaskScore,
)

REPO = Path(__file__).resolve().parents[1]


def _items(key: str, task: str, doc_ids: list[int], run_id: str | None = None) -> pd.DataFrame:
    return pd.DataFrame({
        "cache_key": key, "run_id": run_id, "task": task, "task_hash": "th", "doc_id": doc_ids,
        "subset": None, "gold": [d % 2 for d in doc_ids], "pred": [0] * len(doc_ids),
        "acc": [1.0 if d % 2 == 0 else 0.0 for d in doc_ids], "acc_norm": None, "mc1": None, "mc2": None,
        "logprobs": [[-1.0, -2.5] for _ in doc_ids], "n_tokens": [[1, 3] for _ in doc_ids],
        "is_greedy": [[True, False] for _ in doc_ids],
    })


def _parts(root: Path, table: str) -> list[Path]:
    return sorted((root / table).glob("*")) if (root / table).exists() else []


# ------------------------------------------------------------------ empty store


def test_missing_store_reads_empty_and_creates_nothing(tmp_path: Path) -> None:
    root = tmp_path / "nope"
    store = ResultStore(root)
    assert list(store.runs().columns) == RUNS_SCHEMA.names and store.runs().empty
    assert list(store.task_scores().columns) == TASK_SCORES_SCHEMA.names
    assert list(store.items(tasks=["boolq"]).columns) == ITEMS_SCHEMA.names
    assert store.cached_doc_ids("k") == set()
    board = leaderboard(store, suite={"DK": ["mmlu"]})
    assert board.empty and "mmlu" in board.columns and "AVG" in board.columns
    store.compact()
    assert not root.exists()


# ------------------------------------------------------------------ round trips


def test_run_round_trip_keeps_every_field(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    run = RunRecord(
        name="sft-lr1e-5", checkpoint_name="llama-sft", checkpoint_path="/ckpt/sft", checkpoint_hash="abc123",
        base="llama-base@def456", method="sam", hparams={"lr": 1e-5, "rho": 0.05}, suite="paper", suite_hash="s1",
        task_hashes={"boolq": "h1"}, backend="hf", backend_settings={"dtype": "bfloat16", "max_length": 2048},
        dtype="bfloat16", limit=100, num_fewshot=0, extra={"note": "x"},
        created_at=datetime(2024, 6, 1, 12, 30, 15, 123456, tzinfo=timezone.utc),
    )
    rid = store.append_run(run, [TaskScore("boolq", "acc", 0.625, n_items=8, stderr=0.17, task_hash="h1",
                                           cache_key="ck")])
    assert rid == run.run_id and len(rid) == 32 and int(rid, 16) >= 0
    assert store.find_run("sft-lr1e-5") == run
    runs = store.runs()
    assert runs.loc[0, "hparams_json"] == '{"lr": 1e-05, "rho": 0.05}'
    assert str(runs["created_at"].dtype) == "datetime64[us, UTC]"
    scores = store.task_scores([rid])
    record = scores.to_dict("records")[0]
    assert pd.isna(record.pop("subset"))
    assert record == {"run_id": rid, "task": "boolq", "task_hash": "h1", "metric": "acc", "value": 0.625,
                      "n_items": 8, "stderr": 0.17, "cache_key": "ck"}
    # every part file carries the explicit schema, not one inferred from the data
    for table, schema in (("runs", RUNS_SCHEMA), ("task_scores", TASK_SCORES_SCHEMA)):
        (part,) = _parts(tmp_path, table)
        assert pq.read_schema(part).remove_metadata().equals(schema.remove_metadata())
    assert json.loads((tmp_path / "_schema.json").read_text())["schema_version"] == SCHEMA_VERSION


def test_naive_created_at_is_taken_as_utc(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    store.append_run(RunRecord(name="a", checkpoint_name="m", created_at=datetime(2024, 1, 2, 3, 4, 5)), [])
    assert store.find_run("a").created_at == datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone.utc)


def test_items_round_trip_and_filters(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    store.append_items(_items("k1", "boolq", [0, 1, 2]))
    store.append_items(_items("k2", "copa", [0, 1]))
    store.append_items(_items("k1", "boolq", [1, 3]))  # doc 1 again: identical cached item, read once
    got = store.items(cache_keys=["k1"]).sort_values("doc_id")
    assert got["doc_id"].tolist() == [0, 1, 2, 3]
    row = got.iloc[0]
    assert list(row["logprobs"]) == [-1.0, -2.5] and list(row["n_tokens"]) == [1, 3]
    assert list(row["is_greedy"]) == [True, False]
    assert row["acc"] == 1.0 and math.isnan(row["mc2"]) and pd.isna(row["run_id"])
    assert store.items(tasks=["copa"])["doc_id"].tolist() == [0, 1]
    assert store.items(cache_keys=["k1"], tasks=["copa"]).empty
    assert store.cached_doc_ids("k1") == {0, 1, 2, 3}
    assert store.cached_doc_ids("k3") == set()


def test_items_by_run_include_shared_cache(tmp_path: Path) -> None:
    """A run's items are those it wrote plus the cached ones its scores were computed from."""
    store = ResultStore(tmp_path)
    store.append_items(_items("shared", "boolq", [0, 1]))  # written by the engine, no run id
    store.append_items(_items("own", "copa", [5], run_id="r2"))
    r1 = store.append_run(RunRecord(name="a", checkpoint_name="m", run_id="r1"),
                          [TaskScore("boolq", "acc", 0.5, cache_key="shared")])
    assert sorted(store.items(run_ids=[r1])["doc_id"]) == [0, 1]
    assert store.items(run_ids=["r2"])["doc_id"].tolist() == [5]
    assert store.items(run_ids=["r3"]).empty


# ------------------------------------------------------------------ validation


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda df: df.drop(columns=["gold"]), "lacks required columns ['gold']"),
        (lambda df: df.assign(extra=1), "unknown columns ['extra']"),
        (lambda df: df.assign(doc_id=[0, None, 2]), "'doc_id' has 1 null"),
        (lambda df: df.assign(doc_id=["a", "b", "c"]), "'doc_id' does not cast to int64"),
        (lambda df: df.assign(pred=[0.0, 1.5, 0.0]), "'pred' does not cast to int64"),
        (lambda df: df.assign(doc_id=[0, 0, 2]), "repeats (cache_key, task, doc_id) = (k, boolq, 0)"),
        (lambda df: df.assign(acc=[1.0, 45.0, 0.0]), "'acc' has values outside [0, 1]"),
        (lambda df: df.assign(n_tokens=[[1], [1, 2], [1, 2]]), "different lengths [1, 2]"),
        (lambda df: df.assign(pred=[0, 2, 0]), "pred 2 is not a choice index"),
    ],
)
def test_bad_item_frame_is_an_error_and_writes_nothing(tmp_path: Path, mutate, message: str) -> None:
    store = ResultStore(tmp_path)
    with pytest.raises(CfbenchError) as err:
        store.append_items(mutate(_items("k", "boolq", [0, 1, 2])))
    assert message in str(err.value)
    assert not tmp_path.joinpath("items").exists() and not tmp_path.joinpath("_schema.json").exists()


def test_missing_nullable_item_columns_are_filled(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    store.append_items(pd.DataFrame({"cache_key": ["k"], "task": ["rte"], "doc_id": [7], "gold": [1], "pred": [1]}))
    row = store.items().iloc[0]
    assert row["doc_id"] == 7 and row["logprobs"] is None and pd.isna(row["acc"])


def test_bad_run_writes_nothing(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    with pytest.raises(CfbenchError, match=r"outside \[0, 1\].*divide percentages by 100"):
        store.append_run(RunRecord(name="a", checkpoint_name="m"), [TaskScore("boolq", "acc", 74.8)])
    with pytest.raises(CfbenchError, match="given twice"):
        store.append_run(RunRecord(name="a", checkpoint_name="m"),
                         [TaskScore("boolq", "acc", 0.7), TaskScore("boolq", "acc", 0.8)])
    with pytest.raises(CfbenchError, match="source 'harness'"):
        store.append_run(RunRecord(name="a", checkpoint_name="m", source="harness"), [])
    with pytest.raises(CfbenchError, match="items column 'gold'"):
        store.append_run(RunRecord(name="a", checkpoint_name="m"), [TaskScore("boolq", "acc", 0.7)],
                         items=_items("k", "boolq", [0]).assign(gold=["x"]))
    assert list(tmp_path.iterdir()) == []
    run = RunRecord(name="a", checkpoint_name="m")
    store.append_run(run, [])
    with pytest.raises(CfbenchError, match="already in"):
        store.append_run(run, [])
    assert len(store.runs()) == 1


# ------------------------------------------------------------------ find_run


def test_find_run_latest_by_name_id_and_prefix(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    t0 = datetime(2024, 5, 1, tzinfo=timezone.utc)
    old = store.append_run(RunRecord(name="sft", checkpoint_name="m", created_at=t0, run_id="a" * 32), [])
    new = store.append_run(RunRecord(name="sft", checkpoint_name="m2", created_at=t0.replace(day=2),
                                     run_id="b" * 32), [])
    store.append_run(RunRecord(name="base", checkpoint_name="m0", created_at=t0.replace(day=3)), [])
    assert store.find_run("sft").run_id == new
    assert store.find_run(old).checkpoint_name == "m"
    assert store.find_run("aaaaaaa").run_id == old


def test_find_run_unknown_names_near_matches(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    with pytest.raises(CfbenchError, match=r"no runs in .* yet"):
        store.find_run("sft")
    for name in ("sft-lr1e-5", "sft-lr2e-5", "base"):
        store.append_run(RunRecord(name=name, checkpoint_name="m"), [])
    with pytest.raises(CfbenchError) as err:
        store.find_run("sft-lr1e5")
    assert "did you mean sft-lr1e-5, sft-lr2e-5?" in str(err.value)
    with pytest.raises(CfbenchError, match="known runs: base, sft-lr1e-5, sft-lr2e-5"):
        store.find_run("zzz")


def test_newer_schema_version_is_refused(tmp_path: Path) -> None:
    (tmp_path / "_schema.json").write_text(json.dumps({"schema_version": SCHEMA_VERSION + 1}))
    with pytest.raises(CfbenchError, match=f"schema version {SCHEMA_VERSION + 1}.*upgrade cfbench"):
        ResultStore(tmp_path)
    (tmp_path / "_schema.json").write_text("{not json")
    with pytest.raises(CfbenchError, match="unreadable"):
        ResultStore(tmp_path)


def test_old_parts_without_a_new_column_read_as_null(tmp_path: Path) -> None:
    """Adding a nullable column is compatible: parts written before it read it as nulls."""
    store = ResultStore(tmp_path)
    store.append_run(RunRecord(name="a", checkpoint_name="m", run_id="r1"), [TaskScore("boolq", "acc", 0.5)])
    (part,) = _parts(tmp_path, "task_scores")
    old = pq.read_table(part).drop_columns(["cache_key", "subset"])
    pq.write_table(old, part)
    scores = store.task_scores()
    assert scores.loc[0, "value"] == 0.5 and pd.isna(scores.loc[0, "cache_key"])


# ------------------------------------------------------------------ atomic appends, compaction

_WORKER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import pandas as pd
    from cfbench.store import ResultStore, RunRecord, TaskScore
    root, i = Path(sys.argv[1]), int(sys.argv[2])
    store = ResultStore(root)
    (root.parent / f"ready-{i}").touch()
    while not (root.parent / "go").exists():
        time.sleep(0.005)
    for chunk in range(3):
        ids = list(range(chunk * 50, chunk * 50 + 50))
        store.append_items(pd.DataFrame({"cache_key": f"k{i}", "task": "boolq", "doc_id": ids,
                                         "gold": 0, "pred": 0, "acc": 1.0,
                                         "logprobs": [[-1.0, -2.0]] * 50}))
    store.append_run(RunRecord(name=f"run{i}", checkpoint_name=f"m{i}"),
                     [TaskScore("boolq", "acc", i / 10, n_items=150, cache_key=f"k{i}"),
                      TaskScore("copa", "acc", 0.5)])
""")


def test_eight_concurrent_writers(tmp_path: Path) -> None:
    root = tmp_path / "results"
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    procs = [subprocess.Popen([sys.executable, "-c", _WORKER, str(root), str(i)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for i in range(8)]
    deadline = time.time() + 120
    while not all((tmp_path / f"ready-{i}").exists() for i in range(8)):
        assert time.time() < deadline and all(p.poll() is None for p in procs), "writer failed to start"
        time.sleep(0.02)
    (tmp_path / "go").touch()
    store = ResultStore(root)
    seen = []
    while any(p.poll() is None for p in procs):  # read while they write: never a partial file
        seen.append(len(store.runs()))
        store.items(tasks=["boolq"])
        time.sleep(0.05)
    for p in procs:
        _, err = p.communicate()
        assert p.returncode == 0, err.decode()
    assert seen == sorted(seen)
    runs = store.runs()
    assert sorted(runs["name"]) == [f"run{i}" for i in range(8)]
    assert runs["run_id"].nunique() == 8
    scores = store.task_scores()
    assert len(scores) == 16
    assert sorted(scores[scores.task == "boolq"]["value"]) == pytest.approx([i / 10 for i in range(8)])
    assert len(store.items()) == 8 * 150
    assert store.cached_doc_ids("k3") == set(range(150))
    for table, n in (("runs", 8), ("task_scores", 8), ("items", 24)):
        files = _parts(root, table)
        assert len(files) == n and all(f.name.startswith("part-") for f in files)  # no temp left behind
        for f in files:
            pq.read_table(f)
    store.compact()
    assert [len(_parts(root, t)) for t in ("runs", "task_scores", "items")] == [1, 1, 1]
    assert len(store.items()) == 8 * 150 and len(store.runs()) == 8


def test_compact_keeps_rows_once_and_removes_stale_temp_files(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    for i in range(3):
        store.append_run(RunRecord(name=f"r{i}", checkpoint_name="m"), [TaskScore("boolq", "acc", i / 4)])
    store.append_items(_items("k", "boolq", [0, 1]))
    store.append_items(_items("k", "boolq", [2]))
    before = store.task_scores().sort_values("value").reset_index(drop=True)
    # a merged part next to the parts it replaces (the moment inside compact()) reads once
    merged = pa.concat_tables([pq.read_table(p) for p in _parts(tmp_path, "task_scores")])
    pq.write_table(merged, tmp_path / "task_scores" / "part-99999999999999999999-x.parquet")
    assert len(store.task_scores()) == 3
    stale = tmp_path / "items" / ".tmp-crashed.parquet"
    stale.write_bytes(b"PAR1 partial")
    fresh = tmp_path / "items" / ".tmp-writing.parquet"
    fresh.write_bytes(b"PAR1 partial")
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    assert len(store.items()) == 3  # readers skip temp files
    store.compact()
    assert [len(list((tmp_path / t).glob("part-*"))) for t in ("runs", "task_scores", "items")] == [1, 1, 1]
    assert not stale.exists() and fresh.exists()
    pd.testing.assert_frame_equal(store.task_scores().sort_values("value").reset_index(drop=True), before)
    assert sorted(store.items()["doc_id"]) == [0, 1, 2]


def test_plain_pandas_reads_a_table_folder(tmp_path: Path) -> None:
    """The documented one-liner: pandas skips the dot/underscore names, sees every part."""
    store = ResultStore(tmp_path)
    store.append_run(RunRecord(name="a", checkpoint_name="m"), [TaskScore("boolq", "acc", 0.5)])
    store.append_run(RunRecord(name="b", checkpoint_name="m"), [TaskScore("boolq", "acc", 0.75)])
    (tmp_path / "task_scores" / ".tmp-x.parquet").write_bytes(b"garbage")
    df = pd.read_parquet(tmp_path / "task_scores")
    assert sorted(df["value"]) == [0.5, 0.75]


# ------------------------------------------------------------------ leaderboard

PAPER = {"DK": ["mmlu"], "Understanding": ["race_middle", "race_high"], "Reasoning": ["boolq", "copa", "hellaswag"],
         "Exams": ["arc_challenge"]}
METRICS = {"hellaswag": "acc_norm", "mmlu": "acc", "race_middle": "acc", "race_high": "acc", "boolq": "acc",
           "copa": "acc", "arc_challenge": "acc", "openbookqa": "acc"}


def _board_store(root: Path) -> ResultStore:
    store = ResultStore(root)
    t = datetime(2024, 1, 1, tzinfo=timezone.utc)
    full = {"mmlu": 0.40, "race_middle": 0.50, "race_high": 0.30, "boolq": 0.70, "copa": 0.60, "arc_challenge": 0.35}
    base = [TaskScore(k, "acc", v) for k, v in full.items()] + [
        TaskScore("hellaswag", "acc", 0.45), TaskScore("hellaswag", "acc_norm", 0.50),
        TaskScore("mmlu", "acc", 0.9, subset="stem")]  # a subset score never reaches the board
    store.append_run(RunRecord(name="base", checkpoint_name="m", checkpoint_hash="h0", created_at=t), base)
    tuned = {**full, "mmlu": 0.36, "boolq": 0.76}
    store.append_run(RunRecord(name="sft", checkpoint_name="m", method="sam", created_at=t.replace(day=2)),
                     [TaskScore(k, "acc", v) for k, v in tuned.items()] + [TaskScore("hellaswag", "acc_norm", 0.44)])
    # an OpenCompass-style run: accuracy only, and no COPA
    store.append_run(RunRecord(name="oc", checkpoint_name="m", source="opencompass", created_at=t.replace(day=3)),
                     [TaskScore(k, "acc", v) for k, v in full.items() if k != "copa"]
                     + [TaskScore("hellaswag", "acc", 0.47), TaskScore("openbookqa", "acc", 0.2)])
    return store


def test_leaderboard_pivot_categories_and_avg(tmp_path: Path) -> None:
    board = leaderboard(_board_store(tmp_path), suite=PAPER, metrics=METRICS).set_index("name")
    assert list(board.columns[-6:]) == ["DK", "Understanding", "Reasoning", "Exams", "AVG", "partial"]
    first = len(INFO_COLUMNS) - 1  # the info columns (name is the index), then the suite's tasks
    assert list(board.columns[first : first + 8]) == ["mmlu", "race_middle", "race_high", "boolq", "copa", "hellaswag",
                                         "arc_challenge", "openbookqa"]
    b, s, oc = board.loc["base"], board.loc["sft"], board.loc["oc"]
    assert b["hellaswag"] == 0.50  # primary metric acc_norm, not acc 0.45
    assert b["Understanding"] == pytest.approx(0.40)  # (0.50 + 0.30) / 2
    assert b["Reasoning"] == pytest.approx(0.60)  # (0.70 + 0.60 + 0.50) / 3
    assert b["AVG"] == pytest.approx((0.40 + 0.40 + 0.60 + 0.35) / 4)
    assert s["DK"] == pytest.approx(0.36) and s["Reasoning"] == pytest.approx((0.76 + 0.60 + 0.44) / 3)
    assert s["AVG"] == pytest.approx((0.36 + 0.40 + 0.60 + 0.35) / 4)
    assert oc["hellaswag"] == 0.47  # no acc_norm: falls back to acc
    # no COPA: the partial means compare shows, named in `partial` (issue 8 item 3)
    assert math.isnan(oc["copa"]) and oc["Reasoning"] == pytest.approx((0.70 + 0.47) / 2)
    assert oc["partial"] == "Reasoning,AVG" and b["partial"] == ""
    assert oc["Exams"] == 0.35 and oc["openbookqa"] == 0.2 and math.isnan(b["openbookqa"])
    assert b["checkpoint_hash"] == "h0" and s["method"] == "sam" and oc["source"] == "opencompass"


def test_leaderboard_sort_and_errors(tmp_path: Path) -> None:
    store = _board_store(tmp_path)
    assert leaderboard(store, metrics=METRICS)["name"].tolist() == ["base", "sft", "oc"]
    assert leaderboard(store, suite=PAPER, sort="AVG", metrics=METRICS)["name"].tolist() == ["base", "oc", "sft"]
    assert leaderboard(store, sort="boolq", metrics=METRICS)["name"].tolist() == ["sft", "base", "oc"]
    assert leaderboard(store, sort="name", metrics=METRICS)["name"].tolist() == ["base", "oc", "sft"]
    with pytest.raises(CfbenchError, match="can't sort by 'nope'"):
        leaderboard(store, sort="nope")


def test_leaderboard_renderings_show_percent(tmp_path: Path) -> None:
    store = _board_store(tmp_path)
    board = leaderboard(store, suite=PAPER, metrics=METRICS)
    md = to_markdown(board)
    lines = md.splitlines()
    assert "×100" in lines[0]
    assert lines[2].startswith("| name | run_id | source |") and lines[3].startswith("|---|")
    assert "| 76.00 |" in lines[5] and "| 44.00 |" in lines[5]  # sft boolq, hellaswag
    from cfbench.report.html import run_meta_from_frame

    page = to_html(board, categories=list(PAPER), runs=run_meta_from_frame(store, board))  # no --limit: null
    assert page.startswith("<!DOCTYPE html>") and '<meta charset="utf-8">' in page
    assert 'data-v="70.0">70.00</td>' in page  # base boolq, with its numeric sort key (the shown ×100)
    assert 'title="Understanding"' in page and "Summary (×100)" in page
    assert page.count("<td class=\"r\">all</td>") == 3  # the runs table: Limit "all" for each run
    drift = to_html(board.assign(**{"kl vs ref": [0.0, 0.1266, None]}), categories=list(PAPER))
    assert "Drift vs reference (own unit)" in drift and 'data-v="0.1266">0.1266</td>' in drift  # nats, not ×100
    assert natural_width(board) > 100


def test_failed_append_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A writer dying at the rename leaves nothing readable and no temp file a glob could pick up."""
    store = ResultStore(tmp_path)
    store.append_items(_items("k", "boolq", [0]))
    renamed: list[str] = []

    def crash(src: str | os.PathLike, dst: str | os.PathLike) -> None:
        renamed.append(Path(src).name)
        raise OSError("disk gone")

    monkeypatch.setattr("cfbench.store.store.os.replace", crash)
    with pytest.raises(CfbenchError, match=r"not writable [(]disk gone[)]"):  # one line, not a traceback
        store.append_items(_items("k", "boolq", [1]))
    (tmp,) = renamed
    assert tmp.startswith(".tmp-") and not tmp.endswith(".parquet")  # invisible to pyarrow and *.parquet globs
    assert [p.name for p in (tmp_path / "items").iterdir()] == [_parts(tmp_path, "items")[0].name]
    assert store.cached_doc_ids("k") == {0}


def test_primary_metric_defaults(tmp_path: Path) -> None:
    """Override > task config's primary metric > acc; the board follows it without overrides."""
    from cfbench.tasks.registry import primary_metric

    assert primary_metric("not_a_task") == "acc"
    assert primary_metric("hellaswag", {"hellaswag": "acc"}) == "acc"
    store = ResultStore(tmp_path)
    store.append_run(RunRecord(name="a", checkpoint_name="m"),
                     [TaskScore("hellaswag", "acc", 0.25), TaskScore("hellaswag", "acc_norm", 0.75)])
    expected = {"acc": 0.25, "acc_norm": 0.75}[primary_metric("hellaswag")]
    assert leaderboard(store).loc[0, "hellaswag"] == expected
