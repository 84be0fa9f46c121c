"""Score a model on the held-out test split: batched greedy generation plus teacher-forced loss.

Generation is left-padded and batched over length-sorted prompts (order restored afterwards), with
a progress bar; `batch_size=1` is the one-prompt-at-a-time path the benchmark compares against.
Eval loss is the mean cross-entropy over response tokens, the same tokens training learns.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from llmft import text_metrics
from llmft.chat_format import (
    IGNORE_INDEX,
    PadToLongest,
    encode_messages,
    render_generation_prompt,
    truncate,
    with_system,
)
from llmft.generation import generate

if TYPE_CHECKING:
    from llmft.tasks import Scorer


def eval_loss(model: Any, tokenizer: Any, examples: list[dict[str, list[int]]], batch_size: int) -> float:
    """Mean cross-entropy over labelled tokens; logits only where a next token is labelled (as in
    training): the 49k-word projection at every prompt token was most of this function's time."""
    import torch

    collate = PadToLongest(tokenizer.pad_token_id)
    total_loss, total_tokens = 0.0, 0
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(examples), batch_size):
            batch = collate(examples[start:start + batch_size])
            batch = {k: v.to(model.device) for k, v in batch.items()}
            targets = batch["labels"][:, 1:]
            positions = (targets != IGNORE_INDEX).any(0).nonzero().squeeze(-1)
            if positions.numel() == 0:
                continue
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                           logits_to_keep=positions).logits
            total_loss += float(torch.nn.functional.cross_entropy(
                logits.float().reshape(-1, logits.shape[-1]), targets[:, positions].reshape(-1),
                ignore_index=IGNORE_INDEX, reduction="sum"))
            total_tokens += int((targets != IGNORE_INDEX).sum())
    return total_loss / total_tokens if total_tokens else math.nan


@dataclass
class ModelScores:
    """One model on the test rows: aggregate metrics, its outputs, and per-row scores."""

    metrics: dict[str, float]
    outputs: list[str]
    row_scores: list[dict[str, float]] = field(default_factory=list)


def score_generative(model: Any, tokenizer: Any, system: str | None, test: list[dict[str, Any]],
                     scorers: dict[str, Scorer], max_new_tokens: int, batch_size: int, max_seq_length: int,
                     desc: str) -> ModelScores:
    """Text metrics, the named task scorers, eval loss and perplexity for one model on test rows.

    Each row has `messages` (JSON, ending with the reference assistant turn) and `response`. Rows
    are rendered and encoded with this model's own tokenizer and chat template, so a champion
    trained on another tokenizer, or a prompt-tuned model whose template starts with its baked
    virtual tokens, is scored on exactly what it would be served.
    """
    conversations = [with_system(system, json.loads(r["messages"])) for r in test]
    prompts = [render_generation_prompt(tokenizer, conv[:-1]) for conv in conversations]
    outputs = generate(model, tokenizer, prompts, max_new_tokens, batch_size, desc=desc)
    references = [r["response"] for r in test]
    metrics: dict[str, float] = {}
    rows: list[dict[str, float]] = [{} for _ in test]
    for score in scorers.values():  # the task's own metrics first: they are what people read first
        aggregate, per_row = score(outputs, references)
        metrics.update(aggregate)
        for row, extra in zip(rows, per_row, strict=True):
            row.update(extra)
    overlap, rouge_l = text_metrics.overlap(outputs, references)
    metrics.update(overlap)
    for row, value in zip(rows, rouge_l, strict=True):
        row["rougeL"] = value
    examples = [truncate(encode_messages(tokenizer, conv), max_seq_length) for conv in conversations]
    metrics["eval_loss"] = eval_loss(model, tokenizer, examples, batch_size)
    metrics["perplexity"] = text_metrics.perplexity(metrics["eval_loss"])
    return ModelScores(metrics=metrics, outputs=outputs, row_scores=rows)
