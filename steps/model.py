"""Model steps: fine-tune, evaluate (base, candidate, champion), forgetting probe, register, promote."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import mlflow
import pandas as pd
from zenml import get_step_context, step
from zenml.exceptions import StepContextError

from llmft import classification, model_card, plots, registry
from llmft.base_model import load_model, load_tokenizer, resolve_base_model
from llmft.config import Config
from llmft.evaluation import score_generative
from llmft.forgetting import ProbeResult, load_probe, run_probe
from llmft.ingest import DataError
from llmft.launch import run_training
from llmft.locations import checkpoints_root
from llmft.methods import is_adapter, load_trained
from llmft.promotion import decide, make_champion, mirror_zenml_stage
from llmft.stack import TRACKER_NAME
from llmft.tasks import higher_is_better, is_classification, primary_metric, scorers, system_prompt

log = logging.getLogger(__name__)


def _sft_examples(frame: pd.DataFrame) -> list[dict[str, list[int]]]:
    return [{"input_ids": list(map(int, r.input_ids)), "labels": list(map(int, r.labels))}
            for r in frame.itertuples()]


def _class_examples(frame: pd.DataFrame, labels: list[str]) -> list[dict[str, Any]]:
    index = {name: i for i, name in enumerate(labels)}
    return [{"input_ids": list(map(int, r.input_ids)), "label": index[r.label]} for r in frame.itertuples()]


def _label_set(cfg: Config, *frames: pd.DataFrame) -> list[str]:
    return list(cfg.data.labels) if cfg.data.labels else sorted({str(v) for f in frames for v in f["label"].dropna()})


def _check_task_matches_data(cfg: Config, frame: pd.DataFrame) -> None:
    text_label = bool((frame["shape"] == "text_label").any())
    if text_label and not is_classification(cfg):
        raise DataError(f"{cfg.data.source}: text/label rows are classification data; task {cfg.task!r} trains on "
                        "conversations (prompt/response, alpaca, chat or sharegpt); set task: classification")
    if is_classification(cfg) and not text_label:
        raise DataError(f"{cfg.data.source}: task classification needs text/label rows, got {frame['shape'].iloc[0]}")


def checkpoint_key(cfg: Config, dataset_fingerprint: str) -> str:
    """Same command, same data -> same key: a killed run finds its checkpoints again."""
    settings = cfg.model_dump(mode="json", include={"task", "model", "data", "validation", "train"})
    settings["train"].pop("resume")
    blob = json.dumps({"settings": settings, "data": dataset_fingerprint}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@step(experiment_tracker=TRACKER_NAME, enable_cache=False)
def finetune(train_split: pd.DataFrame, validation_split: pd.DataFrame, test_split: pd.DataFrame,
             dataset_fingerprint: str, config: dict[str, Any]) -> tuple[
    Annotated[Path, "trained_model"], Annotated[dict[str, Any], "training"]
]:
    cfg = Config.model_validate(config)
    _check_task_matches_data(cfg, train_split)
    mlflow.log_params({k: str(v)[:500] for k, v in cfg.flat().items()})
    mlflow.log_dict(cfg.model_dump(mode="json"), "config/resolved_config.yaml")
    # the dataset fingerprint tag comes from export_dataset, which logs to this same MLflow run
    mlflow.set_tags({"base_model": cfg.model.base, "method": cfg.train.method, "task": cfg.task})
    mlflow.log_params({"data.rows.train": len(train_split), "data.rows.validation": len(validation_split)})
    base = resolve_base_model(cfg.model.base)
    labels = _label_set(cfg, train_split, validation_split, test_split) if is_classification(cfg) else None
    if labels:
        train_rows, validation_rows = (_class_examples(f, labels) for f in (train_split, validation_split))
    else:
        train_rows, validation_rows = _sft_examples(train_split), _sft_examples(validation_split)
    out = Path(tempfile.mkdtemp(prefix="llmft-train-"))
    checkpoints = checkpoints_root() / checkpoint_key(cfg, dataset_fingerprint)
    result = run_training(base, train_rows, validation_rows, cfg.train, out, cfg.task, labels,
                          init_text=system_prompt(cfg), checkpoint_dir=checkpoints)
    mlflow.log_figure(plots.loss_curve(result.history), "plots/loss_curve.png")
    mlflow.log_metrics({"train/final_loss": result.last_loss, "train/tokens_per_second_mean": result.tokens_per_second,
                        "train/padding_fraction": result.padding_fraction,
                        "train/trainable_parameters": result.trainable_parameters})
    mlflow.set_tags({"train.resumed_from_step": str(result.resumed_from_step),
                     "train.stopped_early": str(result.stopped_early)})
    summary = {k: v for k, v in result.as_dict().items() if k not in ("history", "output_dir")}
    return Path(result.output_dir), {**summary, "labels": labels}


Loader = Callable[[], tuple[Any, Any]]


def _champion(cfg: Config) -> tuple[str | None, str | None]:
    """(version, note): the champion to re-measure on this run's test rows, or why there is none."""
    if not cfg.eval.champion:
        return None, "champion re-evaluation off (eval.champion=false)"
    name = cfg.registry.model_name
    version = registry.current_alias_version(name)
    if version is None:
        return None, f"{name} has no @{registry.CHAMPION} yet"
    task = registry.version_tags(name, version).get("task", cfg.task)
    if task != cfg.task:
        return None, f"champion v{version} is a {task} model; this run's task is {cfg.task}"
    return version, f"champion v{version} re-evaluated on this run's test split"


def _score_all(cfg: Config, loaders: dict[str, Loader], test: list[dict[str, Any]], labels: list[str] | None,
               ) -> tuple[dict[str, dict[str, float]], dict[str, list[str]], dict[str, list[dict[str, float]]]]:
    """Every model on the same rows, one model in memory at a time."""
    metrics: dict[str, dict[str, float]] = {}
    outputs: dict[str, list[str]] = {}
    rows: dict[str, list[dict[str, float]]] = {}
    for label, load in loaders.items():
        model, tokenizer = load()
        if labels is not None:
            metrics[label], outputs[label], rows[label] = classification.score_classifier(
                model, tokenizer, [r["text"] for r in test], [str(r["label"]) for r in test], labels,
                cfg.eval.batch_size, cfg.train.max_seq_length, desc=f"eval {label}")
            matrix = classification.confusion(outputs[label], [str(r["label"]) for r in test], labels)
            mlflow.log_dict({"labels": labels, "matrix": matrix}, f"evaluation/confusion_{label}.json")
            mlflow.log_figure(plots.confusion_matrix(matrix, labels, f"{label}: test split"),
                              f"plots/confusion_matrix_{label}.png")
        else:
            scored = score_generative(model, tokenizer, system_prompt(cfg), test, scorers(cfg),
                                      cfg.eval.max_new_tokens, cfg.eval.batch_size, cfg.train.max_seq_length,
                                      desc=f"eval {label}")
            metrics[label], outputs[label], rows[label] = scored.metrics, scored.outputs, scored.row_scores
        del model
    return metrics, outputs, rows


@step(experiment_tracker=TRACKER_NAME, enable_cache=False)
def evaluate(trained_model: Path, training: dict[str, Any], test_split: pd.DataFrame,
             config: dict[str, Any]) -> Annotated[dict[str, Any], "evaluation"]:
    """Base, candidate and current champion on the same test rows, in this run."""
    from transformers import set_seed

    cfg = Config.model_validate(config)
    base = resolve_base_model(cfg.model.base)
    test = test_split.to_dict(orient="records")[: cfg.eval.max_samples]
    labels = training["labels"] if is_classification(cfg) else None
    champion_version, champion_note = _champion(cfg)
    name = cfg.registry.model_name

    def load_base() -> tuple[Any, Any]:
        set_seed(cfg.train.seed)  # a classifier base has a new head: seeded, so its chance-level numbers repeat
        return load_model(base, cfg.task, labels), load_tokenizer(base)

    loaders: dict[str, Loader] = {"base": load_base,
                                  "finetuned": lambda: load_trained(base, trained_model, cfg.task, labels)}
    if champion_version is not None:
        loaders["champion"] = lambda: registry.load_components(name, champion_version)
    log.info("evaluating %s on %d test rows; %s", ", ".join(loaders), len(test), champion_note)
    metrics, outputs, rows = _score_all(cfg, loaders, test, labels)

    for label, values in metrics.items():
        mlflow.log_metrics({f"{label}/{k}": v for k, v in values.items() if math.isfinite(v)})
    table: dict[str, list[Any]] = {
        "input": [r["text"] if labels is not None else r["prompt"] for r in test],
        "reference": [str(r["label"]) if labels is not None else r["response"] for r in test]}
    for label in loaders:
        table[f"{label}_output"] = outputs[label]
    for label in loaders:
        for key in rows[label][0] if rows[label] else ():
            table[f"{label}_{key}"] = [row[key] for row in rows[label]]
    mlflow.log_table(table, "evaluation/predictions.json")
    rates = [k for k in metrics["finetuned"] if k not in ("eval_loss", "perplexity")]
    mlflow.log_figure(plots.metric_comparison(metrics, rates), "plots/metric_comparison.png")
    primary = primary_metric(cfg)
    mlflow.set_tags({"evaluation.champion": champion_note})
    run = mlflow.active_run()
    return {"metrics": {**metrics, "champion": metrics.get("champion")}, "primary_metric": primary,
            "higher_is_better": higher_is_better(primary), "samples": len(test),
            "champion_version": champion_version, "champion_note": champion_note,
            "mlflow_run_id": run.info.run_id if run else None}


@step(experiment_tracker=TRACKER_NAME, enable_cache=False)
def probe_forgetting(trained_model: Path, training: dict[str, Any],
                     config: dict[str, Any]) -> Annotated[dict[str, Any], "forgetting"]:
    """General-knowledge probe on the base and the candidate: did fine-tuning break the rest?"""
    cfg = Config.model_validate(config)
    if is_classification(cfg):
        return {"applicable": False, "reason": "a classifier has no generative head: the forgetting probe "
                                               "does not apply", "drop": None,
                "max_allowed": cfg.promotion.max_forgetting}
    base = resolve_base_model(cfg.model.base)
    probe = load_probe()
    results: dict[str, ProbeResult] = {}
    for label, load in {"base": lambda: (load_model(base, cfg.task), load_tokenizer(base)),
                        "finetuned": lambda: load_trained(base, trained_model, cfg.task)}.items():
        model, tokenizer = load()
        results[label] = run_probe(model, tokenizer, probe, cfg.eval.probe_max_new_tokens, cfg.eval.batch_size,
                                   desc=f"probe {label}")
        del model
    drop = results["base"].accuracy - results["finetuned"].accuracy
    mlflow.log_metrics({"forgetting/base_accuracy": results["base"].accuracy,
                        "forgetting/finetuned_accuracy": results["finetuned"].accuracy, "forgetting/drop": drop})
    mlflow.log_table({"question": [r["question"] for r in probe],
                      "answers": [" | ".join(r["answers"]) for r in probe],
                      **{f"{label}_output": res.outputs for label, res in results.items()},
                      **{f"{label}_correct": res.correct for label, res in results.items()}},
                     "evaluation/forgetting_probe.json")
    return {"applicable": True, "questions": len(probe), "base": results["base"].accuracy,
            "finetuned": results["finetuned"].accuracy, "drop": drop, "max_allowed": cfg.promotion.max_forgetting}


def _git_commit() -> str:
    root = Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return sha + ("+dirty" if dirty else "")


@step(experiment_tracker=TRACKER_NAME, enable_cache=False)
def register(trained_model: Path, training: dict[str, Any], evaluation: dict[str, Any], dataset_fingerprint: str,
             config: dict[str, Any]) -> Annotated[dict[str, Any], "registered_model"]:
    """A new registry version with its lineage, as the `challenger`, linked to the ZenML model version."""
    cfg = Config.model_validate(config)
    base = resolve_base_model(cfg.model.base)
    context = get_step_context()
    run = context.pipeline_run
    snapshot = run.snapshot
    tags = {"zenml_run_id": str(run.id), "zenml_pipeline": run.pipeline.name if run.pipeline else "finetune",
            "zenml_pipeline_version": (snapshot.pipeline_version_hash if snapshot else None) or "unknown",
            "git_commit": _git_commit(), "dataset_fingerprint": dataset_fingerprint,
            "base_model": cfg.model.base, "method": cfg.train.method, "task": cfg.task,
            "primary_metric": evaluation["primary_metric"]}
    try:
        zenml_model = context.model
        tags.update({"zenml_model_version_id": str(zenml_model.id), "zenml_model_version": str(zenml_model.number)})
    except StepContextError:
        zenml_model = None
    for label, values in evaluation["metrics"].items():
        tags.update({f"metric.{label}.{k}": f"{v:.4f}" for k, v in (values or {}).items()})
    if is_adapter(trained_model):  # the small adapter too, for reuse on the same base
        mlflow.log_artifacts(str(trained_model), "adapter")
        tags["adapter_uri"] = f"runs:/{mlflow.active_run().info.run_id}/adapter"
    model, tokenizer = load_trained(base, trained_model, cfg.task, training.get("labels"))
    version = registry.register_model(model, tokenizer, cfg.registry.model_name, tags,
                                      "text-classification" if is_classification(cfg) else "llm/v1/chat")
    if zenml_model is not None:
        zenml_model.log_metadata({"mlflow_model": version.name, "mlflow_version": version.version,
                                  "mlflow_model_uri": version.model_uri})
    return version.as_dict()


@step(experiment_tracker=TRACKER_NAME, enable_cache=False)
def promote(registered_model: dict[str, Any], evaluation: dict[str, Any], forgetting: dict[str, Any],
            training: dict[str, Any], dataset: dict[str, Any],
            config: dict[str, Any]) -> Annotated[dict[str, Any], "promotion"]:
    """The gate: beats the base, matches the re-measured champion, forgot little. Then the model card."""
    cfg = Config.model_validate(config)
    metric = evaluation["primary_metric"]
    metrics = evaluation["metrics"]
    champion = metrics.get("champion")
    decision = decide(metric, evaluation["higher_is_better"], metrics["finetuned"][metric], metrics["base"][metric],
                      champion[metric] if champion else None, evaluation["champion_version"],
                      forgetting.get("drop"), cfg.promotion)
    name, version = registered_model["name"], registered_model["version"]
    previous = registry.current_alias_version(name)
    if decision.promoted:
        make_champion(name, version, "gate", reason="passed the promotion gate")
    else:
        mirror_zenml_stage(name, version, "staging")
    for reason in decision.reasons:
        log.info("promotion %s", reason)
    mlflow.set_tags({"promotion.decision": "promoted" if decision.promoted else "rejected",
                     "promotion.reasons": " | ".join(decision.reasons)[:4900]})
    mlflow.log_metric("promotion/promoted", float(decision.promoted))
    mlflow.log_dict(decision.as_dict(), "promotion/decision.json")
    registry.set_version_tags(name, version, {"promotion.decision": "promoted" if decision.promoted else "rejected",
                                              "promotion.reasons": " | ".join(decision.reasons)[:4900]})
    card = model_card.render(name, version, config, dataset, training, evaluation, forgetting, decision.as_dict())
    mlflow.log_text(card, "model_card.md")
    registry.set_description(name, version, card)
    return {"promoted": decision.promoted, "reasons": decision.reasons, "previous_champion": previous,
            "champion": version if decision.promoted else previous}
