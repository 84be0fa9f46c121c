"""Training methods: which parameters train, and how the result becomes one full-precision model.

- full: every weight trains; the trained model is saved whole.
- lora / dora / qlora: PEFT adapters (qlora on a 4-bit nf4 base); merged into the fp32 base
  afterwards, never into a 4-bit one.
- dpo / orpo: preference losses (llmft.train.preference) on a `train.preference_adapter` adapter
  (lora or qlora); DPO's reference is the same model with the adapter switched off.
- prompt_tuning: PEFT virtual tokens. They cannot be merged into weights, so they are baked in:
  each virtual token becomes a new special token whose embedding is the learned vector, and the
  chat template starts with them. The result is a plain model that any runtime serves unchanged.
- freeze: only the last `train.freeze.trainable_layers` blocks, the final norm and the head train
  (the "feature extraction" approach). SmolLM2 ties its head to the input embeddings, so training
  the head trains those too.

Classification uses the same base with a sequence-classification head (`score`), which trains in
every method.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from llmft.base_model import load_model, load_tokenizer
from llmft.config import TrainConfig

log = logging.getLogger(__name__)

PROMPT_TOKEN = "<|llmft_prompt_{}|>"


def prepare(model: Any, cfg: TrainConfig, classifier: bool, base_path: str, init_text: str | None) -> Any:
    """Mark what trains for `cfg.method`; returns the model to hand to the trainer."""
    from peft import LoraConfig, PromptTuningConfig, PromptTuningInit, TaskType, get_peft_model

    task_type = TaskType.SEQ_CLS if classifier else TaskType.CAUSAL_LM
    method = adapter_method(cfg)
    if method in ("lora", "dora", "qlora"):
        if method == "qlora":
            from peft import prepare_model_for_kbit_training

            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
        # for SEQ_CLS, PEFT also trains (and saves) the new `score` head in full
        return get_peft_model(model, LoraConfig(
            r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
            target_modules=cfg.lora.target_modules, task_type=task_type, use_dora=method == "dora"))
    if method == "prompt_tuning":
        text_init = cfg.prompt_tuning.init == "text" and bool(init_text)
        return get_peft_model(model, PromptTuningConfig(
            task_type=task_type, num_virtual_tokens=cfg.prompt_tuning.num_virtual_tokens,
            prompt_tuning_init=PromptTuningInit.TEXT if text_init else PromptTuningInit.RANDOM,
            prompt_tuning_init_text=init_text if text_init else None,
            tokenizer_name_or_path=base_path if text_init else None))
    if method == "full":
        for param in model.parameters():
            param.requires_grad = True
        return model
    if method == "freeze":
        for param in model.parameters():
            param.requires_grad = False
        blocks = model.model.layers
        keep = min(cfg.freeze.trainable_layers, len(blocks))
        trainable = [*blocks[len(blocks) - keep:], model.model.norm,
                     model.score if classifier else model.lm_head]
        for module in trainable:
            for param in module.parameters():
                param.requires_grad = True
        return model
    raise ValueError(f"unknown train.method {method!r}")


def adapter_method(cfg: TrainConfig) -> str:
    """The method that decides what trains: a preference method trains its adapter."""
    return cfg.preference_adapter if cfg.method in ("dpo", "orpo") else cfg.method


def four_bit(cfg: TrainConfig) -> bool:
    return adapter_method(cfg) == "qlora"


def parameter_counts(model: Any) -> tuple[int, int]:
    """(trainable, total); tied weights counted once."""
    seen: set[int] = set()
    trainable = total = 0
    for param in model.parameters():
        if id(param) in seen:
            continue
        seen.add(id(param))
        n = param.numel() * (2 if param.__class__.__name__ == "Params4bit" else 1)  # 2 nf4 values per byte
        total += n
        trainable += n if param.requires_grad else 0
    return trainable, total


def save_trained(model: Any, tokenizer: Any, out: Path) -> None:
    """Adapters save as adapters; full and freeze save the whole model."""
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)  # the result carries the chat template it was trained with


def is_adapter(trained_dir: str | Path) -> bool:
    return (Path(trained_dir) / "adapter_config.json").is_file()


def load_trained(base_path: str, trained_dir: str | Path, labels: list[str] | None = None) -> tuple[Any, Any]:
    """(model, tokenizer) in full precision, ready to evaluate, register and serve (a classifier
    over `labels` when given)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    trained_dir = Path(trained_dir)
    if not is_adapter(trained_dir):
        auto = AutoModelForSequenceClassification if labels is not None else AutoModelForCausalLM
        model, tokenizer = auto.from_pretrained(trained_dir, dtype=torch.float32), load_tokenizer(str(trained_dir))
    else:
        kind = json.loads((trained_dir / "adapter_config.json").read_text()).get("peft_type")
        peft_model = PeftModel.from_pretrained(load_model(base_path, labels), str(trained_dir))
        if kind == "PROMPT_TUNING":
            model, tokenizer = bake_prompt(peft_model, load_tokenizer(base_path))
        else:
            model, tokenizer = peft_model.merge_and_unload(), load_tokenizer(base_path)
    model.config.use_cache = True  # training turned it off; generation wants it
    return model, tokenizer


def bake_prompt(peft_model: Any, tokenizer: Any) -> tuple[Any, Any]:
    """Prompt tuning as a plain model: virtual tokens become special tokens the template starts with."""
    import torch

    embeddings = peft_model.get_prompt_embedding_to_save("default").detach()
    model = peft_model.get_base_model()
    names = [PROMPT_TOKEN.format(i) for i in range(embeddings.shape[0])]
    tokenizer.add_special_tokens({"additional_special_tokens": names})
    ids = tokenizer.convert_tokens_to_ids(names)
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    with torch.no_grad():
        model.get_input_embeddings().weight[ids] = embeddings.to(model.get_input_embeddings().weight.dtype)
    tokenizer.chat_template = "".join(names) + tokenizer.chat_template
    # with tied embeddings the new rows are also output logits: never generate them
    model.generation_config.suppress_tokens = ids
    return model, tokenizer
