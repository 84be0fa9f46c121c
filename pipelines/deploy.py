"""Serve models:/<name>@champion over HTTP, after a health check and a smoke request."""

from __future__ import annotations

from zenml import pipeline
from zenml.enums import ExecutionMode

from llmft.config import DeployConfig
from steps.deploy import serve_champion


@pipeline(name="deploy", enable_cache=False, execution_mode=ExecutionMode.FAIL_FAST)
def deploy_pipeline(model_name: str, deploy: DeployConfig, trust_remote_code: bool = False) -> None:
    serve_champion(model_name, deploy, trust_remote_code)
