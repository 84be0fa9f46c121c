"""Register the candidate as the `challenger`; the promotion gate decides whether it becomes `champion`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from zenml import get_step_context, step
from zenml.exceptions import StepContextError

from llmft.config import ModelConfig, PromotionConfig, TrainConfig
from llmft.contracts import DatasetInfo, Evaluation, Forgetting, PromotionDecision, Registration, TrainingResult
from llmft.registry.stage import promote_candidate, register_candidate
from llmft.stack import TRACKER_NAME
from llmft.tasks.base import TaskSpec


@step(experiment_tracker=TRACKER_NAME, enable_cache=False)
def register(trained_model: Path, training: TrainingResult, evaluation: Evaluation, task: TaskSpec,
             model: ModelConfig, model_name: str, dataset_fingerprint: str) -> Annotated[Registration, "registration"]:
    context = get_step_context()
    run = context.pipeline_run
    lineage = {"zenml_run_id": str(run.id), "zenml_pipeline": run.pipeline.name if run.pipeline else "finetune",
               "zenml_pipeline_version": (run.snapshot.pipeline_version_hash if run.snapshot else None) or "unknown"}
    try:
        zenml_model = context.model
    except StepContextError:
        zenml_model = None
    return register_candidate(trained_model, training, evaluation, task, model, model_name, dataset_fingerprint,
                              lineage, zenml_model)


@step(experiment_tracker=TRACKER_NAME, enable_cache=False)
def promote(registration: Registration, evaluation: Evaluation, forgetting: Forgetting, training: TrainingResult,
            dataset: DatasetInfo, task: TaskSpec, promotion: PromotionConfig, train: TrainConfig,
            champion_at_start: str | None, base_model: str,
            max_new_tokens: int) -> Annotated[PromotionDecision, "promotion"]:
    """The gate (beats the base, matches the re-measured champion, forgot little), then the model card."""
    return promote_candidate(registration, evaluation, forgetting, training, dataset, task, promotion, train,
                             champion_at_start, base_model, max_new_tokens)
