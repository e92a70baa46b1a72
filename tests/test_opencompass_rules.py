"""OpenCompass rules of the paper suite: get_ppl arithmetic, refusals, MMLU naive mean and groups, suites.

The full proof against OpenCompass's own code is tests/test_opencompass_parity.py (slow); these
check the same rules fast, against hand computations on a tiny model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from _tokenizers import with_bos

from cfbench.backends.hf import HFBackend
from cfbench.data.adapters import PROCESSORS
from cfbench.errors import CfbenchError
from cfbench.report.groups import MMLU_SUBGROUPS
from cfbench.stats import align_items
from cfbench.tasks.opencompass import (
    OCPPLRequests,
    get_ppl_reference,
    naive_subset_mean,
    oc_argmin,
    oc_group_means,
    oc_ppl,
)
from cfbench.tasks.registry import get_task, get_task_config, load_suite

TEXTS = [
    "Question: Which object rolls the farthest down a ramp?\nAnswer: \nthe ball.",
    "The man turned on the faucet.\nQuestion: What may be the effect?\nAnswer:\nWater flowed from the spout.",
]


def opencompass_get_ppl_by_hand(model_dir: Path, text: str) -> float:
    """OpenCompass ``HuggingFace._get_ppl`` for one text, written out: ids = tokenizer(text) with special
    tokens, logits of one forward, cross-entropy of the n-1 shifted labels, summed, over n."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ids = torch.tensor([tok(text)["input_ids"]])
    with torch.no_grad():
        logits = model(ids).logits[0, :-1].double()
    nll = torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="none")
    by_hand = float(nll.sum()) / ids.shape[1]
    assert get_ppl_reference(nll.tolist()) == pytest.approx(by_hand, abs=1e-12)
    return by_hand


@pytest.mark.parametrize("bos", [False, True], ids=["no-bos", "bos"])
def test_oc_ppl_equals_opencompass_get_ppl_by_hand(tiny_model: Path, tmp_path: Path, bos: bool) -> None:
    model_dir = with_bos(tiny_model, tmp_path / "bos") if bos else tiny_model
    backend = HFBackend(model_dir, dtype="float32")
    oc = OCPPLRequests(backend.tokenizer)
    assert oc.adds_bos is bos
    for text in TEXTS:
        req = oc.request(text)
        assert req.context + req.continuation == text
        # No BOS: the first token is the context, never scored; BOS: the BOS prefix token is.
        assert (req.context == "") is bos
        res = backend.loglikelihood([req])[0]
        n_ids = len(backend.tokenizer(text)["input_ids"])
        assert res.n_tokens == n_ids - 1
        want = opencompass_get_ppl_by_hand(model_dir, text)
        assert oc_ppl(res.logprob, res.n_tokens) == pytest.approx(want, abs=1e-5)


def test_oc_ppl_arithmetic() -> None:
    # 3 ids -> 2 shifted losses 1.0 and 2.0, divided by 3 (not 2): OpenCompass counts the unscored first id.
    assert get_ppl_reference([1.0, 2.0]) == pytest.approx(1.0)
    assert oc_ppl(-3.0, 2) == pytest.approx(1.0)
    assert oc_argmin([2.0, 1.0, 1.0]) == 1  # PPLInferencer: ppl.index(min(ppl)), the first on ties


def test_texts_that_cannot_follow_opencompass_are_refused(tiny_model: Path) -> None:
    from transformers import AutoTokenizer

    oc = OCPPLRequests(AutoTokenizer.from_pretrained(tiny_model))
    with pytest.raises(CfbenchError, match="cannot be cut off as text"):
        oc.request("摘要：深度学习")  # one character, several byte tokens: SmolLM2 on CSL
    with pytest.raises(CfbenchError, match="cannot be cut off as text"):
        oc.request("\nAnswer")  # a whitespace first token would be moved onto the continuation
    with pytest.raises(CfbenchError, match="empty text"):
        oc.request("")


def test_task_with_oc_ppl_needs_the_tokenizer() -> None:
    with pytest.raises(CfbenchError, match="depend on the model's tokenizer"):
        get_task("oc_copa").instances(limit=1)


def test_scoring_picks_lowest_opencompass_ppl(tiny_model: Path) -> None:
    from cfbench.requests import LoglikResult

    task = get_task("oc_copa")
    from transformers import AutoTokenizer

    inst = task.instances(limit=1, oc_requests=OCPPLRequests(AutoTokenizer.from_pretrained(tiny_model)))[0]
    # Choice 0 has the larger total log-prob but more tokens: per-id PPL (-(-6)/(3+1) = 1.5 vs
    # -(-5)/(2+1) = 1.67) makes choice 0 the prediction, not the log-likelihood argmax.
    score = task.score(inst, [LoglikResult(-6.0, False, 3), LoglikResult(-5.0, False, 2)])
    assert score.pred == 0 and score.metrics == {"acc": float(inst.gold == 0)}
    score = task.score(inst, [LoglikResult(-6.0, False, 2), LoglikResult(-5.0, False, 2)])
    assert score.pred == 1


# ---- prompts as OpenCompass's configs render them (exactness is the parity test's job) ----


def _texts(name: str, tiny_model: Path, **kw: object) -> tuple[list[str], object]:
    from transformers import AutoTokenizer

    inst = get_task(name).instances(oc_requests=OCPPLRequests(AutoTokenizer.from_pretrained(tiny_model)), **kw)[0]
    return [r.context + r.continuation for r in inst.requests], inst


def test_opencompass_prompts(tiny_model: Path) -> None:
    arc, _ = _texts("oc_arc_challenge", tiny_model, limit=1)
    assert arc[0] == (
        "Question: Juan and LaKeisha roll a few objects down a ramp. They want to see which object rolls the "
        "farthest. What should they do so they can repeat their investigation?\nAnswer: \nPut the objects in groups."
    )
    boolq, inst = _texts("oc_boolq", tiny_model, limit=1)
    assert boolq[0].endswith("?\nNo") and boolq[1].endswith("?\nYes") and "\nQuestion: does ethanol" in boolq[0]
    hs, inst = _texts("oc_hellaswag", tiny_model, limit=1)
    assert hs[0].startswith("A man is sitting on a roof. He\n")  # activity label dropped: query.split(': ', 2)[-1]
    mmlu, inst = _texts("oc_mmlu", tiny_model, limit=1)
    head = "The following are multiple choice questions (with answers) about  abstract algebra.\n\n"  # two spaces
    assert mmlu[0].startswith(head) and inst.subset == "abstract_algebra"
    assert mmlu[0].count("\nAnswer: ") == 6 and [t[-1] for t in mmlu] == ["A", "B", "C", "D"]
    dev = get_task("oc_mmlu").docs("dev")[:5]
    shots = "".join(
        f"{d['question']}\nA. {d['choices'][0]}\nB. {d['choices'][1]}\nC. {d['choices'][2]}\nD. {d['choices'][3]}"
        f"\nAnswer: {'ABCD'[d['answer']]}\n\n"
        for d in dev
    )
    assert mmlu[0].startswith(head + shots)


def test_arc_loader_skips_items_without_four_choices() -> None:
    docs = get_task("oc_arc_challenge").docs()
    assert len(get_task("arc_challenge").docs()) == 299 and len(docs) == 295  # OpenCompass's ARCDataset
    assert PROCESSORS["arc_opencompass"]({"question": "q", "choices": {"text": ["a"], "label": ["A"]}}) is None


# ---- MMLU: OpenCompass's naive mean of subjects and its summarizer groups ----


def test_mmlu_naive_mean_and_groups() -> None:
    values = [1, 0, 1, 1, 0, 0]
    subsets = ["anatomy", "anatomy", "virology", "philosophy", "philosophy", "philosophy"]
    # Subjects: anatomy 0.5, virology 1.0, philosophy 1/3. Naive: (0.5 + 1 + 1/3) / 3; items: 3/6.
    assert naive_subset_mean(values, subsets) == pytest.approx((0.5 + 1 + 1 / 3) / 3)
    assert np.mean(values) == 0.5
    groups = oc_group_means(values, subsets, MMLU_SUBGROUPS)
    assert groups == pytest.approx({"stem": 0.5, "other": 1.0, "humanities": 1 / 3})
    with pytest.raises(CfbenchError):
        naive_subset_mean([], [])


def test_oc_mmlu_config_follows_mmlu_ppl_ac766d() -> None:
    cfg = get_task_config("oc_mmlu")
    assert cfg.num_fewshot == 5 and cfg.fewshot_split == "dev" and cfg.fewshot_sampler == "first_n"
    assert cfg.aggregate == "subset_mean" and cfg.scoring == "oc_ppl"
    # OpenCompass's summarizer groups (configs/summarizers/groups/mmlu.py) are cfbench's subgroups.
    assert cfg.subset_groups == MMLU_SUBGROUPS and len(cfg.subsets) == 57


def test_engine_stores_the_naive_mean(tiny_model: Path, tmp_path: Path) -> None:
    from cfbench.engine import evaluate
    from cfbench.store import ResultStore

    data = tmp_path / "data"
    mmlu = get_task("mmlu")
    for split, sizes in (("dev", {"anatomy": 5, "virology": 5}), ("test", {"anatomy": 3, "virology": 1})):
        docs = mmlu.docs(split)
        for subject, n in sizes.items():
            rows = [d for d in docs if d["subject"] == subject][:n]
            path = data / "mmlu" / split / f"{subject}_{split}.csv"
            path.parent.mkdir(parents=True, exist_ok=True)
            pd.DataFrame(
                [[d["question"], *d["choices"], "ABCD"[d["answer"]]] for d in rows]
            ).to_csv(path, header=False, index=False)
    res = evaluate(str(tiny_model), tasks=["oc_mmlu"], data_dir=data, results=tmp_path / "r", progress=False)
    out = res.outcomes[0]
    items = ResultStore(tmp_path / "r").items(cache_keys=[out.cache_key])
    assert len(items) == 4 and sorted(items["subset"]) == ["anatomy"] * 3 + ["virology"]
    assert out.metrics["acc"] == pytest.approx(naive_subset_mean(items["acc"].tolist(), items["subset"].tolist()))


# ---- the two suites never mix ----


def test_paper_and_lmeval_suites_never_share_items() -> None:
    paper, lmeval = load_suite("paper"), load_suite("lmeval")
    scored = [t for ts in paper.categories.values() for t in ts]
    assert all(t.startswith("oc_") for t in scored) and len(scored) == 13
    assert not set(scored) & set(lmeval.tasks)
    for t in scored:
        cfg = get_task_config(t)
        assert cfg.scoring == "oc_ppl" and cfg.prompt_source == "opencompass", t
        assert cfg.config_hash != get_task_config(t.removeprefix("oc_")).config_hash, t
    assert paper.suite_hash() != lmeval.suite_hash()
    assert load_suite("offline").reference == "lmeval" and set(load_suite("offline").tasks) <= set(lmeval.tasks)


def test_oc_items_never_pair_with_lmeval_items_of_the_same_prompt(tiny_model: Path) -> None:
    from transformers import AutoTokenizer

    from cfbench.engine import _fingerprint

    # copa and oc_copa render the same prompt; the OpenCompass rule scores whole texts, so its item
    # fingerprint (the texts the model saw) differs and align_items pairs none: compare falls back to
    # an unpaired task-level Δ with no CI, never a paired one across rules.
    oc = OCPPLRequests(AutoTokenizer.from_pretrained(tiny_model))
    a, b = get_task("copa"), get_task("oc_copa")
    ia, ib = a.instances(limit=2), b.instances(limit=2, oc_requests=oc)
    assert [i.context for i in ia] == [i.context for i in ib]
    ha, hb = [_fingerprint(a, i) for i in ia], [_fingerprint(b, i) for i in ib]
    assert not set(ha) & set(hb)
    frame = pd.DataFrame({"doc_id": [0, 1], "score": [1.0, 0.0]})
    ref = frame.assign(item_hash=ha, task_hash=a.cfg.config_hash)
    other = frame.assign(item_hash=hb, task_hash=b.cfg.config_hash)
    paired = align_items(ref, other, task="copa", names=("x", "y"))
    assert paired.n == 0 and paired.mismatched == 2 and paired.unpairable


def test_long_prompts_drop_shots_like_ppl_inferencer(tiny_model: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    task = get_task("oc_mmlu")
    doc_id, doc = task.selected_docs(1)[0]
    full = [task.context(doc, doc_id, k) + " A" for k in range(6)]
    n_ids = [len(tok(t)["input_ids"]) for t in full]
    assert n_ids == sorted(n_ids)
    # Room for 3 shots, not 4: every label gets the 3-shot prompt, as PPLInferencer's max_seq_len loop.
    inst = task.render(doc, doc_id, 5, OCPPLRequests(tok, max_length=n_ids[3] + 1))
    three = task.context(doc, doc_id, 3)
    assert [r.context + r.continuation for r in inst.requests] == [f"{three} {x}" for x in "ABCD"]
    with pytest.raises(CfbenchError, match="even without in-context examples"):
        task.render(doc, doc_id, 5, OCPPLRequests(tok, max_length=n_ids[0] - 1))


def test_compare_reports_oc_mmlu_as_the_naive_mean() -> None:
    from cfbench.report.table import build_report

    # anatomy (stem): 4 items, virology (other): 1 item. Base 3/4 and 1/1; tuned 1/4 and 1/1.
    subsets = ["anatomy"] * 4 + ["virology"]
    frames = [
        pd.DataFrame({"run": run, "task": "oc_mmlu", "doc_id": range(5), "subset": subsets, "score": scores})
        for run, scores in (("base", [1, 1, 1, 0, 1]), ("tuned", [1, 0, 0, 0, 1]))
    ]
    report = build_report(
        "base", ["tuned"], {"DK": ["oc_mmlu"]}, items=pd.concat(frames), subgroups={"oc_mmlu": MMLU_SUBGROUPS},
        n_boot=200, subset_mean_tasks=["oc_mmlu"],
    )  # fmt: skip
    row = report.row("base")
    assert row.tasks["oc_mmlu"] == pytest.approx((0.75 + 1.0) / 2)  # items would give 0.8
    main = next(r for r in report.vs_base("tuned").tasks if r.task == "oc_mmlu" and r.group is None)
    assert main.ref_score == pytest.approx(0.875) and main.score == pytest.approx((0.25 + 1.0) / 2)
    assert main.delta == pytest.approx(-0.25) and main.ci is not None and main.forgotten == 2
    stem = next(r for r in report.vs_base("tuned").tasks if r.group == "stem")
    assert stem.ref_score == pytest.approx(0.75) and stem.score == pytest.approx(0.25)
    plain = build_report("base", ["tuned"], {"DK": ["oc_mmlu"]}, items=pd.concat(frames), n_boot=0)
    assert plain.row("base").tasks["oc_mmlu"] == pytest.approx(0.8)  # without the rule: the item mean


def test_compare_across_rules_is_refused_with_the_suite_to_use(tmp_path: Path) -> None:
    from cfbench.comparison import compare
    from cfbench.store import ResultStore, RunRecord, TaskScore

    store = ResultStore(tmp_path)
    store.append_run(RunRecord(name="lm", checkpoint_name="m"), [TaskScore(task="copa", metric="acc", value=0.5)])
    store.append_run(RunRecord(name="oc", checkpoint_name="m"), [TaskScore(task="oc_copa", metric="acc", value=0.6)])
    with pytest.raises(CfbenchError, match="run 'lm' has no scores on suite paper: it was scored with lm-eval rules"):
        compare("run:lm", ["run:oc"], suite="paper", results=tmp_path, n_boot=0)
    with pytest.raises(CfbenchError, match="compare with --suite paper"):
        compare("run:oc", ["run:lm"], suite="lmeval", results=tmp_path, n_boot=0)


def test_oc_prompts_follow_opencompass_max_seq_len_and_fixk_zero_shot_ice(tiny_model: Path) -> None:
    """Issue 19 item 4: examples are dropped at OpenCompass's max_seq_len 2048 even when the backend holds
    more, and a 0-shot FixKRetriever prompt keeps its ice_eos_token "\\n"."""
    from transformers import AutoTokenizer

    from cfbench.tasks.opencompass import OC_MAX_SEQ_LEN

    tok = AutoTokenizer.from_pretrained(tiny_model)
    task = get_task("oc_mmlu")
    doc_id, doc = task.selected_docs(1)[0]
    zero = task.context(doc, doc_id, 0)
    # description "...about  {subject}.\n\n" + FixKRetriever's "\n" + the question (before: no "\n")
    assert zero.endswith(".\n\n\n" + task._text(doc)) and not zero.endswith(".\n\n\n\n" + task._text(doc))
    assert OCPPLRequests(tok, max_length=None).max_length == OC_MAX_SEQ_LEN == 2048
    assert OCPPLRequests(tok, max_length=8192).max_length == 2048  # the backend's longer context does not count
    assert OCPPLRequests(tok, max_length=1024).max_length == 1024  # a shorter backend still bounds the prompt
    # a prompt of more than 2048 ids loses examples though the backend would hold 8192
    def ids(d: dict, k: int) -> int:
        return len(tok(task.context(d, doc_id, k) + " A")["input_ids"])

    fill = 0
    while ids(dict(doc, question=doc["question"] + " filler" * (fill + 50)), 0) <= 2048:
        fill += 50  # the longest question whose 0-shot text still fits 2048 ids
    long_doc = dict(doc, question=doc["question"] + " filler" * fill)
    assert ids(long_doc, 5) > 2048 >= ids(long_doc, 0)
    inst = task.render(long_doc, doc_id, 5, OCPPLRequests(tok, max_length=8192))
    assert all(len(tok(r.context + r.continuation)["input_ids"]) <= 2048 for r in inst.requests)
    assert inst.requests[0].context + inst.requests[0].continuation != task.context(long_doc, doc_id, 5) + " A"
    # the config hash carries the rules, so items cached under the old rendering are not reused
    assert "oc_rules" not in task.cfg.raw and task.cfg.config_hash != get_task("mmlu").cfg.config_hash
