"""fingerprint -> ingest -> validate -> split/tokenize -> export -> fine-tune -> evaluate (base, candidate,
champion) + forgetting probe -> register (challenger) -> promote (gate) -> deploy if promoted (deploy.on_promotion)."""

from __future__ import annotations

from typing import Any

from zenml import pipeline
from zenml.enums import ExecutionMode

from pipelines.data import prepare_data
from steps.deploy import deploy_if_promoted
from steps.model import evaluate, finetune, probe_forgetting, promote, register


@pipeline(name="finetune", execution_mode=ExecutionMode.FAIL_FAST)
def finetune_pipeline(config: dict[str, Any], data_config: dict[str, Any]) -> None:
    fingerprint, train, validation, test, dataset = prepare_data(data_config)
    trained, training = finetune(train, validation, test, fingerprint, config)
    evaluation = evaluate(trained, training, test, config)
    forgetting = probe_forgetting(trained, training, config)
    version = register(trained, training, evaluation, fingerprint, config)
    promotion = promote(version, evaluation, forgetting, training, dataset, config)
    deploy_if_promoted(promotion, config)
