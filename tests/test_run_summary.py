"""The typed run summary (issue 27): `--summary FILE` writes the same JSON as the dict it replaced, a
summary's dict round-trips through `RunSummary`, and an older summary still renders its table."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from llmft.contracts import (
    DatasetInfo,
    Deployment,
    EvalSample,
    Evaluation,
    ExtraRows,
    Forgetting,
    ModelEvaluation,
    PromotionDecision,
    Registration,
    SliceReport,
    SliceScores,
    TrainingResult,
)
from llmft.report import (
    TRAIN_KEYS,
    finetune_summary,
    finetune_table,
    step_seconds,
    sweep_lines,
    sweep_summary,
    write_summary,
)
from llmft.run_summary import RunSummary, SweepRunSummary
from llmft.sweep import SweepResult, SweepTrial

START = datetime(2025, 1, 1, 12, 0, 0)


def _outputs() -> dict[tuple[str, str], Any]:
    """A finished finetune run's step outputs, with every optional part filled in."""
    slices = SliceReport(column="source", metric="macro_f1", higher_is_better=True,
                         overall={"base": 0.2, "finetuned": 0.8},
                         slices=[SliceScores(name="web", key="web", rows=12, values={"base": 0.25, "finetuned": 0.9}),
                                 SliceScores(name="mail", key="mail", rows=8, values={"base": 0.1, "finetuned": None})],
                         total=2, worst="web", worst_rows=12, worst_value=0.9, worst_gap=0.1)
    evaluation = Evaluation(
        task="classification", primary_metric="macro_f1", higher_is_better=True,
        sample=EvalSample(n=20, of=20, seed=7, how="whole test split"),
        metrics={"base": {"macro_f1": 0.2, "eval_loss": 1.5}, "base_few_shot": {"macro_f1": 0.4, "eval_loss": 1.2},
                 "simple_baseline": {"macro_f1": 0.6},
                 "finetuned": {"macro_f1": 0.8, "eval_loss": 0.3}, "champion": None},
        champion_version=None, champion_note="no current champion", mlflow_run_id="mlrun1",
        few_shot={"k": 3.0, "used_mean": 2.5, "used_min": 1.0, "used_max": 3.0, "budget_tokens": 2048.0},
        few_shot_used=[3, 2, 3], few_shot_note="3 shots", slices=slices, simple_baseline_method="tf-idf",
        simple_baseline_note="tf-idf: 70 training rows", warnings=["collapse: ..."], table_warnings=["lost rows"])
    dataset = DatasetInfo(
        fingerprint="abc", source="d.jsonl", task="classification", task_reason="labels", rows_in=100,
        duplicates_removed=1, duplicate_examples=["line 3 duplicates line 2"], rejected=2,
        rejected_by_reason={"empty": 2}, truncated=3, pii={"email": 1}, rows={"train": 70, "validation": 10,
                                                                                "test": 20},
        unused=0, labels=["ham", "spam"], export_dir="/x", verdict="passed", mlflow_run_id="datarun",
        extras=[ExtraRows(origin="mix", source="mix.jsonl", weight=0.5, read=40, kept=35, used=35,
                          dropped_by_reason={"duplicate": 5})])
    training = TrainingResult(
        method="lora", steps=18, train_loss=0.5, first_loss=1.2, last_loss=0.2, validation_loss=0.3,
        best_validation_loss=0.25, stopped_early=False, resumed_from_step=None, tokens=9000, padding_fraction=0.1,
        tokens_per_second=1500.0, wall_seconds=6.0, trainable_parameters=1000, total_parameters=100000,
        labels=["ham", "spam"], trained_in_run="mlrun0", planned_steps=18, plan="70 rows x 1 epoch",
        epochs_seen=1.0, kept_step=16, class_weights={"ham": 0.6, "spam": 3.0})
    return {
        ("compare_models", "evaluation"): evaluation,
        ("register", "registration"): Registration(name="m", version="2", model_uri="models:/m/2",
                                                   reused_from_run="mlrun0"),
        ("promote", "promotion"): PromotionDecision(promoted=True, reasons=["PASS base: x"], baseline_used="simple",
                                                    previous_champion="1", champion="2"),
        ("export_dataset", "dataset"): dataset,
        ("finetune", "training"): training,
        ("guard_forgetting", "guarded_training"): training,  # the candidate as gated (unchanged here)
        ("measure_forgetting", "forgetting"): Forgetting(applicable=True, questions=20, base=0.5, finetuned=0.45,
                                                         drop=0.05, max_allowed=0.1),
        ("deploy_if_promoted", "deployment"): Deployment(deployed=True, action="started",
                                                         endpoint="http://127.0.0.1:8000", pid=42),
        ("evaluate_champion", "champion_evaluation"): ModelEvaluation(role="champion", available=False),
        ("sweep", "sweep"): SweepResult(
            study_name="s", storage="sqlite:///x", metric="eval_loss", direction="minimize", trials_requested=2,
            finished_before=0, ran_now=2, best_trial=0, best_value=0.3, best_params={"train.learning_rate": 2e-4},
            trials=[SweepTrial(number=0, state="COMPLETE", params={"train.learning_rate": 2e-4}, value=0.3,
                               intermediate={10: 0.5}),
                    SweepTrial(number=1, state="PRUNED", params={"train.learning_rate": 1e-5}, pruned_at_step=10)]),
    }


def _run(outputs: dict[tuple[str, str], Any]) -> SimpleNamespace:
    """A ZenML run as report.py reads it: steps with outputs, a status and start/end times."""
    def step(name: str, status: str) -> SimpleNamespace:
        loaded = {out: [SimpleNamespace(load=lambda o=obj: o)] for (s, out), obj in outputs.items() if s == name}
        return SimpleNamespace(outputs=loaded, status=SimpleNamespace(value=status), start_time=START,
                               end_time=START + timedelta(seconds=2.5))

    names = dict.fromkeys(s for s, _ in outputs)
    return SimpleNamespace(id="zen-1", steps={n: step(n, "cached" if n == "finetune" else "completed")
                                              for n in names})


def _legacy(run: Any, outputs: dict[tuple[str, str], Any], uri: str, wall: float) -> dict[str, Any]:
    """The dict report.finetune_summary built before the typed summary: the JSON shape scripts read."""
    evaluation, registered, promotion = (outputs["compare_models", "evaluation"], outputs["register", "registration"],
                                         outputs["promote", "promotion"])
    dataset, training = outputs["export_dataset", "dataset"], outputs["finetune", "training"]
    return {
        "pipeline": "finetune", "task": evaluation.task, "task_reason": dataset.task_reason,
        "zenml_run_id": str(run.id), "mlflow_run_id": evaluation.mlflow_run_id, "tracking_uri": uri,
        "primary_metric": evaluation.primary_metric, "higher_is_better": evaluation.higher_is_better,
        "metrics": evaluation.metrics, "eval_sample": evaluation.sample.model_dump(),
        "eval_samples": evaluation.sample.n, "champion_evaluated": evaluation.champion_version,
        "champion_note": evaluation.champion_note,
        "champion_identity": outputs["evaluate_champion", "champion_evaluation"].identity or None,
        "forgetting": outputs["measure_forgetting", "forgetting"].model_dump(),
        "registered_model": {"name": registered.name, "version": registered.version, "uri": registered.model_uri,
                             "reused_from_run": registered.reused_from_run},
        "training_reused_from_run": training.trained_in_run, "promoted": promotion.promoted,
        "already_champion": promotion.already_champion, "promotion_reasons": promotion.reasons,
        "baseline_used": promotion.baseline_used, "simple_baseline_method": evaluation.simple_baseline_method,
        "simple_baseline_note": evaluation.simple_baseline_note,
        "warnings": [*evaluation.warnings, *evaluation.table_warnings], "few_shot": evaluation.few_shot,
        "few_shot_used_per_row": evaluation.few_shot_used, "few_shot_note": evaluation.few_shot_note,
        "slices": evaluation.slices.model_dump(), "champion_version": promotion.champion,
        "previous_champion": promotion.previous_champion,
        "dataset": dataset.model_dump(exclude={"mlflow_run_id"}), "labels": training.labels,
        "deployment": outputs["deploy_if_promoted", "deployment"].model_dump(),
        "cached_steps": ["finetune"], "step_seconds": step_seconds(run),
        "train": {k: getattr(training, k) for k in TRAIN_KEYS}, "wall_seconds": round(wall, 1),
    }


def test_the_summary_file_is_the_json_of_the_dict_it_replaced(tmp_path: Path):
    outputs = _outputs()
    run = _run(outputs)
    summary = finetune_summary(run, "http://mlflow", 12.34)
    legacy = _legacy(run, outputs, "http://mlflow", 12.34)
    write_summary(summary, str(tmp_path / "typed.json"))
    write_summary(legacy, str(tmp_path / "dict.json"))
    assert (tmp_path / "typed.json").read_text() == (tmp_path / "dict.json").read_text()  # same keys, order, values
    assert "datarun" not in (tmp_path / "typed.json").read_text()  # the dataset's own MLflow run stays out

    sweep = sweep_summary(run, "http://mlflow", 12.34)
    assert isinstance(sweep, SweepRunSummary)
    write_summary(sweep, str(tmp_path / "sweep.json"))
    old_sweep = {**legacy, "pipeline": "sweep", "sweep": outputs["sweep", "sweep"].model_dump()}
    assert (tmp_path / "sweep.json").read_text() == json.dumps(old_sweep, indent=2, default=str) + "\n"
    assert sweep_lines(sweep.sweep) == sweep_lines(sweep.sweep.model_dump())
    assert "best trial 0: eval_loss 0.3000" in sweep_lines(sweep.sweep)[-1]


def test_a_full_summary_round_trips_and_renders_the_same_from_either_form():
    outputs = _outputs()
    run = _run(outputs)
    full = json.loads(json.dumps(_legacy(run, outputs, "http://mlflow", 3.0), default=str))  # as a script reads it
    typed = RunSummary.model_validate(full)
    assert json.dumps(typed.model_dump(mode="json")) == json.dumps(full)  # nested key order included
    assert typed.train is not None and typed.train.kept_step == 16 and typed.registered_model.name == "m"
    assert finetune_table(typed, "mlflow ui") == finetune_table(full, "mlflow ui")
    table = finetune_table(typed, "mlflow ui")
    assert "the weights of step 16 kept" in table and "macro_f1 by source" in table
    assert "+35 training rows: replay/mix from mix.jsonl" in table
    assert "registered: nothing new, m version 2 is this very model (registered by run mlrun0)" in table


def test_an_older_summary_renders_without_the_columns_and_lines_it_did_not_have():
    old = {"pipeline": "finetune", "task": "classification", "task_reason": "r", "zenml_run_id": "z",
           "mlflow_run_id": "r1", "tracking_uri": "file:///m", "primary_metric": "macro_f1", "higher_is_better": True,
           "metrics": {"base": {"macro_f1": 0.2}, "finetuned": {"macro_f1": 0.5}, "champion": None},
           "eval_sample": {"n": 20, "of": 20, "seed": None, "how": "whole test split"}, "eval_samples": 20,
           "champion_evaluated": None, "champion_note": "no current champion",
           "forgetting": {"applicable": False, "reason": "a classifier", "max_allowed": 0.05},
           "registered_model": {"name": "m", "version": "1", "uri": "models:/m/1"}, "promoted": True,
           "promotion_reasons": ["PASS base: x"], "champion_version": "1",
           "dataset": {"fingerprint": "f", "source": "d.jsonl", "task": "classification", "task_reason": "r",
                       "rows_in": 100, "duplicates_removed": 0, "rejected": 0, "truncated": 0,
                       "rows": {"train": 70, "validation": 10, "test": 20}, "unused": 0, "export_dir": "/x",
                       "verdict": "passed"},
           "deployment": {"deployed": False, "reason": "off"}, "cached_steps": [], "wall_seconds": 1.0}
    table = finetune_table(old, "mlflow ui")
    header = next(line for line in table.splitlines() if line.startswith("metric"))
    assert "simple" not in header and "simple baseline" not in table
    assert "delta: fine-tuned minus base zero-shot" in table
    assert "base few-shot: not measured (eval.few_shot_k=0)" in table
    assert not any(line.startswith(("training:", "class weights")) for line in table.splitlines())
    # the column is keyed on the role being there, even when the simple baseline was not applicable
    with_none = {**old, "metrics": {**old["metrics"], "simple_baseline": None}}
    assert "simple" in next(line for line in finetune_table(with_none, "x").splitlines() if line.startswith("metric"))


def test_the_summary_file_writes_infinity_as_json_dumps_did(tmp_path: Path):
    outputs = _outputs()
    summary = finetune_summary(_run(outputs), "u", 1.0)
    summary.metrics["finetuned"]["eval_loss"] = float("inf")  # a diverged loss: json.dumps writes Infinity
    write_summary(summary, str(tmp_path / "s.json"))
    assert '"eval_loss": Infinity' in (tmp_path / "s.json").read_text()
