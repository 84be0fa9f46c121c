"""Fine-tuning with the HF Trainer, every method, logging to MLflow.

`train` reads top to bottom as the procedure: check the labels, load the base, mark what trains
(llmft.methods), build length-grouped dynamically padded batches, train with periodic validation
loss, checkpoints for resuming and optional early stopping, then save the result.

Speed, where the usual recipe wastes time on a CPU:
- batches are grouped by length and padded only to their longest row (no fixed length);
- logits and the loss are computed only at positions whose next token is labelled (the response),
  not over the 49k-word vocabulary at every prompt position;
- LoRA dropout draws its masks four elements per random word (llmft.fast_dropout).

Preference methods (dpo, orpo) use the same loop: pair batches (chosen rows, then rejected rows) and
the losses of llmft.train.preference; their rewards, margins and accuracy are logged with the loss.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Any

from pydantic import Field

from llmft.base_model import load_model, load_tokenizer
from llmft.chat_format import PadToLongest, check_labels
from llmft.config import TrainConfig
from llmft.contracts import TrainingResult
from llmft.loss import balanced_class_weights, class_weighted_loss, masked_lm_loss, row_weighted_lm_loss
from llmft.train import methods
from llmft.train.budget import (
    budget_note,
    checkpoint_max_steps,
    example_tokens,
    measure_tokens_per_second,
    plan_training,
    time_budget_callback,
)
from llmft.train.preference import PreferenceBatches, is_preference, preference_loss

log = logging.getLogger(__name__)


class TrainResult(TrainingResult):
    """What training returns: the summary every step sees, plus where the result is and the
    per-step history (for the loss-curve plot)."""

    output_dir: str  # an adapter (adapter_config.json) or a whole model
    history: list[dict[str, float]] = Field(default_factory=list)


class ClassificationBatches:
    """Pads `input_ids` to the longest row; `label` (a class index) becomes `labels`."""

    def __init__(self, pad_token_id: int):
        self.pad = PadToLongest(pad_token_id)

    def __call__(self, batch: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        out = self.pad([{"input_ids": ex["input_ids"]} for ex in batch])
        out["labels"] = torch.tensor([int(ex["label"]) for ex in batch])
        return out


class _TokenCounter:
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


def _callbacks(counter: _TokenCounter, cfg: TrainConfig, log_to_mlflow: bool) -> tuple[Any, Any]:
    import torch
    from transformers import TrainerCallback

    class Metrics(TrainerCallback):
        """Per-step loss / learning rate / grad norm / tokens per second, to MLflow and history."""

        def __init__(self) -> None:
            self.history: list[dict[str, float]] = []
            self._t0 = time.perf_counter()
            self._tokens0 = 0

        def on_train_begin(self, args, state, control, **kwargs):
            self._t0, self._tokens0 = time.perf_counter(), counter.tokens

        def on_log(self, args, state, control, logs=None, **kwargs):
            metrics = {k: float(v) for k, v in (logs or {}).items()
                       if isinstance(v, (int, float)) and math.isfinite(float(v))}
            elapsed = time.perf_counter() - self._t0 - counter.eval_seconds
            if "loss" in metrics and elapsed > 0:
                metrics["tokens_per_second"] = (counter.tokens - self._tokens0) / elapsed
                metrics["tokens_seen"] = float(counter.tokens - self._tokens0)
                metrics["train_seconds"] = elapsed
            if not metrics or not state.is_world_process_zero:
                return
            self.history.append({"step": state.global_step, **metrics})
            if log_to_mlflow:
                import mlflow

                mlflow.log_metrics({k.replace("eval_", "validation/") if k.startswith("eval_") else f"train/{k}": v
                                    for k, v in metrics.items()}, step=state.global_step)

    class EarlyStopping(TrainerCallback):
        """Stop after `patience` evaluations without improvement; put the best trainable weights back."""

        def __init__(self) -> None:
            self.best: float | None = None
            self.best_state: dict[str, Any] | None = None
            self.bad_evals = 0
            self.best_step: int | None = None
            self.stopped = False

        def kept(self, final_step: int) -> tuple[int, str]:
            """The step whose weights training ends with, and why."""
            if self.best_state is not None and self.best_step is not None:
                return self.best_step, f"lowest validation loss {self.best:.4f} (restored when training ended)"
            return final_step, "the final step"

        def on_evaluate(self, args, state, control, metrics=None, model=None, **kwargs):
            loss = (metrics or {}).get("eval_loss")
            if loss is None or cfg.early_stopping_patience is None:
                return
            if self.best is None or loss < self.best - cfg.early_stopping_min_delta:
                self.best, self.bad_evals, self.best_step = loss, 0, state.global_step
                self.best_state = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
                return
            self.bad_evals += 1
            if self.bad_evals >= cfg.early_stopping_patience:
                log.info("early stopping at step %d: validation loss %.4f, best %.4f", state.global_step, loss,
                         self.best)
                self.stopped = control.should_training_stop = True

        def restore_best(self, model: Any) -> None:
            if self.best_state is None:
                return
            params = dict(model.named_parameters())
            with torch.no_grad():
                for name, value in self.best_state.items():
                    params[name].copy_(value)

    return Metrics(), EarlyStopping()


def _progress_callback() -> Any:
    from tqdm.auto import tqdm
    from transformers import TrainerCallback

    class Progress(TrainerCallback):
        """One bar for training: steps, ETA, the latest loss and learning rate, the last validation
        loss (the Trainer's own bar prints every log as a raw dict under it)."""

        def __init__(self) -> None:
            self.bar: Any = None
            self.shown: dict[str, str] = {}

        def on_train_begin(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc="train", unit="step",
                                dynamic_ncols=True)

        def on_step_end(self, args, state, control, **kwargs):
            if self.bar is not None:
                self.bar.update(state.global_step - self.bar.n)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if self.bar is None or not logs:
                return
            for key, short in (("loss", "loss"), ("learning_rate", "lr"), ("eval_loss", "val_loss")):
                if isinstance(logs.get(key), (int, float)):
                    self.shown[short] = f"{logs[key]:.3g}" if short == "lr" else f"{logs[key]:.4f}"
            self.bar.set_postfix(self.shown, refresh=True)

        def on_train_end(self, args, state, control, **kwargs):
            if self.bar is not None:
                self.bar.close()
                self.bar = None

    return Progress()


def _trainer_class(selective_logits: bool, counter: _TokenCounter, cfg: TrainConfig | None = None,
                   class_weights: list[float] | None = None) -> Any:
    from transformers import Trainer

    preference = cfg is not None and is_preference(cfg.method)
    pending: dict[str, list[dict[str, float]]] = {}  # preference statistics since the last log, per mode

    class LLMTrainer(Trainer):
        def training_step(self, model, inputs, num_items_in_batch=None):
            counter.add(inputs["attention_mask"])
            return super().training_step(model, inputs, num_items_in_batch)

        def evaluate(self, *args, **kwargs):
            t0 = time.perf_counter()
            try:
                return super().evaluate(*args, **kwargs)
            finally:
                counter.eval_seconds += time.perf_counter() - t0

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if preference:
                assert cfg is not None
                loss, stats, outputs = preference_loss(model, inputs, cfg.method, cfg.beta, cfg.orpo_lambda)
                pending.setdefault("train" if model.training else "eval", []).append(stats)
                if num_items_in_batch is not None and self.model_accepts_loss_kwargs:
                    loss = loss / self.current_gradient_accumulation_steps  # a mean per batch, not a token sum
                return (loss, outputs) if return_outputs else loss
            if class_weights is not None and "labels" in inputs:  # classification, train.class_weights: balanced
                outputs = model(**{k: v for k, v in inputs.items() if k != "labels"})
                loss = class_weighted_loss(outputs.logits, inputs["labels"], class_weights)
                if num_items_in_batch is not None and self.model_accepts_loss_kwargs:
                    loss = loss / self.current_gradient_accumulation_steps  # a mean per batch, like the above
                return (loss, outputs) if return_outputs else loss
            if not selective_logits or "labels" not in inputs:  # (prompt tuning's virtual tokens: unweighted)
                inputs = {k: v for k, v in inputs.items() if k != "weight"}
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            rest = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask", "labels", "weight")}
            if "weight" in inputs:  # training rows weighted by group (train.class_weights: balanced)
                loss, count, outputs = row_weighted_lm_loss(model, inputs["input_ids"], inputs["attention_mask"],
                                                            inputs["labels"], inputs["weight"], **rest)
            else:
                loss, count, outputs = masked_lm_loss(model, inputs["input_ids"], inputs["attention_mask"],
                                                      inputs["labels"], **rest)
            loss = loss / (num_items_in_batch if num_items_in_batch is not None else count)
            return (loss, outputs) if return_outputs else loss

        def log(self, logs, *args, **kwargs):
            # the preference statistics since the last log, averaged, join the loss they go with
            mode = "eval" if "eval_loss" in logs else "train"
            stats = pending.pop(mode, []) if "loss" in logs or mode == "eval" else []
            for key in stats[0] if stats else ():
                logs[f"eval_{key}" if mode == "eval" else key] = sum(s[key] for s in stats) / len(stats)
            super().log(logs, *args, **kwargs)

        def discard_statistics(self) -> None:
            """Forget preference statistics of passes that were not training steps (the speed measurement)."""
            pending.clear()

    return LLMTrainer


def last_complete_checkpoint(run_dir: Path) -> str | None:
    """Newest `checkpoint-N` whose trainer state was written (a kill mid-save leaves it out)."""
    done = [p for p in run_dir.glob("checkpoint-*") if (p / "trainer_state.json").is_file()] if run_dir.is_dir() else []
    return str(max(done, key=lambda p: int(p.name.rsplit("-", 1)[-1]))) if done else None


def _examples_check(train_examples: list[dict[str, Any]], classifier: bool, eos_token_id: int,
                    max_seq_length: int) -> None:
    if not train_examples:
        raise ValueError("no training examples")
    if not classifier:
        # a sequence at the length limit may be a preference answer cut at its end, without its EOS
        for example in [e for e in train_examples[:32] if len(e["input_ids"]) < max_seq_length][:8]:
            check_labels(example, eos_token_id)


def train(base_path: str, train_examples: list[dict[str, Any]], validation_examples: list[dict[str, Any]],
          cfg: TrainConfig, output_dir: Path, labels: list[str] | None = None,
          init_text: str | None = None, checkpoint_dir: Path | None = None,
          log_to_mlflow: bool = True, extra_callbacks: list[Any] | None = None) -> TrainResult:
    """Train `cfg.method` on tokenized examples and save the result under `output_dir/trained`.

    SFT examples have `input_ids`/`labels` (prompt tokens -100, EOS labelled); classification
    examples have `input_ids` and `label` (an index into `labels`). With `checkpoint_dir`, a
    checkpoint is kept every `cfg.save_steps` steps (only the latest) and, when `cfg.resume`, a
    run started again continues from it; the folder is removed once training finishes.
    `extra_callbacks` are more TrainerCallbacks (a sweep's pruning hook sees every validation loss).
    """
    import torch
    from transformers import TrainingArguments, set_seed

    set_seed(cfg.seed)
    tokenizer = load_tokenizer(base_path)
    classifier = labels is not None
    _examples_check(train_examples, classifier, tokenizer.eos_token_id, cfg.max_seq_length)
    class_weights = None
    if labels is not None and cfg.class_weights == "balanced":  # from the training split's label counts
        counts = Counter(int(e["label"]) for e in train_examples)
        class_weights = balanced_class_weights([counts.get(i, 0) for i in range(len(labels))])

    model = load_model(base_path, labels, four_bit=methods.four_bit(cfg))
    model.config.use_cache = False  # no KV cache in training
    model = methods.prepare(model, cfg, classifier, base_path, init_text)
    if cfg.fast_lora_dropout:
        from llmft.train.fast_dropout import replace_lora_dropout

        replace_lora_dropout(model)
    trainable, total = methods.parameter_counts(model)
    log.info("%s: %d trainable of %d parameters (%.2f%%)", cfg.method, trainable, total, 100 * trainable / total)

    collator = (ClassificationBatches(tokenizer.pad_token_id) if classifier
                else PreferenceBatches(tokenizer.pad_token_id) if is_preference(cfg.method)
                else PadToLongest(tokenizer.pad_token_id))
    counter = _TokenCounter()
    metrics_cb, early_cb = _callbacks(counter, cfg, log_to_mlflow)
    run_dir = checkpoint_dir or output_dir / "checkpoints"
    if checkpoint_dir is not None and not cfg.resume and checkpoint_dir.exists():
        shutil.rmtree(checkpoint_dir)
    resume_from = last_complete_checkpoint(run_dir) if cfg.resume else None
    evaluating = bool(validation_examples) and cfg.eval_steps is not None
    gpu = torch.cuda.is_available()
    tokens = [example_tokens(e) for e in train_examples]
    provisional = plan_training(cfg, tokens, len(validation_examples), None, cfg.num_processes)  # speed unknown yet
    args = TrainingArguments(
        output_dir=str(run_dir),
        max_steps=provisional.steps,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size * 2,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        gradient_checkpointing=cfg.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False} if cfg.gradient_checkpointing else None,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=int(cfg.warmup_ratio * provisional.steps),
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        bf16=cfg.precision == "bf16",
        fp16=cfg.precision == "fp16",
        logging_steps=cfg.logging_steps,
        eval_strategy="steps" if evaluating else "no",
        eval_steps=cfg.eval_steps if evaluating else None,
        save_strategy="steps" if checkpoint_dir is not None else "no",
        save_steps=cfg.save_steps,
        save_total_limit=1,  # checkpoints never pile up: only the latest is kept
        save_only_model=False,  # optimizer, scheduler and RNG states too, so a resume continues exactly
        report_to="none",
        prediction_loss_only=True,
        seed=cfg.seed,
        data_seed=cfg.seed,
        train_sampling_strategy="group_by_length",  # little padding, no fixed lengths
        remove_unused_columns=False,
        dataloader_num_workers=0,
        use_cpu=not gpu,
        ddp_find_unused_parameters=False if cfg.num_processes > 1 else None,
        disable_tqdm=False,
    )
    trainer_cls = _trainer_class(not classifier and cfg.method != "prompt_tuning", counter, cfg, class_weights)
    trainer = trainer_cls(model=model, args=args, train_dataset=train_examples,
                          eval_dataset=validation_examples or None, data_collator=collator,
                          callbacks=[metrics_cb, early_cb, *(extra_callbacks or [])])
    if log_to_mlflow:  # each saved checkpoint becomes a LoggedModel in the run
        from llmft.train.checkpoint_models import CheckpointModels

        trainer.add_callback(CheckpointModels(early_cb.kept))
    from transformers.trainer_callback import ProgressCallback

    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(_progress_callback())
    resumed_from_step = int(Path(resume_from).name.rsplit("-", 1)[-1]) if resume_from else None
    if resume_from:
        log.info("resuming from %s (step %d)", resume_from, resumed_from_step)
    # the plan: steps (train.max_steps, or auto from train.epochs within train.max_minutes) at the measured speed
    speed = measure_tokens_per_second(trainer, collator, train_examples, cfg)
    trainer.discard_statistics()
    plan = plan_training(cfg, tokens, len(validation_examples), speed, cfg.num_processes,
                         checkpoint_max_steps(resume_from))
    trainer.args.max_steps = plan.steps
    trainer.args.warmup_steps = int(cfg.warmup_ratio * plan.steps)
    if trainer.is_world_process_zero():
        for line in plan.lines():
            log.info("%s", line)
    budget = time_budget_callback(plan.budget_seconds) if plan.budget_seconds else None
    if budget is not None:
        trainer.add_callback(budget)
    t0 = time.perf_counter()
    output = trainer.train(resume_from_checkpoint=resume_from)
    wall = time.perf_counter() - t0
    train_seconds = wall - counter.eval_seconds
    early_cb.restore_best(trainer.model)

    validation_loss = None
    if validation_examples:
        evaluated = [h for h in metrics_cb.history if "eval_loss" in h]  # rank 0 only
        if early_cb.stopped or not evaluated or evaluated[-1]["step"] != output.global_step:
            validation_loss = float(trainer.evaluate()["eval_loss"])  # the kept model's; lands in the history too
        else:
            validation_loss = evaluated[-1]["eval_loss"]
    evals = [h["eval_loss"] for h in metrics_cb.history if "eval_loss" in h]
    seen, slots, rows, world_size = counter.tokens, counter.slots, counter.rows, 1
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        totals = torch.tensor([seen, slots, rows], dtype=torch.float64)
        torch.distributed.all_reduce(totals)
        seen, slots, rows = int(totals[0]), int(totals[1]), int(totals[2])
        world_size = torch.distributed.get_world_size()
    examples_seen = rows / (2 if is_preference(cfg.method) else 1)  # a pair batch holds 2 rows per pair
    examples_seen += (resumed_from_step or 0) * cfg.batch_size * cfg.gradient_accumulation_steps * world_size
    epochs_seen = examples_seen / len(train_examples)
    note = budget_note(plan, budget.stopped_at if budget else None, budget.elapsed if budget else 0.0, epochs_seen)
    if budget is not None and budget.stopped_at is not None:
        log.warning("%s", note)

    trained_dir = output_dir / "trained"
    if trainer.is_world_process_zero():
        methods.save_trained(trainer.model, tokenizer, trained_dir)
    if checkpoint_dir is not None and trainer.is_world_process_zero():
        shutil.rmtree(checkpoint_dir, ignore_errors=True)  # finished: nothing left to resume
    losses = [h["loss"] for h in metrics_cb.history if "loss" in h]
    return TrainResult(
        output_dir=str(trained_dir), method=cfg.method, steps=int(output.global_step),
        train_loss=float(output.training_loss),
        first_loss=losses[0] if losses else float("nan"), last_loss=losses[-1] if losses else float("nan"),
        validation_loss=validation_loss, best_validation_loss=min(evals) if evals else None,
        stopped_early=early_cb.stopped, resumed_from_step=resumed_from_step, tokens=seen,
        padding_fraction=1 - seen / slots if slots else 0.0,
        tokens_per_second=seen / train_seconds if train_seconds > 0 else 0.0, wall_seconds=wall,
        trainable_parameters=trainable, total_parameters=total,
        num_processes=world_size, planned_steps=plan.steps, plan="\n".join(plan.lines()),
        epochs_seen=round(epochs_seen, 4), budget_note=note,
        class_weights={name: round(w, 4) for name, w in zip(labels, class_weights, strict=True)}
        if labels is not None and class_weights is not None else None,
        history=metrics_cb.history)
