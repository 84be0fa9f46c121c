"""Model steps: fine-tune, evaluate, register, promote."""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path
from typing import Annotated, Any

import mlflow
import pandas as pd
from zenml import get_step_context, step

from llmft import classification, plots, registry
from llmft.base_model import load_model, load_tokenizer, resolve_base_model
from llmft.config import Config
from llmft.evaluation import evaluate_model
from llmft.ingest import DataError
from llmft.launch import run_training
from llmft.locations import checkpoints_root
from llmft.methods import is_adapter, load_trained
from llmft.stack import TRACKER_NAME
from llmft.tasks import is_classification, primary_metric, scorer, system_prompt


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


def _evaluate_classifier(cfg: Config, base: str, trained: Path, labels: list[str],
                         test: list[dict[str, Any]]) -> tuple[dict[str, dict[str, float]], dict[str, list[str]]]:
    from transformers import set_seed

    pad_id = load_tokenizer(base).pad_token_id
    ids = [list(map(int, r["input_ids"])) for r in test]
    references = [str(r["label"]) for r in test]
    targets = [labels.index(ref) for ref in references]
    set_seed(cfg.train.seed)  # the base's head is new: seeded, so its (chance-level) numbers repeat
    loaders = {"base": lambda: load_model(base, "classification", labels),
               "finetuned": lambda: load_trained(base, trained, "classification", labels)[0]}
    results: dict[str, dict[str, float]] = {}
    outputs: dict[str, list[str]] = {}
    for name, load in loaders.items():
        classes, probs = classification.predict(load(), ids, pad_id, cfg.eval.batch_size, desc=f"eval {name}")
        outputs[name] = [labels[c] for c in classes]
        results[name] = {**classification.score(outputs[name], references, labels),
                         "eval_loss": classification.eval_loss(probs, targets)}
        matrix = classification.confusion(outputs[name], references, labels)
        mlflow.log_dict({"labels": labels, "matrix": matrix}, f"evaluation/confusion_{name}.json")
        mlflow.log_figure(plots.confusion_matrix(matrix, labels, f"{name}: test split"),
                          f"plots/confusion_matrix_{name}.png")
    return results, outputs


@step(experiment_tracker=TRACKER_NAME, enable_cache=False)
def evaluate(trained_model: Path, training: dict[str, Any], test_split: pd.DataFrame,
             config: dict[str, Any]) -> Annotated[dict[str, Any], "evaluation"]:
    """Base and fine-tuned model on the same test rows (same instruction for generative tasks)."""
    cfg = Config.model_validate(config)
    base = resolve_base_model(cfg.model.base)
    test = test_split.to_dict(orient="records")[: cfg.eval.max_samples]
    if is_classification(cfg):
        results, outputs = _evaluate_classifier(cfg, base, trained_model, training["labels"], test)
        references = [str(r["label"]) for r in test]
        inputs = [r["text"] for r in test]
    else:
        system, score = system_prompt(cfg), scorer(cfg)
        base_tokenizer = load_tokenizer(base)
        loaders = {"base": lambda: (load_model(base, cfg.task), base_tokenizer),
                   "finetuned": lambda: load_trained(base, trained_model, cfg.task)}
        results, outputs = {}, {}
        for label, load in loaders.items():  # one model in memory at a time
            model, tokenizer = load()
            results[label], outputs[label] = evaluate_model(
                model, tokenizer, system, test, score, cfg.eval.max_new_tokens, cfg.eval.batch_size,
                desc=f"eval {label}")
        references = [r["response"] for r in test]
        inputs = [r["prompt"] for r in test]
    for label, values in results.items():
        mlflow.log_metrics({f"{label}/{k}": v for k, v in values.items()})
    mlflow.log_table({"input": inputs, "reference": references, "base_output": outputs["base"],
                      "finetuned_output": outputs["finetuned"]}, "evaluation/predictions.json")
    rates = [k for k in results["base"] if k != "eval_loss"]
    mlflow.log_figure(plots.metric_comparison(results, rates), "plots/metric_comparison.png")
    run = mlflow.active_run()
    return {"metrics": results, "primary_metric": primary_metric(cfg), "samples": len(test),
            "mlflow_run_id": run.info.run_id if run else None}


@step(experiment_tracker=TRACKER_NAME, enable_cache=False)
def register(trained_model: Path, training: dict[str, Any], evaluation: dict[str, Any], dataset_fingerprint: str,
             config: dict[str, Any]) -> Annotated[dict[str, Any], "registered_model"]:
    cfg = Config.model_validate(config)
    base = resolve_base_model(cfg.model.base)
    tags = {"zenml_run_id": str(get_step_context().pipeline_run.id), "dataset_fingerprint": dataset_fingerprint,
            "base_model": cfg.model.base, "method": cfg.train.method, "task": cfg.task,
            "primary_metric": evaluation["primary_metric"]}
    for label, values in evaluation["metrics"].items():
        tags.update({f"metric.{label}.{k}": f"{v:.4f}" for k, v in values.items()})
    if is_adapter(trained_model):  # the small adapter too, for reuse on the same base
        mlflow.log_artifacts(str(trained_model), "adapter")
        tags["adapter_uri"] = f"runs:/{mlflow.active_run().info.run_id}/adapter"
    model, tokenizer = load_trained(base, trained_model, cfg.task, training.get("labels"))
    version = registry.register_model(model, tokenizer, cfg.registry.model_name, tags,
                                      "text-classification" if is_classification(cfg) else "llm/v1/chat")
    return version.as_dict()


@step(experiment_tracker=TRACKER_NAME, enable_cache=False)
def promote(registered_model: dict[str, Any], evaluation: dict[str, Any],
            config: dict[str, Any]) -> Annotated[dict[str, Any], "promotion"]:
    cfg = Config.model_validate(config)
    name = evaluation["primary_metric"]
    promoted, reason = registry.decide_promotion(evaluation["metrics"]["finetuned"][name],
                                                 evaluation["metrics"]["base"][name], cfg.promotion.min_delta)
    previous = registry.current_alias_version(registered_model["name"])
    if promoted:
        registry.set_alias(registered_model["name"], registered_model["version"])
    mlflow.set_tags({"promotion.decision": "promoted" if promoted else "rejected", "promotion.reason": reason})
    return {"promoted": promoted, "reason": reason, "previous_champion": previous,
            "champion": registered_model["version"] if promoted else previous}
