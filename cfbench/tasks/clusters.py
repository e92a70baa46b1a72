"""What a task's ``cluster_by`` names: a document field, or a field read through a named key.

``cluster_by: article`` makes the items whose ``article`` is equal one cluster (RACE: the questions of
one article). Some data sets state the items that belong together as *variants* of one text rather
than as an equal field. AX-g (SuperGLUE's Winogender diagnostic; fields ``premise``, ``hypothesis``,
``idx``, ``label``, and a per-row ``pair_id`` in the jsonl) states each premise twice, once with a male
and once with a female pronoun ("… filing his taxes." / "… filing her taxes."), each with the same
hypotheses. No field is equal across the pair, so ``cluster_by: premise:ungendered`` names the field
and the key that maps both variants to one value: the items on one Winogender sentence are one
cluster, whatever the pronoun and whichever hypothesis.

A new key is one function in :data:`CLUSTER_KEYS`; its name after the colon is checked when the
YAML is read, the field before it against the task's documents before anything is scored.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

#: Gendered English pronouns (Winogender's nominative, accusative and possessive forms, plus reflexives).
_GENDERED = re.compile(r"\b(?:he|she|him|her|his|hers|himself|herself)\b", re.IGNORECASE)


def ungendered(value: Any) -> str:
    """The text with every gendered pronoun replaced by one placeholder: "his"/"her" variants agree."""
    return _GENDERED.sub("<pronoun>", str(value))


#: key name (after the colon in ``cluster_by: FIELD:KEY``) → function of the field's value.
CLUSTER_KEYS: dict[str, Callable[[Any], str]] = {"ungendered": ungendered}


def split_cluster_by(spec: str) -> tuple[str, str | None]:
    """``"premise:ungendered"`` → ``("premise", "ungendered")``; ``"article"`` → ``("article", None)``."""
    field_name, sep, key = spec.partition(":")
    return field_name.strip(), (key.strip() if sep else None)


def cluster_by_problem(spec: Any) -> str | None:
    """Why ``spec`` is not a valid ``cluster_by`` value (one line naming the fix), or None if it is."""
    example = "e.g. cluster_by: article, or cluster_by: premise:ungendered"
    if not isinstance(spec, str) or not spec.strip():
        return f"cluster_by must name one document field ({example}), got {spec!r}"
    field_name, key = split_cluster_by(spec)
    if not field_name:
        return f"cluster_by {spec!r} names no document field before the colon ({example})"
    if key is not None and key not in CLUSTER_KEYS:
        return f"cluster_by {spec!r}: unknown key {key!r} after the colon; known: {', '.join(sorted(CLUSTER_KEYS))}"
    return None


def cluster_value(spec: str, doc: dict[str, Any]) -> str:
    """The cluster id of one document (the caller has checked that the field exists)."""
    field_name, key = split_cluster_by(spec)
    value = doc.get(field_name)
    return CLUSTER_KEYS[key](value) if key is not None else str(value)
