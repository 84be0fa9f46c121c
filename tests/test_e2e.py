"""End to end: the real finetune and deploy pipelines, real model, real ZenML stack and MLflow
store (temporary), tiny settings. Ordered: finetune -> fresh-process load -> deploy -> stop."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from llmft.serving import post_json

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--set", "data.max_rows=200", "--set", "train.max_steps=14", "--set", "eval.max_samples=6",
        "--set", "validation.min_rows=4", "--set", "deploy.port=5077", "--set", "deploy.smoke_max_tokens=24"]

pytestmark = pytest.mark.e2e


def run_py(env: dict[str, str], *args: str, timeout: int = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "run.py"), *args], cwd=ROOT, env=env, text=True,
                          capture_output=True, timeout=timeout)


@pytest.fixture(scope="module")
def finetune_summary(run_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("summary") / "finetune.json"
    proc = run_py(run_env, "--pipeline", "finetune", *TINY, "--summary", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "base" in proc.stdout and "fine-tuned" in proc.stdout and "MLflow UI: mlflow ui" in proc.stdout
    return json.loads(out.read_text())


def _mlflow_client(run_env: dict[str, str]):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{run_env['LLMFT_HOME']}/mlflow.db")


def test_finetune_summary_contract(finetune_summary: dict):
    s = finetune_summary
    for key in ("pipeline", "zenml_run_id", "mlflow_run_id", "tracking_uri", "primary_metric", "wall_seconds",
                "promoted"):
        assert key in s
    assert s["primary_metric"] == "field_accuracy"
    for model in ("base", "finetuned"):
        m = s["metrics"][model]
        for rate in ("json_validity", "field_accuracy", "exact_match"):
            assert 0.0 <= m[rate] <= 1.0
        assert m["eval_loss"] > 0
    assert set(s["dataset"]["rows"]) == {"train", "validation", "test"}
    assert len(s["dataset"]["fingerprint"]) == 16
    assert s["dataset"]["rows_in"] == 200 and s["dataset"]["duplicates_removed"] == 0
    assert Path(s["dataset"]["export_dir"], "train.jsonl").is_file()
    # a real model really trained: loss fell and the held-out loss improved over the base model
    assert s["train"]["last_loss"] < s["train"]["first_loss"]
    assert s["metrics"]["finetuned"]["eval_loss"] < s["metrics"]["base"]["eval_loss"]
    assert s["registered_model"]["version"] == "1"
    # 14 LoRA steps are enough to learn the JSON format; the base model never produces it
    assert s["promoted"] is True, s["promotion_reason"]


def test_mlflow_run_and_registry(finetune_summary: dict, run_env: dict[str, str]):
    client = _mlflow_client(run_env)
    run = client.get_run(finetune_summary["mlflow_run_id"])
    assert run.data.params["train.max_steps"] == "14"
    assert run.data.params["train.method"] == "lora"
    assert run.data.tags["dataset_fingerprint"] == finetune_summary["dataset"]["fingerprint"]
    assert "finetuned/field_accuracy" in run.data.metrics
    losses = client.get_metric_history(run.info.run_id, "train/loss")
    assert len(losses) == 14
    lrs = client.get_metric_history(run.info.run_id, "train/learning_rate")
    assert len(lrs) == 14
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert "plots/loss_curve.png" in artifacts
    name = finetune_summary["registered_model"]["name"]
    version = client.get_model_version(name, "1")
    assert version.tags["zenml_run_id"] == finetune_summary["zenml_run_id"]
    assert version.tags["dataset_fingerprint"] == finetune_summary["dataset"]["fingerprint"]
    assert version.tags["method"] == "lora"
    assert "metric.finetuned.field_accuracy" in version.tags
    adapter_files = {a.path for a in client.list_artifacts(run.info.run_id, "adapter")}
    assert "adapter/adapter_model.safetensors" in adapter_files
    assert version.tags["adapter_uri"] == f"runs:/{run.info.run_id}/adapter"
    assert str(client.get_model_version_by_alias(name, "champion").version) == "1"


def test_registered_model_loads_in_fresh_offline_process(finetune_summary: dict, run_env: dict[str, str]):
    code = textwrap.dedent(f"""
        import json, mlflow
        mlflow.set_tracking_uri("sqlite:///{run_env['LLMFT_HOME']}/mlflow.db")
        model = mlflow.pyfunc.load_model("models:/{finetune_summary['registered_model']['name']}@champion")
        from llmft.extraction import INSTRUCTION
        out = model.predict({{"messages": [{{"role": "system", "content": INSTRUCTION}},
                                           {{"role": "user", "content": "Lumora mug | red | ceramic | $12.99"}}],
                             "max_tokens": 60}})
        print(json.dumps(out))
    """)
    proc = subprocess.run([sys.executable, "-c", code], env=run_env, text=True, capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    completion = result[0] if isinstance(result, list) else result
    content = completion["choices"][0]["message"]["content"]
    assert content.strip(), completion


def test_deploy_serves_champion_then_stops(finetune_summary: dict, run_env: dict[str, str], tmp_path: Path):
    out = tmp_path / "deploy.json"
    proc = run_py(run_env, "--pipeline", "deploy", *TINY, "--summary", str(out), timeout=400)
    try:
        assert proc.returncode == 0, proc.stderr[-3000:]
        summary = json.loads(out.read_text())
        assert summary["endpoint"] == "http://127.0.0.1:5077/invocations"
        assert summary["model_version"] == "1"
        status, body = post_json(summary["endpoint"], {"messages": [{"role": "user", "content": "Halden lamp, teal"}],
                                                       "max_tokens": 16})
        assert status == 200
        assert body[0]["object"] == "chat.completion"
        status, _ = post_json(summary["endpoint"], {"nonsense": True})
        assert status == 400
    finally:
        stop = run_py(run_env, "--pipeline", "deploy", "--stop")
    assert stop.returncode == 0 and "stopped server" in stop.stdout
    with pytest.raises(OSError):
        post_json("http://127.0.0.1:5077/invocations", {"messages": []}, timeout=3)


def test_bad_data_stops_before_training_and_registers_nothing(finetune_summary: dict, run_env: dict[str, str],
                                                               tmp_path: Path):
    bad = tmp_path / "bad.jsonl"
    rows = [{"prompt": f"item {i}", "response": "{}"} for i in range(10)] + [{"prompt": "  ", "response": "{}"}] * 5
    bad.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    proc = run_py(run_env, "--pipeline", "finetune", *TINY, "--set", f"data.source={bad}")
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: finetune pipeline failed at step 'validate': DataGateError:"), last
    assert "rejected (empty: 5)" in last and "is_rejected" in last and "bad.jsonl, line 11: empty user turn" in last
    assert "Traceback" not in proc.stderr
    report_dir = Path(last.split("(report: ")[1].split(")")[0])
    rejected = [json.loads(line) for line in (report_dir / "rejected.jsonl").read_text().splitlines()]
    assert len(rejected) == 5 and rejected[0]["reason"] == "empty user turn"
    assert (report_dir / "data_docs" / "index.html").is_file()
    name = finetune_summary["registered_model"]["name"]
    versions = _mlflow_client(run_env).search_model_versions(f"name='{name}'")
    assert [str(v.version) for v in versions] == ["1"]


def test_data_pipeline_reports_exports_and_caches(run_env: dict[str, str], tmp_path: Path):
    data = tmp_path / "chat.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"What is {i} plus {i}?"},
                          {"role": "assistant", "content": f"{2 * i}"}]} for i in range(30)]
    rows += [rows[0], {"messages": [{"role": "user", "content": "WHAT is 1 plus 1?"},
                                    {"role": "assistant", "content": "2"}]}]  # exact + normalised duplicates
    rows += [{"messages": [{"role": "user", "content": "email me: ann@example.com"},
                           {"role": "assistant", "content": "ok"}]}]
    rows += [{"messages": [{"role": "user", "content": "no answer"}]}]  # rejected: does not end with assistant
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    args = ["--pipeline", "data", "--set", f"data.source={data}", "--set", "data.min_test_rows=1",
            "--set", "validation.max_duplicate_fraction=0.1"]
    first = tmp_path / "first.json"
    proc = run_py(run_env, *args, "--summary", str(first), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    s = json.loads(first.read_text())
    d = s["dataset"]
    assert (d["rows_in"], d["duplicates_removed"], d["rejected"]) == (34, 2, 1)
    assert d["rejected_by_reason"] == {"shape": 1} and d["pii"] == {"email": 1}
    assert sum(d["rows"].values()) == 31 and d["unused"] == 0
    export = Path(d["export_dir"])
    for name in ("train", "validation", "test", "rejected"):
        assert (export / f"{name}.jsonl").is_file()
    exported = [json.loads(line) for name in ("train", "validation", "test")
                for line in (export / f"{name}.jsonl").read_text().splitlines()]
    assert any("[EMAIL]" in r["messages"][0]["content"] for r in exported)
    assert "ann@example.com" not in "".join((export / f).read_text() for f in ("train.jsonl", "test.jsonl",
                                                                               "validation.jsonl", "rejected.jsonl"))
    rejected = [json.loads(line) for line in (export / "rejected.jsonl").read_text().splitlines()]
    assert sorted(r["kind"] for r in rejected) == ["duplicate", "duplicate", "shape"]
    client = _mlflow_client(run_env)
    run = client.get_run(s["mlflow_run_id"])
    assert run.inputs.dataset_inputs[0].dataset.digest == d["fingerprint"]
    assert "plots/token_lengths.png" in {a.path for a in client.list_artifacts(run.info.run_id, "plots")}

    again = tmp_path / "again.json"
    assert run_py(run_env, *args, "--summary", str(again), timeout=300).returncode == 0
    s2 = json.loads(again.read_text())
    assert {"ingest", "validate", "split_tokenize"} <= set(s2["cached_steps"])
    assert s2["dataset"]["fingerprint"] == d["fingerprint"] and s2["dataset"]["rows"] == d["rows"]

    with data.open("a") as fh:  # a changed file must never be served from the cache
        fh.write(json.dumps({"messages": [{"role": "user", "content": "What is 100 plus 100?"},
                                          {"role": "assistant", "content": "200"}]}) + "\n")
    changed = tmp_path / "changed.json"
    assert run_py(run_env, *args, "--summary", str(changed), timeout=300).returncode == 0
    s3 = json.loads(changed.read_text())
    assert s3["dataset"]["fingerprint"] != d["fingerprint"]
    assert not {"ingest", "validate", "split_tokenize"} & set(s3["cached_steps"])
    assert sum(s3["dataset"]["rows"].values()) == 32
    for name in ("train", "validation", "test"):  # appending never moves an existing record
        before = {json.dumps(r) for r in map(json.loads, (export / f"{name}.jsonl").read_text().splitlines())}
        after_dir = Path(s3["dataset"]["export_dir"])
        after = {json.dumps(r) for r in map(json.loads, (after_dir / f"{name}.jsonl").read_text().splitlines())}
        assert {json.dumps({k: v for k, v in json.loads(r).items() if k != "where"}) for r in before} <= \
               {json.dumps({k: v for k, v in json.loads(r).items() if k != "where"}) for r in after}


def test_malformed_line_is_named(run_env: dict[str, str], tmp_path: Path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "response": "b"}\n' * 6 + '{"prompt": "a", \n')
    proc = run_py(run_env, "--pipeline", "finetune", "--set", f"data.source={bad}")
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: finetune pipeline failed at step 'ingest': DataError:"), last
    assert f"{bad}, line 7: malformed JSON" in last


def test_classification_data_through_the_data_pipeline(run_env: dict[str, str], tmp_path: Path):
    data = tmp_path / "reviews.csv"
    labels = ["positive", "negative", "neutral"]
    lines = ["text,label"] + [f'"review {i}, quite {labels[i % 3]}",{labels[i % 3]}' for i in range(60)]
    data.write_text("\n".join([*lines, '"a strange one",sarcastic']) + "\n")
    out = tmp_path / "summary.json"
    proc = run_py(run_env, "--pipeline", "data", "--set", f"data.source={data}", "--set", "data.min_test_rows=3",
                  "--set", "data.labels=[positive, negative, neutral]", "--summary", str(out), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    s = json.loads(out.read_text())
    assert s["dataset"]["rejected_by_reason"] == {"unknown_label": 1}
    test_rows = [json.loads(line) for line in Path(s["dataset"]["export_dir"], "test.jsonl").read_text().splitlines()]
    assert {r["label"] for r in test_rows} == set(labels)  # stratified: every class is measured
    client = _mlflow_client(run_env)
    assert "plots/class_balance.png" in {a.path for a in client.list_artifacts(s["mlflow_run_id"], "plots")}
