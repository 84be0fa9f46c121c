"""Shared fixtures. Tests use the real stack with tiny settings: a temporary project folder
(ZenML config, MLflow sqlite store and artifacts) per test session, the real embedded model."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _fresh_mlflow_state():
    """MLflow keeps the tracking URI, the active experiment (also exported as MLFLOW_EXPERIMENT_ID) and
    the run stack in process globals; a test that sets them must not point the next test's fresh store
    at an experiment id that exists only in its own."""
    saved = {k: v for k, v in os.environ.items() if k.startswith("MLFLOW_")}
    yield
    if "mlflow" not in sys.modules:
        return
    import mlflow
    from mlflow.tracking import fluent

    while mlflow.active_run() is not None:
        mlflow.end_run()
    fluent._active_experiment_id = None
    for key in [k for k in os.environ if k.startswith("MLFLOW_")]:
        os.environ.pop(key)
    os.environ.update(saved)


@pytest.fixture(scope="session")
def project_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("llmft-home")


@pytest.fixture(scope="session")
def run_env(project_home: Path) -> dict[str, str]:
    """Environment for subprocess runs of run.py: isolated ZenML and MLflow state, offline."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ZENML_", "MLFLOW_"))}
    env.update({
        "LLMFT_HOME": str(project_home),
        "ZENML_CONFIG_PATH": str(project_home / "zenml"),
        "ZENML_ANALYTICS_OPT_IN": "false",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "PYTHONPATH": str(ROOT),
    })
    return env


@pytest.fixture(scope="session")
def base_model_path() -> str:
    from llmft.base_model import resolve_base_model
    from llmft.config import EMBEDDED_MODEL

    return resolve_base_model(EMBEDDED_MODEL)


@pytest.fixture(scope="session")
def tokenizer(base_model_path: str):
    from llmft.base_model import load_tokenizer

    return load_tokenizer(base_model_path)


def python() -> str:
    return sys.executable


def wait_http(url: str, timeout_s: float = 120.0, proc=None) -> None:
    """Poll url until it answers 2xx; fail early if proc (the server) exits."""
    import time
    import urllib.request

    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            if proc is not None and proc.poll() is not None:
                pytest.fail(f"server exited with {proc.returncode} before {url} answered")
            time.sleep(0.5)
    pytest.fail(f"{url} did not answer within {timeout_s:.0f}s")
