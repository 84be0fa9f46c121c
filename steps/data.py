"""Data steps: fingerprint -> ingest -> gate and tokenize -> split -> (augment) -> (mix) -> export.

The fingerprint of the source bytes is an input of every downstream data step, so an unchanged
re-run is served from ZenML's cache and a changed file never serves stale data. The data steps take
only the config sections they depend on, so changing training settings keeps their cache.
"""

from __future__ import annotations

from typing import Annotated

import pandas as pd
from zenml import get_step_context, log_metadata, step

from llmft.config import AugmentConfig, DataConfig, ModelConfig, ValidationConfig
from llmft.contracts import DatasetInfo, ExtraRows, GateReport, SplitInfo
from llmft.data import stages
from llmft.data.ingest import source_fingerprint
from llmft.stack import TRACKER_NAME
from llmft.tasks.base import TaskSpec


@step(enable_cache=False)  # always re-hash the source: this is what makes the cache below safe
def fingerprint_data(source: str) -> Annotated[str, "dataset_fingerprint"]:
    return source_fingerprint(source)


@step
def ingest_data(dataset_fingerprint: str, data: DataConfig, code_version: str,
                validation: ValidationConfig, slice_by: str | None = None) -> tuple[
    Annotated[pd.DataFrame, "examples"], Annotated[pd.DataFrame, "shape_rejections"]
]:
    """`code_version` keys the cache: new data-handling code re-runs the data steps. Personal data
    is screened here (and redacted under `pii_action: redact`), so this artifact holds none."""
    examples, rejections = stages.ingest_frames(data, validation, slice_by)
    log_metadata({"rows": len(examples) + len(rejections), "fingerprint": dataset_fingerprint,
                  "source": data.source}, artifact_name="examples", infer_artifact=True)
    return examples, rejections


@step
def gate_and_tokenize(examples: pd.DataFrame, shape_rejections: pd.DataFrame, task: TaskSpec, model: ModelConfig,
                      data: DataConfig, validation: ValidationConfig, max_seq_length: int) -> tuple[
    Annotated[pd.DataFrame, "clean_examples"], Annotated[pd.DataFrame, "rejected_rows"],
    Annotated[GateReport, "data_gate_report"],
]:
    clean, rejected, report = stages.gate_and_tokenize(examples, shape_rejections, task, model, data, validation,
                                                       max_seq_length)
    stages.enforce_gate(report, rejected, data.source, get_step_context().pipeline_run.name)
    return clean, rejected, report


@step
def split_data(clean_examples: pd.DataFrame, task: TaskSpec, data: DataConfig) -> tuple[
    Annotated[pd.DataFrame, "train_split"], Annotated[pd.DataFrame, "validation_split"],
    Annotated[pd.DataFrame, "test_split"], Annotated[SplitInfo, "split_info"],
]:
    # a tuple literal: ZenML reads the return statement to count the outputs
    train, validation, test, info = stages.split_dataset(clean_examples, task, data)
    return train, validation, test, info


@step
def augment_training(train_split: pd.DataFrame, validation_split: pd.DataFrame, test_split: pd.DataFrame,
                     split_info: SplitInfo, task: TaskSpec, model: ModelConfig, augment: AugmentConfig,
                     data: DataConfig, validation: ValidationConfig, max_seq_length: int, batch_size: int) -> tuple[
    Annotated[pd.DataFrame, "augmented_train_split"], Annotated[ExtraRows | None, "augmentation"],
]:
    """Paraphrased training inputs as synthetic training rows (cached: generation is the slow part)."""
    train, report = stages.augment_training(train_split, validation_split, test_split, split_info, task, model,
                                            augment, data, validation, max_seq_length, batch_size)
    return train, report


@step
def mix_training(train_split: pd.DataFrame, validation_split: pd.DataFrame, test_split: pd.DataFrame,
                 split_info: SplitInfo, task: TaskSpec, model: ModelConfig, data: DataConfig,
                 validation: ValidationConfig, max_seq_length: int, augmentation: ExtraRows | None = None) -> tuple[
    Annotated[pd.DataFrame, "mixed_train_split"], Annotated[list[ExtraRows], "training_extras"],
]:
    """data.mix sources sampled into the training split (never validation or test)."""
    train, reports = stages.mix_training(train_split, validation_split, test_split, split_info, task, model, data,
                                         validation, max_seq_length)
    return train, ([augmentation] if augmentation else []) + reports


@step(experiment_tracker=TRACKER_NAME, enable_cache=False)
def export_dataset(train_split: pd.DataFrame, validation_split: pd.DataFrame, test_split: pd.DataFrame,
                   rejected_rows: pd.DataFrame, data_gate_report: GateReport, split_info: SplitInfo, task: TaskSpec,
                   dataset_fingerprint: str, source: str, max_seq_length: int,
                   training_extras: list[ExtraRows] | None = None) -> Annotated[DatasetInfo, "dataset"]:
    """This run's dataset as files, and its lineage in MLflow (input datasets, gate result, plots)."""
    info = stages.export_dataset(train_split, validation_split, test_split, rejected_rows, data_gate_report,
                                 split_info, task, dataset_fingerprint, source, max_seq_length,
                                 get_step_context().pipeline_run.name, training_extras)
    log_metadata(info.model_dump(exclude={"verdict", "mlflow_run_id"}, exclude_none=True), artifact_name="dataset",
                 infer_artifact=True)
    return info
