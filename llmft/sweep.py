"""Hyperparameter sweeps: an Optuna study over `train.*` keys, each trial trained with the project's own
training function on the train split and scored on the validation split (never test).

- Every trial is a nested MLflow run under the sweep's run (its params, validation losses, final
  metric, state); the importance, parallel-coordinate, history and intermediate-value plots and a
  table of all trials go to the sweep's run.
- Validation losses within a trial are reported to Optuna; the median pruner stops a trial that is
  worse than earlier ones at the same step.
- The study lives in a database (default: sqlite in the project folder), keyed by the data, the
  settings and the space: the same command run again after an interruption continues the study up
  to `sweep.trials` finished trials instead of starting over.
- Several processes (pipeline steps on a cluster, `sweep.parallel_steps`) can work on one study at
  once: each stops when the study holds enough finished trials (`run_trials`); `summarize` then
  reads the whole study. Trials carry the id of the run that trained them (`run_tag`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
import uuid
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from typing import TYPE_CHECKING, Any

import pandas as pd
from pydantic import BaseModel, Field

from llmft.base_model import load_tokenizer, resolve_base_model
from llmft.config import ModelConfig, SweepConfig, SweepRange, TrainConfig
from llmft.contracts import SplitInfo
from llmft.credentials import mask
from llmft.errors import UserFacingError
from llmft.extras import require
from llmft.locations import project_home, scratch_dir
from llmft.tasks import get_task
from llmft.tasks.base import TaskSpec
from llmft.train.launch import run_training
from llmft.train.methods import get_method
from llmft.train.stage import training_examples

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)

FINISHED = ("COMPLETE", "PRUNED")  # what counts towards sweep.trials; a failed trial is retried by a re-run


class SweepError(UserFacingError, RuntimeError):
    """The sweep cannot run or produced no usable trial."""


class SweepTrial(BaseModel):
    number: int
    state: str  # COMPLETE, PRUNED, FAIL, RUNNING (another worker's, or one a killed run left)
    params: dict[str, Any]
    value: float | None = None  # the sweep metric on validation; a pruned trial's is its last reported loss
    pruned_at_step: int | None = None
    intermediate: dict[int, float] = Field(default_factory=dict)  # step -> validation loss reported to the pruner
    seconds: float | None = None
    mlflow_run_id: str | None = None


class SweepResult(BaseModel):
    """The whole study as this run left it; `best_*` name the trial whose settings train the candidate."""

    study_name: str
    storage: str  # masked
    metric: str
    direction: str
    trials_requested: int
    finished_before: int  # finished trials already in the study when this run started (a resumed sweep)
    ran_now: int
    trials: list[SweepTrial]
    best_trial: int
    best_value: float
    best_params: dict[str, Any]
    importances: dict[str, float] = Field(default_factory=dict)
    plots: list[str] = Field(default_factory=list)
    plots_skipped: dict[str, str] = Field(default_factory=dict)
    mlflow_run_id: str | None = None
    wall_seconds: float = 0.0


def default_storage() -> str:
    return f"sqlite:///{project_home() / 'sweeps.db'}"


def study_key(spec: TaskSpec, model: ModelConfig, train: TrainConfig, sweep: SweepConfig,
              train_rows: list[dict[str, Any]]) -> str:
    """Same data, settings and space -> same study, so a re-run resumes it; the number of trials and
    where the study is stored do not change what a trial means, so they stay out of the key."""
    settings = {"task": spec.model_dump(), "model": model.model_dump(mode="json"),
                "train": train.model_dump(mode="json", exclude={"resume"}),
                "sweep": sweep.model_dump(mode="json", exclude={"trials", "storage", "study_name", "timeout_s",
                                                                "parallel_steps"})}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for row in train_rows:
        digest.update(json.dumps(row, sort_keys=True).encode())
    return digest.hexdigest()[:12]


def apply_params(train: TrainConfig, params: dict[str, Any]) -> TrainConfig:
    """`train` with the trial's `train.*` values set (validated like any config)."""
    tree = train.model_dump(mode="json")
    for key, value in params.items():
        *parents, leaf = key.removeprefix("train.").split(".")
        node = tree
        for part in parents:
            node = node[part]
        node[leaf] = value
    return TrainConfig.model_validate(tree)


def suggest(trial: optuna.Trial, space: dict[str, SweepRange | list[Any]], base: TrainConfig) -> dict[str, Any]:
    """One value per key: a choice, or a draw from the range (ints for integer keys)."""
    params: dict[str, Any] = {}
    for key, dim in space.items():
        if isinstance(dim, list):
            params[key] = trial.suggest_categorical(key, dim)
            continue
        current: Any = type(base)().model_dump()  # the key's kind from its default (the base may say auto)
        for part in key.removeprefix("train.").split("."):
            current = current[part]
        if isinstance(current, int) and not isinstance(current, bool):  # learning_rate's default auto: float
            params[key] = trial.suggest_int(key, int(dim.low), int(dim.high), step=int(dim.step or 1), log=dim.log)
        else:
            params[key] = trial.suggest_float(key, dim.low, dim.high, step=dim.step, log=dim.log)
    return params


def trial_eval_steps(sweep: SweepConfig, train: TrainConfig) -> int:
    """Validation every N steps within a trial: the pruner needs several points per trial (with
    `train.max_steps: auto` the step count is only known at training time: every 5 steps)."""
    if sweep.eval_steps:
        return sweep.eval_steps
    return max(1, train.max_steps // 4) if isinstance(train.max_steps, int) else 5


def pruning_callback(trial: optuna.Trial, metric: str) -> Any:
    """A TrainerCallback that reports each validation loss to the trial and stops training when the
    pruner says so (the loop then saves what it has; the objective marks the trial pruned)."""
    from transformers import TrainerCallback

    class Pruning(TrainerCallback):
        def __init__(self) -> None:
            self.pruned_at: int | None = None
            self.best: float | None = None

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            loss = (metrics or {}).get("eval_loss")
            if loss is None or not state.is_world_process_zero:
                return
            self.best = loss if self.best is None else min(self.best, loss)
            trial.report(self.best if metric == "best_validation_loss" else float(loss), state.global_step)
            if trial.should_prune():
                self.pruned_at = state.global_step
                control.should_training_stop = True

    return Pruning()


def open_study(sweep: SweepConfig, name: str) -> optuna.Study:
    """Create the study, or load it when it exists (this is what makes a re-run resume)."""
    require("optuna", "sweep", "llmft sweep")
    import optuna

    url = sweep.storage or default_storage()
    # a trial whose process died stops sending heartbeats: after the grace period it is marked failed and
    # its parameters are queued again, so an interrupted trial is retried rather than lost
    with _quiet_experimental():  # heartbeats are "experimental" in Optuna 5 (and have been since 2.8)
        storage = optuna.storages.RDBStorage(
            url, heartbeat_interval=30, grace_period=120,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1))
    pruner: optuna.pruners.BasePruner = (
        optuna.pruners.MedianPruner(n_startup_trials=sweep.pruner_startup_trials,
                                    n_warmup_steps=sweep.pruner_warmup_steps)
        if sweep.pruner == "median" else optuna.pruners.NopPruner())
    study = optuna.create_study(storage=storage, study_name=name, direction=sweep.direction, pruner=pruner,
                                load_if_exists=True)
    # a fixed seed would draw trial 0's values again after a resume: offset it by the trials already drawn
    study.sampler = optuna.samplers.TPESampler(seed=sweep.seed + len(study.trials))
    return study


def _rows(train_split: pd.DataFrame, validation_split: pd.DataFrame, split: SplitInfo, spec: TaskSpec,
          model: ModelConfig, train: TrainConfig) -> tuple[list[dict[str, Any]], list[dict[str, Any]],
                                                           list[str] | None]:
    """The rows the finetune stage trains and validates on, built the same way."""
    labels = split.labels if get_task(spec.name).classifier else None
    pairs = ((load_tokenizer(resolve_base_model(model)), train.max_seq_length) if get_method(train.method).needs_pairs
             else None)
    return training_examples(train_split, labels, pairs), training_examples(validation_split, labels, pairs), labels


@contextmanager
def _parent_run(name: str) -> Any:
    """The active MLflow run (the pipeline's) is the sweep's parent; without one, start one."""
    import mlflow

    active = mlflow.active_run()
    with nullcontext(active) if active else mlflow.start_run(run_name=f"sweep-{name}") as run:
        yield run


def study_name(spec: TaskSpec, model: ModelConfig, train: TrainConfig, sweep: SweepConfig, model_name: str,
               train_rows: list[dict[str, Any]], run_tag: str) -> str:
    if sweep.study_name:
        return sweep.study_name
    name = f"{model_name}-sweep-{study_key(spec, model, train, sweep, train_rows)}"
    # --no-resume: a study of this run's own (the old one is kept); the run tag is shared by parallel steps
    return name if train.resume else f"{name}-fresh-{run_tag[:8]}"


def run_trials(train_split: pd.DataFrame, validation_split: pd.DataFrame, split: SplitInfo, spec: TaskSpec,
               model: ModelConfig, train: TrainConfig, sweep: SweepConfig, model_name: str, run_tag: str) -> str:
    """Run trials until the study holds `sweep.trials` finished ones (none if it already does, e.g.
    when parallel steps filled it); returns the study's name.

    Each trial trains on the train split with the trial's settings and reports validation losses;
    MLflow runs nest under the active run."""
    require("optuna", "sweep", "llmft sweep")
    import optuna

    if validation_split.empty:
        raise SweepError("the validation split is empty and a sweep scores on it; raise data.validation_fraction")
    if train.num_processes > 1:
        log.warning("train.num_processes=%d: trials train across processes, where the pruning hook cannot run; "
                    "trials are not pruned", train.num_processes)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one line per trial comes from here instead
    train_rows, validation_rows, labels = _rows(train_split, validation_split, split, spec, model, train)
    name = study_name(spec, model, train, sweep, model_name, train_rows, run_tag)
    study = open_study(sweep, name)
    finished = sum(t.state.name in FINISHED for t in study.trials)
    if finished:
        log.info("sweep %s: %d of %d trials already finished", name, finished, sweep.trials)
    objective = _objective(resolve_base_model(model), train_rows, validation_rows, labels, spec, train, sweep, name,
                           run_tag)
    remaining = max(0, sweep.trials - finished)
    if remaining:
        # other workers on the same study (parallel steps) count too: stop once the study has enough
        done = optuna.study.MaxTrialsCallback(sweep.trials, states=(optuna.trial.TrialState.COMPLETE,
                                                                    optuna.trial.TrialState.PRUNED))
        # a trial that fails (e.g. out of memory at a large batch size) is recorded and the sweep goes on
        study.optimize(objective, n_trials=remaining, timeout=sweep.timeout_s, callbacks=[done],
                       catch=(RuntimeError,))
    return name


def _objective(base_path: str, train_rows: list[dict[str, Any]], validation_rows: list[dict[str, Any]],
               labels: list[str] | None, spec: TaskSpec, train: TrainConfig, sweep: SweepConfig, name: str,
               run_tag: str) -> Callable[[optuna.Trial], float]:
    """Optuna's objective: train one trial's settings in a nested MLflow run, return its validation metric
    (or raise TrialPruned)."""
    require("optuna", "sweep", "llmft sweep")
    import mlflow
    import optuna


    def objective(trial: optuna.Trial) -> float:
        params = suggest(trial, sweep.space, train)
        cfg = apply_params(train, params)
        cfg = cfg.model_copy(update={"eval_steps": trial_eval_steps(sweep, cfg)})
        pruning = pruning_callback(trial, sweep.metric)
        out = scratch_dir("sweep-trial-")
        t0 = time.perf_counter()
        with mlflow.start_run(run_name=f"trial-{trial.number}", nested=True) as run:
            trial.set_user_attr("mlflow_run_id", run.info.run_id)
            trial.set_user_attr("run", run_tag)
            mlflow.log_params({**params, "sweep.trial": trial.number, "train.eval_steps": cfg.eval_steps})
            mlflow.set_tags({"sweep.study": name, "sweep.trial": str(trial.number)})
            try:
                result = run_training(base_path, train_rows, validation_rows, cfg, out, labels,
                                      init_text=spec.instruction, checkpoint_dir=None, extra_callbacks=[pruning])
            finally:
                shutil.rmtree(out, ignore_errors=True)  # trials keep no weights: the best one is trained again
            seconds = time.perf_counter() - t0
            trial.set_user_attr("seconds", round(seconds, 1))
            if pruning.pruned_at is not None:
                trial.set_user_attr("pruned_at_step", pruning.pruned_at)
                mlflow.set_tags({"sweep.state": "PRUNED", "sweep.pruned_at_step": str(pruning.pruned_at)})
            else:
                value = result.validation_loss if sweep.metric == "validation_loss" else result.best_validation_loss
                assert value is not None  # validation rows exist, so the loop measured them
                mlflow.log_metric(f"sweep/{sweep.metric}", value)
                mlflow.set_tag("sweep.state", "COMPLETE")
        params_text = ", ".join(f"{k.removeprefix('train.')}={_short(v)}" for k, v in params.items())
        if pruning.pruned_at is not None:
            log.info("trial %d (%s): pruned at step %d (%.0f s)", trial.number, params_text, pruning.pruned_at,
                     seconds)
            raise optuna.TrialPruned(f"pruned at step {pruning.pruned_at}")
        log.info("trial %d (%s): %s %.4f (%.0f s)", trial.number, params_text, sweep.metric, value, seconds)
        return float(value)

    return objective


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _trial(t: optuna.trial.FrozenTrial) -> SweepTrial:
    return SweepTrial(number=t.number, state=t.state.name, params=dict(t.params),
                      value=float(t.value) if t.value is not None else None,
                      pruned_at_step=t.user_attrs.get("pruned_at_step"),
                      intermediate={int(k): float(v) for k, v in t.intermediate_values.items()},
                      seconds=t.user_attrs.get("seconds"), mlflow_run_id=t.user_attrs.get("mlflow_run_id"))


def summarize(sweep: SweepConfig, train: TrainConfig, name: str, run_tag: str) -> tuple[SweepResult, TrainConfig]:
    """Read the whole study (every worker's trials), log the table, best settings and plots to the
    active MLflow run, and return the result with the best trial's training settings."""
    import mlflow

    study = open_study(sweep, name)
    trials = [_trial(t) for t in study.trials]
    ran_now = sum(t.state.name in FINISHED and t.user_attrs.get("run") == run_tag for t in study.trials)
    finished_before = sum(t.state.name in FINISHED for t in study.trials) - ran_now
    complete = [t for t in trials if t.state == "COMPLETE"]
    if not complete:
        states = ", ".join(f"{t.number}: {t.state}" for t in trials) or "none"
        raise SweepError(f"sweep {name}: no trial completed (trials {states}); with pruning on, raise "
                         "sweep.pruner_startup_trials, or look at the failed trials' MLflow runs")
    best = study.best_trial
    result = SweepResult(study_name=name, storage=mask(sweep.storage or default_storage()), metric=sweep.metric,
                         direction=sweep.direction, trials_requested=sweep.trials, finished_before=finished_before,
                         ran_now=ran_now, trials=trials, best_trial=best.number, best_value=float(best.value),
                         best_params=dict(best.params))
    active = mlflow.active_run()
    if active is not None:
        result.mlflow_run_id = active.info.run_id
        mlflow.set_tags({"sweep.study": name, "sweep.storage": result.storage, "sweep.best_trial": str(best.number)})
        mlflow.log_params({f"sweep.best.{k}": v for k, v in best.params.items()})
        mlflow.log_metrics({f"sweep/best_{sweep.metric}": result.best_value,
                            "sweep/trials_complete": len(complete),
                            "sweep/trials_pruned": sum(t.state == "PRUNED" for t in trials)})
        mlflow.log_table(pd.DataFrame([{"trial": t.number, "state": t.state, sweep.metric: t.value,
                                        "pruned_at_step": t.pruned_at_step, "seconds": t.seconds,
                                        **{k.removeprefix("train."): v for k, v in t.params.items()}}
                                       for t in trials]), artifact_file="sweep/trials.json")
        _log_plots(study, result)
    return result, apply_params(train, result.best_params)


def _log_plots(study: optuna.Study, result: SweepResult) -> None:
    """Optuna's matplotlib plots as images on the sweep's run. Importance is Optuna 5's default
    PED-ANOVA (no scikit-learn); with fewer than two completed trials it can only say "all equal",
    so it is skipped with that reason instead of drawing a meaningless bar chart."""
    require("optuna", "sweep", "llmft sweep")
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import mlflow
    import optuna
    from optuna.visualization import matplotlib as ovm

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            importances = optuna.importance.get_param_importances(study)
        except (RuntimeError, ValueError) as exc:
            caught.append(warnings.WarningMessage(str(exc), UserWarning, "", 0))
            importances = {}
    equal = [str(w.message).splitlines()[0] for w in caught if "equal" in str(w.message) or not importances]
    if equal:
        result.plots_skipped["param_importances"] = equal[0]
    else:
        result.importances = {k: float(v) for k, v in importances.items()}
    plots = {"param_importances": ovm.plot_param_importances, "parallel_coordinate": ovm.plot_parallel_coordinate,
             "optimization_history": ovm.plot_optimization_history,
             "intermediate_values": ovm.plot_intermediate_values}
    for key, plot in plots.items():
        if key in result.plots_skipped:
            continue
        try:
            with _quiet_experimental():
                axes = plot(study)
        except (RuntimeError, ValueError) as exc:
            result.plots_skipped[key] = str(exc).splitlines()[0]
            continue
        fig = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
        fig.set_size_inches(8, 4.5)
        fig.tight_layout()
        path = f"sweep/{key}.png"
        mlflow.log_figure(fig, path)
        plt.close(fig)
        result.plots.append(path)


@contextmanager
def _quiet_experimental() -> Any:
    """optuna.visualization.matplotlib warns that it is experimental on every call."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def run_sweep(train_split: pd.DataFrame, validation_split: pd.DataFrame, split: SplitInfo, spec: TaskSpec,
              model: ModelConfig, train: TrainConfig, sweep: SweepConfig,
              model_name: str, run_tag: str | None = None) -> tuple[SweepResult, TrainConfig]:
    """The sweep's trials that are still missing (parallel steps may have run them all), then the
    summary and plots on the parent run (the active one, or a new one). `run_tag` names this run
    (the pipeline run's id, shared by its steps); default: a new id."""
    t0 = time.perf_counter()
    run_tag = run_tag or uuid.uuid4().hex
    with _parent_run(model_name):
        name = run_trials(train_split, validation_split, split, spec, model, train, sweep, model_name, run_tag)
        result, best = summarize(sweep, train, name, run_tag)
    result.wall_seconds = round(time.perf_counter() - t0, 1)
    log.info("sweep %s: best trial %d, %s %.4f, %s", name, result.best_trial, result.metric, result.best_value,
             ", ".join(f"{k}={_short(v)}" for k, v in result.best_params.items()))
    return result, best
