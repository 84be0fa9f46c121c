"""Score a model on the held-out test split: batched greedy generation plus teacher-forced loss.

Every generative task also gets the hallucination signal here, once for all of them:
`unsupported_output_rate`, the share of outputs stating something (a number, a name, a quote, a
JSON field value) that the prompt the model saw does not contain.

Generation runs on the continuous batcher with shared prompt starts prefilled once
(`offline_generation`), with a progress bar; `engine="static"`, `batch_size=1` is the
one-prompt-at-a-time path the benchmark compares against.
Eval loss is the mean cross-entropy over response tokens, the same tokens training learns.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from llmft.chat_format import (
    IGNORE_INDEX,
    encode_messages,
    render_generation_prompt,
    truncate,
    with_system,
)
from llmft.evaluate import shared_start, text_metrics
from llmft.offline_generation import generate

# predictions, references, sources -> (aggregate metrics, per-row scores)
TaskScorer = Callable[[list[str], list[str], list[str]], tuple[dict[str, float], list[dict[str, float]]]]


def eval_loss(model: Any, tokenizer: Any, examples: list[dict[str, list[int]]], batch_size: int) -> float:
    """Mean cross-entropy over labelled tokens: the loss training minimises, on held-out rows (starts
    the rows share computed once, `shared_start`)."""
    model.eval()
    total_loss, total_tokens = shared_start.loss_sums(model, tokenizer.pad_token_id, examples, batch_size)
    return total_loss / total_tokens if total_tokens else math.nan


@dataclass
class ModelScores:
    """One model on the evaluation rows: aggregate metrics, its outputs, per-row scores, extras
    (a classifier's confusion matrix and per-class scores)."""

    metrics: dict[str, float]
    outputs: list[str]
    row_scores: list[dict[str, float]] = field(default_factory=list)
    extras: dict[str, Any] = field(default_factory=dict)


def score_generative(model: Any, tokenizer: Any, system: str | None, rows: list[dict[str, Any]],
                     score: TaskScorer, overlap_names: tuple[str, ...], max_new_tokens: int, batch_size: int,
                     max_seq_length: int, desc: str, with_loss: bool = True) -> ModelScores:
    """Greedy generations, the task's metrics, text overlap, eval loss and perplexity for one model
    (`with_loss=False`: no eval loss, for a task that has it from its own forwards).

    Each row has `messages` (JSON: the conversation as encoded for training, input already fitted
    to the length budget, ending with the reference assistant turn) and `response`. Rows are
    rendered and encoded with this model's own tokenizer and chat template, so a champion trained
    on another tokenizer, or a prompt-tuned model whose template starts with its baked virtual
    tokens, is scored on exactly what it would be served.
    """
    conversations = [with_system(system, json.loads(r["messages"])) for r in rows]
    prompts = [render_generation_prompt(tokenizer, conv[:-1]) for conv in conversations]
    outputs = generate(model, tokenizer, prompts, max_new_tokens, batch_size, desc=desc)
    metrics, row_scores = _score_texts(outputs, conversations, rows, score, overlap_names)
    if not with_loss:
        return ModelScores(metrics=metrics, outputs=outputs, row_scores=row_scores)
    examples = [truncate(_own_turns_only(tokenizer, conv, int(r.get("context_messages") or 0)), max_seq_length)
                for conv, r in zip(conversations, rows, strict=True)]
    metrics["eval_loss"] = eval_loss(model, tokenizer, examples, batch_size)
    metrics["perplexity"] = text_metrics.perplexity(metrics["eval_loss"])
    return ModelScores(metrics=metrics, outputs=outputs, row_scores=row_scores)


def score_outputs(outputs: list[str], rows: list[dict[str, Any]], system: str | None, score: TaskScorer,
                  overlap_names: tuple[str, ...]) -> tuple[dict[str, float], list[dict[str, float]]]:
    """Everything `score_generative` measures from the answers alone (the task's metrics, text
    overlap, the unsupported-output signal), for answers that came from elsewhere: a simple baseline
    is scored by exactly the code that scores the models."""
    conversations = [with_system(system, json.loads(r["messages"])) for r in rows]
    return _score_texts(outputs, conversations, rows, score, overlap_names)


def _score_texts(outputs: list[str], conversations: list[list[dict[str, str]]], rows: list[dict[str, Any]],
                 score: TaskScorer, overlap_names: tuple[str, ...]) -> tuple[dict[str, float], list[dict[str, float]]]:
    references = [r["response"] for r in rows]
    sources = [next((m["content"] for m in reversed(conv[:-1]) if m["role"] == "user"), "") for conv in conversations]
    metrics, per_row = score(outputs, references, sources)  # the task's own metrics first: read first
    metrics = dict(metrics)
    row_scores = [dict(r) for r in per_row]
    overlap, rouge_l = text_metrics.overlap(outputs, references, overlap_names)
    metrics.update(overlap)
    for row, value in zip(row_scores, rouge_l, strict=True):
        row["rougeL"] = value
    supports = [support_text(conv[:-1], int(r.get("context_messages") or 0)) for conv, r in
                zip(conversations, rows, strict=True)]
    for row, output, support in zip(row_scores, outputs, supports, strict=True):
        row[text_metrics.UNSUPPORTED_ITEMS] = float(len(text_metrics.unsupported_items(output, support)))
    metrics[text_metrics.UNSUPPORTED_RATE] = text_metrics.unsupported_rate(
        [row[text_metrics.UNSUPPORTED_ITEMS] for row in row_scores])
    return metrics, row_scores


def support_text(prompt: list[dict[str, str]], context: int) -> str:
    """What an answer may draw on: the system turns (an instruction naming allowed values supports
    them) and the row's own turns; a few-shot prompt's worked examples (its first `context`
    messages) do not: a figure copied from another row's answer is not supported by this row."""
    return "\n".join(m["content"] for i, m in enumerate(prompt) if m["role"] == "system" or i >= context)


def _own_turns_only(tokenizer: Any, conversation: list[dict[str, str]], context: int) -> dict[str, list[int]]:
    """The conversation's encoding with its first `context` messages (a few-shot prompt's system turn
    and worked examples) unlabelled: eval loss is on the row's own answers, as for every other model.
    The encoding is prefix-stable, so the context's tokens are exactly the first ones."""
    encoded = encode_messages(tokenizer, conversation)
    if context <= 0 or not any(m["role"] == "assistant" for m in conversation[:context]):
        return encoded
    last = max(i for i, m in enumerate(conversation[:context]) if m["role"] == "assistant")
    n = len(encode_messages(tokenizer, conversation[:last + 1])["input_ids"])
    return {"input_ids": encoded["input_ids"], "labels": [IGNORE_INDEX] * n + encoded["labels"][n:]}
