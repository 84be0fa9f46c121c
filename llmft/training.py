"""Adapter fine-tuning (LoRA, DoRA, QLoRA) with the HF Trainer and PEFT, logging to MLflow.

`train_adapter` reads top to bottom as the procedure: check the labels, load the base (4-bit nf4
for QLoRA), wrap it with the adapter, train on length-grouped dynamically padded batches,
evaluate validation loss, save the adapter. Adapters are always merged into the full-precision
base afterwards (`load_merged`), never into a 4-bit one.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmft.base_model import load_causal_lm, load_tokenizer
from llmft.chat_format import PadToLongest, check_labels
from llmft.config import TrainConfig

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    adapter_dir: str
    steps: int
    train_loss: float
    first_loss: float
    last_loss: float
    validation_loss: float | None
    tokens_per_second: float
    wall_seconds: float
    history: list[dict[str, float]] = field(default_factory=list)


class _TokenCounter:
    """Wraps the collator to count real (non-pad) tokens, for tokens/s."""

    def __init__(self, collator: PadToLongest):
        self.collator = collator
        self.tokens = 0

    def __call__(self, batch: list[dict[str, list[int]]]) -> dict[str, Any]:
        out = self.collator(batch)
        self.tokens += int(out["attention_mask"].sum())
        return out


def _metrics_callback(counter: _TokenCounter, log_to_mlflow: bool):
    from transformers import TrainerCallback

    class MetricsCallback(TrainerCallback):
        """Per-step loss / learning rate / grad norm / tokens per second, to MLflow and history."""

        def __init__(self) -> None:
            self.history: list[dict[str, float]] = []
            self._t0 = time.perf_counter()

        def on_log(self, args, state, control, logs=None, **kwargs):
            metrics = {k: float(v) for k, v in (logs or {}).items()
                       if isinstance(v, (int, float)) and math.isfinite(float(v))}
            elapsed = time.perf_counter() - self._t0
            if counter.tokens and elapsed > 0:
                metrics["tokens_per_second"] = counter.tokens / elapsed
            if not metrics:
                return
            self.history.append({"step": state.global_step, **metrics})
            if log_to_mlflow:
                import mlflow

                mlflow.log_metrics({f"train/{k}" if not k.startswith("eval_") else k.replace("eval_", "validation/"): v
                                    for k, v in metrics.items()}, step=state.global_step)

    return MetricsCallback()


def _load_for_training(base_path: str, method: str):
    if method != "qlora":
        return load_causal_lm(base_path)
    import torch
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                      bnb_4bit_compute_dtype=torch.bfloat16 if torch.cuda.is_available()
                                      else torch.float32)
    model = AutoModelForCausalLM.from_pretrained(base_path, quantization_config=quantization, dtype=torch.float32)
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)


def train_adapter(base_path: str, train_examples: list[dict[str, list[int]]],
               validation_examples: list[dict[str, list[int]]], cfg: TrainConfig, output_dir: Path,
               log_to_mlflow: bool = True) -> TrainResult:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import Trainer, TrainingArguments, set_seed

    set_seed(cfg.seed)
    tokenizer = load_tokenizer(base_path)
    for example in train_examples[:8]:
        check_labels(example, tokenizer.eos_token_id)
    if not train_examples:
        raise ValueError("no training examples")

    model = _load_for_training(base_path, cfg.method)
    model.config.use_cache = False
    model = get_peft_model(model, LoraConfig(
        r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
        target_modules=cfg.lora.target_modules, task_type="CAUSAL_LM", use_dora=cfg.method == "dora"))
    trainable, total = model.get_nb_trainable_parameters()
    log.info("%s: %d trainable of %d parameters (%.2f%%)", cfg.method, trainable, total, 100 * trainable / total)

    collator = _TokenCounter(PadToLongest(tokenizer.pad_token_id))
    callback = _metrics_callback(collator, log_to_mlflow)
    args = TrainingArguments(
        output_dir=str(output_dir / "trainer"),
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size * 2,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=int(cfg.warmup_ratio * cfg.max_steps),
        weight_decay=cfg.weight_decay,
        logging_steps=cfg.logging_steps,
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        seed=cfg.seed,
        data_seed=cfg.seed,
        train_sampling_strategy="group_by_length",  # little padding, no fixed lengths
        remove_unused_columns=False,
        dataloader_num_workers=0,
        use_cpu=not torch.cuda.is_available(),
        disable_tqdm=False,
    )
    trainer = Trainer(model=model, args=args, train_dataset=train_examples,
                      eval_dataset=validation_examples or None, data_collator=collator,
                      callbacks=[callback])
    t0 = time.perf_counter()
    output = trainer.train()
    wall = time.perf_counter() - t0
    train_tokens = collator.tokens
    validation_loss = None
    if validation_examples:
        validation_loss = float(trainer.evaluate()["eval_loss"])
        if log_to_mlflow:
            import mlflow

            mlflow.log_metric("validation/loss", validation_loss, step=cfg.max_steps)

    adapter_dir = output_dir / "adapter"
    model.save_pretrained(adapter_dir)
    tokenizer.save_pretrained(adapter_dir)  # the adapter carries its chat template with it
    losses = [h["loss"] for h in callback.history if "loss" in h]
    return TrainResult(
        adapter_dir=str(adapter_dir), steps=int(output.global_step), train_loss=float(output.training_loss),
        first_loss=losses[0] if losses else float("nan"), last_loss=losses[-1] if losses else float("nan"),
        validation_loss=validation_loss, tokens_per_second=train_tokens / wall if wall > 0 else 0.0,
        wall_seconds=wall, history=callback.history)


def load_merged(base_path: str, adapter_dir: str):
    """Base model in full precision with the LoRA adapter merged in (never into a 4-bit base)."""
    from peft import PeftModel

    return PeftModel.from_pretrained(load_causal_lm(base_path), adapter_dir).merge_and_unload()
