"""Serve models:/<name>@champion over HTTP, after a health check and a smoke request."""

from __future__ import annotations

from typing import Any

from zenml import pipeline
from zenml.enums import ExecutionMode

from steps.deploy import serve_champion


@pipeline(name="deploy", enable_cache=False, execution_mode=ExecutionMode.FAIL_FAST)
def deploy_pipeline(config: dict[str, Any]) -> None:
    serve_champion(config)
