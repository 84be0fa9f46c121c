"""Few-shot baselines: k worked examples from the training split, shown to the base model as earlier
user/assistant turns before each test row.

Shots are drawn once per run, seeded, from the training split (never test): stratified by label for
classification, so the shots cover as many labels as k allows. Each test row keeps its own input
exactly as the zero-shot base sees it (cut to `train.max_seq_length`); shots fill only the room left
under the few-shot budget, `eval.few_shot_max_tokens` within the model's context (`shot_budget`):
a shot's input is first cut to a fair share of it, then any shot that still does not fit is
dropped, and how many were used per row is recorded. The budget is the model's, not training's:
fitted to the training length, long inputs left room for almost no shot (zero-shot under another
name).
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from llmft.chat_format import encode_to_fit, render_chat

# roles a shot carries: a preference row's rejected answer (or a system turn) is never shown as an example
SHOT_ROLES = ("user", "assistant")


def draw_shots(rows: list[dict[str, Any]], k: int, seed: int, label_key: str | None = None) -> list[dict[str, Any]]:
    """k rows, seeded. With `label_key`, round-robin over the labels (in a seeded order), so k shots
    cover min(k, labels) distinct labels and no label gets two before every label has one."""
    if k <= 0 or not rows:
        return []
    rng = random.Random(seed)
    if label_key is None:
        return [rows[i] for i in sorted(rng.sample(range(len(rows)), min(k, len(rows))))]
    groups: dict[str, list[int]] = defaultdict(list)
    for i, row in enumerate(rows):
        groups[str(row[label_key])].append(i)
    order = sorted(groups)
    rng.shuffle(order)
    for label in order:
        rng.shuffle(groups[label])
    chosen: list[int] = []
    depth = 0
    while len(chosen) < min(k, len(rows)):
        for label in order:
            if depth < len(groups[label]) and len(chosen) < k:
                chosen.append(groups[label][depth])
        depth += 1
    picked = [rows[i] for i in chosen]
    rng.shuffle(picked)  # the label nearest the question must not follow a fixed pattern
    return picked


def prompt_tokens(tokenizer: Any, messages: list[dict[str, str]]) -> int:
    """Tokens of the rendered conversation (what the model reads, answer included)."""
    return len(tokenizer(render_chat(tokenizer, messages), add_special_tokens=False)["input_ids"])


@dataclass
class Fitted:
    conversation: list[dict[str, str]]  # system?, the shots' turns, the row's own turns
    shots_used: int
    context_messages: int  # leading messages that are not the row's own (system + shots): no eval loss on them


def cut_shot(tokenizer: Any, shot: list[dict[str, str]], budget: int) -> list[dict[str, str]]:
    """A shot's input cut to `budget` tokens (its answer kept whole); uncut when even the answer alone
    does not fit (it is then dropped by `fit_shots` if there is no room)."""
    fitted = encode_to_fit(tokenizer, shot, budget)
    return fitted[1] if fitted is not None else shot


def fit_shots(tokenizer: Any, conversation: list[dict[str, str]], shots: list[list[dict[str, str]]],
              max_length: int) -> Fitted:
    """`conversation` (the row, ending with its answer) with as many of `shots` as fit in
    `max_length` tokens, in their order, inserted after the system turn. The row itself is never cut
    here: it arrives fitted, exactly as the zero-shot base sees it."""
    first = 1 if conversation and conversation[0]["role"] == "system" else 0
    head, own = conversation[:first], conversation[first:]
    kept: list[dict[str, str]] = []
    used = 0
    for shot in shots:
        trial = [*head, *kept, *shot, *own]
        if prompt_tokens(tokenizer, [m for m in trial if m["role"] in ("system", *SHOT_ROLES)]) <= max_length:
            kept += shot
            used += 1
    return Fitted([*head, *kept, *own], used, first + len(kept))


def shot_turns(conversation: list[dict[str, str]]) -> list[dict[str, str]]:
    """A training row's turns as a worked example: user and assistant turns only."""
    return [m for m in conversation if m["role"] in SHOT_ROLES]


def prepare_shots(tokenizer: Any, shots: list[list[dict[str, str]]], k: int,
                  max_length: int) -> list[list[dict[str, str]]]:
    """Each shot cut to a fair share of the context (max_length // (k + 1)): the test row keeps the rest."""
    budget = max(max_length // (max(k, len(shots)) + 1), 16)
    return [cut_shot(tokenizer, shot_turns(s), budget) for s in shots]


def shot_budget(model: Any, max_seq_length: int, few_shot_max_tokens: int | None, max_new_tokens: int) -> int:
    """Tokens a few-shot prompt may take: `few_shot_max_tokens` within the model's context (less the
    answer it generates), never less than the row's own `max_seq_length`; without a budget,
    `max_seq_length`."""
    if few_shot_max_tokens is None:
        return max_seq_length
    context = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    budget = few_shot_max_tokens
    if isinstance(context, int):
        budget = min(budget, context - max_new_tokens)
    return max(budget, max_seq_length)


def usage(used: list[int], k: int, budget: int | None = None) -> dict[str, float]:
    """How many shots the rows got (shots that did not fit were dropped), and the budget they fitted."""
    n = max(len(used), 1)
    out = {"k": float(k), "used_mean": sum(used) / n, "used_min": float(min(used, default=0)),
           "used_max": float(max(used, default=0)), "rows_with_all": float(sum(u == k for u in used))}
    if budget is not None:
        out["budget_tokens"] = float(budget)
    return out
