"""Run summaries (JSON for scripts) and the closing table (for people)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

UI_URL = "http://127.0.0.1:5000"


def _load(run: Any, step_name: str, output: str) -> Any:
    return run.steps[step_name].outputs[output][0].load()


def cached_steps(run: Any) -> list[str]:
    return sorted(name for name, step in run.steps.items() if str(step.status.value) == "cached")


def finetune_summary(run: Any, tracking_uri: str, wall_seconds: float) -> dict[str, Any]:
    evaluation = _load(run, "evaluate", "evaluation")
    registered = _load(run, "register", "registered_model")
    promotion = _load(run, "promote", "promotion")
    dataset = _load(run, "export_dataset", "dataset")
    dataset.pop("mlflow_run_id", None)  # the same run as evaluation's
    training = _load(run, "finetune", "training")
    return {
        "pipeline": "finetune",
        "zenml_run_id": str(run.id),
        "mlflow_run_id": evaluation["mlflow_run_id"],
        "tracking_uri": tracking_uri,
        "primary_metric": evaluation["primary_metric"],
        "metrics": evaluation["metrics"],
        "eval_samples": evaluation["samples"],
        "registered_model": {"name": registered["name"], "version": registered["version"],
                             "uri": registered["model_uri"]},
        "promoted": bool(promotion["promoted"]),
        "promotion_reason": promotion["reason"],
        "champion_version": promotion["champion"],
        "dataset": dataset,
        "cached_steps": cached_steps(run),
        "train": {k: training[k] for k in ("method", "steps", "first_loss", "last_loss", "validation_loss",
                                           "best_validation_loss", "stopped_early", "resumed_from_step",
                                           "tokens_per_second", "padding_fraction", "wall_seconds",
                                           "trainable_parameters", "num_processes")},
        "wall_seconds": round(wall_seconds, 1),
    }


def data_summary(run: Any, tracking_uri: str, wall_seconds: float) -> dict[str, Any]:
    dataset = _load(run, "export_dataset", "dataset")
    return {"pipeline": "data", "zenml_run_id": str(run.id), "mlflow_run_id": dataset.pop("mlflow_run_id"),
            "tracking_uri": tracking_uri, "dataset": dataset, "cached_steps": cached_steps(run),
            "wall_seconds": round(wall_seconds, 1)}


def data_table(summary: dict[str, Any]) -> str:
    dataset, cached = summary["dataset"], summary["cached_steps"]
    rows = dataset["rows"]
    lines = ["", dataset["verdict"],
             f"rows in {dataset['rows_in']} -> train {rows['train']} / validation {rows['validation']} / "
             f"test {rows['test']} (+{dataset['unused']} unused, data.max_train_rows); "
             f"duplicates removed {dataset['duplicates_removed']}; rejected {dataset['rejected']}",
             f"fingerprint {dataset['fingerprint']}; files in {dataset['export_dir']}",
             f"served from cache: {', '.join(cached) if cached else 'nothing'}"]
    return "\n".join(lines)


def deploy_summary(run: Any, tracking_uri: str, wall_seconds: float) -> dict[str, Any]:
    dep = _load(run, "serve_champion", "deployment")
    return {"pipeline": "deploy", "zenml_run_id": str(run.id), "tracking_uri": tracking_uri,
            **dep, "wall_seconds": round(wall_seconds, 1)}


def write_summary(summary: dict[str, Any], path: str | None) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(summary, indent=2, default=str) + "\n")


def finetune_table(summary: dict[str, Any], ui_command: str) -> str:
    base, tuned = summary["metrics"]["base"], summary["metrics"]["finetuned"]
    primary = summary["primary_metric"]
    lines = ["", f"{'metric':<18}{'base':>10}{'fine-tuned':>12}{'delta':>10}", "-" * 50]
    for name in base:
        mark = " *" if name == primary else ""
        delta = tuned[name] - base[name]
        lines.append(f"{name + mark:<18}{base[name]:>10.4f}{tuned[name]:>12.4f}{delta:>+10.4f}")
    reg = summary["registered_model"]
    rows = summary["dataset"]["rows"]
    decision = "PROMOTED to @champion" if summary["promoted"] else "not promoted"
    lines += [
        "-" * 50,
        f"* primary metric; {summary['eval_samples']} test samples; "
        f"rows train/validation/test = {rows['train']}/{rows['validation']}/{rows['test']}",
        f"registered: {reg['name']} version {reg['version']}",
        f"promotion: {decision} ({summary['promotion_reason']})",
        f"wall time: {summary['wall_seconds']:.0f} s",
        f"MLflow UI: {ui_command}" + (f"   (then open {UI_URL})" if ui_command.startswith("mlflow") else ""),
    ]
    return "\n".join(lines)
