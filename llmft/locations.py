"""Where the project keeps its local state.

Everything a run writes locally lives under one project folder (default `.llmft/` in the
current directory, or `$LLMFT_HOME`): the MLflow sqlite store and artifacts, the ZenML config
when none is set, and the deploy server's pid/log. Converted model weights are cached per user
(`$LLMFT_CACHE`, default `~/.cache/llmft`) because they are shared by every project folder.
"""

from __future__ import annotations

import os
from pathlib import Path


def project_home() -> Path:
    home = Path(os.environ.get("LLMFT_HOME", ".llmft")).resolve()
    home.mkdir(parents=True, exist_ok=True)
    return home


def model_cache() -> Path:
    root = Path(os.environ.get("LLMFT_CACHE", Path.home() / ".cache" / "llmft")).resolve()
    root.mkdir(parents=True, exist_ok=True)
    return root


def local_tracking_uri() -> str:
    return f"sqlite:///{project_home() / 'mlflow.db'}"


def local_artifact_root() -> str:
    path = project_home() / "mlartifacts"
    path.mkdir(parents=True, exist_ok=True)
    return path.as_uri()


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI when set (a server), else the project's sqlite store."""
    return os.environ.get("MLFLOW_TRACKING_URI") or local_tracking_uri()


def ui_command() -> str:
    uri = tracking_uri()
    if uri.startswith("sqlite:"):
        return (f"mlflow ui --backend-store-uri {uri} --default-artifact-root "
                f"{local_artifact_root()} --port 5000")
    return f"open {uri} in a browser"
