"""Eval loss over rows that begin alike: the unlabelled start every row shares (the system turn with
the task's instruction; a few-shot prompt's worked examples, often thousands of tokens) is run through
the model once, and each batch continues from a copy of its keys and values, so only the rows' own
turns are computed per row. The loss is over the same labelled tokens as a plain forward of each row.
"""

from __future__ import annotations

from typing import Any

import torch

from llmft.chat_format import IGNORE_INDEX, PadToLongest, token_batches
from llmft.loss import masked_lm_loss
from llmft.serve.scheduler import PREFIX_MIN_TOKENS, common_start, expanded_cache, start_layers, supports


def shared_start(examples: list[dict[str, list[int]]]) -> int:
    """Leading tokens every example has in common and none is trained on, keeping each example's
    first own token out of it (the loss of a labelled token is read off the token before it, which
    must be computed in the example's own forward); 0 when that is too short to pay."""
    if len(examples) < 2:
        return 0
    first = examples[0]["input_ids"]
    common = min(common_start(first, ex["input_ids"]) for ex in examples[1:])
    labelled = min(next((i for i, t in enumerate(ex["labels"]) if t != IGNORE_INDEX), len(ex["labels"]))
                   for ex in examples)
    length = min(common, labelled - 1, min(len(ex["input_ids"]) for ex in examples) - 1)
    return length if length >= PREFIX_MIN_TOKENS else 0


def loss_sums(model: Any, pad_id: int, examples: list[dict[str, list[int]]], batch_size: int,
              ) -> tuple[float, int] | None:
    """(summed loss, labelled tokens) with the shared start computed once; None when the rows share
    no start worth it or the model's cache cannot be reused row by row (`scheduler.supports`)."""
    start = shared_start(examples)
    if not start or not supports(model):
        return None
    layers = start_layers(model, examples[0]["input_ids"][:start])
    collate = PadToLongest(pad_id)
    total_loss, total_tokens = 0.0, 0
    with torch.inference_mode():
        for group in token_batches([len(ex["input_ids"]) - start for ex in examples], batch_size):
            chunk = [{"input_ids": examples[i]["input_ids"][start:], "labels": examples[i]["labels"][start:]}
                     for i in group]
            batch = {k: v.to(model.device) for k, v in collate(chunk).items()}
            if not (batch["labels"][:, 1:] != IGNORE_INDEX).any():
                continue
            rows, width = batch["input_ids"].shape
            mask = torch.cat([batch["attention_mask"].new_ones(rows, start), batch["attention_mask"]], dim=1)
            positions = torch.arange(start, start + width, device=model.device).expand(rows, width)
            loss, count, _ = masked_lm_loss(model, batch["input_ids"], mask, batch["labels"],
                                            past_key_values=expanded_cache(model, layers, rows),
                                            position_ids=positions, use_cache=True)
            total_loss, total_tokens = total_loss + float(loss), total_tokens + int(count)
    return total_loss, total_tokens
