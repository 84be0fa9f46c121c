"""A real MLflow tracking server on localhost (sqlite backend, local artifact root, artifacts proxied):
the finetune pipeline tracks and registers to it through MLFLOW_TRACKING_URI, and the run and the
registered version are read back through MLflow's REST API."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from conftest import wait_http
from test_e2e import TINY, run_py

pytestmark = pytest.mark.e2e


def _get(base: str, api: str, **query: str) -> dict:
    with urllib.request.urlopen(f"{base}{api}?{urllib.parse.urlencode(query)}", timeout=30) as resp:
        return json.loads(resp.read())


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("mlflow-server")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = (root / "server.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
         "--artifacts-destination", (root / "artifacts").as_uri(), "--serve-artifacts", "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)  # its job consumers die with the group
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{base}/health", 120, proc)
        yield base, root
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def test_pipeline_tracks_and_registers_to_a_tracking_server(server, run_env: dict[str, str], tmp_path: Path):
    base, root = server
    home = tmp_path / "home"
    env = {**run_env, "LLMFT_HOME": str(home), "ZENML_CONFIG_PATH": str(home / "zenml"), "MLFLOW_TRACKING_URI": base}
    out = tmp_path / "summary.json"
    proc = run_py(env, "--pipeline", "finetune", *TINY, "--set", "train.max_steps=6", "--set", "eval.max_samples=4",
                  "--set", "registry.model_name=server-test-model", "--summary", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    s = json.loads(out.read_text())
    assert s["tracking_uri"] == base and "open http" in proc.stdout  # the UI is the server itself
    assert not (home / "mlflow.db").exists()  # nothing went to a local store

    run = _get(base, "/api/2.0/mlflow/runs/get", run_id=s["mlflow_run_id"])["run"]
    params = {p["key"]: p["value"] for p in run["data"]["params"]}
    metrics = {m["key"]: m["value"] for m in run["data"]["metrics"]}
    tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
    assert params["train.max_steps"] == "6"
    assert metrics["finetuned/field_accuracy"] == pytest.approx(s["metrics"]["finetuned"]["field_accuracy"])
    assert tags["dataset_fingerprint"] == s["dataset"]["fingerprint"]
    files = _get(base, "/api/2.0/mlflow/artifacts/list", run_id=s["mlflow_run_id"], path="plots")["files"]
    assert "plots/loss_curve.png" in {f["path"] for f in files}
    assert list((root / "artifacts").rglob("loss_curve.png"))  # stored under the server's artifact root

    version = _get(base, "/api/2.0/mlflow/model-versions/get", name="server-test-model",
                   version=s["registered_model"]["version"])["model_version"]
    vtags = {t["key"]: t["value"] for t in version["tags"]}
    assert version["status"] == "READY" and vtags["zenml_run_id"] == s["zenml_run_id"]
    alias = _get(base, "/api/2.0/mlflow/registered-models/alias", name="server-test-model", alias="challenger")
    assert alias["model_version"]["version"] == s["registered_model"]["version"]
    # the promotion decision is on the version either way
    assert vtags["promotion.decision"] == ("promoted" if s["promoted"] else "rejected")
