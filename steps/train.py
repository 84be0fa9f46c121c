"""The fine-tune step (the one a GPU step operator can take), and the run's config in MLflow."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import pandas as pd
from zenml import step

from llmft.config import Config, ModelConfig, TrainConfig
from llmft.contracts import SplitInfo, TrainingResult
from llmft.stack import TRACKER_NAME
from llmft.tasks.base import TaskSpec
from llmft.tracking import track_run_config
from llmft.train.stage import finetune as finetune_model


@step(experiment_tracker=TRACKER_NAME, enable_cache=False)
def track_config(cfg: Config, task: TaskSpec) -> Annotated[str, "mlflow_run_id"]:
    """The resolved config, the task and why, as MLflow params and tags."""
    return track_run_config(cfg, task)


@step(experiment_tracker=TRACKER_NAME)
def finetune(train_split: pd.DataFrame, validation_split: pd.DataFrame, split_info: SplitInfo, task: TaskSpec,
             model: ModelConfig, train: TrainConfig, base_identity: str) -> tuple[
    Annotated[Path, "trained_model"], Annotated[TrainingResult, "training"]
]:
    """Cached unless train.reuse is off: the same splits, settings, base model (`base_identity`, its
    weights' fingerprint and the code version) give the same model, so it is not trained again."""
    trained, result = finetune_model(train_split, validation_split, split_info, task, model, train)
    return trained, result
