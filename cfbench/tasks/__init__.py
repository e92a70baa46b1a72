"""Tasks (layer 1): task configs and suites, prompt templates, OpenCompass's PPL rule, ``primary_metric``.

May import data, models and the core; a new task is a YAML in task_configs/.

Task configs → rendered instances → per-item scores."""

from cfbench.tasks.config import TaskConfig, load_task_config
from cfbench.tasks.registry import Suite, get_task, get_task_config, load_suite, task_names
from cfbench.tasks.task import Instance, ItemScore, Task

__all__ = [
    "Instance",
    "ItemScore",
    "Suite",
    "Task",
    "TaskConfig",
    "get_task",
    "get_task_config",
    "load_suite",
    "load_task_config",
    "task_names",
]
