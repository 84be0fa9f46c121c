"""Each adapter method really trains a few steps on the real model, and merges into the fp32 base."""

from pathlib import Path

import pytest

from llmft.chat_format import build_messages, encode_messages
from llmft.config import load_config
from llmft.extraction import INSTRUCTION
from llmft.training import load_merged, train_adapter

LISTINGS = [("Lumora rain jacket | navy blue | nylon | Size M | $79.99",
             '{"brand": "Lumora", "category": "clothing", "color": "navy blue", "material": "nylon", "size": "M", '
             '"price": 79.99}'),
            ("Halden table lamp, teal, ceramic, only $34.00",
             '{"brand": "Halden", "category": "home", "color": "teal", "material": "ceramic", "size": null, '
             '"price": 34.0}')]


@pytest.mark.parametrize("method", ["lora", "dora", "qlora"])
def test_method_trains_and_merges(method: str, base_model_path: str, tokenizer, tmp_path: Path):
    import torch

    examples = [encode_messages(tokenizer, build_messages(INSTRUCTION, p, r)) for p, r in LISTINGS] * 4
    cfg = load_config(None, [f"train.method={method}", "train.max_steps=4", "train.batch_size=4",
                             "train.learning_rate=0.002", "train.warmup_ratio=0"]).train
    result = train_adapter(base_model_path, examples, examples[:2], cfg, tmp_path, log_to_mlflow=False)
    assert result.steps == 4
    assert result.last_loss < result.first_loss  # the loss moved the right way on the real model
    merged = load_merged(base_model_path, result.adapter_dir)
    weight = merged.model.layers[0].self_attn.q_proj.weight
    assert weight.dtype == torch.float32 and not hasattr(weight, "quant_state")  # merged into full precision
