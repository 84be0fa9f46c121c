"""A run that reuses an earlier run's training (ZenML's cache, train.reuse): it registers nothing new,
leaves a champion where it is, and still records its own comparison and forgetting numbers."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmft.config import ModelConfig, PromotionConfig, TrainConfig
from llmft.contracts import (
    DatasetInfo,
    EvalSample,
    Evaluation,
    Forgetting,
    ProbeRun,
    Registration,
    TrainingResult,
)
from llmft.evaluate.forgetting import load_probe
from llmft.evaluate.stage import forgetting
from llmft.registry import versions
from llmft.registry.stage import promote_candidate, register_candidate
from llmft.tasks.base import TaskSpec

NAME = "reuse-test"
SPEC = TaskSpec(name="extraction", reason="test")


def _training(trained_in_run: str | None) -> TrainingResult:
    return TrainingResult(method="lora", steps=3, train_loss=1, first_loss=1.2, last_loss=0.8, validation_loss=None,
                          best_validation_loss=None, stopped_early=False, resumed_from_step=None, tokens=10,
                          padding_fraction=0, tokens_per_second=5, wall_seconds=2, trainable_parameters=1,
                          total_parameters=2, trained_in_run=trained_in_run)


def _evaluation() -> Evaluation:
    return Evaluation(task="extraction", primary_metric="field_accuracy", higher_is_better=True,
                      sample=EvalSample(n=2, of=2, seed=None, how="whole test split"), champion_version="1",
                      champion_note="champion v1", metrics={"base": {"field_accuracy": 0.1},
                                                            "finetuned": {"field_accuracy": 0.9},
                                                            "champion": {"field_accuracy": 0.9}})


@pytest.fixture
def registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A sqlite MLflow store where run `first` registered v1 of NAME, now @champion."""
    import mlflow
    from mlflow import MlflowClient

    monkeypatch.setenv("LLMFT_HOME", str(tmp_path))
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_experiment("reuse")
    with mlflow.start_run() as first:
        pass
    client = MlflowClient()
    client.create_registered_model(NAME)
    source = tmp_path / "model"
    source.mkdir()
    client.create_model_version(NAME, str(source), run_id=first.info.run_id,
                                tags={"prompt_uri": "prompts:/reuse-test-prompt/1", "promotion.decision": "promoted"})
    client.set_registered_model_alias(NAME, versions.CHAMPION, "1")
    yield first.info.run_id
    mlflow.set_tracking_uri("")


def test_reused_training_returns_the_version_its_run_registered(registry: str):
    import mlflow
    from mlflow import MlflowClient

    with mlflow.start_run() as second:
        # the model folder is never read: the earlier run's version is this model
        got = register_candidate(Path("/nonexistent"), _training(registry), _evaluation(), SPEC, ModelConfig(), NAME,
                                 "fp", lineage={})
    assert got == Registration(name=NAME, version="1", model_uri=f"models:/{NAME}/1", run_id=registry,
                               prompt_uri="prompts:/reuse-test-prompt/1", reused_from_run=registry)
    assert [str(v.version) for v in MlflowClient().search_model_versions(f"name='{NAME}'")] == ["1"]
    run = mlflow.get_run(second.info.run_id)
    assert run.data.tags["train.reused_from_run"] == registry and run.data.tags["registry.reused_version"] == "1"
    assert run.data.metrics["train/final_loss"] == 0.8  # the training's numbers, beside this run's evaluation
    assert versions.version_of_run(NAME, second.info.run_id) is None


def test_an_already_champion_reused_version_stays_put(registry: str):
    import mlflow

    registration = Registration(name=NAME, version="1", model_uri=f"models:/{NAME}/1", run_id=registry,
                                reused_from_run=registry)
    dataset = DatasetInfo(fingerprint="f", source="x.jsonl", task="extraction", task_reason="test", rows_in=4,
                          duplicates_removed=0, rejected=0, rows={"train": 2, "validation": 0, "test": 2}, unused=0,
                          export_dir="/x", verdict="ok")
    with mlflow.start_run() as second:
        decision = promote_candidate(registration, _evaluation(), Forgetting(applicable=False, max_allowed=0.1),
                                     _training(registry), dataset, SPEC, PromotionConfig(), TrainConfig(), "1",
                                     "embedded:smollm2-135m-instruct", 16)
    assert decision.already_champion and not decision.promoted and decision.champion == "1"
    assert decision.reasons[-1].startswith("UNCHANGED champion: v1 already holds @champion")
    assert versions.current_alias_version(NAME) == "1"
    assert versions.version_tags(NAME, "1")["promotion.decision"] == "promoted"  # its own record is kept
    assert mlflow.get_run(second.info.run_id).data.tags["promotion.decision"] == "unchanged"


def test_forgetting_is_the_drop_from_the_base_and_logs_both_answers(tmp_path: Path):
    import mlflow

    n = len(load_probe())
    # per-question answers: the base gets every 4th question wrong, the tuned model every 2nd
    base_correct = [i % 4 != 0 for i in range(n)]
    tuned_correct = [i % 2 != 0 for i in range(n)]
    base = ProbeRun(applicable=True, accuracy=sum(base_correct) / n, outputs=[f"base {i}" for i in range(n)],
                    correct=base_correct)
    tuned = ProbeRun(applicable=True, accuracy=sum(tuned_correct) / n, outputs=[f"tuned {i}" for i in range(n)],
                     correct=tuned_correct)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    try:
        with mlflow.start_run() as run:
            got = forgetting(base, tuned, 0.1)
        # the logged table holds both models' answer to every question, and the drop follows from it
        table = mlflow.load_table("evaluation/forgetting_probe.json", run_ids=[run.info.run_id])
        assert len(table) == n and list(table["base_output"]) == base.outputs
        assert list(table["finetuned_output"]) == tuned.outputs
        from_rows = (table["base_correct"].sum() - table["finetuned_correct"].sum()) / n
        assert got.drop == pytest.approx(from_rows) and got.drop > got.max_allowed == 0.1
        assert (got.applicable, got.questions, got.base, got.finetuned) == (True, n, base.accuracy, tuned.accuracy)
        assert mlflow.get_run(run.info.run_id).data.metrics["forgetting/drop"] == pytest.approx(from_rows)
        off = ProbeRun(applicable=False, reason="a classifier has no generative head")
        assert forgetting(off, off, 0.1) == Forgetting(applicable=False, reason=off.reason, max_allowed=0.1)
    finally:
        mlflow.set_tracking_uri("")
