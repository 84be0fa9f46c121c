"""fingerprint -> ingest -> gate and tokenize -> split -> (augment, mix: training rows only) -> export: check a
dataset before paying for training."""

from __future__ import annotations

from typing import Any

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


def prepare_data(cfg: Config, task: TaskSpec, code_version: str) -> tuple[Any, Any, Any, Any, Any, Any]:
    """The data stages, shared by the data and finetune pipelines."""
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
    return fingerprint, train, validation, test, split, dataset


@pipeline(name="data", execution_mode=ExecutionMode.FAIL_FAST)
def data_pipeline(cfg: Config, task: TaskSpec, code_version: str) -> None:
    prepare_data(cfg, task, code_version)
