"""The fine-tune stage: split frames in, a trained model folder and its `TrainingResult` out.

Logs the training parameters, loss curve and throughput to the active MLflow run. Checkpoints go
to a folder keyed by everything that determines the run (settings, task, the training rows), so a
killed run started again with the same command resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import pandas as pd

from llmft import plots
from llmft.base_model import load_tokenizer, resolve_base_model
from llmft.config import ModelConfig, TrainConfig
from llmft.contracts import SplitInfo, TrainingResult
from llmft.locations import claim_checkpoint_dir, scratch_dir
from llmft.loss import balanced_group_weights
from llmft.tasks import get_task
from llmft.tasks.base import TaskSpec
from llmft.tasks.preference import pair_example
from llmft.train.launch import run_training
from llmft.train.methods import get_method
from llmft.train.overfitting import overfitting_onset

log = logging.getLogger(__name__)


def training_examples(frame: pd.DataFrame, labels: list[str] | None,
                      pairs: tuple[Any, int] | None = None) -> list[dict[str, Any]]:
    """Rows as the trainer takes them: token ids with token labels, or with a class index; with
    `pairs` (tokenizer, max_seq_length), preference pairs: the chosen and the rejected conversation."""
    if pairs is not None:
        return [pair_example(pairs[0], json.loads(r.messages), pairs[1]) for r in frame.itertuples()]
    if labels is None:
        return [{"input_ids": list(map(int, r.input_ids)), "labels": list(map(int, r.labels))}
                for r in frame.itertuples()]
    index = {name: i for i, name in enumerate(labels)}
    return [{"input_ids": list(map(int, r.input_ids)), "label": index[str(r.label)]} for r in frame.itertuples()]


def balance_weights(frame: pd.DataFrame, spec: TaskSpec, train: TrainConfig) -> tuple[list[float], dict[str, float]]:
    """Per-row loss weights of a generative task's training rows and the weight per group, when
    `train.balance_empty_targets` is set and the task groups its rows (extraction: entity-free rows and the
    rest); ([], {}) otherwise."""
    task = get_task(spec.name)
    if (not train.balance_empty_targets or task.classifier or get_method(train.method).needs_pairs
            or "response" not in frame):
        return [], {}
    groups = task.balance_groups([str(r or "") for r in frame["response"]])
    if groups is None:
        return [], {}
    weights = balanced_group_weights(groups)
    return [weights[g] for g in groups], {g: round(w, 4) for g, w in weights.items()}


def checkpoint_key(spec: TaskSpec, model: ModelConfig, train: TrainConfig, train_rows: list[dict[str, Any]]) -> str:
    """Same command, same data -> same key: a killed run finds its checkpoints again."""
    settings = {"task": spec.model_dump(), "model": model.model_dump(mode="json"),
                "train": train.model_dump(mode="json", exclude={"resume", "reuse"})}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for row in train_rows:
        digest.update(json.dumps(row, sort_keys=True).encode())
    return digest.hexdigest()[:16]


def finetune(train_split: pd.DataFrame, validation_split: pd.DataFrame, split: SplitInfo, spec: TaskSpec,
             model: ModelConfig, train: TrainConfig) -> tuple[Path, TrainingResult]:
    import mlflow

    labels = split.labels if get_task(spec.name).classifier else None
    method = get_method(train.method)
    pairs = None
    if method.needs_pairs:  # the rejected conversation is encoded from the gate's fitted messages
        pairs = (load_tokenizer(resolve_base_model(model)), train.max_seq_length)
    train_rows = training_examples(train_split, labels, pairs)
    row_weights, group_weights = balance_weights(train_split, spec, train)
    for row, weight in zip(train_rows, row_weights, strict=False):
        row["weight"] = weight
    validation_rows = training_examples(validation_split, labels, pairs)
    mlflow.log_params({"data.rows.train": len(train_rows), "data.rows.validation": len(validation_rows)})
    out = scratch_dir("train-")
    with claim_checkpoint_dir(checkpoint_key(spec, model, train, train_rows)) as (checkpoints, shared):
        if not shared:
            log.warning("another run is training with the same settings and data: this one uses its own "
                        "checkpoint folder (it cannot resume the other's, and leaves it alone)")
        result = run_training(resolve_base_model(model), train_rows, validation_rows, train, out, labels,
                              init_text=spec.instruction, checkpoint_dir=checkpoints)
    if group_weights:  # the loss weight per group of rows, reported like classification's per label
        result = result.model_copy(update={"class_weights": group_weights})
    mlflow.log_figure(plots.loss_curve(result.history), "plots/loss_curve.png")
    if method.needs_pairs:
        mlflow.log_figure(plots.preference_rewards(result.history), "plots/preference_rewards.png")
    log_training_summary(result)
    onset = overfitting_onset(result.history)
    if onset is not None and train.keep_best:
        log.warning("overfitting: validation loss rose from step %d on while training loss kept falling; the "
                    "weights of step %s were kept (%s, train.keep_best); "
                    "train.early_stopping_patience would stop training there", onset, result.kept_step,
                    result.kept_by or "the final step")
    elif onset is not None:
        log.warning("overfitting: validation loss rose from step %d on while training loss kept falling; "
                    "set train.keep_best (or fewer train.max_steps) to keep the best weights", onset)
    mlflow.set_tags({"train.resumed_from_step": str(result.resumed_from_step),
                     "train.stopped_early": str(result.stopped_early), "train.overfitting_from_step": str(onset),
                     **({"train.budget_note": result.budget_note[:5000]} if result.budget_note else {})})
    log_plan_and_weights(result)
    summary = result.model_dump(exclude={"history", "output_dir", "labels", "overfitting_step", "trained_in_run"})
    run = mlflow.active_run()
    return Path(result.output_dir), TrainingResult(**summary, labels=labels, overfitting_step=onset,
                                                   trained_in_run=run.info.run_id if run else None)


def log_plan_and_weights(result: TrainingResult) -> None:
    """The resolved step count (train.max_steps may be auto) and the classification loss weights, as
    params of the run that trained (the weights also as a file: a long label set outgrows a param)."""
    import mlflow

    params: dict[str, Any] = {"train.steps_planned": result.planned_steps}
    if result.class_weights:
        mlflow.log_dict(result.class_weights, "training/class_weights.json")
        weights = json.dumps(result.class_weights, ensure_ascii=False)
        if len(weights) <= 500:
            params["train.class_weight_values"] = weights
    mlflow.log_params(params)


def log_training_summary(result: TrainingResult) -> None:
    """The training's summary metrics in the active MLflow run: the run that trained, and a run that
    reused that training from the cache (so runs compare side by side in the UI)."""
    import mlflow

    mlflow.log_metrics({"train/final_loss": result.last_loss, "train/tokens_per_second_mean": result.tokens_per_second,
                        "train/padding_fraction": result.padding_fraction,
                        "train/trainable_parameters": result.trainable_parameters,
                        **({"train/epochs_seen": result.epochs_seen} if result.epochs_seen is not None else {})})
