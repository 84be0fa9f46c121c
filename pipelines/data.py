"""fingerprint -> ingest -> gate and tokenize -> split -> (augment, mix: training rows only) -> export: check a
dataset before paying for training."""

from __future__ import annotations

from typing import Any, NamedTuple

from zenml import pipeline
from zenml.enums import ExecutionMode

from llmft.config import Config
from llmft.tasks.base import TaskSpec
from steps.data import (
    augment_training,
    export_dataset,
    fingerprint_data,
    gate_and_tokenize,
    ingest_data,
    mix_training,
    split_data,
)


class PreparedData(NamedTuple):
    """What the data stages hand on (step outputs: artifacts once the pipeline runs)."""

    fingerprint: Any  # the source's fingerprint (str)
    train: Any  # the split rows (DataFrames), training with any augmented or mixed-in rows
    validation: Any
    test: Any
    split: Any  # SplitInfo
    dataset: Any  # DatasetInfo: what the run records about its data


def prepare_data(cfg: Config, task: TaskSpec, code_version: str) -> PreparedData:
    """The data stages, shared by the data, finetune and sweep pipelines."""
    fingerprint = fingerprint_data(cfg.data.source)
    examples, shape_rejections = ingest_data(fingerprint, cfg.data, code_version, cfg.validation, cfg.eval.slice_by)
    clean, rejected, report = gate_and_tokenize(examples, shape_rejections, task, cfg.model, cfg.data, cfg.validation,
                                                cfg.train.max_seq_length)
    train, validation, test, split = split_data(clean, task, cfg.data)
    extras = None
    if cfg.augment.enabled or cfg.data.mix or cfg.data.replay:  # training-only rows; validation, test stay the user's
        augmentation = None
        if cfg.augment.enabled:
            train, augmentation = augment_training(train, validation, test, split, task, cfg.model, cfg.augment,
                                                   cfg.data, cfg.validation, cfg.train.max_seq_length,
                                                   cfg.eval.batch_size)
        train, extras = mix_training(train, validation, test, split, task, cfg.model, cfg.data, cfg.validation,
                                     cfg.train.max_seq_length, augmentation)
    dataset = export_dataset(train, validation, test, rejected, report, split, task, fingerprint, cfg.data.source,
                             cfg.train.max_seq_length, extras)
    return PreparedData(fingerprint, train, validation, test, split, dataset)


@pipeline(name="data", execution_mode=ExecutionMode.FAIL_FAST)
def data_pipeline(cfg: Config, task: TaskSpec, code_version: str) -> None:
    prepare_data(cfg, task, code_version)
