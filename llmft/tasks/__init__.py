"""Tasks: the kinds of data the pipeline fine-tunes for, each a `Task` object (see `base`).

`get_task(name)` is how the rest of the project asks about a task; `inference.resolve_task`
picks one from the data when `task: auto`.
"""

from __future__ import annotations

from typing import Any

from llmft.config import ConfigError
from llmft.tasks.base import EvalSettings, GenerativeTask, Task, TaskSpec
from llmft.tasks.chat import ChatTask
from llmft.tasks.classification import ClassificationTask
from llmft.tasks.extraction import ExtractionTask
from llmft.tasks.preference import PreferenceTask
from llmft.tasks.summarization import SummarizationTask

TASKS: dict[str, Task] = {task.name: task for task in (ChatTask(), SummarizationTask(), ClassificationTask(),
                                                       ExtractionTask(), PreferenceTask())}

__all__ = ["TASKS", "EvalSettings", "GenerativeTask", "Task", "TaskSpec", "get_task", "primary_metric"]


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise ConfigError(f"task={name!r} is not a task; choose one of auto, {', '.join(TASKS)}") from None


def primary_metric(task: Task, configured: str | None, rows: list[dict[str, Any]] | None = None) -> str:
    """`eval.primary_metric`, else the task's for these evaluation rows (without rows: the task's
    default); it must be a metric the task reports."""
    name = configured or (task.primary_for(rows) if rows else task.primary_metric)
    if name not in task.metric_names:
        raise ConfigError(f"eval.primary_metric {name!r} is not reported for task {task.name!r}; choose one of "
                          f"{', '.join(task.metric_names)}")
    return name
