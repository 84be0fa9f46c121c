"""Fine-tuning with the HF Trainer, every method, logging to MLflow.

`train` reads top to bottom as the procedure: check the labels, load the base, mark what trains
(llmft.train.methods), build length-grouped dynamically padded batches, train with periodic validation
loss, checkpoints for resuming and optional early stopping, then save the result.

Speed, where the usual recipe wastes time on a CPU:
- batches are grouped by length and padded only to their longest row (no fixed length);
- logits and the loss are computed only at positions whose next token is labelled (the response),
  not over the 49k-word vocabulary at every prompt position;
- LoRA dropout draws its masks four elements per random word (llmft.fast_dropout).

The steps are helpers, each short and tested alone: `class_weights_for`, `build_model`,
`training_arguments`, `build_trainer`, `plan_steps`, `run`, `final_validation_loss`, `summarise`. The
Trainer and its callbacks are module-level classes in llmft.train.trainer; what differs per method comes
from the registry (llmft.train.methods).

Preference methods (dpo, orpo) use the same loop: pair batches (chosen rows, then rejected rows) and
the losses of llmft.train.preference; their rewards, margins and accuracy are logged with the loss.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import Field
from transformers import TrainingArguments, set_seed
from transformers.trainer_callback import ProgressCallback

from llmft.base_model import load_model, load_tokenizer
from llmft.chat_format import check_labels
from llmft.config import TrainConfig
from llmft.contracts import TrainingResult
from llmft.loss import balanced_class_weights
from llmft.train.budget import (
    Plan,
    budget_note,
    checkpoint_max_steps,
    example_tokens,
    measure_tokens_per_second,
    plan_training,
    time_budget_callback,
)
from llmft.train.checkpoint_models import CheckpointModels
from llmft.train.fast_dropout import replace_lora_dropout
from llmft.train.methods import Method, get_method, parameter_counts, save_trained
from llmft.train.trainer import (
    VALIDATION_LOSS,
    VALIDATION_MACRO_F1,
    EarlyStopping,
    LLMTrainer,
    Metrics,
    Progress,
    TokenCounter,
    classifier_validation_metrics,
)

log = logging.getLogger(__name__)


class TrainResult(TrainingResult):
    """What training returns: the summary every step sees, plus where the result is and the
    per-step history (for the loss-curve plot)."""

    output_dir: str  # an adapter (adapter_config.json) or a whole model
    history: list[dict[str, float]] = Field(default_factory=list)


@dataclass
class Ran:
    """What one training run left behind, for the summary."""

    trainer: LLMTrainer
    counter: TokenCounter
    metrics: Metrics
    early: EarlyStopping
    plan: Plan
    budget: Any  # the time-budget callback, when the plan has a budget
    output: Any  # the Trainer's TrainOutput
    wall_seconds: float
    resumed_from_step: int | None


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



def class_weights_for(train_examples: list[dict[str, Any]], labels: list[str] | None,
                      cfg: TrainConfig) -> list[float] | None:
    """A classifier's loss weight per label (`train.class_weights: balanced`), from the training split's
    label counts; None otherwise."""
    if labels is None or cfg.class_weights != "balanced":
        return None
    counts = Counter(int(e["label"]) for e in train_examples)
    return balanced_class_weights([counts.get(i, 0) for i in range(len(labels))])


def build_model(base_path: str, cfg: TrainConfig, method: Method, labels: list[str] | None,
                init_text: str | None) -> tuple[Any, int, int]:
    """(the model to train, its trainable and total parameters): the base loaded as the method wants
    it (4-bit or not; a classification head over `labels`), with what trains marked."""
    model = load_model(base_path, labels, four_bit=method.loads_four_bit(cfg))
    model.config.use_cache = False  # no KV cache in training
    model = method.prepare(model, cfg, labels is not None, base_path, init_text)
    if cfg.fast_lora_dropout:
        replace_lora_dropout(model)
    trainable, total = parameter_counts(model)
    log.info("%s: %d trainable of %d parameters (%.2f%%)", cfg.method, trainable, total, 100 * trainable / total)
    return model, trainable, total


def checkpoint_folder(cfg: TrainConfig, output_dir: Path, checkpoint_dir: Path | None) -> tuple[Path, str | None]:
    """(where checkpoints go, the checkpoint to resume from): without `train.resume` an earlier run's
    checkpoints are removed first."""
    run_dir = checkpoint_dir or output_dir / "checkpoints"
    if checkpoint_dir is not None and not cfg.resume and checkpoint_dir.exists():
        shutil.rmtree(checkpoint_dir)
    return run_dir, last_complete_checkpoint(run_dir) if cfg.resume else None


def training_arguments(cfg: TrainConfig, run_dir: Path, steps: int, evaluating: bool,
                       saving: bool, classifier: bool = False) -> TrainingArguments:
    """The Trainer's arguments: `steps` (provisional: the plan replaces them once the speed is measured),
    validation every `train.eval_steps` when `evaluating`, a checkpoint every `train.save_steps` when `saving`;
    a `classifier`'s validation keeps its logits, for its macro-F1."""
    return TrainingArguments(
        output_dir=str(run_dir),
        max_steps=steps,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size * 2,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        gradient_checkpointing=cfg.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False} if cfg.gradient_checkpointing else None,
        learning_rate=cfg.rate,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=int(cfg.warmup_ratio * steps),
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        bf16=cfg.precision == "bf16",
        fp16=cfg.precision == "fp16",
        logging_steps=cfg.logging_steps,
        eval_strategy="steps" if evaluating else "no",
        eval_steps=cfg.eval_steps if evaluating else None,
        save_strategy="steps" if saving else "no",
        save_steps=cfg.save_steps,
        save_total_limit=1,  # checkpoints never pile up: only the latest is kept
        save_only_model=False,  # optimizer, scheduler and RNG states too, so a resume continues exactly
        report_to="none",
        prediction_loss_only=not classifier,
        label_names=["labels"] if classifier else None,
        seed=cfg.seed,
        data_seed=cfg.seed,
        train_sampling_strategy="group_by_length",  # little padding, no fixed lengths
        remove_unused_columns=False,
        dataloader_num_workers=0,
        use_cpu=not torch.cuda.is_available(),
        ddp_find_unused_parameters=False if cfg.num_processes > 1 else None,
        disable_tqdm=False,
    )


def build_trainer(model: Any, args: TrainingArguments, cfg: TrainConfig, method: Method, collator: Any,
                  train_examples: list[dict[str, Any]], validation_examples: list[dict[str, Any]], *,
                  classifier: bool, class_weights: list[float] | None, log_to_mlflow: bool,
                  extra_callbacks: list[Any] | None = None) -> tuple[LLMTrainer, Metrics, EarlyStopping]:
    """The trainer with its callbacks: metrics, early stopping, the caller's, checkpoints as LoggedModels
    (with MLflow) and one progress bar in place of the Trainer's."""
    counter = TokenCounter()
    metrics = Metrics(counter, log_to_mlflow)
    early = EarlyStopping(cfg.early_stopping_patience, cfg.early_stopping_min_delta, cfg.keep_best,
                          VALIDATION_MACRO_F1 if classifier else VALIDATION_LOSS)
    trainer = LLMTrainer(model=model, args=args, train_dataset=train_examples,
                         eval_dataset=validation_examples or None, data_collator=collator,
                         compute_metrics=classifier_validation_metrics if classifier else None,
                         callbacks=[metrics, early, *(extra_callbacks or [])], counter=counter, method=method,
                         cfg=cfg, class_weights=class_weights,
                         selective_logits=method.selective_logits and not classifier)
    if log_to_mlflow:  # each saved checkpoint becomes a LoggedModel in the run
        trainer.add_callback(CheckpointModels(early.kept))
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(Progress())
    return trainer, metrics, early


def plan_steps(trainer: LLMTrainer, collator: Any, train_examples: list[dict[str, Any]], validation_rows: int,
               cfg: TrainConfig, resume_from: str | None) -> tuple[Plan, Any]:
    """(the plan, the time-budget callback or None): steps (train.max_steps, or auto from train.epochs
    within train.max_minutes) at the speed measured on this machine, set on the trainer."""
    speed = measure_tokens_per_second(trainer, collator, train_examples, cfg)
    trainer.discard_statistics()
    plan = plan_training(cfg, [example_tokens(e) for e in train_examples], validation_rows, speed,
                         cfg.num_processes, checkpoint_max_steps(resume_from))
    trainer.args.max_steps = plan.steps
    trainer.args.warmup_steps = int(cfg.warmup_ratio * plan.steps)
    if trainer.is_world_process_zero():
        for line in plan.lines():
            log.info("%s", line)
    budget = time_budget_callback(plan.budget_seconds) if plan.budget_seconds else None
    if budget is not None:
        trainer.add_callback(budget)
    return plan, budget


def run(trainer: LLMTrainer, metrics: Metrics, early: EarlyStopping, plan: Plan, budget: Any,
        resume_from: str | None) -> Ran:
    """Train (from `resume_from` when given), then put the best validation weights back (train.keep_best)."""
    resumed_from_step = int(Path(resume_from).name.rsplit("-", 1)[-1]) if resume_from else None
    t0 = time.perf_counter()
    output = trainer.train(resume_from_checkpoint=resume_from)
    wall = time.perf_counter() - t0
    early.restore_best(trainer.model)
    return Ran(trainer=trainer, counter=trainer.counter, metrics=metrics, early=early, plan=plan, budget=budget,
               output=output, wall_seconds=wall, resumed_from_step=resumed_from_step)


def final_validation_loss(ran: Ran, has_validation: bool) -> float | None:
    """The kept model's validation loss: the last evaluation's when it was of the final weights, else
    one more evaluation (which lands in the history too)."""
    if not has_validation:
        return None
    evaluated = [h for h in ran.metrics.history if "eval_loss" in h]  # rank 0 only
    if ran.early.stopped or not evaluated or evaluated[-1]["step"] != ran.output.global_step:
        return float(ran.trainer.evaluate()["eval_loss"])
    return evaluated[-1]["eval_loss"]


def token_totals(counter: TokenCounter) -> tuple[int, int, int, int]:
    """(tokens, padded slots, rows, processes) trained on, summed over the processes of a distributed run."""
    seen, slots, rows, world_size = counter.tokens, counter.slots, counter.rows, 1
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        totals = torch.tensor([seen, slots, rows], dtype=torch.float64)
        torch.distributed.all_reduce(totals)
        seen, slots, rows = int(totals[0]), int(totals[1]), int(totals[2])
        world_size = torch.distributed.get_world_size()
    return seen, slots, rows, world_size


def summarise(ran: Ran, cfg: TrainConfig, method: Method, train_rows: int, labels: list[str] | None,
              class_weights: list[float] | None, validation_loss: float | None, parameters: tuple[int, int],
              trained_dir: Path) -> TrainResult:
    """The run's `TrainResult`: losses, throughput, the plan and what the time budget cut."""
    seen, slots, rows, world_size = token_totals(ran.counter)
    examples_seen = rows / method.rows_per_example  # a pair batch holds 2 rows per pair
    examples_seen += (ran.resumed_from_step or 0) * cfg.batch_size * cfg.gradient_accumulation_steps * world_size
    epochs_seen = examples_seen / train_rows
    budget = ran.budget
    note = budget_note(ran.plan, budget.stopped_at if budget else None, budget.elapsed if budget else 0.0,
                       epochs_seen)
    if budget is not None and budget.stopped_at is not None:
        log.warning("%s", note)
    history = ran.metrics.history
    losses = [h["loss"] for h in history if "loss" in h]
    evals = [h["eval_loss"] for h in history if "eval_loss" in h]
    train_seconds = ran.wall_seconds - ran.counter.eval_seconds
    return TrainResult(
        output_dir=str(trained_dir), method=cfg.method, steps=int(ran.output.global_step),
        train_loss=float(ran.output.training_loss),
        first_loss=losses[0] if losses else float("nan"), last_loss=losses[-1] if losses else float("nan"),
        validation_loss=validation_loss, best_validation_loss=min(evals) if evals else None,
        stopped_early=ran.early.stopped, resumed_from_step=ran.resumed_from_step, tokens=seen,
        padding_fraction=1 - seen / slots if slots else 0.0,
        tokens_per_second=seen / train_seconds if train_seconds > 0 else 0.0, wall_seconds=ran.wall_seconds,
        trainable_parameters=parameters[0], total_parameters=parameters[1],
        num_processes=world_size, planned_steps=ran.plan.steps, plan="\n".join(ran.plan.lines()),
        epochs_seen=round(epochs_seen, 4), budget_note=note, kept_step=ran.early.kept(int(ran.output.global_step))[0],
        kept_by=ran.early.kept_by(),
        class_weights={name: round(w, 4) for name, w in zip(labels, class_weights, strict=True)}
        if labels is not None and class_weights is not None else None,
        history=history)


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
    set_seed(cfg.seed)
    method = get_method(cfg.method)
    tokenizer = load_tokenizer(base_path)
    classifier = labels is not None
    _examples_check(train_examples, classifier, tokenizer.eos_token_id, cfg.max_seq_length)
    class_weights = class_weights_for(train_examples, labels, cfg)
    model, trainable, total = build_model(base_path, cfg, method, labels, init_text)
    collator = method.collator(tokenizer.pad_token_id, classifier)
    run_dir, resume_from = checkpoint_folder(cfg, output_dir, checkpoint_dir)
    evaluating = bool(validation_examples) and cfg.eval_steps is not None
    provisional = plan_training(cfg, [example_tokens(e) for e in train_examples], len(validation_examples), None,
                                cfg.num_processes)  # the speed is not known yet
    args = training_arguments(cfg, run_dir, provisional.steps, evaluating, saving=checkpoint_dir is not None,
                              classifier=classifier)
    trainer, metrics, early = build_trainer(model, args, cfg, method, collator, train_examples, validation_examples,
                                            classifier=classifier, class_weights=class_weights,
                                            log_to_mlflow=log_to_mlflow, extra_callbacks=extra_callbacks)
    if resume_from:
        log.info("resuming from %s (step %s)", resume_from, resume_from.rsplit("-", 1)[-1])
    plan, budget = plan_steps(trainer, collator, train_examples, len(validation_examples), cfg, resume_from)
    ran = run(trainer, metrics, early, plan, budget, resume_from)
    validation_loss = final_validation_loss(ran, bool(validation_examples))
    trained_dir = output_dir / "trained"
    result = summarise(ran, cfg, method, len(train_examples), labels, class_weights, validation_loss,
                       (trainable, total), trained_dir)
    if trainer.is_world_process_zero():
        save_trained(trainer.model, tokenizer, trained_dir)
    if checkpoint_dir is not None and trainer.is_world_process_zero():
        shutil.rmtree(checkpoint_dir, ignore_errors=True)  # finished: nothing left to resume
    return result
