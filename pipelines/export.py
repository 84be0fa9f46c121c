"""Export models:/<name>@champion (or export.version) for llama.cpp and Ollama."""

from __future__ import annotations

from zenml import pipeline
from zenml.enums import ExecutionMode

from llmft.config import ExportConfig
from steps.export import export_model


@pipeline(name="export", enable_cache=False, execution_mode=ExecutionMode.FAIL_FAST)
def export_pipeline(model_name: str, export: ExportConfig) -> None:
    export_model(model_name, export)
