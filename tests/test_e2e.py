"""End to end: the real finetune and deploy pipelines, real model, real ZenML stack and MLflow
store (temporary), tiny settings. Ordered: finetune -> fresh-process load -> deploy -> stop.
Tiers: the first run's contract, its MLflow record and a fresh-process load guard quality (`guard`);
the data pipeline and the tick lock need no model (default); the rest of the chain is `slow`."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import wait_http

from llmft.evaluate.text_metrics import parse_json_object
from llmft.precision import inference_dtype
from llmft.serve.deploy import ServingError, post_json
from llmft.tasks import get_task

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--set", "data.max_rows=200", "--set", "train.max_steps=14", "--set", "eval.max_samples=6",
        "--set", "validation.min_rows=4", "--set", "deploy.port=5077", "--set", "deploy.smoke_max_tokens=24"]

# the guard run: the default config as shipped (all the demo's rows, one epoch of LoRA, the gate), a smaller
# evaluation sample
# SmolLM2-135M-Instruct on the shipped probe (torch 2.13, transformers 5.23), in the dtype eval.precision: auto
# scores in: bf16 where the CPU has it natively, else fp32
BASE_PROBE_ACCURACY = {torch.bfloat16: 0.650, torch.float32: 0.667}[inference_dtype("auto")]
# deploy.port: the default, which the README quickstart's curl line talks to
DEFAULT_RUN = ["--set", "eval.max_samples=30", "--set", "deploy.port=5055", "--set", "deploy.smoke_max_tokens=24"]

pytestmark = pytest.mark.e2e


def run_py(env: dict[str, str], *args: str, timeout: int = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "run.py"), *args], cwd=ROOT, env=env, text=True,
                          capture_output=True, timeout=timeout)


@pytest.fixture(scope="module")
def finetune_summary(run_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory, server_cleanup: None) -> dict:
    out = tmp_path_factory.mktemp("summary") / "finetune.json"
    # the README's `llmft finetune` (the console script); deploy.on_promotion: the promoted model is served at
    # the end of the run
    llmft = shutil.which("llmft")
    assert llmft, "the llmft console script is installed with the package"
    proc = subprocess.run([llmft, "finetune", *DEFAULT_RUN, "--set", "deploy.on_promotion=true", "--summary", str(out)],
                          cwd=ROOT, env=run_env, text=True, capture_output=True, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "base" in proc.stdout and "fine-tuned" in proc.stdout and "MLflow UI: mlflow ui" in proc.stdout
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def server_cleanup(run_env: dict[str, str]):
    """Whatever happens in these tests, no model server outlives them."""
    yield
    run_py(run_env, "--pipeline", "deploy", "--stop", timeout=120)


def _mlflow_client(run_env: dict[str, str]):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{run_env['LLMFT_HOME']}/mlflow.db")


@pytest.mark.guard
def test_finetune_summary_contract(finetune_summary: dict):
    s = finetune_summary
    for key in ("pipeline", "zenml_run_id", "mlflow_run_id", "tracking_uri", "primary_metric", "wall_seconds",
                "promoted", "promotion_reasons"):
        assert key in s
    assert s["task"] == "extraction" and s["task_reason"].startswith("inferred from responses: ")
    assert s["primary_metric"] == "field_accuracy"
    assert s["registered_model"]["name"] == "products-extraction"  # derived from the source and the task
    assert s["eval_sample"] == {"n": 30, "of": s["dataset"]["rows"]["test"], "seed": 0, "how": "seeded random sample"}
    for model in ("base", "base_few_shot", "finetuned"):
        m = s["metrics"][model]
        assert set(m) == set(get_task("extraction").metric_names)
        for rate in ("json_validity", "field_accuracy", "all_fields_correct", "rouge1", "rouge2", "rougeL", "bleu",
                     "chrf", "exact_match"):
            assert 0.0 <= m[rate] <= 1.0
        assert m["eval_loss"] > 0 and m["perplexity"] >= 1 and m["wer"] >= 0
    assert s["metrics"]["champion"] is None and s["champion_evaluated"] is None  # the first run has none
    assert s["few_shot"]["k"] == 3 and 0 <= s["few_shot"]["used_min"] <= s["few_shot"]["used_mean"] <= 3
    assert s["champion_note"] == "no current champion"
    assert set(s["dataset"]["rows"]) == {"train", "validation", "test"}
    assert len(s["dataset"]["fingerprint"]) == 16
    assert s["dataset"]["duplicates_removed"] == 0
    assert Path(s["dataset"]["export_dir"], "train.jsonl").is_file()
    # a real model really trained: loss fell and the held-out loss improved over the base model
    assert s["train"]["last_loss"] < s["train"]["first_loss"]
    assert s["metrics"]["finetuned"]["eval_loss"] < s["metrics"]["base"]["eval_loss"]
    assert s["registered_model"]["version"] == "1"
    # what the default run is for: the shipped demo learns the task well (the README's number), beats every
    # baseline, the dictionary of training values included, and keeps what the base model knew
    tuned, simple = s["metrics"]["finetuned"], s["metrics"]["simple_baseline"]
    assert tuned["field_accuracy"] >= 0.85, tuned
    assert s["simple_baseline_method"].startswith("dictionary of training values")
    assert 0.4 <= simple["field_accuracy"] < tuned["field_accuracy"] - 0.01, simple
    prompted = max(s["metrics"]["base"]["field_accuracy"], s["metrics"]["base_few_shot"]["field_accuracy"])
    assert prompted < simple["field_accuracy"], (prompted, simple)  # the dictionary is the bar to clear here
    assert s["baseline_used"] == "simple"  # promotion.baseline=best: the strongest one
    assert s["forgetting"]["applicable"] and s["forgetting"]["questions"] >= 50
    # the probe's base score is a property of the base model and the probe (greedy, deterministic)
    assert s["forgetting"]["base"] == pytest.approx(BASE_PROBE_ACCURACY, abs=0.02)
    assert s["forgetting"]["drop"] <= 0.1
    assert s["promoted"] is True, s["promotion_reasons"]
    assert [r.split(":")[0] for r in s["promotion_reasons"]] == ["PASS base", "PASS champion", "PASS forgetting"]
    assert f"{tuned['field_accuracy']:.4f}" in s["promotion_reasons"][0]


@pytest.mark.guard
def test_mlflow_run_and_registry(finetune_summary: dict, run_env: dict[str, str]):
    client = _mlflow_client(run_env)
    run = client.get_run(finetune_summary["mlflow_run_id"])
    assert run.data.params["train.max_steps"] == "auto"
    # auto: one epoch over every kept training row, 4 rows a step
    steps = finetune_summary["train"]["steps"]
    assert finetune_summary["dataset"]["extras"] == []  # no replay by default (data.replay: 0)
    assert steps == -(-finetune_summary["dataset"]["rows"]["train"] // 4), finetune_summary["train"]
    assert run.data.params["train.method"] == "lora"
    assert run.data.tags["dataset_fingerprint"] == finetune_summary["dataset"]["fingerprint"]
    assert run.data.tags["task"] == "extraction" and run.data.tags["task.reason"].startswith("inferred from")
    assert run.data.tags["mlflow.note.content"].startswith("extraction (inferred from responses")  # description
    assert {"finetuned/field_accuracy", "base/field_accuracy", "base_few_shot/field_accuracy"} <= set(run.data.metrics)
    assert run.data.tags["promotion.baseline"] == finetune_summary["baseline_used"]
    losses = client.get_metric_history(run.info.run_id, "train/loss")
    assert len(losses) == steps
    lrs = client.get_metric_history(run.info.run_id, "train/learning_rate")
    assert len(lrs) == steps
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert {"plots/loss_curve.png", "plots/metric_comparison.png"} <= artifacts
    top = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert "model_card.md" in top
    assert run.data.tags["promotion.decision"] == "promoted"
    assert run.data.metrics["forgetting/base_accuracy"] == finetune_summary["forgetting"]["base"]
    name = finetune_summary["registered_model"]["name"]
    version = client.get_model_version(name, "1")
    assert version.tags["zenml_run_id"] == finetune_summary["zenml_run_id"]
    assert version.tags["dataset_fingerprint"] == finetune_summary["dataset"]["fingerprint"]
    assert version.tags["method"] == "lora" and version.tags["task"] == "extraction"
    assert version.tags["instruction"].startswith("Extract the fields from the text.")
    assert version.tags["git_commit"] and version.tags["zenml_pipeline_version"] != "unknown"
    assert version.tags["zenml_model_version"] == "1"
    assert "metric.finetuned.field_accuracy" in version.tags
    assert version.description.startswith(f"# {name} v1")  # the model card
    adapter_files = {a.path for a in client.list_artifacts(run.info.run_id, "adapter")}
    assert "adapter/adapter_model.safetensors" in adapter_files
    assert version.tags["adapter_uri"] == f"runs:/{run.info.run_id}/adapter"
    assert str(client.get_model_version_by_alias(name, "champion").version) == "1"


@pytest.mark.guard
def test_registered_model_loads_in_fresh_offline_process(finetune_summary: dict, run_env: dict[str, str]):
    code = textwrap.dedent(f"""
        import json, mlflow
        mlflow.set_tracking_uri("sqlite:///{run_env['LLMFT_HOME']}/mlflow.db")
        name = "{finetune_summary['registered_model']['name']}"
        model = mlflow.pyfunc.load_model(f"models:/{{name}}@champion")
        INSTRUCTION = mlflow.MlflowClient().get_model_version_by_alias(name, "champion").tags["instruction"]
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
    # the champion answers in the trained format: a JSON object of the product's fields, the brand found
    answer = parse_json_object(content)
    assert isinstance(answer, dict) and answer.get("brand") == "Lumora", content


def test_deploy_serves_champion(finetune_summary: dict, run_env: dict[str, str], tmp_path: Path):
    # the finetune run promoted v1 and, with deploy.on_promotion, started serving it
    deployed = finetune_summary["deployment"]
    assert deployed["deployed"] and deployed["action"] == "started v1", deployed
    endpoint = deployed["endpoint"]
    assert endpoint == "http://127.0.0.1:5055/invocations"
    out = tmp_path / "deploy.json"
    # the run's own deploy settings (port 5055): the same server, not a second one on TINY's port
    proc = run_py(run_env, "--pipeline", "deploy", *DEFAULT_RUN, "--summary", str(out), timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(out.read_text())
    assert summary["action"] == "already serving v1" and summary["model_version"] == "1"
    assert summary["smoke_response"].strip()
    status, body = post_json(endpoint, {"messages": [{"role": "user", "content": "Halden lamp, teal"}],
                                        "max_tokens": 16, "temperature": 0})
    assert status == 200, body
    assert body["object"] == "chat.completion" and body["choices"][0]["message"]["content"].strip()
    assert body["usage"]["completion_tokens"] <= 16
    status, body = post_json(endpoint, {"nonsense": True})
    assert status == 400 and "messages" in body["error"]["message"]
    status, body = post_json(endpoint, {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 100000})
    assert status == 400 and "limit" in body["error"]["message"]
    proc = run_py(run_env, "--pipeline", "deploy", "--status", timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    state = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert state["healthy"] and state["version"] == "1" and state["server"]["requests"] >= 2


def test_bad_data_stops_before_training_and_registers_nothing(finetune_summary: dict, run_env: dict[str, str],
                                                               tmp_path: Path):
    bad = tmp_path / "bad.jsonl"
    rows = [{"prompt": f"item {i}", "response": "{}"} for i in range(10)] + [{"prompt": "  ", "response": "{}"}] * 5
    bad.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    proc = run_py(run_env, "--pipeline", "finetune", *TINY, "--set", f"data.source={bad}")
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: finetune pipeline failed at step 'gate_and_tokenize': DataGateError:"), last
    assert "rejected (empty: 5)" in last and "bad.jsonl, line 11: empty user turn" in last
    assert "over validation.max_rejected_fraction=0.2" in last and "set validation.max_rejected_fraction=0.34" in last
    assert "Traceback" not in proc.stderr
    report_dir = Path(last.split("(report: ")[1].split(")")[0])
    rejected = [json.loads(line) for line in (report_dir / "rejected.jsonl").read_text().splitlines()]
    assert len(rejected) == 5 and rejected[0]["reason"] == "empty user turn"
    assert (report_dir / "data_docs" / "index.html").is_file()
    name = finetune_summary["registered_model"]["name"]
    versions = _mlflow_client(run_env).search_model_versions(f"name='{name}'")
    assert [str(v.version) for v in versions] == ["1"]
    assert _zenml_stages(run_env, name, every=True) == {"1": "production"}
    assert _zenml_stages(run_env, "bad-extraction", every=True) == {}  # the failed run left no ZenML version


def test_an_unchanged_second_run_reuses_training_and_registers_nothing(finetune_summary: dict,
                                                                       run_env: dict[str, str], tmp_path: Path):
    """Same command, data, base model and code: the training and the candidate's scores come from
    ZenML's cache, v1 is this very model and stays champion; the run still compares and records. A
    setting only the comparison reads (eval.genai_table_rows) leaves every scoring step cached: each
    step is keyed by its own stage's settings, not the whole eval section."""
    first = finetune_summary
    out = tmp_path / "again.json"
    proc = run_py(run_env, "--pipeline", "finetune", *DEFAULT_RUN, "--set", "deploy.on_promotion=true",
                  "--set", "eval.genai_table_rows=3", "--summary", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    s = json.loads(out.read_text())
    cached = {"finetune", "evaluate_candidate", "probe_candidate", "guard_forgetting", "evaluate_base", "probe_base"}
    assert cached <= set(s["cached_steps"])
    assert {"compare_models", "measure_forgetting", "register", "promote"} <= set(s["step_seconds"])
    assert s["training_reused_from_run"] == first["mlflow_run_id"] != s["mlflow_run_id"]
    assert s["registered_model"] == {**first["registered_model"], "reused_from_run": first["mlflow_run_id"]}
    assert s["already_champion"] and not s["promoted"] and s["champion_version"] == "1"
    assert s["metrics"]["finetuned"] == first["metrics"]["finetuned"] == s["metrics"]["champion"]
    assert not s["deployment"]["deployed"]  # nothing moved, the running server is left alone
    assert "training: reused from MLflow run" in proc.stdout and "unchanged: v1 already is @champion" in proc.stdout
    name = first["registered_model"]["name"]
    client = _mlflow_client(run_env)
    assert [str(v.version) for v in client.search_model_versions(f"name='{name}'")] == ["1"]
    assert client.get_model_version(name, "1").tags["promotion.decision"] == "promoted"
    run = client.get_run(s["mlflow_run_id"])
    assert run.data.tags["promotion.decision"] == "unchanged" and "finetuned/field_accuracy" in run.data.metrics


def test_data_pipeline_reports_exports_and_caches(pipeline_env: dict[str, str], tmp_path: Path):
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
    proc = run_py(pipeline_env, *args, "--summary", str(first), timeout=300)
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
    client = _mlflow_client(pipeline_env)
    run = client.get_run(s["mlflow_run_id"])
    assert run.inputs.dataset_inputs[0].dataset.digest == d["fingerprint"]
    assert "plots/token_lengths.png" in {a.path for a in client.list_artifacts(run.info.run_id, "plots")}

    again = tmp_path / "again.json"
    assert run_py(pipeline_env, *args, "--summary", str(again), timeout=300).returncode == 0
    s2 = json.loads(again.read_text())
    assert {"ingest_data", "gate_and_tokenize", "split_data"} <= set(s2["cached_steps"])
    assert s2["dataset"]["fingerprint"] == d["fingerprint"] and s2["dataset"]["rows"] == d["rows"]

    with data.open("a") as fh:  # a changed file must never be served from the cache
        fh.write(json.dumps({"messages": [{"role": "user", "content": "What is 100 plus 100?"},
                                          {"role": "assistant", "content": "200"}]}) + "\n")
    changed = tmp_path / "changed.json"
    assert run_py(pipeline_env, *args, "--summary", str(changed), timeout=300).returncode == 0
    s3 = json.loads(changed.read_text())
    assert s3["dataset"]["fingerprint"] != d["fingerprint"]
    assert not {"ingest_data", "gate_and_tokenize", "split_data"} & set(s3["cached_steps"])
    assert sum(s3["dataset"]["rows"].values()) == 32
    for name in ("train", "validation", "test"):  # appending never moves an existing record
        before = {json.dumps(r) for r in map(json.loads, (export / f"{name}.jsonl").read_text().splitlines())}
        after_dir = Path(s3["dataset"]["export_dir"])
        after = {json.dumps(r) for r in map(json.loads, (after_dir / f"{name}.jsonl").read_text().splitlines())}
        assert {json.dumps({k: v for k, v in json.loads(r).items() if k != "where"}) for r in before} <= \
               {json.dumps({k: v for k, v in json.loads(r).items() if k != "where"}) for r in after}


def test_malformed_line_is_named(pipeline_env: dict[str, str], tmp_path: Path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "response": "b"}\n' * 6 + '{"prompt": "a", \n')
    proc = run_py(pipeline_env, "--pipeline", "finetune", "--set", f"data.source={bad}")
    assert proc.returncode == 2  # found while resolving the task, before any pipeline starts
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {bad}, line 7: malformed JSON"), last
    assert "Traceback" not in proc.stderr


def test_classification_data_through_the_data_pipeline(pipeline_env: dict[str, str], tmp_path: Path):
    data = tmp_path / "reviews.csv"
    labels = ["positive", "negative", "neutral"]
    lines = ["text,label"] + [f'"review {i}, quite {labels[i % 3]}",{labels[i % 3]}' for i in range(60)]
    data.write_text("\n".join([*lines, '"a strange one",sarcastic']) + "\n")
    out = tmp_path / "summary.json"
    proc = run_py(pipeline_env, "--pipeline", "data", "--set", f"data.source={data}", "--set", "data.min_test_rows=3",
                  "--summary", str(out), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "task: classification (inferred from columns text/label" in proc.stdout
    s = json.loads(out.read_text())
    assert s["task"] == "classification" and s["dataset"]["labels"] == ["negative", "neutral", "positive"]
    assert s["dataset"]["rejected_by_reason"] == {"rare_label": 1}  # one "sarcastic" row cannot be learned
    test_rows = [json.loads(line) for line in Path(s["dataset"]["export_dir"], "test.jsonl").read_text().splitlines()]
    assert {r["label"] for r in test_rows} == set(labels)  # stratified: every class is measured
    client = _mlflow_client(pipeline_env)
    assert "plots/class_balance.png" in {a.path for a in client.list_artifacts(s["mlflow_run_id"], "plots")}
    # labels pinned by the user, and the data has others: one line naming data.labels, with counts
    pinned = run_py(pipeline_env, "--pipeline", "data", "--set", f"data.source={data}", "--set", "data.min_test_rows=3",
                    "--set", "data.labels=[positive, negative]", timeout=300)
    last = pinned.stderr.strip().splitlines()[-1]
    assert pinned.returncode == 1 and "data.labels pins [positive, negative] but the data has labels" in last, last
    assert "neutral (20)" in last and "sarcastic (1)" in last and "set data.labels=null to accept" in last


def _zenml_stages(run_env: dict[str, str], name: str, every: bool = False) -> dict[str, str]:
    """ZenML Model Control Plane stage of each MLflow registry version (linked by its
    `zenml_model_version` tag), read in a fresh process. With every=True, ZenML versions that no
    registry version links to are included, keyed `zenml:N`."""
    code = (f"from zenml.client import Client\n"
            f"for v in Client().list_model_versions({name!r}, size=100).items: print(v.number, v.stage)")
    proc = subprocess.run([sys.executable, "-c", code], env=run_env, text=True, capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    by_number = dict(line.split() for line in proc.stdout.strip().splitlines() if line.strip())
    versions = _mlflow_client(run_env).search_model_versions(f"name='{name}'")
    linked = {v.tags["zenml_model_version"]: str(v.version) for v in versions if "zenml_model_version" in v.tags}
    stages = {linked[number]: stage for number, stage in by_number.items() if number in linked}
    if every:
        stages.update({f"zenml:{number}": stage for number, stage in by_number.items() if number not in linked})
    return stages


@pytest.fixture(scope="module")
def weak_summary(finetune_summary: dict, run_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> dict:
    """After a good run: a weak candidate (1 step, tiny learning rate) on a changed test split."""
    out = tmp_path_factory.mktemp("weak") / "summary.json"
    proc = run_py(run_env, "--pipeline", "finetune", *DEFAULT_RUN, "--set", "train.max_steps=1",
                  "--set", "train.learning_rate=1e-7", "--set", "data.split_seed=3", "--summary", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "NOT promoted" in proc.stdout and "champion v1" in proc.stdout
    return json.loads(out.read_text())


def test_weak_candidate_is_registered_but_not_promoted(weak_summary: dict, finetune_summary: dict,
                                                        run_env: dict[str, str]):
    s = weak_summary
    name = s["registered_model"]["name"]
    assert s["registered_model"]["version"] == "2" and s["promoted"] is False
    assert s["champion_version"] == "1" and s["champion_evaluated"] == "1"
    fails = [r for r in s["promotion_reasons"] if r.startswith("FAIL")]
    assert any(r.startswith("FAIL champion") for r in fails), s["promotion_reasons"]
    client = _mlflow_client(run_env)
    assert str(client.get_model_version_by_alias(name, "champion").version) == "1"
    assert str(client.get_model_version_by_alias(name, "challenger").version) == "2"
    assert client.get_model_version(name, "2").tags["promotion.decision"] == "rejected"
    run = client.get_run(s["mlflow_run_id"])
    assert run.data.tags["promotion.decision"] == "rejected"
    table = json.loads(Path(client.download_artifacts(run.info.run_id, "evaluation/predictions.json")).read_text())
    assert {"input", "reference", "base_output", "finetuned_output", "champion_output",
            "finetuned_field_accuracy", "champion_rougeL"} <= set(table["columns"])
    assert _zenml_stages(run_env, name) == {"1": "production", "2": "staging"}


def test_champion_is_re_measured_on_the_changed_test_split(weak_summary: dict, finetune_summary: dict):
    # data.split_seed=3 reshuffles the split: v1 is scored now, on these rows, not on its old numbers
    def test_prompts(summary: dict) -> set[str]:
        lines = Path(summary["dataset"]["export_dir"], "test.jsonl").read_text().splitlines()
        return {next(m["content"] for m in json.loads(line)["messages"] if m["role"] == "user") for line in lines}

    assert weak_summary["dataset"]["fingerprint"] == finetune_summary["dataset"]["fingerprint"]
    assert test_prompts(weak_summary) != test_prompts(finetune_summary)  # same data, another test split
    old, now = finetune_summary["metrics"]["finetuned"], weak_summary["metrics"]["champion"]
    assert now is not None and set(now) == set(old)
    assert now["eval_loss"] != pytest.approx(old["eval_loss"], abs=1e-6)
    # the champion, not the weak candidate, is the better model on today's rows
    assert now["field_accuracy"] > weak_summary["metrics"]["finetuned"]["field_accuracy"]


def test_manual_promotion_then_rollback(weak_summary: dict, run_env: dict[str, str], tmp_path: Path):
    name = weak_summary["registered_model"]["name"]
    client = _mlflow_client(run_env)
    out = tmp_path / "promote.json"
    proc = run_py(run_env, "--pipeline", "promote", "--version", "2", "--by", "ci-tester", "--reason", "canary",
                  "--summary", str(out), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(out.read_text())["champion"] == "2"
    assert str(client.get_model_version_by_alias(name, "champion").version) == "2"
    tags = client.get_model_version(name, "2").tags
    assert (tags["champion.by"], tags["champion.reason"], tags["champion.how"], tags["champion.previous"]) == \
           ("ci-tester", "canary", "manual", "1")
    assert _zenml_stages(run_env, name) == {"1": "archived", "2": "production"}

    proc = run_py(run_env, "--pipeline", "promote", "--rollback", "--reason", "canary failed", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "@champion is now v1 (rollback; previously v2)" in proc.stdout
    assert str(client.get_model_version_by_alias(name, "champion").version) == "1"
    assert client.get_model_version(name, "2").tags["rolled_back.reason"] == "canary failed"
    assert _zenml_stages(run_env, name) == {"1": "production", "2": "archived"}

    proc = run_py(run_env, "--pipeline", "promote", "--rollback", timeout=300)  # v1 was the first champion
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: promote pipeline failed at step 'move_champion': PromotionError: {name} v1 is the first champion: "
        "there is no previous one to roll back to")
    proc = run_py(run_env, "--pipeline", "promote", "--version", "7", timeout=300)
    assert proc.returncode == 1 and "has no version 7" in proc.stderr


def test_deploy_swaps_in_a_new_champion_and_refuses_a_broken_one(weak_summary: dict, run_env: dict[str, str]):
    """Runs after the rollback: v1 is champion and served. v2 by hand -> hot swap, same process;
    a champion that cannot load is refused and v2 keeps serving; then --stop."""
    name = weak_summary["registered_model"]["name"]
    client = _mlflow_client(run_env)
    endpoint = "http://127.0.0.1:5077/invocations"
    pid_before = json.loads((Path(run_env["LLMFT_HOME"]) / "serve" / "server.json").read_text())["pid"]
    assert run_py(run_env, "--pipeline", "promote", "--version", "2", "--reason", "swap test").returncode == 0
    proc = run_py(run_env, "--pipeline", "deploy", *TINY, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "swapped v1 -> v2 with no restart" in proc.stdout
    state = json.loads((Path(run_env["LLMFT_HOME"]) / "serve" / "server.json").read_text())
    assert state["pid"] == pid_before and state["version"] == "2"

    # a registered version whose files are gone: it must never take traffic
    broken = client.create_model_version(name, source=str(Path(run_env["LLMFT_HOME"]) / "no-such-model"))
    client.set_registered_model_alias(name, "champion", broken.version)
    try:
        proc = run_py(run_env, "--pipeline", "deploy", *TINY, timeout=400)
        assert proc.returncode == 1
        last = proc.stderr.strip().splitlines()[-1]
        assert "was refused, v2 keeps serving" in last, last
        status, body = post_json(endpoint, {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4})
        assert status == 200 and "(v2)" in body["model"]
    finally:
        client.set_registered_model_alias(name, "champion", "1")
        client.delete_model_version(name, broken.version)

    stop = run_py(run_env, "--pipeline", "deploy", "--stop")
    assert stop.returncode == 0 and "stopped server" in stop.stdout
    with pytest.raises(ServingError, match="Connection refused"):  # one line, not a urllib traceback
        post_json(endpoint, {"messages": []}, timeout=3)


def _ticks(run_env: dict[str, str]) -> list[dict]:
    path = Path(run_env["LLMFT_HOME"]) / "retrain" / "ticks.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def test_scheduled_retraining_skips_known_data_then_trains_on_new_data(weak_summary: dict, run_env: dict[str, str],
                                                                       tmp_path: Path):
    """The local orchestrator ignores schedules, so run.py ticks in the foreground (a seconds-field
    cron keeps the test short). Champion v1 was trained on data/products.jsonl."""
    data = tmp_path / "products.jsonl"  # same name and bytes: the same fingerprint as the champion's data
    data.write_bytes((ROOT / "data" / "products.jsonl").read_bytes())
    args = ["--pipeline", "finetune", *TINY, "--set", f"data.source={data}", "--schedule", "* * * * * */2",
            "--max-ticks", "1"]
    proc = run_py(run_env, *args, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "orchestrator ignores schedules" in proc.stdout
    assert "retrain tick skipped: data" in proc.stdout and "champion v1 was trained on" in proc.stdout
    skipped = _ticks(run_env)[-1]
    assert skipped["decision"] == "skipped" and skipped["champion_version"] == "1"

    with data.open("a") as fh:  # new data arrives
        fh.write(json.dumps({"prompt": "Ostrava trail shoe, graphite, size 44, $89.00",
                             "response": json.dumps({"brand": "Ostrava", "category": "footwear", "color": "graphite",
                                                     "material": None, "size": "44", "price": 89.0})}) + "\n")
    proc = run_py(run_env, *args, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "retrain tick ran: new data" in proc.stdout
    ran = _ticks(run_env)[-1]
    assert ran["decision"] == "ran" and ran["fingerprint"] != skipped["fingerprint"] and ran["zenml_run_id"]
    client = _mlflow_client(run_env)
    name = weak_summary["registered_model"]["name"]
    newest = max(int(v.version) for v in client.search_model_versions(f"name='{name}'"))
    assert client.get_model_version(name, str(newest)).tags["dataset_fingerprint"] == ran["fingerprint"]
    experiment = client.get_experiment_by_name("llm-finetune")
    tick_runs = client.search_runs([experiment.experiment_id], "tags.`retrain.decision` != ''")
    assert {r.data.tags["retrain.decision"] for r in tick_runs} >= {"skipped", "ran"}


def test_a_tick_never_overlaps_a_running_one(pipeline_env: dict[str, str]):
    import fcntl

    lock = Path(pipeline_env["LLMFT_HOME"]) / "retrain.lock"
    with lock.open("a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running tick would
        proc = run_py(pipeline_env, "--pipeline", "finetune", *TINY, "--tick", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "retrain tick skipped: another retrain run holds" in proc.stdout
    assert _ticks(pipeline_env)[-1]["decision"] == "skipped"
    bad = run_py(pipeline_env, "--pipeline", "finetune", "--schedule", "every day", timeout=120)
    assert bad.returncode == 2 and "not a cron expression" in bad.stderr


def test_ui_serves_runs_and_the_registered_model_with_aliases(weak_summary: dict, run_env: dict[str, str]):
    import socket
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, str(ROOT / "run.py"), "--ui", "--ui-port", str(port)], cwd=ROOT,
                            env=run_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_http(f"{base}/health", 90, proc)
        with urllib.request.urlopen(base, timeout=10) as resp:
            assert resp.status == 200 and b"<html" in resp.read(2000).lower()
        name = weak_summary["registered_model"]["name"]
        with urllib.request.urlopen(f"{base}/api/2.0/mlflow/registered-models/get?name={name}", timeout=10) as resp:
            model = json.loads(resp.read())["registered_model"]
        assert {a["alias"] for a in model["aliases"]} >= {"champion", "challenger"}
        experiment = _mlflow_client(run_env).get_experiment_by_name("llm-finetune").experiment_id
        status, runs = post_json(f"{base}/api/2.0/mlflow/runs/search", {"experiment_ids": [experiment],
                                                                        "max_results": 100})
        assert status == 200 and any(r["info"]["run_id"] == weak_summary["mlflow_run_id"] for r in runs["runs"])
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


@pytest.mark.guard
def test_readme_quickstart_serves(finetune_summary: dict, run_env: dict[str, str]):
    """The README quickstart's serving lines, as written, against the default run it also runs: deploy (the
    champion is already served: nothing to do), the curl request, stop."""
    from test_readme import README, readme_commands

    quickstart = README.read_text().split("<!-- quickstart -->", 1)[1].split("```", 2)[1]
    lines = readme_commands(f"```{quickstart}```")
    curl = next(line for line in lines if line.startswith("curl "))
    assert lines[lines.index("llmft deploy") + 1] == curl and lines[-1] == "llmft stop"
    assert finetune_summary["deployment"]["deployed"], finetune_summary["deployment"]

    def sh(command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["bash", "-c", command], cwd=ROOT, env=run_env, text=True, capture_output=True,
                              timeout=400)

    deploy = sh("llmft deploy")
    assert deploy.returncode == 0 and "already serving v1" in deploy.stdout, deploy.stdout + deploy.stderr[-2000:]
    answer = sh(curl)
    body = json.loads(answer.stdout)
    content = body["choices"][0]["message"]["content"]
    assert body["object"] == "chat.completion" and re.search(r'"brand":\s*"Lumora"', content), content
    assert sh("llmft status").returncode == 0
    assert sh("llmft stop").returncode == 0
    assert sh("llmft status").returncode == 1  # stopped
