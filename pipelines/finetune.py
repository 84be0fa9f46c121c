"""ingest -> validate -> split/tokenize -> fine-tune -> evaluate -> register -> promote."""

from __future__ import annotations

from typing import Any

from zenml import pipeline
from zenml.enums import ExecutionMode

from steps.data import ingest, split_tokenize, validate
from steps.model import evaluate, finetune, promote, register


@pipeline(name="finetune", enable_cache=False, execution_mode=ExecutionMode.FAIL_FAST)
def finetune_pipeline(config: dict[str, Any]) -> None:
    records, fingerprint = ingest(config)
    gate = validate(records, config)
    train, validation, test = split_tokenize(records, fingerprint, gate, config)
    adapter, _ = finetune(train, validation, fingerprint, config)
    evaluation = evaluate(adapter, test, config)
    version = register(adapter, evaluation, fingerprint, config)
    promote(version, evaluation, config)
