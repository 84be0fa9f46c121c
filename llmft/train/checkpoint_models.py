"""Checkpoints as MLflow 3 LoggedModels: each save is a model in the run's "Models" tab with its
step and the losses (a classifier's validation macro-F1 too) known at that step; when training ends
each is tagged kept or not, and why.

The checkpoint folders themselves are only for resuming and are removed after training, so the
LoggedModels carry metadata and metrics, not weights: the weights that were kept are the
registered version.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from transformers import TrainerCallback

KEPT, WHY = "llmft.kept", "llmft.kept_reason"


def _last(history: list[dict[str, Any]], key: str, step: int) -> float | None:
    values = [h[key] for h in history if key in h and h.get("step", 0) <= step]
    return float(values[-1]) if values else None


class CheckpointModels(TrainerCallback):
    """`kept` answers, after training, which step's weights were kept and why."""

    def __init__(self, kept: Callable[[int], tuple[int, str]]) -> None:
        self.kept = kept
        self.models: dict[int, str] = {}

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        import mlflow

        run = mlflow.active_run()
        if run is None or not state.is_world_process_zero:
            return
        step = state.global_step
        model = mlflow.initialize_logged_model(name=f"checkpoint-{step}", source_run_id=run.info.run_id,
                                               model_type="checkpoint", tags={"llmft.step": str(step)})
        metrics = {"train_loss": _last(state.log_history, "loss", step),
                   "validation_loss": _last(state.log_history, "eval_loss", step),
                   "validation_macro_f1": _last(state.log_history, "eval_macro_f1", step)}  # a classifier's
        metrics = {k: v for k, v in metrics.items() if v is not None}
        if metrics:
            mlflow.log_metrics(metrics, step=step, model_id=model.model_id)
        mlflow.finalize_logged_model(model.model_id, "READY")
        self.models[step] = model.model_id

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        import mlflow

        if not self.models or not state.is_world_process_zero:
            return
        kept_step, reason = self.kept(state.global_step)
        for step, model_id in self.models.items():
            if step == kept_step:
                tags = {KEPT: "true", WHY: reason}
            else:
                tags = {KEPT: "false", WHY: f"superseded: the weights of step {kept_step} were kept ({reason})"}
            mlflow.set_logged_model_tags(model_id, tags)
        if mlflow.active_run() is not None:
            mlflow.set_tag("train.kept_step", str(kept_step))
