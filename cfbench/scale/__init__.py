"""Scale-out (layer 4): score one plan over many processes (:mod:`.workers`) or Ray nodes (:mod:`.ray_runner`).

May import the engine and everything below it. Several OpenAI-compatible servers are a backend
(:mod:`cfbench.backends.openai_pool`), not a runner.
"""
