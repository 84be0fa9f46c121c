"""The HF Trainer as the project trains with it, and its callbacks: module-level classes that take their
state in `__init__` (the token counter they share, the method, the class weights), so each one is
importable and testable alone.

- `LLMTrainer`: counts the tokens trained on, keeps evaluation time out of tokens/s, and computes the
  loss: the method's pair loss (dpo, orpo), the class-weighted loss of a classification head, the
  row-weighted or plain masked LM loss on labelled positions only (selective logits), or the
  Trainer's own loss (prompt tuning's virtual tokens, a classifier without class weights).
- `Metrics`: per-step loss, learning rate, grad norm and tokens/s, to the history and MLflow.
- `EarlyStopping`: stop after `patience` evaluations without improvement; put the best weights back. It
  watches the validation loss, or a classifier's validation macro-F1 (`classifier_validation_metrics`).
- `Progress`: one progress bar with the latest losses.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import Trainer, TrainerCallback

from llmft.config import TrainConfig
from llmft.loss import class_weighted_loss, masked_lm_loss, row_weighted_lm_loss
from llmft.tasks.classification import score as classification_scores
from llmft.train.methods import Method

log = logging.getLogger(__name__)

_MODEL_INPUTS = ("input_ids", "attention_mask", "labels", "weight")


class TokenCounter:
    """Real and padded tokens of the batches trained on (tokens/s, padding fraction), and the time
    spent in evaluation, which tokens/s leaves out."""

    def __init__(self) -> None:
        self.tokens = 0
        self.slots = 0
        self.rows = 0
        self.eval_seconds = 0.0

    def add(self, attention_mask: Any) -> None:
        self.tokens += int(attention_mask.sum())
        self.slots += int(attention_mask.numel())
        self.rows += int(attention_mask.shape[0])


class Metrics(TrainerCallback):
    """Per-step loss / learning rate / grad norm / tokens per second, to MLflow and `history`."""

    def __init__(self, counter: TokenCounter, log_to_mlflow: bool) -> None:
        self.counter = counter
        self.log_to_mlflow = log_to_mlflow
        self.history: list[dict[str, float]] = []
        self._t0 = time.perf_counter()
        self._tokens0 = 0

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._t0, self._tokens0 = time.perf_counter(), self.counter.tokens

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        metrics = {k: float(v) for k, v in (logs or {}).items()
                   if isinstance(v, (int, float)) and math.isfinite(float(v))}
        elapsed = time.perf_counter() - self._t0 - self.counter.eval_seconds
        if "loss" in metrics and elapsed > 0:
            metrics["tokens_per_second"] = (self.counter.tokens - self._tokens0) / elapsed
            metrics["tokens_seen"] = float(self.counter.tokens - self._tokens0)
            metrics["train_seconds"] = elapsed
        if not metrics or not state.is_world_process_zero:
            return
        self.history.append({"step": state.global_step, **metrics})
        if self.log_to_mlflow:
            import mlflow  # only where this process logs (rank 0 of a run with MLflow)

            mlflow.log_metrics({k.replace("eval_", "validation/") if k.startswith("eval_") else f"train/{k}": v
                                for k, v in metrics.items()}, step=state.global_step)


@dataclass(frozen=True)
class Watched:
    """The validation number that picks the kept weights (and early stopping's patience counts)."""

    key: str  # as the Trainer reports it
    name: str  # as messages name it
    higher_is_better: bool

    def improves(self, value: float, best: float | None, min_delta: float) -> bool:
        if best is None:
            return True
        return value > best + min_delta if self.higher_is_better else value < best - min_delta


VALIDATION_LOSS = Watched("eval_loss", "validation loss", higher_is_better=False)
# a classifier's primary metric: its validation loss can keep falling while its answers collapse to one class
# (and a class-weighted loss can stay above a uniform guess's while the answers are already useful)
VALIDATION_MACRO_F1 = Watched("eval_macro_f1", "validation macro-F1", higher_is_better=True)


def classifier_validation_metrics(eval_prediction: Any) -> dict[str, float]:
    """A classification head's validation accuracy and macro-F1 from its logits (the Trainer's
    `compute_metrics`), computed as the evaluation computes them."""
    logits = eval_prediction.predictions
    logits = logits[0] if isinstance(logits, tuple) else logits
    gold = [int(g) for g in eval_prediction.label_ids]
    names = [str(i) for i in range(logits.shape[-1])]
    scores = classification_scores([names[int(i)] for i in logits.argmax(-1)], [names[g] for g in gold], names)
    return {"macro_f1": scores["macro_f1"], "accuracy": scores["accuracy"]}


class EarlyStopping(TrainerCallback):
    """Stop after `patience` evaluations without an improvement of `watched` by more than `min_delta`
    (None: never); with `keep_best` (or a patience) the trainable weights of its best value are held (on
    the CPU) and `restore_best` puts them back."""

    def __init__(self, patience: int | None, min_delta: float = 0.0, keep_best: bool = False,
                 watched: Watched = VALIDATION_LOSS) -> None:
        self.patience = patience
        self.min_delta = min_delta
        self.keep_best = keep_best or patience is not None
        self.watched = watched
        self.best: float | None = None
        self.best_state: dict[str, Any] | None = None
        self.bad_evals = 0
        self.best_step: int | None = None
        self.stopped = False

    def kept(self, final_step: int) -> tuple[int, str]:
        """The step whose weights training ends with, and why."""
        if self.best_state is not None and self.best_step is not None:
            return self.best_step, f"{self.kept_by()} (restored when training ended)"
        return final_step, "the final step"

    def kept_by(self) -> str | None:
        """Why the kept weights were kept, e.g. "lowest validation loss 0.8000"; None: the final step's."""
        if self.best_state is None or self.best is None:
            return None
        return f"{'highest' if self.watched.higher_is_better else 'lowest'} {self.watched.name} {self.best:.4f}"

    def on_evaluate(self, args: Any, state: Any, control: Any, metrics: dict[str, float] | None = None,
                    model: Any = None, **kwargs: Any) -> None:
        value = (metrics or {}).get(self.watched.key)
        if value is None or not self.keep_best:
            return
        if self.watched.improves(value, self.best, self.min_delta):
            self.best, self.bad_evals, self.best_step = value, 0, state.global_step
            self.best_state = {n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters()
                               if p.requires_grad}
            return
        self.bad_evals += 1
        if self.patience is not None and self.bad_evals >= self.patience:
            log.info("early stopping at step %d: %s %.4f, best %.4f", state.global_step, self.watched.name, value,
                     self.best)
            self.stopped = control.should_training_stop = True

    def restore_best(self, model: Any) -> None:
        if self.best_state is None:
            return
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, value in self.best_state.items():
                params[name].copy_(value)


class Progress(TrainerCallback):
    """One bar for training: steps, ETA, the latest loss and learning rate, the last validation loss
    (the Trainer's own bar prints every log as a raw dict under it)."""

    SHOWN = (("loss", "loss"), ("learning_rate", "lr"), ("eval_loss", "val_loss"), ("eval_macro_f1", "val_f1"))

    def __init__(self) -> None:
        self.bar: Any = None
        self.shown: dict[str, str] = {}

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.is_world_process_zero:
            self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc="train", unit="step",
                            dynamic_ncols=True)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if self.bar is None or not logs:
            return
        for key, short in self.SHOWN:
            if isinstance(logs.get(key), (int, float)):
                self.shown[short] = f"{logs[key]:.3g}" if short == "lr" else f"{logs[key]:.4f}"
        self.bar.set_postfix(self.shown, refresh=True)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class LLMTrainer(Trainer):
    """The Trainer with the project's token counting and losses.

    `method` and `cfg` give the pair loss of a preference method; `class_weights` (a classifier with
    `train.class_weights: balanced`) weigh each class's loss; `selective_logits` computes logits only
    where the next token is labelled (generative tasks, methods whose `selective_logits` allows it)."""

    def __init__(self, *args: Any, counter: TokenCounter, method: Method, cfg: TrainConfig,
                 class_weights: list[float] | None = None, selective_logits: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.counter = counter
        self.method = method
        self.train_config = cfg
        self.class_weights = class_weights
        self.selective_logits = selective_logits
        self.pending: dict[str, list[dict[str, float]]] = {}  # preference statistics since the last log, per mode

    def training_step(self, model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None) -> Any:
        self.counter.add(inputs["attention_mask"])
        return super().training_step(model, inputs, num_items_in_batch)

    def evaluate(self, *args: Any, **kwargs: Any) -> dict[str, float]:
        t0 = time.perf_counter()
        try:
            return super().evaluate(*args, **kwargs)
        finally:
            self.counter.eval_seconds += time.perf_counter() - t0

    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        if self.method.needs_pairs:
            loss, stats, outputs = self.method.pair_loss(model, inputs, self.train_config)
            self.pending.setdefault("train" if model.training else "eval", []).append(stats)
            return self._per_batch(loss, outputs, return_outputs, num_items_in_batch)
        if self.class_weights is not None and "labels" in inputs:  # classification, train.class_weights: balanced
            outputs = model(**{k: v for k, v in inputs.items() if k != "labels"})
            loss = class_weighted_loss(outputs.logits, inputs["labels"], self.class_weights)
            return self._per_batch(loss, outputs, return_outputs, num_items_in_batch)
        if not self.selective_logits or "labels" not in inputs:  # (prompt tuning's virtual tokens: unweighted)
            inputs = {k: v for k, v in inputs.items() if k != "weight"}
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        rest = {k: v for k, v in inputs.items() if k not in _MODEL_INPUTS}
        if "weight" in inputs:  # training rows weighted by group (train.class_weights: balanced)
            loss, count, outputs = row_weighted_lm_loss(model, inputs["input_ids"], inputs["attention_mask"],
                                                        inputs["labels"], inputs["weight"], **rest)
        else:
            loss, count, outputs = masked_lm_loss(model, inputs["input_ids"], inputs["attention_mask"],
                                                  inputs["labels"], **rest)
        loss = loss / (num_items_in_batch if num_items_in_batch is not None else count)
        return (loss, outputs) if return_outputs else loss

    def _per_batch(self, loss: Any, outputs: Any, return_outputs: bool, num_items_in_batch: Any) -> Any:
        """A loss that is a mean per batch (not a token sum) under gradient accumulation."""
        if num_items_in_batch is not None and self.model_accepts_loss_kwargs:
            loss = loss / self.current_gradient_accumulation_steps
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        # the preference statistics since the last log, averaged, join the loss they go with
        mode = "eval" if "eval_loss" in logs else "train"
        stats = self.pending.pop(mode, []) if "loss" in logs or mode == "eval" else []
        for key in stats[0] if stats else ():
            logs[f"eval_{key}" if mode == "eval" else key] = sum(s[key] for s in stats) / len(stats)
        super().log(logs, *args, **kwargs)

    def discard_statistics(self) -> None:
        """Forget preference statistics of passes that were not training steps (the speed measurement)."""
        self.pending.clear()
