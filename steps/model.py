"""Model steps: fine-tune, evaluate, register, promote."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated, Any

import mlflow
import pandas as pd
from zenml import get_step_context, step

from llmft import plots, registry
from llmft.base_model import load_causal_lm, load_tokenizer, resolve_base_model
from llmft.config import Config
from llmft.evaluation import evaluate_model
from llmft.ingest import DataError
from llmft.stack import TRACKER_NAME
from llmft.tasks import primary_metric, scorer, system_prompt
from llmft.training import load_merged, train_adapter


def _examples(frame: pd.DataFrame) -> list[dict[str, list[int]]]:
    return [{"input_ids": list(map(int, r.input_ids)), "labels": list(map(int, r.labels))}
            for r in frame.itertuples()]


@step(experiment_tracker=TRACKER_NAME, enable_cache=False)
def finetune(train_split: pd.DataFrame, validation_split: pd.DataFrame,
             config: dict[str, Any]) -> tuple[Annotated[Path, "adapter"], Annotated[dict[str, Any], "training"]]:
    cfg = Config.model_validate(config)
    if (train_split["shape"] == "text_label").any():
        raise DataError(f"{cfg.data.source}: text/label rows are classification data; task {cfg.task!r} trains on "
                        "conversations (prompt/response, alpaca, chat or sharegpt)")
    mlflow.log_params({k: str(v)[:500] for k, v in cfg.flat().items()})
    mlflow.log_dict(cfg.model_dump(mode="json"), "config/resolved_config.yaml")
    # the dataset fingerprint tag comes from export_dataset, which logs to this same MLflow run
    mlflow.set_tags({"base_model": cfg.model.base, "method": cfg.train.method, "task": cfg.task})
    mlflow.log_params({"data.rows.train": len(train_split), "data.rows.validation": len(validation_split)})
    base = resolve_base_model(cfg.model.base)
    out = Path(tempfile.mkdtemp(prefix="llmft-train-"))
    result = train_adapter(base, _examples(train_split), _examples(validation_split), cfg.train, out)
    mlflow.log_figure(plots.loss_curve(result.history, result.validation_loss), "plots/loss_curve.png")
    mlflow.log_metrics({"train/final_loss": result.last_loss, "train/tokens_per_second_mean": result.tokens_per_second})
    summary = {k: v for k, v in result.__dict__.items() if k not in ("history", "adapter_dir")}
    return Path(result.adapter_dir), summary


@step(experiment_tracker=TRACKER_NAME, enable_cache=False)
def evaluate(adapter: Path, test_split: pd.DataFrame,
             config: dict[str, Any]) -> Annotated[dict[str, Any], "evaluation"]:
    """Base and fine-tuned model, same instruction, same test rows."""
    cfg = Config.model_validate(config)
    base = resolve_base_model(cfg.model.base)
    tokenizer = load_tokenizer(base)
    test = test_split.to_dict(orient="records")[: cfg.eval.max_samples]
    system, score = system_prompt(cfg), scorer(cfg)
    results: dict[str, dict[str, float]] = {}
    outputs: dict[str, list[str]] = {}
    loaders = {"base": lambda: load_causal_lm(base), "finetuned": lambda: load_merged(base, str(adapter))}
    for label, load in loaders.items():  # one model in memory at a time
        results[label], outputs[label] = evaluate_model(
            load(), tokenizer, system, test, score, cfg.eval.max_new_tokens, cfg.eval.batch_size, desc=f"eval {label}")
        mlflow.log_metrics({f"{label}/{k}": v for k, v in results[label].items()})
    mlflow.log_table({"prompt": [r["prompt"] for r in test], "reference": [r["response"] for r in test],
                      "base_output": outputs["base"], "finetuned_output": outputs["finetuned"]},
                     "evaluation/predictions.json")
    rates = [k for k in results["base"] if k != "eval_loss"]
    mlflow.log_figure(plots.metric_comparison(results, rates), "plots/metric_comparison.png")
    run = mlflow.active_run()
    return {"metrics": results, "primary_metric": primary_metric(cfg), "samples": len(test),
            "mlflow_run_id": run.info.run_id if run else None}


@step(experiment_tracker=TRACKER_NAME, enable_cache=False)
def register(adapter: Path, evaluation: dict[str, Any], dataset_fingerprint: str,
             config: dict[str, Any]) -> Annotated[dict[str, Any], "registered_model"]:
    cfg = Config.model_validate(config)
    base = resolve_base_model(cfg.model.base)
    tags = {"zenml_run_id": str(get_step_context().pipeline_run.id), "dataset_fingerprint": dataset_fingerprint,
            "base_model": cfg.model.base, "method": cfg.train.method, "task": cfg.task,
            "primary_metric": evaluation["primary_metric"]}
    for label, values in evaluation["metrics"].items():
        tags.update({f"metric.{label}.{k}": f"{v:.4f}" for k, v in values.items()})
    mlflow.log_artifacts(str(adapter), "adapter")  # the small adapter too, for reuse on the same base
    tags["adapter_uri"] = f"runs:/{mlflow.active_run().info.run_id}/adapter"
    version = registry.register_model(load_merged(base, str(adapter)), load_tokenizer(base),
                                      cfg.registry.model_name, tags)
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
