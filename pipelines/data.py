"""fingerprint -> ingest -> validate -> split/tokenize -> export: check a dataset before paying for training."""

from __future__ import annotations

from typing import Any

from zenml import pipeline
from zenml.enums import ExecutionMode

from steps.data import export_dataset, fingerprint_data, ingest, split_tokenize, validate


def prepare_data(data_config: dict[str, Any]) -> tuple[Any, Any, Any, Any, Any]:
    """The data stages, shared by the data and finetune pipelines."""
    fingerprint = fingerprint_data(data_config)
    examples, shape_rejections = ingest(fingerprint, data_config)
    clean, rejected, report, docs = validate(examples, shape_rejections, data_config)
    train, validation, test = split_tokenize(clean, fingerprint, data_config)
    dataset = export_dataset(clean, train, validation, test, rejected, report, docs, fingerprint, data_config)
    return fingerprint, train, validation, test, dataset


@pipeline(name="data", execution_mode=ExecutionMode.FAIL_FAST)
def data_pipeline(data_config: dict[str, Any]) -> None:
    prepare_data(data_config)
