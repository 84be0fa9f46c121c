"""A real MLflow tracking server on localhost behind MLflow's basic-auth app (sqlite backend, local
artifact root, artifacts proxied): the finetune pipeline tracks and registers to it through
MLFLOW_TRACKING_URI with credentials from the environment, which ZenML keeps in a secret (the stack
component holds references only) and which never reach the console or the summary; the run and the
registered version are read back through MLflow's REST API."""

from __future__ import annotations

import base64
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from conftest import wait_http
from test_e2e import TINY, run_py

pytestmark = pytest.mark.e2e


ADMIN, PASSWORD = "admin", "s3cret-Pa55word-for-tests"
AUTH = "Basic " + base64.b64encode(f"{ADMIN}:{PASSWORD}".encode()).decode()


def _get(base: str, api: str, auth: str | None = AUTH, **query: str) -> dict:
    request = urllib.request.Request(f"{base}{api}?{urllib.parse.urlencode(query)}",
                                     headers={"Authorization": auth} if auth else {})
    with urllib.request.urlopen(request, timeout=30) as resp:
        return json.loads(resp.read())


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("mlflow-server")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = (root / "server.log").open("wb")
    (root / "auth.ini").write_text(
        "[mlflow]\ndefault_permission = NO_PERMISSIONS\n"
        f"database_uri = sqlite:///{root / 'auth.db'}\nadmin_username = {ADMIN}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
    env = {**os.environ, "MLFLOW_AUTH_CONFIG_PATH": str(root / "auth.ini"), "MLFLOW_AUTH_ADMIN_PASSWORD": PASSWORD,
           "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--app-name", "basic-auth",
         "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
         "--artifacts-destination", (root / "artifacts").as_uri(), "--serve-artifacts", "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)  # job consumers die with the group
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
    env = {**run_env, "LLMFT_HOME": str(home), "ZENML_CONFIG_PATH": str(home / "zenml"), "MLFLOW_TRACKING_URI": base,
           "MLFLOW_TRACKING_USERNAME": ADMIN, "MLFLOW_TRACKING_PASSWORD": PASSWORD}
    with pytest.raises(urllib.error.HTTPError) as refused:  # the server refuses anyone without credentials
        _get(base, "/api/2.0/mlflow/experiments/search", auth=None, max_results="1")
    assert refused.value.code == 401
    out = tmp_path / "summary.json"
    proc = run_py(env, "--pipeline", "finetune", *TINY, "--set", "train.max_steps=6", "--set", "eval.max_samples=4",
                  "--set", "registry.model_name=server-test-model", "--set", "promotion.min_delta=1.0",
                  "--summary", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert PASSWORD not in proc.stdout + proc.stderr + out.read_text()
    s = json.loads(out.read_text())

    # the stack's tracker holds references into a ZenML secret, not the password
    code = ("from zenml.client import Client; from zenml.enums import StackComponentType as T; import json;"
            "print(json.dumps(Client().list_stack_components(type=T.EXPERIMENT_TRACKER, name='llmft-mlflow-tracker')"
            ".items[0].configuration))")
    listed = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    tracker = json.loads(listed.stdout.strip().splitlines()[-1])
    assert PASSWORD not in listed.stdout
    assert tracker["tracking_password"] == "{{llmft_mlflow_credentials.password}}"
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
    # promotion.min_delta=1.0 cannot be met (the baselines score above 0 on a [0, 1] metric): the decision is
    # "rejected", recorded on the version, the version stays @challenger and there is no @champion
    assert not s["promoted"] and s["promotion_reasons"][0].startswith("FAIL base"), s["promotion_reasons"]
    assert vtags["promotion.decision"] == "rejected"
    with pytest.raises(urllib.error.HTTPError):
        _get(base, "/api/2.0/mlflow/registered-models/alias", name="server-test-model", alias="champion")
