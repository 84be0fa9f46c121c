"""Batched text generation: one left-padded `generate` call for many prompts, each with its own
token budget, returning text, token counts and why each stopped.

Evaluation and the model server both use it, so what is measured is what is served. Greedy decoding
of a prompt in a batch gives the same tokens as on its own (the batched-eval benchmark and a test
check this): padding is masked and positions come from the attention mask.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop": the model ended its turn; "length": the token budget ran out


@dataclass(frozen=True)
class Sampling:
    """Greedy when temperature is 0 (OpenAI clients send 0 for deterministic answers)."""

    temperature: float = 0.0
    top_p: float = 1.0

    def generate_kwargs(self) -> dict[str, Any]:
        if self.temperature <= 0:
            return {"do_sample": False}
        return {"do_sample": True, "temperature": self.temperature, "top_p": self.top_p}


def pad_id(tokenizer: Any) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def left_padded(rows: list[list[int]], pad: int) -> tuple[Any, Any]:
    """Token ids and attention mask of rows padded on the left to the longest (as `generate` wants)."""
    import torch

    width = max(len(row) for row in rows)
    return (torch.tensor([[pad] * (width - len(row)) + row for row in rows]),
            torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in rows]))


def complete_batch(model: Any, tokenizer: Any, prompts: list[str], max_new_tokens: list[int],
                   sampling: Sampling = Sampling()) -> list[Completion]:
    """Generate for every prompt at once; row i stops at its own `max_new_tokens[i]` or its EOS."""
    import torch

    # Left padding by hand: asking a fast tokenizer to pad switches padding on in its shared Rust state
    # and off again, so a server thread tokenizing a request at that moment turned it off mid-call and
    # the batch came back ragged ("Unable to create tensor"); an unpadded call touches no such state.
    pad = pad_id(tokenizer)
    ids, mask = left_padded(tokenizer(prompts, add_special_tokens=False)["input_ids"], pad)
    enc = {"input_ids": ids.to(model.device), "attention_mask": mask.to(model.device)}
    with torch.inference_mode():
        out = model.generate(**enc, max_new_tokens=max(max_new_tokens), pad_token_id=pad,
                             eos_token_id=tokenizer.eos_token_id, **sampling.generate_kwargs())
    new = out[:, enc["input_ids"].shape[1]:].tolist()
    eos = model.generation_config.eos_token_id
    stops = {tokenizer.eos_token_id, *(eos if isinstance(eos, list) else [] if eos is None else [eos])}
    results = []
    for row, budget, mask in zip(new, max_new_tokens, enc["attention_mask"].tolist(), strict=True):
        tokens = row[:budget]
        end = next((i for i, t in enumerate(tokens) if t in stops), None)
        finish = "stop" if end is not None else "length"
        tokens = tokens[:end] if end is not None else tokens
        results.append(Completion(text=tokenizer.decode(tokens, skip_special_tokens=True).strip(),
                                  prompt_tokens=int(sum(mask)), completion_tokens=len(tokens) + (end is not None),
                                  finish_reason=finish))
    return results
