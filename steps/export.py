"""Export steps: a registry version as merged weights, GGUF and an Ollama Modelfile."""

from __future__ import annotations

from typing import Annotated

import mlflow
from zenml import step

from llmft.config import ExportConfig
from llmft.contracts import Export, PromotionDecision
from llmft.export.stage import export_version
from llmft.locations import tracking_uri


@step(enable_cache=False)
def export_model(model_name: str, export: ExportConfig) -> Annotated[Export, "export"]:
    mlflow.set_tracking_uri(tracking_uri())  # no experiment tracker: the files go to the version's own run
    return export_version(model_name, export)


@step(enable_cache=False)
def export_if_promoted(promotion: PromotionDecision, model_name: str,
                       export: ExportConfig) -> Annotated[Export | None, "export"]:
    """`export.after_promotion`: a finetune run that promoted exports its new champion at once."""
    if not export.after_promotion or not promotion.promoted or promotion.champion is None:
        return None
    mlflow.set_tracking_uri(tracking_uri())
    return export_version(model_name, export.model_copy(update={"version": promotion.champion}))
