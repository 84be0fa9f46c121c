"""Hyperparameter sweeps: the search space is validated like any config, trials train the real model
on the train split and are scored on validation, a stored study resumes, a bad trial is pruned from
its reported validation losses, and every trial is an MLflow run nested under the sweep's run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from llmft.config import ConfigError, SweepConfig, TrainConfig
from llmft.config_files import load_config

ROOT = Path(__file__).resolve().parents[1]


def _load_space(tmp_path: Path, space: dict, **sweep) -> SweepConfig:
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({"sweep": {"space": space, **sweep}}))
    return load_config(path).sweep


@pytest.mark.parametrize(("space", "names", "says"), [
    ({"train.learnin_rate": {"low": 1e-4, "high": 1e-3}}, "sweep.space.train.learnin_rate", "not a training key"),
    ({"train.learning_rate": {"low": 1e-3, "high": 1e-4}}, "sweep.space.train.learning_rate", "low must be below"),
    ({"train.learning_rate": {"low": 0, "high": 1e-3, "log": True}}, "sweep.space.train.learning_rate", "low > 0"),
    ({"train.learning_rate": {"low": 1e-4}}, "sweep.space.train.learning_rate", "low and high"),
    ({"train.max_steps": {"low": 0, "high": 10}}, "sweep.space.train.max_steps", "not a valid train.max_steps"),
    ({"train.max_steps": {"low": 2.5, "high": 10}}, "sweep.space.train.max_steps", "whole numbers"),
    ({"train": {"lora": {"r": []}}}, "sweep.space.train.lora.r", "non-empty list"),
    ({"train.lora.r": [8, 0]}, "sweep.space.train.lora.r", "0 is not a valid train.lora.r"),
    ({"train.method": ["lora", "dpo"]}, "sweep.space.train.method", "cannot mix preference"),
    ({"train.precision": {"low": 1, "high": 2}}, "sweep.space.train.precision", "list of choices"),
    ({"train.max_seq_length": [128, 256]}, "sweep.space.train.max_seq_length", "cannot be swept"),
    ({"model.base": ["x"]}, "sweep.space.model.base", "not a training key"),
])
def test_space_errors_are_one_line_naming_the_key(tmp_path: Path, space: dict, names: str, says: str):
    with pytest.raises(ConfigError) as err:
        _load_space(tmp_path, space)
    message = str(err.value)
    assert "\n" not in message and names in message and says in message, message


def test_space_forms_and_defaults(tmp_path: Path):
    nested = _load_space(tmp_path, {"train": {"lora": {"r": [8, 16]}, "max_steps": {"low": 2, "high": 6, "step": 2}},
                                    "train.learning_rate": {"low": 1e-4, "high": 1e-3, "log": True}})
    assert set(nested.space) == {"train.lora.r", "train.max_steps", "train.learning_rate"}
    default = load_config(ROOT / "configs" / "finetune.yaml").sweep
    assert default.metric == "validation_loss" and default.direction == "minimize" and default.pruner == "median"
    assert default.storage is None and default.study_name is None and set(default.space) == {
        "train.learning_rate", "train.lora.r"}
    overridden = load_config(ROOT / "configs" / "finetune.yaml", ["sweep.trials=3", "sweep.space.train.lora.r=[4, 8]"])
    assert overridden.sweep.trials == 3 and overridden.sweep.space == {"train.lora.r": [4, 8]}
    with pytest.raises(ConfigError, match=r"sweep\.direction: validation_loss is lower-is-better"):
        load_config(None, ["sweep.direction=maximize"])
    with pytest.raises(ConfigError, match=r"sweep\.storage: holds a password") as err:
        load_config(None, ["sweep.storage=postgresql://optuna:hunter22@db:5432/optuna"])
    from llmft.credentials import mask

    assert "hunter22" not in mask(str(err.value))  # what run.py prints
    assert load_config(None, ["sweep.storage=postgresql://optuna@db/optuna"]).sweep.storage.endswith("@db/optuna")


def test_suggest_and_apply_params_follow_the_field_types():
    import optuna

    from llmft.sweep import apply_params, suggest

    sweep = SweepConfig(space={"train.max_steps": {"low": 2, "high": 8, "step": 2},
                               "train.learning_rate": {"low": 1e-4, "high": 1e-2, "log": True},
                               "train.lora.r": [4, 8]})
    trial = optuna.trial.FixedTrial({"train.max_steps": 4, "train.learning_rate": 5e-4, "train.lora.r": 8})
    params = suggest(trial, sweep.space, TrainConfig())
    assert params == {"train.max_steps": 4, "train.learning_rate": 5e-4, "train.lora.r": 8}
    cfg = apply_params(TrainConfig(), params)
    assert (cfg.max_steps, cfg.learning_rate, cfg.lora.r, cfg.lora.alpha) == (4, 5e-4, 8, 32)
    with pytest.raises(ValueError):
        apply_params(TrainConfig(), {"train.lora.r": 0})


def _step_calls(path: Path, function: str) -> list[str]:
    """Names called in a pipeline function's body, in order, without importing ZenML."""
    import ast

    tree = ast.parse(path.read_text())
    body = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == function)
    names = []
    for node in ast.walk(body):
        if isinstance(node, ast.Call):
            target = node.func.value.func if isinstance(node.func, ast.Attribute) and isinstance(
                node.func.value, ast.Call) else node.func  # step.with_options(...)(...)
            if isinstance(target, ast.Attribute):
                target = target.value
            if isinstance(target, ast.Name):
                names.append(target.id)
    return names


def test_the_sweep_graph_keeps_every_finetune_step():
    """The sweep pipeline repeats the finetune graph after its sweep step: a step added there must be
    added here too."""
    finetune = set(_step_calls(ROOT / "pipelines" / "finetune.py", "finetune_pipeline"))
    swept = set(_step_calls(ROOT / "pipelines" / "sweep.py", "sweep_pipeline"))
    assert finetune - swept == set()
    assert {"sweep", "sweep_trials"} <= swept


@pytest.fixture(scope="module")
def splits(tiny_model_path: str):
    """A few dozen rows of the shipped data through the real gate and split; trials train the tiny model."""
    from llmft.data import stages
    from llmft.resolve import resolve_run

    cfg = load_config(ROOT / "configs" / "finetune.yaml", [f"model.base={tiny_model_path}", "data.max_rows=30",
                                                           "validation.min_rows=4",
                                                           "train.max_seq_length=256", "data.validation_fraction=0.15"])
    run = resolve_run(cfg)
    examples, rejections = stages.ingest_frames(run.cfg.data)
    clean, _, _ = stages.gate_and_tokenize(examples, rejections, run.spec, run.cfg.model, run.cfg.data,
                                           run.cfg.validation, run.cfg.train.max_seq_length)
    train, validation, _, split = stages.split_dataset(clean, run.spec, run.cfg.data)
    return run, train, validation, split


def test_trials_resume_prune_and_nest_in_mlflow(splits, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Trial 0 (a useful learning rate) finishes, then the run is 'interrupted'; running again with the
    same study continues to the requested total, and trial 1 (a learning rate too small to learn
    anything) is pruned at its first report because its validation loss is above trial 0's."""
    import mlflow
    import optuna

    from llmft.sweep import open_study, run_sweep

    run, train, validation, split = splits
    monkeypatch.setenv("LLMFT_HOME", str(tmp_path))
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_experiment("sweep")
    train_cfg = run.cfg.train.model_copy(update={"max_steps": 2, "batch_size": 2})
    sweep = SweepConfig(space={"train.learning_rate": {"low": 1e-7, "high": 3e-3, "log": True},
                               "train.lora.r": [4, 8]},
                        trials=1, eval_steps=1, pruner_startup_trials=1, study_name="resume-me",
                        storage=f"sqlite:///{tmp_path / 'study.db'}")
    queued = open_study(sweep, "resume-me")
    queued.enqueue_trial({"train.learning_rate": 3e-3, "train.lora.r": 4})
    queued.enqueue_trial({"train.learning_rate": 1e-7, "train.lora.r": 4})
    try:
        first, best_first = run_sweep(train, validation, split, run.spec, run.cfg.model, train_cfg, sweep, "m")
        second, best = run_sweep(train, validation, split, run.spec, run.cfg.model, train_cfg,
                                 sweep.model_copy(update={"trials": 2}), "m")
    finally:
        mlflow.set_tracking_uri("")
    assert (first.finished_before, first.ran_now) == (0, 1)
    assert [t.state for t in first.trials] == ["COMPLETE", "WAITING"]  # the second queued trial waits its turn
    assert (second.finished_before, second.ran_now) == (1, 1)
    t0, t1 = second.trials
    assert t0.model_dump() == first.trials[0].model_dump()  # resumed: trial 0 was not trained again
    # every validation loss reached the pruner; the last one is the trial's value
    assert sorted(t0.intermediate) == [1, 2] and t0.intermediate[2] == pytest.approx(t0.value)
    assert t1.state == "PRUNED" and t1.pruned_at_step == 1 and sorted(t1.intermediate) == [1]
    assert t1.intermediate[1] > t0.intermediate[1]
    assert second.best_trial == 0 and second.best_params == {"train.learning_rate": 3e-3, "train.lora.r": 4}
    assert best.learning_rate == 3e-3 and best.lora.r == 4 and best.max_steps == 2 == best_first.max_steps
    assert best.eval_steps == train_cfg.eval_steps  # the trials' validation cadence stays in the trials
    assert optuna.load_study(study_name="resume-me", storage=sweep.storage).best_trial.number == 0

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    for result, trial in ((first, t0), (second, t1)):
        children = client.search_runs([client.get_run(result.mlflow_run_id).info.experiment_id],
                                      f"tags.mlflow.parentRunId = '{result.mlflow_run_id}'")
        assert [c.info.run_id for c in children] == [trial.mlflow_run_id]
        child = children[0]
        assert child.data.params["train.learning_rate"] == str(trial.params["train.learning_rate"])
        assert child.data.tags["sweep.state"] == trial.state
    pruned_steps = [m.step for m in client.get_metric_history(t1.mlflow_run_id, "train/loss")]
    assert max(pruned_steps) == 1  # training stopped at the pruning step, not at max_steps
    assert client.get_run(t0.mlflow_run_id).data.metrics["sweep/validation_loss"] == pytest.approx(t0.value)
    parent = client.get_run(second.mlflow_run_id)
    assert parent.data.params["sweep.best.train.lora.r"] == "4"
    assert parent.data.metrics["sweep/trials_pruned"] == 1
    logged = {f.path for f in client.list_artifacts(second.mlflow_run_id, "sweep")}
    assert {"sweep/parallel_coordinate.png", "sweep/intermediate_values.png", "sweep/trials.json"} <= logged
    # importance needs two completed trials: said why, not drawn as "all equal"
    assert "too small" in second.plots_skipped["param_importances"] and second.importances == {}


@pytest.mark.e2e
def test_sweep_pipeline_end_to_end(run_env: dict[str, str], tmp_path: Path):
    """`run.py --pipeline sweep`: two tiny trials, then the best one through finetune -> evaluate -> gate.
    Two parallel trial steps share the study (the local orchestrator runs them one after another)."""
    out = tmp_path / "sweep.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "run.py"), "--pipeline", "sweep", "--summary", str(out), "--set", "sweep.trials=2",
         "--set", "sweep.parallel_steps=2",
         "--set", "train.max_steps=2", "--set", "train.batch_size=2", "--set", "data.max_rows=30",
         "--set", "validation.min_rows=4", "--set", "eval.max_samples=3", "--set", "eval.max_new_tokens=24",
         "--set", "eval.probe_max_new_tokens=8", "--set", "train.max_seq_length=256",
         "--set", "registry.model_name=sweep-e2e"],
        cwd=ROOT, env=run_env, text=True, capture_output=True, timeout=2400)  # ~25 min on 2 shared, busy cores
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(out.read_text())
    sweep = summary["sweep"]
    assert summary["pipeline"] == "sweep" and len(sweep["trials"]) == 2 and sweep["ran_now"] == 2
    best = sweep["trials"][sweep["best_trial"]]
    assert best["state"] == "COMPLETE" and best["value"] == sweep["best_value"]
    assert summary["train"]["steps"] == 2 and summary["registered_model"]["name"] == "sweep-e2e"
    assert {"sweep_trials_0", "sweep_trials_1", "sweep", "finetune", "promote"} <= set(summary["step_seconds"])
    assert "best trial" in proc.stdout and "promotion:" in proc.stdout
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{run_env['LLMFT_HOME']}/mlflow.db")
    parent = client.get_run(sweep["mlflow_run_id"])
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    trial_runs = {c.info.run_id for c in children if "sweep.trial" in c.data.tags}  # evaluations nest there too
    assert trial_runs == {t["mlflow_run_id"] for t in sweep["trials"]}
    # the candidate trained with the best trial's settings
    assert parent.data.params["sweep.best.train.learning_rate"] == str(best["params"]["train.learning_rate"])
