"""Training methods: the `METHODS` registry, one entry per `train.method`, and how a result becomes
one full-precision model.

Each entry knows what the rest of the project asks about a method: how to mark what trains
(`prepare`), its collator, whether it trains on chosen/rejected pairs (`needs_pairs`, `pair_loss`),
whether the base loads in 4-bit (`loads_four_bit`), whether logits are computed only at labelled
positions (`selective_logits`), what it refuses (`refusal`) and how its saved adapter becomes plain
weights (`merge`). Nothing else branches on method names; `get_method(name)` is how it asks.

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

This module imports neither llmft.config nor llmft.base_model (it loads models through llmft/model_loading.py),
so `llmft.config` can take the method names from `METHOD_NAMES` without an import cycle.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmft.chat_format import PadToLongest
from llmft.model_loading import load_model, load_tokenizer
from llmft.train.preference import PairTerms, PreferenceBatches, dpo_terms, orpo_terms, preference_loss

if TYPE_CHECKING:
    from llmft.config import TrainConfig
    from llmft.tasks.base import Task

log = logging.getLogger(__name__)

PROMPT_TOKEN = "<|llmft_prompt_{}|>"


class ClassificationBatches:
    """Pads `input_ids` to the longest row; `label` (a class index) becomes `labels`."""

    def __init__(self, pad_token_id: int):
        self.pad = PadToLongest(pad_token_id)

    def __call__(self, batch: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        out = self.pad([{"input_ids": ex["input_ids"]} for ex in batch])
        out["labels"] = torch.tensor([int(ex["label"]) for ex in batch])
        return out


@dataclass(frozen=True)
class Method:
    """One `train.method`. Subclasses say how it marks what trains; the flags say the rest."""

    name: str
    summary: str
    four_bit: bool = False  # the base loads in 4-bit nf4 (an adapter trains on top)
    selective_logits: bool = True  # logits and loss only where the next token is labelled (generative tasks)
    needs_pairs: bool = False  # trains on chosen/rejected pairs (batches of 2 rows per pair)
    refuses_classifier: str | None = None  # why it cannot train a classification head, when it cannot
    peft_type: str | None = None  # the adapter it saves (adapter_config.json's peft_type); None: a whole model
    learning_rate: float = 1e-3  # what train.learning_rate: auto gives
    forgetting_advice: str = ""  # what else to try when its model forgot the probe (the gate's reason)

    def prepare(self, model: Any, cfg: TrainConfig, classifier: bool, base_path: str, init_text: str | None) -> Any:
        """Mark what trains; returns the model to hand to the trainer."""
        raise NotImplementedError

    def loads_four_bit(self, cfg: TrainConfig) -> bool:
        return self.four_bit

    @property
    def rows_per_example(self) -> int:
        """Rows one training example puts in a batch (a pair: its chosen and its rejected conversation)."""
        return 2 if self.needs_pairs else 1

    def collator(self, pad_token_id: int, classifier: bool) -> Callable[[list[dict[str, Any]]], dict[str, Any]]:
        """Batches of this method's examples, padded to their longest row."""
        return ClassificationBatches(pad_token_id) if classifier else PadToLongest(pad_token_id)

    def pair_loss(self, model: Any, batch: dict[str, Any], cfg: TrainConfig) -> tuple[Any, dict[str, float], Any]:
        """(loss, statistics, outputs) of a pair batch; only for `needs_pairs` methods."""
        raise TypeError(f"train.method={self.name} does not train on pairs")

    def refusal(self, task: Task) -> str | None:
        """Why this method cannot train `task`, or None."""
        return self.refuses_classifier if task.classifier else None

    def merge(self, peft_model: Any, tokenizer: Any) -> tuple[Any, Any]:
        """A saved adapter of this kind as one plain model (the base's tokenizer, possibly extended)."""
        return peft_model.merge_and_unload(), tokenizer


@dataclass(frozen=True)
class FullMethod(Method):
    def prepare(self, model: Any, cfg: TrainConfig, classifier: bool, base_path: str, init_text: str | None) -> Any:
        for param in model.parameters():
            param.requires_grad = True
        return model


@dataclass(frozen=True)
class FreezeMethod(Method):
    def prepare(self, model: Any, cfg: TrainConfig, classifier: bool, base_path: str, init_text: str | None) -> Any:
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


def _task_type(classifier: bool) -> Any:
    from peft import TaskType

    return TaskType.SEQ_CLS if classifier else TaskType.CAUSAL_LM


@dataclass(frozen=True)
class LoraMethod(Method):
    dora: bool = False  # weight-decomposed LoRA

    def prepare(self, model: Any, cfg: TrainConfig, classifier: bool, base_path: str, init_text: str | None) -> Any:
        from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

        if self.four_bit:
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
        # for SEQ_CLS, PEFT also trains (and saves) the new `score` head in full
        return get_peft_model(model, LoraConfig(
            r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
            target_modules=cfg.lora.target_modules, task_type=_task_type(classifier), use_dora=self.dora))


@dataclass(frozen=True)
class PromptTuningMethod(Method):
    def prepare(self, model: Any, cfg: TrainConfig, classifier: bool, base_path: str, init_text: str | None) -> Any:
        from peft import PromptTuningConfig, PromptTuningInit, get_peft_model

        text_init = cfg.prompt_tuning.init == "text" and bool(init_text)
        return get_peft_model(model, PromptTuningConfig(
            task_type=_task_type(classifier), num_virtual_tokens=cfg.prompt_tuning.num_virtual_tokens,
            prompt_tuning_init=PromptTuningInit.TEXT if text_init else PromptTuningInit.RANDOM,
            prompt_tuning_init_text=init_text if text_init else None,
            tokenizer_name_or_path=base_path if text_init else None))

    def merge(self, peft_model: Any, tokenizer: Any) -> tuple[Any, Any]:
        return bake_prompt(peft_model, tokenizer)


@dataclass(frozen=True)
class PreferenceMethod(Method):
    """A preference loss on the `train.preference_adapter` adapter: that method decides what trains."""

    needs_pairs: bool = True

    def adapter(self, cfg: TrainConfig) -> Method:
        return get_method(cfg.preference_adapter)

    def prepare(self, model: Any, cfg: TrainConfig, classifier: bool, base_path: str, init_text: str | None) -> Any:
        return self.adapter(cfg).prepare(model, cfg, classifier, base_path, init_text)

    def loads_four_bit(self, cfg: TrainConfig) -> bool:
        return self.adapter(cfg).loads_four_bit(cfg)

    def collator(self, pad_token_id: int, classifier: bool) -> Callable[[list[dict[str, Any]]], dict[str, Any]]:
        return ClassificationBatches(pad_token_id) if classifier else PreferenceBatches(pad_token_id)

    def terms(self, cfg: TrainConfig) -> PairTerms:
        raise NotImplementedError

    def pair_loss(self, model: Any, batch: dict[str, Any], cfg: TrainConfig) -> tuple[Any, dict[str, float], Any]:
        return preference_loss(model, batch, self.terms(cfg))


@dataclass(frozen=True)
class DPOMethod(PreferenceMethod):
    def terms(self, cfg: TrainConfig) -> PairTerms:
        return partial(dpo_terms, beta=cfg.beta)


@dataclass(frozen=True)
class ORPOMethod(PreferenceMethod):
    def terms(self, cfg: TrainConfig) -> PairTerms:
        return partial(orpo_terms, orpo_lambda=cfg.orpo_lambda)


_PROMPT_TUNING_CLASSIFIER = ("the text-classification pipeline would not prepend the learned tokens; use lora, "
                             "full or freeze")

# the order of config.py's `train.method` literal (tests/test_trainer_units.py ties the two); the learning
# rates are what `train.learning_rate: auto` gives: those of benchmarks/compare_methods.py for the
# supervised methods (every weight at 5e-5 reached the lowest validation loss there), ORPO at the
# adapters' 1e-3 (kept the forgetting probe on chatterbot's pairs)
METHODS: dict[str, Method] = {m.name: m for m in (
    FullMethod("full", "every weight trains", learning_rate=5e-5),
    LoraMethod("lora", "low-rank adapters", peft_type="LORA"),
    LoraMethod("dora", "weight-decomposed low-rank adapters", peft_type="LORA", dora=True),
    LoraMethod("qlora", "low-rank adapters on a 4-bit base", peft_type="LORA", four_bit=True),
    PromptTuningMethod("prompt_tuning", "learned virtual tokens before the prompt", selective_logits=False,
                       refuses_classifier=_PROMPT_TUNING_CLASSIFIER, peft_type="PROMPT_TUNING", learning_rate=3e-2),
    FreezeMethod("freeze", "only the last blocks, the final norm and the head train", learning_rate=1e-4),
    # DPO on chatterbot's self-play pairs (benchmarks/README.md): at 1e-3 and 1e-4 the forgetting probe fell
    # from 0.667 to 0.000 and 0.100; at 1e-5 it held but the pairs were not learnt (0.74 against the few-shot
    # base's 0.89); 3e-5 is where the two met (0.90, probe drop 0.117)
    DPOMethod("dpo", "direct preference optimisation on an adapter", learning_rate=3e-5,
              forgetting_advice="or train.method=orpo, whose loss on the chosen answers keeps the model's own: on "
                                "chatterbot's self-play pairs it kept the probe where DPO lost it at every "
                                "learning rate that learnt the pairs"),
    ORPOMethod("orpo", "odds-ratio preference optimisation on an adapter"),
)}
METHOD_NAMES: tuple[str, ...] = tuple(METHODS)


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"train.method={name!r} is not a training method; choose one of "
                         f"{', '.join(METHODS)}") from None


def merge_adapter(peft_type: str | None, peft_model: Any, tokenizer: Any) -> tuple[Any, Any]:
    """A saved adapter as one plain model, the way the method that saves `peft_type` adapters merges
    them (lora, dora and qlora alike); another PEFT kind is merged into the weights."""
    found = next((m for m in METHODS.values() if m.peft_type == peft_type), None)
    return found.merge(peft_model, tokenizer) if found else (peft_model.merge_and_unload(), tokenizer)


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
        model, tokenizer = merge_adapter(kind, peft_model, load_tokenizer(base_path))
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
