"""Probes that measure forgetting outside the benchmark suite (held-out perplexity drift, ...)."""
