"""Task registry: instruction, primary metric and scorer per task, shared by training, evaluation
and serving.

Generative tasks score generated text against the reference; classification scores predicted
labels (llmft.classification) and has no instruction (the head reads the text alone).
"""

from __future__ import annotations

from collections.abc import Callable

from llmft import classification, extraction
from llmft.config import Config

GENERATIVE: dict[str, tuple[str, str, Callable[[list[str], list[str]], dict[str, float]]]] = {
    "extraction": (extraction.INSTRUCTION, extraction.PRIMARY_METRIC, extraction.score),
}


def is_classification(cfg: Config) -> bool:
    return cfg.task == "classification"


def system_prompt(cfg: Config) -> str | None:
    """`data.system_prompt` when set, else the task's instruction (same for base and candidate)."""
    if is_classification(cfg):
        return None
    return cfg.data.system_prompt or GENERATIVE[cfg.task][0]


def primary_metric(cfg: Config) -> str:
    return classification.PRIMARY_METRIC if is_classification(cfg) else GENERATIVE[cfg.task][1]


def scorer(cfg: Config) -> Callable[[list[str], list[str]], dict[str, float]]:
    return GENERATIVE[cfg.task][2]
