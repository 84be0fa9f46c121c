"""Score a model on the held-out test split: batched greedy generation plus teacher-forced loss.

Generation is left-padded and batched over length-sorted prompts (order restored afterwards);
eval loss is the mean cross-entropy over response tokens, the same tokens training learns.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from typing import Any

from llmft.chat_format import IGNORE_INDEX, PadToLongest, render_generation_prompt, with_system

log = logging.getLogger(__name__)


def generate(model: Any, tokenizer: Any, prompt_texts: list[str], max_new_tokens: int,
             batch_size: int, desc: str = "generate") -> list[str]:
    import torch
    from tqdm.auto import tqdm

    tokenizer.padding_side = "left"
    order = sorted(range(len(prompt_texts)), key=lambda i: len(prompt_texts[i]))
    outputs: list[str] = [""] * len(prompt_texts)
    model.eval()
    with torch.inference_mode():
        for start in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch"):
            idx = order[start:start + batch_size]
            enc = tokenizer([prompt_texts[i] for i in idx], return_tensors="pt", padding=True,
                            add_special_tokens=False).to(model.device)
            out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
            texts = tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
            for i, text in zip(idx, texts, strict=True):
                outputs[i] = text.strip()
    return outputs


def eval_loss(model: Any, tokenizer: Any, examples: list[dict[str, list[int]]], batch_size: int) -> float:
    import torch

    collate = PadToLongest(tokenizer.pad_token_id)
    total_loss, total_tokens = 0.0, 0
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(examples), batch_size):
            batch = collate(examples[start:start + batch_size])
            batch = {k: v.to(model.device) for k, v in batch.items()}
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            shift_logits = logits[:, :-1].reshape(-1, logits.shape[-1]).float()
            shift_labels = batch["labels"][:, 1:].reshape(-1)
            total_loss += float(torch.nn.functional.cross_entropy(
                shift_logits, shift_labels, ignore_index=IGNORE_INDEX, reduction="sum"))
            total_tokens += int((shift_labels != IGNORE_INDEX).sum())
    return total_loss / total_tokens if total_tokens else math.nan


def evaluate_model(model: Any, tokenizer: Any, system: str | None, test: list[dict[str, Any]],
                   scorer: Callable[[list[str], list[str]], dict[str, float]],
                   max_new_tokens: int, batch_size: int, desc: str) -> tuple[dict[str, float], list[str]]:
    """Task metrics and eval loss for one model on tokenized test rows; returns (metrics, outputs).

    Each row has `messages` (JSON, ending with the reference assistant turn) and the `input_ids` /
    `labels` training used; the generation prompt is everything before the reference turn. A
    prompt-tuned model's template starts with its baked virtual tokens: the loss sees them too.
    """
    from llmft.methods import prompt_prefix_ids

    prompts = [render_generation_prompt(tokenizer, with_system(system, json.loads(r["messages"])[:-1]))
               for r in test]
    outputs = generate(model, tokenizer, prompts, max_new_tokens, batch_size, desc=desc)
    metrics = scorer(outputs, [r["response"] for r in test])
    prefix = prompt_prefix_ids(tokenizer)
    examples = [{"input_ids": prefix + list(map(int, r["input_ids"])),
                 "labels": [IGNORE_INDEX] * len(prefix) + list(map(int, r["labels"]))} for r in test]
    metrics["eval_loss"] = eval_loss(model, tokenizer, examples, batch_size)
    return metrics, outputs
