"""An MLflow store set only through MLFLOW_TRACKING_URI (what the team recipe's `export
MLFLOW_TRACKING_URI=...` does), on the tiny model: two finetunes (the second once failed at
evaluate_champion, reading the project's own store), then deploy, promote by hand and export. Every
read and write goes to the external store; the project's own `mlflow.db` never appears."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_e2e import run_py

pytestmark = pytest.mark.e2e

PORT = 5079


def _args(tiny_model_path: str) -> list[str]:
    # the tiny model learns nothing (a learning rate that keeps its never-blank answers for the server's smoke
    # test): the gate is set so that it passes (>= the zero-shot base, no forgetting bound), which is what
    # lets deploy, promote and export run after it
    sets = [f"model.base={tiny_model_path}", "data.max_rows=120", "train.max_steps=4", "train.learning_rate=1e-9",
            "eval.max_samples=6",
            "validation.min_rows=4", "eval.genai_table_rows=0", "promotion.baseline=zero_shot",
            "promotion.min_delta=0", "promotion.max_forgetting=1", f"deploy.port={PORT}",
            "deploy.smoke_max_tokens=8"]
    return [a for s in sets for a in ("--set", s)]


def test_two_runs_then_deploy_promote_export_use_only_the_external_store(pipeline_env: dict[str, str],
                                                                         tiny_model_path: str, tmp_path: Path):
    from mlflow import MlflowClient

    home, store = tmp_path / "project", tmp_path / "team-store"
    store.mkdir()
    uri = f"sqlite:///{store / 'mlflow.db'}"
    env = {**pipeline_env, "LLMFT_HOME": str(home), "ZENML_CONFIG_PATH": str(home / "zenml"),
           "MLFLOW_TRACKING_URI": uri}
    args = _args(tiny_model_path)
    summaries = []
    try:
        for i in range(2):  # the second with another seed: a new version, judged against the champion v1
            out = tmp_path / f"run{i}.json"
            proc = run_py(env, "--pipeline", "finetune", *args, "--set", f"train.seed={42 + i}", "--summary", str(out),
                          timeout=900)
            assert proc.returncode == 0, proc.stderr[-3000:]
            summaries.append(json.loads(out.read_text()))
        first, second = summaries
        assert first["tracking_uri"] == uri and first["promoted"], first["promotion_reasons"]
        # the second run re-measured the champion from the external store, and matched it: v2 promoted
        assert second["champion_evaluated"] == "1" and second["metrics"]["champion"] is not None
        assert second["registered_model"]["version"] == "2" and second["promoted"], second["promotion_reasons"]
        name = first["registered_model"]["name"]

        deployed = tmp_path / "deploy.json"
        proc = run_py(env, "--pipeline", "deploy", *args, "--summary", str(deployed), timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert json.loads(deployed.read_text())["model_version"] == "2"

        proc = run_py(env, "--pipeline", "promote", "--version", "1", "--reason", "external store", timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]

        proc = run_py(env, "--pipeline", "export", *args, "--set", f"export.output_dir={tmp_path / 'exported'}",
                      timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert any((tmp_path / "exported").glob("*.gguf"))
    finally:
        run_py(env, "--pipeline", "deploy", "--stop", timeout=120)

    assert not (home / "mlflow.db").exists()  # nothing was read from or written to the project's own store
    client = MlflowClient(tracking_uri=uri)
    assert sorted(str(v.version) for v in client.search_model_versions(f"name='{name}'")) == ["1", "2"]
    assert str(client.get_model_version_by_alias(name, "champion").version) == "1"
    tags = client.get_model_version(name, "1").tags
    assert tags["promotion.decision"] == "promoted" and "export.uri" in tags  # records in the external store
