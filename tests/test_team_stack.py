"""The team stack of infra/team/, run for real on this machine (no Docker): PostgreSQL, an S3 server
(moto standing in for MinIO), the MLflow server as docker-compose.yml starts it (basic auth, PostgreSQL
backend, artifacts proxied into the bucket), a local ZenML server, and the stack registered by the
real infra/team/register_stack.sh. A tiny finetune runs on stack `llmft-team`; the run, its artifacts in
the bucket, the registry version and ZenML's artifacts in its bucket are checked through the servers
themselves; then the version is promoted and served.

Needs the `team` extra (pip install -e ".[team,test]") in an environment of its own, installed without
constraints.txt: zenml[server] 0.98 wants fastapi<0.139, which the pinned test environment is above. Skipped
without it. Two finetunes, a deploy and an export: 8.5 minutes on 2 otherwise idle cores (2026-12-06)."""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_e2e import ROOT, TINY, run_py

sys.path.insert(0, str(ROOT / "scripts"))
from team_stack_check import ADMIN, TeamStack, missing_modules, team_stack

_missing = missing_modules()
pytestmark = [
    pytest.mark.team_stack, pytest.mark.e2e,
    pytest.mark.skipif(bool(_missing), reason=f"team extra not installed (pip install -e '.[team]'): "
                                              f"no {', '.join(_missing)}"),
]

MODEL = "team-test-model"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


DEPLOY_PORT = _free_port()
# the stack is under test, not the model: as little generation as the pipeline allows
ARGS = [*TINY, "--set", "train.max_steps=6", "--set", "eval.max_samples=4", "--set", "eval.few_shot_k=0",
        "--set", "eval.probe_max_new_tokens=4", "--set", f"registry.model_name={MODEL}",
        "--set", "compute.stack=llmft-team", "--set", f"deploy.port={DEPLOY_PORT}"]


def _get(stack: TeamStack, api: str, auth: bool = True, host: str | None = None, **query: str) -> dict:
    headers = {"Authorization": "Basic " + base64.b64encode(f"{ADMIN}:{stack.admin_password}".encode()).decode()}
    if not auth:
        headers = {}
    if host:
        headers["Host"] = host
    request = urllib.request.Request(f"{stack.mlflow_uri}{api}?{urllib.parse.urlencode(query)}", headers=headers)
    with urllib.request.urlopen(request, timeout=30) as resp:
        return json.loads(resp.read())


def _bucket_keys(stack: TeamStack, bucket: str) -> list[str]:
    import boto3

    s3 = boto3.client("s3", endpoint_url=stack.s3_endpoint, region_name="us-east-1",
                      aws_access_key_id=stack.client_env["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=stack.client_env["AWS_SECRET_ACCESS_KEY"])
    keys: list[str] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys += [o["Key"] for o in page.get("Contents", [])]
    return keys


@pytest.fixture(scope="module")
def team(tmp_path_factory: pytest.TempPathFactory, run_env: dict[str, str]) -> Iterator[TeamStack]:
    root = tmp_path_factory.mktemp("team-stack")
    with team_stack(root, base_env=run_env) as stack:
        home = root / "home"
        # what a team member exports (infra/README.md), plus this test's own project folder
        stack.client_env.update({"LLMFT_HOME": str(home), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                                 "PYTHONPATH": str(ROOT)})
        try:
            yield stack
        finally:  # no model server outlives the test, whatever failed
            run_py(stack.client_env, "--pipeline", "deploy", "--stop", timeout=120)


@pytest.fixture(scope="module")
def finetuned(team: TeamStack) -> dict:
    out = team.root / "finetune.json"
    proc = run_py(team.client_env, "--pipeline", "finetune", *ARGS, "--summary", str(out), timeout=1800)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert team.admin_password not in proc.stdout + proc.stderr + out.read_text()
    return json.loads(out.read_text())


def test_server_refuses_strangers(team: TeamStack):
    with pytest.raises(urllib.error.HTTPError) as refused:  # basic auth: no anonymous access
        _get(team, "/api/2.0/mlflow/experiments/search", auth=False, max_results="1")
    assert refused.value.code == 401
    # the server is reached by name (MLFLOW_ALLOWED_HOSTS); other Host headers are refused (DNS rebinding)
    assert isinstance(_get(team, "/api/2.0/mlflow/experiments/search", host="mlflow.team.test:5000",
                           max_results="1"), dict)
    with pytest.raises(urllib.error.HTTPError) as foreign:
        _get(team, "/api/2.0/mlflow/experiments/search", host="attacker.example:5000", max_results="1")
    assert foreign.value.code == 403


def test_stack_registered_by_the_script(team: TeamStack):
    code = ("from zenml.client import Client; import json; s = Client().get_stack('llmft-team');"
            "print(json.dumps({t.value: [c.flavor_name, c.configuration] for t, cs in s.components.items()"
            " for c in cs[:1]}))")
    listed = subprocess.run([sys.executable, "-c", code], env=team.client_env, capture_output=True, text=True,
                            timeout=300, check=True)
    components = json.loads(listed.stdout.strip().splitlines()[-1])
    assert components["artifact_store"][0] == "s3" and components["artifact_store"][1]["path"] == "s3://zenml"
    assert components["artifact_store"][1]["authentication_secret"] == "llmft_s3"
    tracker = components["experiment_tracker"][1]
    assert tracker["tracking_uri"] == team.mlflow_uri
    assert tracker["tracking_password"] == "{{llmft_mlflow_credentials.password}}"  # a reference, not the secret
    assert components["model_registry"][0] == "mlflow"
    assert team.admin_password not in listed.stdout + listed.stderr
    assert team.client_env["AWS_SECRET_ACCESS_KEY"] not in listed.stdout
    # without MLFLOW_TRACKING_URI run.py would read champions from a local store the steps never write to
    env = {k: v for k, v in team.client_env.items() if not k.startswith("MLFLOW_")}
    env["LLMFT_HOME"] = str(team.root / "home-without-uri")
    proc = run_py(env, "--pipeline", "finetune", *ARGS, timeout=600)
    assert proc.returncode == 2 and f"export MLFLOW_TRACKING_URI={team.mlflow_uri}" in proc.stderr, proc.stderr[-2000:]


def test_run_tracked_in_postgres_with_artifacts_in_s3(team: TeamStack, finetuned: dict):
    import psycopg2

    s = finetuned
    assert s["tracking_uri"] == team.mlflow_uri
    assert not (Path(team.client_env["LLMFT_HOME"]) / "mlflow.db").exists()  # nothing went to a local store
    run = _get(team, "/api/2.0/mlflow/runs/get", run_id=s["mlflow_run_id"])["run"]
    params = {p["key"]: p["value"] for p in run["data"]["params"]}
    metrics = {m["key"]: m["value"] for m in run["data"]["metrics"]}
    assert params["train.max_steps"] == "6"
    assert metrics["finetuned/field_accuracy"] == pytest.approx(s["metrics"]["finetuned"]["field_accuracy"])
    assert run["info"]["artifact_uri"].startswith("mlflow-artifacts:")  # proxied: clients hold no S3 keys
    files = _get(team, "/api/2.0/mlflow/artifacts/list", run_id=s["mlflow_run_id"], path="plots")["files"]
    assert "plots/loss_curve.png" in {f["path"] for f in files}
    # ... and stored in the server's bucket, under the run
    keys = _bucket_keys(team, "mlflow")
    run_keys = [k for k in keys if f"/{s['mlflow_run_id']}/" in f"/{k}"]
    assert any(k.endswith("plots/loss_curve.png") for k in run_keys), keys[:20]
    assert any("adapter/adapter_model.safetensors" in k for k in run_keys)
    # the backend store really is PostgreSQL
    with psycopg2.connect(team.postgres_uri) as conn, conn.cursor() as cur:
        cur.execute("SELECT status FROM runs WHERE run_uuid = %s", (s["mlflow_run_id"],))
        assert cur.fetchone() == ("FINISHED",)
        cur.execute("SELECT count(*) FROM users WHERE username = %s", (ADMIN,))  # basic auth's users, same database
        assert cur.fetchone() == (1,)


def test_registry_version_ready(team: TeamStack, finetuned: dict):
    version = finetuned["registered_model"]["version"]
    mv = _get(team, "/api/2.0/mlflow/model-versions/get", name=MODEL, version=version)["model_version"]
    tags = {t["key"]: t["value"] for t in mv["tags"]}
    assert mv["status"] == "READY" and tags["zenml_run_id"] == finetuned["zenml_run_id"]
    alias = _get(team, "/api/2.0/mlflow/registered-models/alias", name=MODEL, alias="challenger")
    assert alias["model_version"]["version"] == version


def test_zenml_artifacts_in_the_bucket(team: TeamStack, finetuned: dict):
    code = ("from zenml.client import Client; import json, sys; r = Client().get_pipeline_run(sys.argv[1]);"
            "print(json.dumps({'stack': r.stack.name, 'uris': [a.uri for s in r.steps.values()"
            " for a in s.outputs.get('split_info', []) + s.outputs.get('training_result', [])]}))")
    listed = subprocess.run([sys.executable, "-c", code, finetuned["zenml_run_id"]], env=team.client_env,
                            capture_output=True, text=True, timeout=300, check=True)
    run = json.loads(listed.stdout.strip().splitlines()[-1])
    assert run["stack"] == "llmft-team"
    assert run["uris"] and all(u.startswith("s3://zenml/") for u in run["uris"]), run
    keys = _bucket_keys(team, "zenml")
    for uri in run["uris"]:
        prefix = uri.removeprefix("s3://zenml/")
        assert any(k.startswith(prefix) for k in keys), (uri, keys[:20])


def test_promote_and_serve(team: TeamStack, finetuned: dict):
    from llmft.serve.deploy import post_json

    version = finetuned["registered_model"]["version"]
    if not finetuned["promoted"]:  # the gate may reject 6 steps; promote by hand, as a team member would
        out = team.root / "promote.json"
        proc = run_py(team.client_env, "--pipeline", "promote", *ARGS, "--version", version,
                      "--reason", "team stack test", "--summary", str(out), timeout=900)
        assert proc.returncode == 0, proc.stderr[-4000:]
        assert str(json.loads(out.read_text())["champion"]) == version
    alias = _get(team, "/api/2.0/mlflow/registered-models/alias", name=MODEL, alias="champion")
    assert alias["model_version"]["version"] == version

    out = team.root / "deploy.json"
    proc = run_py(team.client_env, "--pipeline", "deploy", *ARGS, "--summary", str(out), timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    deployed = json.loads(out.read_text())
    assert str(deployed["model_version"]) == version
    assert deployed["endpoint"] == f"http://127.0.0.1:{DEPLOY_PORT}/invocations"
    assert deployed["smoke_response"].strip()
    status, body = post_json(deployed["endpoint"], {"messages": [{"role": "user", "content": "Halden lamp, teal"}],
                                                    "max_tokens": 16, "temperature": 0})
    assert status == 200, body
    assert body["object"] == "chat.completion" and body["choices"][0]["message"]["content"].strip()
    proc = run_py(team.client_env, "--pipeline", "deploy", "--stop", timeout=120)
    assert proc.returncode == 0 and "stopped server" in proc.stdout, proc.stdout + proc.stderr


def test_a_second_finetune_and_an_export_read_only_the_server(team: TeamStack, finetuned: dict):
    """After the first version is champion (test_promote_and_serve), a second finetune re-measures it
    from the server, not from a project-local store; the export reads the champion from the server and
    records itself there. No project-local `mlflow.db` appears at any point."""
    home = Path(team.client_env["LLMFT_HOME"])
    champion = _get(team, "/api/2.0/mlflow/registered-models/alias", name=MODEL, alias="champion")["model_version"]
    out = team.root / "finetune-2.json"
    proc = run_py(team.client_env, "--pipeline", "finetune", *ARGS, "--set", "train.seed=43", "--summary", str(out),
                  timeout=1800)
    assert proc.returncode == 0, proc.stderr[-4000:]
    second = json.loads(out.read_text())
    assert second["tracking_uri"] == team.mlflow_uri
    assert second["champion_evaluated"] == champion["version"] and second["metrics"]["champion"] is not None
    assert int(second["registered_model"]["version"]) == int(finetuned["registered_model"]["version"]) + 1
    exported = team.root / "exported"
    proc = run_py(team.client_env, "--pipeline", "export", *ARGS, "--set", f"export.output_dir={exported}",
                  "--set", "export.quants=[q8_0]", "--set", "export.modelfile_quant=q8_0", timeout=1200)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert any(exported.glob("*.q8_0.gguf"))
    now = _get(team, "/api/2.0/mlflow/model-versions/get", name=MODEL, version=champion["version"])["model_version"]
    assert "export.uri" in {t["key"] for t in now["tags"]}  # the export's record is on the server's version
    assert not (home / "mlflow.db").exists() and not list(home.rglob("mlflow.db"))
    assert team.admin_password not in proc.stdout + proc.stderr
