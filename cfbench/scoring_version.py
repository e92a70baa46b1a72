"""The version of cfbench's own scoring code, as part of every result cache key.

It is the first 16 hex digits of the sha256 of ``tests/fixtures/golden_scoring.json``: per-item
outputs (log-probs, predictions, metrics) of a deterministic tiny model on a few documents of each
request shape. ``tests/test_trust_cache_key.py`` recomputes those outputs and fails, with the
command to run, when they drift; regenerating the golden file (``python tests/test_trust_cache_key.py
--regen``) rewrites this constant too, so any change to the numbers changes the cache key and old
cached items are never mixed with new ones. Do not edit by hand.
"""

SCORING_VERSION = "efca1ad025d7aac2"
