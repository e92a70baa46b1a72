"""Integrations (layer 7, beside train): cfbench inside other people's training loops.

May import train, metrics, tasks, data, models and the core; never cli. ``probe`` is the small
forgetting probe scored on a model in memory; ``transformers`` wraps it as a ``TrainerCallback``
(transformers' ``Trainer`` and TRL's ``SFTTrainer``). Importing this package pulls in neither torch
nor transformers.
"""
