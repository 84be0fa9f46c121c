"""Serve models:/<name>@champion over HTTP, after a health check and a smoke request."""

from __future__ import annotations

from typing import Any

from zenml import pipeline

from steps.deploy import serve_champion


@pipeline(name="deploy", enable_cache=False)
def deploy_pipeline(config: dict[str, Any]) -> None:
    serve_champion(config)
