"""Probes (layer 4): forgetting measured outside the suite, e.g. held-out perplexity (``cfbench ppl``).

May import the engine, backends, store, data, models and the core.

Probes that measure forgetting outside the benchmark suite (held-out perplexity drift, ...)."""
