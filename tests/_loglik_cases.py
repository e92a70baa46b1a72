"""Requests and checks shared by the vLLM and OpenAI-server backend tests.

The set mixes what real tasks send: multi-token choices of one question (ARC style), single-token
letters after a few-shot prompt longer than one vLLM KV block (so the prefix cache is really hit),
choices where one is a prefix of another, an empty context, a context with trailing whitespace and
an empty continuation.
"""

from __future__ import annotations

from collections.abc import Sequence

from cfbench.requests import LoglikRequest, LoglikResult

TOLERANCE = 1e-3

_SHOTS = "".join(
    f"Question: {q}\nA. {a}\nB. {b}\nC. {c}\nD. {d}\nAnswer: {ans}\n\n"
    for q, a, b, c, d, ans in [
        (
            "Which gas do plants take in from the air to make food?",
            "oxygen",
            "carbon dioxide",
            "nitrogen",
            "helium",
            "B",
        ),
        ("What is the boiling point of water at sea level in degrees Celsius?", "50", "75", "100", "150", "C"),
        ("Which planet is known as the red planet?", "Mars", "Venus", "Jupiter", "Saturn", "A"),
        ("What part of the cell contains the genetic material?", "membrane", "wall", "cytoplasm", "nucleus", "D"),
        ("Which of these is a mammal?", "shark", "whale", "trout", "frog", "B"),
    ]
)
FEW_SHOT = _SHOTS + (
    "Question: Which force keeps the planets in orbit around the Sun?\n"
    "A. magnetism\nB. friction\nC. gravity\nD. electricity\nAnswer:"
)

# (question id, context, continuation); a question's choices share the id.
CASES: list[tuple[str, str, str]] = [
    *[("fewshot", FEW_SHOT, f" {letter}") for letter in "ABCD"],
    *[
        ("capital", "Question: What is the capital of France?\nAnswer:", choice)
        for choice in (" Paris", " Paris, the largest city of France", " London", " Berlin")
    ],
    *[
        ("arc", "Question: Which of these would best help a student measure the mass of a rock?\nAnswer:", c)
        for c in (" a balance", " a thermometer", " a ruler", " a graduated cylinder")
    ],
    *[("empty-context", "", c) for c in ("The quick brown fox jumps over the lazy dog.", " Hello", "1")],
    *[("trailing-space", "The opposite of hot is ", c) for c in ("cold", "warm", "blue")],
    ("counting", "1, 2, 3, 4, 5,", " 6, 7, 8"),
    ("empty-continuation", "Nothing follows this context.", ""),
]

REQUESTS = [LoglikRequest(ctx, cont) for _, ctx, cont in CASES]


def predictions(results: Sequence[LoglikResult]) -> dict[str, int]:
    """Index of the highest-scoring choice per question (what accuracy is computed from)."""
    out: dict[str, int] = {}
    seen: dict[str, int] = {}
    scores: dict[str, float] = {}
    for (qid, _, _), res in zip(CASES, results, strict=True):
        k = seen.get(qid, 0)
        seen[qid] = k + 1
        if qid not in scores or res.logprob > scores[qid]:
            scores[qid] = res.logprob
            out[qid] = k
    return out


def compare(reference: Sequence[LoglikResult], other: Sequence[LoglikResult]) -> float:
    """Assert agreement with the reference backend; return the largest |Δ log-prob| seen."""
    assert len(other) == len(reference) == len(CASES)
    worst = 0.0
    for (qid, ctx, cont), ref, got in zip(CASES, reference, other, strict=True):
        where = f"{qid}: {ctx[-30:]!r} + {cont!r}"
        assert got.n_tokens == ref.n_tokens, where
        assert got.is_greedy == ref.is_greedy, where
        delta = abs(got.logprob - ref.logprob)
        assert delta <= TOLERANCE, f"{where}: {got.logprob} vs {ref.logprob}"
        worst = max(worst, delta)
    assert predictions(other) == predictions(reference)
    return worst


def check_reference_is_informative(reference: Sequence[LoglikResult]) -> None:
    """The is_greedy comparison only means something if both values occur among the cases."""
    greedy = [r.is_greedy for r, (_, _, cont) in zip(reference, CASES, strict=True) if cont]
    assert any(greedy) and not all(greedy), "change CASES so that is_greedy takes both values"


def hf_reference(model_path: str) -> list[LoglikResult]:
    """cfbench's ``hf`` backend in float32 on :data:`REQUESTS` (the numbers every backend must match)."""
    from cfbench.backends import make_backend

    hf = make_backend("hf", model_path, dtype="float32")
    try:
        results = hf.loglikelihood(REQUESTS)
    finally:
        hf.close()
    check_reference_is_informative(results)
    return results


def smollm2_path() -> str:
    """The built-in model as a float32 HF folder (converted once into the cfbench cache)."""
    import pytest

    from cfbench.errors import CfbenchError
    from cfbench.models.checkpoint import resolve_checkpoint

    try:
        return str(resolve_checkpoint("smollm2-135m").path)
    except CfbenchError as exc:
        pytest.skip(f"built-in model unavailable: {exc}")
