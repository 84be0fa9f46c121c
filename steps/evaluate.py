"""Evaluation steps. The base model's and the champion's scores, and the base model's probe answers,
are their own cached steps: keyed by the evaluation rows, the model's identity and the settings, an
unchanged one is served from ZenML's cache (the run summary lists them). Each step takes its stage's
frozen settings (llmft/config_stages.py), never the whole `eval` section, so its cache is keyed by
what it reads."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import pandas as pd
from zenml import step

from llmft.config import ModelConfig
from llmft.config_stages import EvalSettings, ProbeSettings, ReportSettings, RowDraw, ShotDraw
from llmft.contracts import (
    ChampionRef,
    EvalSample,
    Evaluation,
    Forgetting,
    ModelEvaluation,
    ProbeRun,
    SplitInfo,
    TrainingResult,
)
from llmft.evaluate import forgetting_guard, stage
from llmft.stack import TRACKER_NAME
from llmft.tasks.base import TaskSpec


@step
def sample_test(test_split: pd.DataFrame, task: TaskSpec, draw: RowDraw) -> tuple[
    Annotated[pd.DataFrame, "eval_rows"], Annotated[EvalSample, "eval_sample"]
]:
    rows, sample = stage.draw_sample(test_split, task, draw)
    return rows, sample


@step
def draw_shots(train_split: pd.DataFrame, task: TaskSpec, draw: ShotDraw) -> Annotated[pd.DataFrame,
                                                                                      "few_shot_examples"]:
    return stage.draw_shots(train_split, task, draw)


@step
def evaluate_base(eval_rows: pd.DataFrame, task: TaskSpec, model: ModelConfig, split_info: SplitInfo,
                  scoring: EvalSettings, base_identity: str) -> Annotated[ModelEvaluation, "base_evaluation"]:
    """`base_identity` (weights' fingerprint and code version) is only here to key the cache."""
    return stage.evaluate_base(eval_rows, task, model, split_info, scoring)


@step
def evaluate_base_few_shot(eval_rows: pd.DataFrame, few_shot_examples: pd.DataFrame, task: TaskSpec,
                           model: ModelConfig, split_info: SplitInfo, scoring: EvalSettings,
                           base_identity: str) -> Annotated[ModelEvaluation, "base_few_shot_evaluation"]:
    """Cached like `evaluate_base`: keyed by the rows, the shots, the settings and the base's identity."""
    return stage.evaluate_base_few_shot(eval_rows, few_shot_examples, task, model, split_info, scoring)


@step
def evaluate_simple_baseline(train_split: pd.DataFrame, validation_split: pd.DataFrame, eval_rows: pd.DataFrame,
                             task: TaskSpec, split_info: SplitInfo, primary_metric: str | None,
                             code_version: str) -> Annotated[ModelEvaluation, "simple_baseline_evaluation"]:
    """The task's non-LLM baseline (TF-IDF + logistic regression, Lead-k, ...), fitted on the training
    split. Cached: keyed by the splits, the rows, the settings and `code_version` (the fitting lives in
    the library)."""
    return stage.evaluate_simple_baseline(train_split, validation_split, eval_rows, task, split_info,
                                          primary_metric)


@step
def evaluate_champion(eval_rows: pd.DataFrame, task: TaskSpec, champion: ChampionRef | None, split_info: SplitInfo,
                      scoring: EvalSettings, enabled: bool = True,
                      trust_remote_code: bool = False) -> Annotated[ModelEvaluation, "champion_evaluation"]:
    """`enabled`: eval.champion."""
    return stage.evaluate_champion(eval_rows, task, champion, split_info, scoring, enabled, trust_remote_code)


@step
def evaluate_candidate(trained_model: Path, training: TrainingResult, eval_rows: pd.DataFrame, task: TaskSpec,
                       model: ModelConfig, scoring: EvalSettings,
                       base_identity: str) -> Annotated[ModelEvaluation, "candidate_evaluation"]:
    """Cached: a reused training (the same model artifact) on the same rows and settings scores the same."""
    return stage.evaluate_candidate(trained_model, training, eval_rows, task, model, scoring)


@step(experiment_tracker=TRACKER_NAME, enable_cache=False)
def compare_models(candidate_evaluation: ModelEvaluation, eval_rows: pd.DataFrame, eval_sample: EvalSample,
                   base_evaluation: ModelEvaluation, base_few_shot_evaluation: ModelEvaluation,
                   champion_evaluation: ModelEvaluation, task: TaskSpec, reporting: ReportSettings,
                   scoring: EvalSettings,
                   simple_baseline_evaluation: ModelEvaluation | None = None) -> Annotated[Evaluation, "evaluation"]:
    """All of them side by side in this run's MLflow run (never cached: every run shows its comparison)."""
    return stage.compare(base_evaluation, base_few_shot_evaluation, candidate_evaluation, champion_evaluation,
                         eval_rows, eval_sample, task, reporting, scoring, simple_baseline_evaluation)


@step
def probe_base(task: TaskSpec, model: ModelConfig, probing: ProbeSettings,
               base_identity: str) -> Annotated[ProbeRun, "base_probe"]:
    return stage.probe_base(task, model, probing)


@step
def probe_candidate(trained_model: Path, training: TrainingResult, base_probe: ProbeRun, model: ModelConfig,
                    probing: ProbeSettings, base_identity: str) -> Annotated[ProbeRun, "candidate_probe"]:
    """The candidate's probe answers; cached like its evaluation."""
    return stage.probe_candidate(trained_model, training, base_probe, model, probing)


@step(experiment_tracker=TRACKER_NAME)
def guard_forgetting(trained_model: Path, training: TrainingResult, base_probe: ProbeRun, candidate_probe: ProbeRun,
                     model: ModelConfig, probing: ProbeSettings, max_forgetting: float, enabled: bool,
                     base_identity: str) -> tuple[
    Annotated[Path, "guarded_model"], Annotated[TrainingResult, "guarded_training"],
    Annotated[ProbeRun, "guarded_probe"]
]:
    """promotion.forgetting_guard: the candidate unchanged, or (over promotion.max_forgetting) its update
    scaled back toward the base and probed again. Cached like the candidate's probe."""
    out, result, probed, scan = forgetting_guard.guard(trained_model, training, base_probe, candidate_probe, model,
                                                       probing, max_forgetting, enabled)
    if scan is not None:
        forgetting_guard.log_scan(scan, max_forgetting)
    return out, result, probed


@step(experiment_tracker=TRACKER_NAME, enable_cache=False)
def measure_forgetting(base_probe: ProbeRun, candidate_probe: ProbeRun,
                       max_forgetting: float) -> Annotated[Forgetting, "forgetting"]:
    """General-knowledge probe, base against candidate: did fine-tuning break the rest?"""
    return stage.forgetting(base_probe, candidate_probe, max_forgetting)
