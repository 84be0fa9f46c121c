"""Issue 24, item 1: with MLFLOW_TRACKING_URI pointing at a store outside the project, every registry
read after a tracked step still goes to that store.

Root cause: ZenML's MLflow experiment tracker ends each tracked step with `mlflow.set_tracking_uri("")`,
which MLflow mirrors into os.environ["MLFLOW_TRACKING_URI"] = ""; `locations.tracking_uri()` read the
environment alone and fell back to the project's `.llmft/mlflow.db`, so the next run's
evaluate_champion found no champion there. No pipeline runs here: the tracker's own clean-up is called
in a fresh process that started with the variable set, as run.py does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llmft import locations

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = r"""
import json, os, sys, types
from pathlib import Path

import llmft.locations as locations  # imported at start, as run.py (through llmft.resolve) does
import mlflow
from mlflow import MlflowClient

external = os.environ["MLFLOW_TRACKING_URI"]
# the first run: a registered version with @champion in the external store
mlflow.set_tracking_uri(external)
client = MlflowClient()
client.create_registered_model("products-extraction")
client.create_model_version("products-extraction", source=Path(sys.argv[1]).as_uri())
client.set_registered_model_alias("products-extraction", "champion", "1")

# a tracked step ends: the ZenML MLflow experiment tracker's real clean-up
from zenml.integrations.mlflow.experiment_trackers.mlflow_experiment_tracker import MLFlowExperimentTracker
MLFlowExperimentTracker.cleanup_step_run(types.SimpleNamespace(disable_autologging=lambda: None), None, False)
out = {"env_after_cleanup": os.environ.get("MLFLOW_TRACKING_URI"), "tracking_uri": locations.tracking_uri()}

# evaluate_champion (untracked): sets the tracking URI from tracking_uri(), then reads the champion
mlflow.set_tracking_uri(locations.tracking_uri())
out["champion_via_stage_pattern"] = MlflowClient().get_model_version_by_alias("products-extraction", "champion").version

# registry helpers called with nothing set since the clean-up (promote, export, a scheduled tick)
MLFlowExperimentTracker.cleanup_step_run(types.SimpleNamespace(disable_autologging=lambda: None), None, False)
from llmft.registry.versions import champion_ref, current_alias_version
out["champion_via_versions"] = current_alias_version("products-extraction")
out["champion_ref"] = champion_ref("products-extraction").version

# the variable removed altogether
os.environ.pop("MLFLOW_TRACKING_URI", None)
out["tracking_uri_after_removal"] = locations.tracking_uri()
print("RESULT " + json.dumps(out))
"""


def test_after_a_tracked_steps_cleanup_registry_reads_use_the_external_store(tmp_path: Path):
    project, outside = tmp_path / "project", tmp_path / "outside"
    outside.mkdir()
    external = f"sqlite:///{outside / 'mlflow.db'}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "ZENML_"))}
    env.update({"MLFLOW_TRACKING_URI": external, "LLMFT_HOME": str(project),
                "ZENML_CONFIG_PATH": str(tmp_path / "zenml"), "ZENML_ANALYTICS_OPT_IN": "false",
                "PYTHONPATH": str(ROOT)})
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "artifacts")], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))[7:])
    assert result["env_after_cleanup"] == ""  # the mechanism: ZenML empties the variable
    assert result["tracking_uri"] == external
    assert str(result["champion_via_stage_pattern"]) == "1"
    assert result["champion_via_versions"] == "1" and result["champion_ref"] == "1"
    assert result["tracking_uri_after_removal"] == external
    assert not (project / "mlflow.db").exists()  # nothing read or written in the project's local store
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlruns").exists()


def test_tracking_uri_prefers_the_live_variable_then_the_start_value_then_the_local_store(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setenv("LLMFT_HOME", str(tmp_path / "project"))
    monkeypatch.setattr(locations, "_STARTED_WITH_URI", "sqlite:////elsewhere/mlflow.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.internal:5000")
    assert locations.tracking_uri() == "http://tracking.internal:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "")  # what mlflow.set_tracking_uri("") leaves behind
    assert locations.tracking_uri() == "sqlite:////elsewhere/mlflow.db"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert locations.tracking_uri() == "sqlite:////elsewhere/mlflow.db"
    monkeypatch.setattr(locations, "_STARTED_WITH_URI", None)  # started without one: the project's store
    assert locations.tracking_uri() == locations.local_tracking_uri()
    assert str(tmp_path / "project" / "mlflow.db") in locations.tracking_uri()
