"""Loading a model folder with transformers (its tokenizer, the causal LM or a classifier over labels),
and the check that a folder would not run code of its own unless the user allowed it.

Below `base_model.py` (which resolves `model.base` to a folder) and importing no config, so the training
method registry (`train/methods.py`, which `llmft.config` reads) and the model registry can load models
without an import cycle. `llmft.base_model` re-exports these names.
"""

from __future__ import annotations

import json
from pathlib import Path

from llmft.errors import UserFacingError
from llmft.extras import require


class BaseModelError(UserFacingError, RuntimeError):
    """The configured base model cannot be found or loaded."""


# folders whose own code the user allowed (model.trust_remote_code=true); nothing else runs any
_TRUSTED: set[str] = set()


def custom_code_reason(config_json: Path) -> str | None:
    """Why loading the model in this config would execute code from the model folder, or None."""
    from transformers import CONFIG_MAPPING

    try:
        config = json.loads(config_json.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BaseModelError(f"{config_json}: cannot read the model config: {exc}") from None
    if config.get("auto_map"):
        return f"config.json maps classes to the model's own code ({', '.join(sorted(config['auto_map']))})"
    model_type = config.get("model_type")
    if model_type not in CONFIG_MAPPING:
        return f"model_type {model_type!r} is not built into transformers, so it needs the model's own code"
    return None


def load_tokenizer(name_or_path: str, padding_side: str = "right"):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=name_or_path in _TRUSTED)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not tokenizer.chat_template:
        raise BaseModelError(f"{name_or_path}: tokenizer has no chat template")
    tokenizer.padding_side = padding_side
    return tokenizer


def load_model(name_or_path: str, labels: list[str] | None = None, four_bit: bool = False):
    """The model in full precision (or 4-bit nf4 for QLoRA): with `labels`, a new (seeded)
    sequence-classification head over them; without, the causal LM."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, BitsAndBytesConfig

    kwargs: dict = {"dtype": torch.float32, "trust_remote_code": name_or_path in _TRUSTED}
    if four_bit:
        require("bitsandbytes", "qlora", "QLoRA (a 4-bit base, train.method=qlora)")
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16 if torch.cuda.is_available() else torch.float32)
    try:
        if labels is None:
            return AutoModelForCausalLM.from_pretrained(name_or_path, **kwargs)
        model = AutoModelForSequenceClassification.from_pretrained(
            name_or_path, num_labels=len(labels), id2label=dict(enumerate(labels)),
            label2id={name: i for i, name in enumerate(labels)}, **kwargs)
    except OSError as exc:
        raise BaseModelError(f"cannot load model {name_or_path!r}: {exc}".splitlines()[0]) from None
    # the head reads the last non-pad token; SmolLM2 pads with EOS, which text never contains
    model.config.pad_token_id = load_tokenizer(name_or_path).pad_token_id
    return model
