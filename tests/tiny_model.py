"""A tiny random model of the real architecture for plumbing tests.

SmolLM2-135M's own config shrunk to 2 layers and a 64-wide hidden state (about 3.3M parameters,
almost all of them the embedding of the real 49,152-token vocabulary), saved beside the real
SmolLM2 tokenizer and chat template. Chat templating, label masking, LoRA/QLoRA/prompt tuning,
the KV cache, GGUF export and serving all run their real code paths on it, a hundred times faster.
Its answers are noise, but never blank: the (tied) embedding rows of special tokens and of tokens that
decode to whitespace are zero, so their logits are 0 while the largest of the others is above it and a
greedy answer is visible text (servers refuse a blank smoke answer). Tests that judge quality use the
real model (the `guard` tier).

    python tests/tiny_model.py DEST      # build one by hand, e.g. for `--set model.base=DEST`
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "generation_config.json")

# enough to exercise grouped-query attention (2 kv heads for 4 query heads) like the real model
SHRINK = {"num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
          "num_key_value_heads": 2, "head_dim": 16}


def build_tiny_model(dest: Path, seed: int = 0) -> Path:
    """Write the tiny model to `dest` (a fresh folder) and return it. Deterministic for a seed."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from llmft.base_model import resolve_base_model
    from llmft.config import EMBEDDED_MODEL

    real = Path(resolve_base_model(EMBEDDED_MODEL))
    config = AutoConfig.from_pretrained(real)
    for key, value in SHRINK.items():
        setattr(config, key, value)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(real)
    silent = set(tokenizer.all_special_ids) | {i for i in range(len(tokenizer)) if not tokenizer.decode([i]).strip()}
    with torch.no_grad():
        model.get_output_embeddings().weight[sorted(silent)] = 0.0
    dest.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dest)
    for name in TOKENIZER_FILES:
        if (real / name).is_file():
            shutil.copy2(real / name, dest / name)
    (dest / "TINY_MODEL.json").write_text(json.dumps({"seed": seed, **SHRINK}))
    return dest


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python tests/tiny_model.py DEST")
    print(build_tiny_model(Path(sys.argv[1])))
