"""The round trip: load a written GGUF back with transformers (`gguf_file=`) and compare its logits
with the merged model's on real prompts, teacher-forced over whole conversations.

Tolerances, relative to the logit scale (max |logit| of the merged model on the same positions):
f16 stores every matrix in half precision, so logits move by rounding only (measured: max ~0.1% of
the scale on SmolLM2) and the argmax stays put; Q8_0 keeps 8 bits per weight with one scale per 32,
so logits move more (measured: mean ~0.5%, max 3-11% at the worst of ~10M logits) and a near-tie
flips the argmax now and then. The mean bounds the typical error, the max catches a broken tensor.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmft.chat_format import with_system
from llmft.contracts import GGUFCheck


@dataclass(frozen=True)
class Tolerance:
    max_rel_diff: float  # max |logit diff| / logit scale
    mean_rel_diff: float  # mean |logit diff| / logit scale
    min_top1: float  # share of positions with the same argmax

    def describe(self) -> str:
        return (f"max|diff| <= {self.max_rel_diff:g} and mean|diff| <= {self.mean_rel_diff:g} x max|logit|, "
                f"top-1 agreement >= {self.min_top1:g}")

    def passes(self, numbers: dict[str, float]) -> bool:
        scale = numbers["logit_scale"]
        return (numbers["max_abs_diff"] <= self.max_rel_diff * scale
                and numbers["mean_abs_diff"] <= self.mean_rel_diff * scale
                and numbers["top1_agreement"] >= self.min_top1)


TOLERANCES = {"f16": Tolerance(0.01, 0.002, 0.98), "q8_0": Tolerance(0.15, 0.01, 0.90)}

# real conversations of the kinds the project trains on (extraction, chat, summarization), with answers,
# so the comparison covers prompt and answer positions alike
CHECK_CONVERSATIONS: list[list[dict[str, str]]] = [
    [{"role": "user", "content": "Extract the product attributes as JSON: Men's waterproof hiking boots, brown "
                                 "leather, size 10, Vibram sole, $129.99"},
     {"role": "assistant", "content": '{"category": "footwear", "color": "brown", "material": "leather", '
                                      '"size": "10", "price": 129.99}'}],
    [{"role": "user", "content": "What is the capital of France, and what river runs through it?"},
     {"role": "assistant", "content": "The capital of France is Paris. The Seine runs through it."}],
    [{"role": "user", "content": "Summarize in one sentence: The city council voted on Tuesday to extend the "
                                 "bike lane network by 40 kilometres over the next three years, funded by a "
                                 "parking levy that takes effect in January."},
     {"role": "assistant", "content": "The council approved a three-year, 40 km bike lane expansion paid for by a "
                                      "new parking levy."}],
]


def check_texts(tokenizer: Any, system_prompt: str | None = None) -> list[str]:
    """The check conversations rendered with the model's own template (and trained system prompt)."""
    return [tokenizer.apply_chat_template(with_system(system_prompt, conv), tokenize=False)
            for conv in CHECK_CONVERSATIONS]


def _logits(model: Any, ids: list[list[int]]) -> list[Any]:
    import torch

    with torch.no_grad():
        return [model(torch.tensor([row])).logits[0].float() for row in ids]


def compare(reference: list[Any], candidate: list[Any]) -> dict[str, float]:
    """Max/mean |diff|, scale and top-1 agreement over all positions of all prompts."""
    import torch

    ref, cand = torch.cat(reference), torch.cat(candidate)
    diff = (ref - cand).abs()
    return {"tokens": int(ref.shape[0]), "max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
            "logit_scale": float(ref.abs().max()),
            "top1_agreement": float((ref.argmax(-1) == cand.argmax(-1)).float().mean())}


def round_trip(model: Any, tokenizer: Any, gguf_files: dict[str, Path], system_prompt: str | None = None
               ) -> list[GGUFCheck]:
    """One `GGUFCheck` per file; the first also checks the GGUF's tokenizer against the model's."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    texts = check_texts(tokenizer, system_prompt)
    ids = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]
    reference = _logits(model.eval(), ids)
    checks = []
    config = None
    for quant, path in gguf_files.items():
        tokenizer_ok = None
        if config is None:
            # metadata and tokenizer are written by the same code into every file: the first file's are
            # checked in full, later files reuse its config (parsing a GGUF's metadata takes seconds)
            loaded_tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
            tokenizer_ok = [loaded_tok(t, add_special_tokens=False)["input_ids"] for t in texts] == ids
        loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=model.dtype,
                                                      config=config)
        if config is None:
            config = copy.deepcopy(loaded.config)
            # the loader attaches its GgufConfig; handed back in, transformers mistakes it for a quantiser's
            config.__dict__.pop("quantization_config", None)
        numbers = compare(reference, _logits(loaded.eval(), ids))
        del loaded
        tol = TOLERANCES[quant]
        passed = tol.passes(numbers) and tokenizer_ok is not False
        checks.append(GGUFCheck(quant=quant, file=path.name, bytes=path.stat().st_size, tokenizer_matches=tokenizer_ok,
                                passed=passed, tolerance=tol.describe(), **numbers))
    return checks
