"""Sweep steps: Optuna trials (nested MLflow runs) on the train/validation splits, then the best
trial's training settings for the finetune step. Never cached: the study in its database is the
state a re-run resumes from."""

from __future__ import annotations

from typing import Annotated

import pandas as pd
from zenml import get_step_context, step

from llmft.config import ModelConfig, SweepConfig, TrainConfig
from llmft.contracts import SplitInfo
from llmft.stack import TRACKER_NAME
from llmft.sweep import SweepResult, run_sweep, run_trials
from llmft.tasks.base import TaskSpec


def _run_tag() -> str:
    """The pipeline run's id: every sweep step of one run shares it (trials are credited to it)."""
    return get_step_context().pipeline_run.id.hex


@step(experiment_tracker=TRACKER_NAME, enable_cache=False)
def sweep_trials(train_split: pd.DataFrame, validation_split: pd.DataFrame, split_info: SplitInfo, task: TaskSpec,
                 model: ModelConfig, train: TrainConfig, search: SweepConfig,
                 model_name: str) -> Annotated[str, "study_name"]:
    """One of `sweep.parallel_steps` workers: trials until the shared study has enough."""
    return run_trials(train_split, validation_split, split_info, task, model, train, search, model_name, _run_tag())


@step(experiment_tracker=TRACKER_NAME, enable_cache=False)
def sweep(train_split: pd.DataFrame, validation_split: pd.DataFrame, split_info: SplitInfo, task: TaskSpec,
          model: ModelConfig, train: TrainConfig, search: SweepConfig, model_name: str) -> tuple[
    Annotated[SweepResult, "sweep"], Annotated[TrainConfig, "best_train_config"]
]:
    """Runs whatever trials are still missing (all of them without parallel workers), then reads the study."""
    result, best = run_sweep(train_split, validation_split, split_info, task, model, train, search, model_name,
                             _run_tag())
    return result, best  # a tuple literal: ZenML reads the source to tell one output from two
