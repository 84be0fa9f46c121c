"""Shared fixtures and the test tiers.

Tests use the real stack with tiny settings: a temporary project folder (ZenML config, MLflow sqlite
store and artifacts) per test session. Three tiers, chosen by what a test uses:
- default (`pytest`): unit tests and plumbing tests on `tiny_model_path`, a 2-layer random model of
  the real architecture with the real tokenizer and chat template;
- `guard` (`pytest -m guard`): the few real-model tests that protect quality; marked by hand;
- `slow` (`pytest -m slow`): everything else that loads the real model (`base_model_path`,
  `tokenizer` aside), runs a real-model pipeline (`run_env`), or needs the team stack. A new test
  that asks for one of those fixtures lands here without being marked.
Every test has a time limit (pytest-timeout), longer for the real-model tiers.
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]

# fixtures that load the real 135M model or run a real-model pipeline: a test asking for one of them
# is not a default-tier test
REAL_MODEL_FIXTURES = frozenset({"base_model_path", "run_env", "real_model"})
TIER_TIMEOUT_S = {"default": 300, "guard": 1200, "slow": 2400}


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        marked = {m.name for m in item.iter_markers()}
        if "guard" not in marked and "slow" not in marked and (
                "team_stack" in marked or REAL_MODEL_FIXTURES & set(getattr(item, "fixturenames", ()))):
            item.add_marker(pytest.mark.slow)
            marked.add("slow")
        tier = "guard" if "guard" in marked else "slow" if "slow" in marked else "default"
        if item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(TIER_TIMEOUT_S[tier]))


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
def pipeline_env(project_home: Path) -> dict[str, str]:
    """Environment for subprocess runs of run.py: isolated ZenML and MLflow state, offline. On its
    own it is a default-tier fixture: pass `--set model.base=<tiny_model_path>`."""
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
def tokenizer():
    """The real SmolLM2 tokenizer and chat template (cheap: no weights are loaded). The tiny model
    carries the same files, so it is also the tiny model's tokenizer."""
    from llmft.base_model import load_tokenizer, resolve_base_model
    from llmft.config import EMBEDDED_MODEL

    return load_tokenizer(resolve_base_model(EMBEDDED_MODEL))


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A 2-layer random Llama (SmolLM2's architecture, ~3M parameters) saved with the real SmolLM2
    tokenizer and chat template: every code path is the real one, in a fraction of the time."""
    from tiny_model import build_tiny_model

    return str(build_tiny_model(tmp_path_factory.mktemp("tiny-model")))


@pytest.fixture
def model_path(request: pytest.FixtureRequest, tiny_model_path: str) -> str:
    """The tiny model, or the real one where a test is parametrized with TINY_AND_REAL."""
    if getattr(request, "param", "tiny") == "real":
        return request.getfixturevalue("base_model_path")
    return tiny_model_path


# a plumbing test that also guards quality: the tiny model in the default tier, the real one in `guard`
TINY_AND_REAL = pytest.mark.parametrize("model_path", ["tiny", pytest.param("real", marks=pytest.mark.guard)],
                                        indirect=True)
# a quality guard: the real model only
REAL_GUARD = pytest.mark.parametrize("model_path", [pytest.param("real", marks=pytest.mark.guard)], indirect=True)


@pytest.fixture(scope="session")
def run_env(pipeline_env: dict[str, str]) -> dict[str, str]:
    """`pipeline_env` for runs of the real model (the default `model.base`): the slow or guard tier."""
    return pipeline_env


@pytest.fixture(scope="module")
def tiny_lm(tiny_model_path: str):
    """(model, tokenizer) of the tiny model for in-process servers, with one torch thread for the module
    (on a shared 2-core machine two torch threads run several times slower, not faster)."""
    import torch

    from llmft.base_model import load_model, load_tokenizer

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield load_model(tiny_model_path).eval(), load_tokenizer(tiny_model_path)
    torch.set_num_threads(threads)


def wait_for(check, timeout: float = 120.0, every: float = 0.01):
    """Poll `check` until it returns something truthy (and return that); fail after `timeout`."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(every)
    pytest.fail("condition not met in time")


class StepGate:
    """Decode steps of the server's worker taken one at a time, when the test says: however fast the
    model is, a request is still decoding exactly when the test looks. `wrap` DecodeBatch.step with it."""

    def __init__(self) -> None:
        self.allowed = threading.Semaphore(0)
        self.free = threading.Event()
        self.taken = 0

    def wrap(self, step: Any) -> Any:
        def gated(batch: Any) -> None:
            if not self.free.is_set():
                self.allowed.acquire(timeout=120)
            step(batch)
            self.taken += 1
        return gated

    def let(self, steps: int = 1) -> None:
        """Let `steps` decode steps through and wait until they ran."""
        target = self.taken + steps
        self.allowed.release(steps)
        wait_for(lambda: self.taken >= target)

    def open(self) -> None:
        self.free.set()
        self.allowed.release(1000)


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
