"""Task registry: the instruction and scorer each task uses for training, evaluation and serving."""

from __future__ import annotations

from collections.abc import Callable

from llmft import extraction
from llmft.config import Config

_TASKS: dict[str, tuple[str, str, Callable[[list[str], list[str]], dict[str, float]]]] = {
    "extraction": (extraction.INSTRUCTION, extraction.PRIMARY_METRIC, extraction.score),
}


def system_prompt(cfg: Config) -> str:
    """`data.system_prompt` when set, else the task's instruction (same for base and candidate)."""
    return cfg.data.system_prompt or _TASKS[cfg.task][0]


def primary_metric(cfg: Config) -> str:
    return _TASKS[cfg.task][1]


def scorer(cfg: Config) -> Callable[[list[str], list[str]], dict[str, float]]:
    return _TASKS[cfg.task][2]
