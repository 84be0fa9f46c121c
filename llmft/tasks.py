"""Task registry: instruction, default scorers and primary metric per task, shared by training,
evaluation, promotion and serving.

Generative tasks are scored with the generic text metrics (llmft.text_metrics) plus the task
scorers a config names (`eval.scorers`); classification scores predicted labels
(llmft.classification) and has no instruction (the head reads the text alone).
"""

from __future__ import annotations

from collections.abc import Callable

from llmft import classification, extraction, text_metrics
from llmft.config import Config, ConfigError

# predictions, references -> (aggregate metrics, per-row scores)
Scorer = Callable[[list[str], list[str]], tuple[dict[str, float], list[dict[str, float]]]]

SCORERS: dict[str, tuple[Scorer, tuple[str, ...]]] = {
    "json_fields": (extraction.score, ("json_validity", "field_accuracy", "all_fields_correct")),
}

# task -> (instruction, default scorers, default primary metric)
GENERATIVE: dict[str, tuple[str, tuple[str, ...], str]] = {
    "extraction": (extraction.INSTRUCTION, ("json_fields",), extraction.PRIMARY_METRIC),
}

CLASSIFICATION_METRICS = ("accuracy", "macro_precision", "macro_recall", "macro_f1", "eval_loss")


def is_classification(cfg: Config) -> bool:
    return cfg.task == "classification"


def system_prompt(cfg: Config) -> str | None:
    """`data.system_prompt` when set, else the task's instruction (same for base and candidate)."""
    if is_classification(cfg):
        return None
    return cfg.data.system_prompt or GENERATIVE[cfg.task][0]


def scorer_names(cfg: Config) -> tuple[str, ...]:
    if is_classification(cfg):
        return ()
    return tuple(cfg.eval.scorers) if cfg.eval.scorers is not None else GENERATIVE[cfg.task][1]


def scorers(cfg: Config) -> dict[str, Scorer]:
    return {name: SCORERS[name][0] for name in scorer_names(cfg)}


def metric_names(cfg: Config) -> tuple[str, ...]:
    """Every metric evaluation reports for this config."""
    if is_classification(cfg):
        return CLASSIFICATION_METRICS
    task_metrics = tuple(m for name in scorer_names(cfg) for m in SCORERS[name][1])
    return (*task_metrics, *text_metrics.NAMES, "eval_loss", "perplexity")


def primary_metric(cfg: Config) -> str:
    """`eval.primary_metric`, else the task's; checked against what evaluation reports."""
    if cfg.eval.primary_metric:
        name = cfg.eval.primary_metric
    elif is_classification(cfg):
        name = classification.PRIMARY_METRIC
    else:
        name = GENERATIVE[cfg.task][2]
    if name not in metric_names(cfg):
        raise ConfigError(f"eval.primary_metric {name!r} is not reported for task {cfg.task!r} with scorers "
                          f"{list(scorer_names(cfg))}; choose one of {', '.join(metric_names(cfg))}")
    return name


def higher_is_better(metric: str) -> bool:
    return metric not in text_metrics.LOWER_IS_BETTER
