"""What every finetune run records in MLflow before training: the resolved config and the task."""

from __future__ import annotations

from llmft.config import Config
from llmft.tasks.base import TaskSpec


def track_run_config(cfg: Config, spec: TaskSpec) -> str:
    import mlflow

    mlflow.log_params({k: str(v)[:500] for k, v in cfg.flat().items()})
    mlflow.log_dict(cfg.model_dump(mode="json"), "config/resolved_config.yaml")
    mlflow.set_tags({"task": spec.name, "task.reason": spec.reason, "base_model": cfg.model.base,
                     "method": cfg.train.method, "registry.model_name": str(cfg.registry.model_name)})
    if spec.instruction:
        mlflow.log_text(spec.instruction, "config/instruction.txt")
    run = mlflow.active_run()
    return run.info.run_id if run else ""
