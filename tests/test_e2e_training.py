"""End to end on the real stack: the classification task (guard: it must lose to the simple baseline
it cannot beat, and say so), and a killed run that resumes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_e2e import ROOT, run_py

pytestmark = pytest.mark.e2e

CLASSIFY = ["--config", "configs/classify.yaml", "--set", "data.max_rows=150", "--set", "eval.max_samples=16",
            "--set", "train.learning_rate=0.001", "--set", "train.eval_steps=4"]


@pytest.mark.guard
def test_classification_end_to_end(run_env: dict[str, str], tmp_path: Path):
    out = tmp_path / "summary.json"
    proc = run_py(run_env, *CLASSIFY, "--set", "train.max_steps=24", "--summary", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    s = json.loads(out.read_text())
    assert s["task"] == "classification" and s["primary_metric"] == "macro_f1"
    assert s["labels"] == ["negative", "neutral", "positive"]  # inferred: classify.yaml pins none
    assert s["eval_sample"]["how"] == "seeded sample stratified by label"
    base, tuned, simple = s["metrics"]["base"], s["metrics"]["finetuned"], s["metrics"]["simple_baseline"]
    assert set(tuned) == {"accuracy", "macro_precision", "macro_recall", "macro_f1", "eval_loss"}
    assert tuned["macro_f1"] > base["macro_f1"]  # fine-tuning beat the prompted base ...
    # ... but on this synthetic corpus a class-weighted bag of words is perfect, so nothing can beat it by
    # promotion.min_delta: registered, not promoted, and the reason says so with both numbers and what to try
    assert simple["macro_f1"] == 1.0 and s["simple_baseline_method"].startswith("tf-idf")
    assert s["baseline_used"] == "simple" and not s["promoted"]
    first = s["promotion_reasons"][0]
    assert first.startswith("FAIL base: macro_f1") and f"{tuned['macro_f1']:.4f}" in first and "1.0000" in first
    assert "train.max_steps" in first and "data.max_train_rows" in first, first
    header = next(line for line in proc.stdout.splitlines() if line.startswith("metric"))
    assert "simple" in header  # the closing table's column
    assert set(s["metrics"]["base_few_shot"]) == set(base)  # the prompted classifier, same keys
    assert s["train"]["validation_loss"] is not None

    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(s["tracking_uri"])
    plots = {a.path for a in MlflowClient().list_artifacts(s["mlflow_run_id"], "plots")}
    assert {"plots/confusion_matrix_finetuned.png", "plots/loss_curve.png"} <= plots
    metrics = MlflowClient().get_run(s["mlflow_run_id"]).data.metrics
    assert {"finetuned/per_class/positive/f1", "finetuned/per_class/negative/recall"} <= set(metrics)
    assert s["registered_model"]["name"] == "sentiment-classification"
    model = mlflow.pyfunc.load_model("models:/sentiment-classification@challenger")
    predictions = model.predict(["Ordered the blender: the build quality is terrible. Avoid.",
                                 "Got this yoga mat as a gift: love the grip. Five stars."])
    assert set(predictions["label"]) <= {"negative", "neutral", "positive"}


def _start(env: dict[str, str], *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, str(ROOT / "run.py"), *args], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def _kill_after_first_checkpoint(env: dict[str, str], args: list[str]) -> list[Path]:
    root = Path(env["LLMFT_HOME"]) / "checkpoints"
    proc = _start(env, *args)
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        saved = list(root.glob("*/checkpoint-*/trainer_state.json"))
        if saved:
            os.killpg(proc.pid, signal.SIGKILL)  # no cleanup, no goodbye: like a lost machine
            proc.wait()
            return sorted(root.glob("*/checkpoint-*"))
        time.sleep(0.5)
    proc.kill()
    pytest.fail("no checkpoint appeared before the run ended")


def test_killed_run_resumes_and_no_resume_starts_fresh(run_env: dict[str, str], tmp_path: Path):
    args = [*CLASSIFY, "--set", "train.max_steps=20", "--set", "train.save_steps=4", "--set", "train.eval_steps=null",
            "--set", "train.seed=5"]
    root = Path(run_env["LLMFT_HOME"]) / "checkpoints"

    left = _kill_after_first_checkpoint(run_env, args)
    assert 1 <= len(left) <= 2  # only the latest is kept (two for a moment while the next is written)
    out = tmp_path / "fresh.json"
    proc = run_py(run_env, *args, "--no-resume", "--summary", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    fresh = json.loads(out.read_text())["train"]
    assert fresh["resumed_from_step"] is None and fresh["steps"] == 20
    assert not list(root.glob("*/checkpoint-*"))  # a finished run leaves no checkpoints behind

    _kill_after_first_checkpoint(run_env, args)
    out = tmp_path / "resumed.json"
    proc = run_py(run_env, *args, "--summary", str(out))  # the same command again
    assert proc.returncode == 0, proc.stderr[-3000:]
    resumed = json.loads(out.read_text())["train"]
    assert resumed["resumed_from_step"] is not None and resumed["resumed_from_step"] >= 4
    assert resumed["resumed_from_step"] % 4 == 0 and resumed["steps"] == 20
    assert not list(root.glob("*/checkpoint-*"))
