"""Scoring forwards over rows that begin alike: an unlabelled start that rows share (the system turn
with the task's instruction; a few-shot prompt's worked examples, often thousands of tokens; a
preference pair's prompt) is run through the model once, and each batch continues from a copy of its
keys and values, so only the rows' own tokens are computed per row. The results are those of a plain
forward of each row: the same labelled tokens, the same positions.

Rows need not all share one start: a few-shot row whose first worked example did not fit shares less
with the others than they share with each other. `start_groups` sorts the rows (rows with a common
start become neighbours) and cuts them into groups, each with its own start, choosing the cut that
computes the fewest tokens; a row that shares nothing worth it goes through plainly.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import pairwise
from typing import Any, NamedTuple

import torch

from llmft.chat_format import IGNORE_INDEX, PadToLongest, token_batches
from llmft.loss import sequence_logps
from llmft.serve.scheduler import PREFIX_MIN_TOKENS, common_start, expanded_cache, start_layers, supports

Example = dict[str, list[int]]
# rows one group may hold: a family larger than this is cut into several groups (each computes the start
# once more), which keeps the grouping linear in the rows (an evaluation of the whole test split)
GROUP_ROWS = 256


def _shareable(example: Example) -> int:
    """Leading tokens of `example` that a start may hold: none it is trained on, and not the token
    before its first labelled one (that token's logits score it, so it is computed in the row's own
    forward), nor the whole row."""
    labels = example["labels"]
    first = next((i for i, t in enumerate(labels) if t != IGNORE_INDEX), len(labels))
    return min(first - 1, len(example["input_ids"]) - 1)


def shared_start(examples: list[Example]) -> int:
    """Leading tokens every example has in common and may share (`_shareable`); 0 when that is too
    short to pay or there is only one example."""
    if len(examples) < 2:
        return 0
    first = examples[0]["input_ids"]
    common = min(common_start(first, ex["input_ids"]) for ex in examples[1:])
    length = min(common, *(_shareable(ex) for ex in examples))
    return length if length >= PREFIX_MIN_TOKENS else 0


def start_groups(examples: list[Example]) -> list[tuple[int, list[int]]]:
    """(start, example indices) groups covering every example once: a group of two or more rows
    shares its first `start` tokens; start 0 is the group computed plainly. The grouping minimises the
    tokens computed (each group's start once, then each row's rest) over cuts of the sorted rows."""
    order = sorted(range(len(examples)), key=lambda i: examples[i]["input_ids"])
    lengths = [len(examples[i]["input_ids"]) for i in order]
    shareable = [_shareable(examples[i]) for i in order]
    # tokens each sorted row shares with the next (a group's start is the least of these within it)
    adjacent = [common_start(examples[a]["input_ids"], examples[b]["input_ids"]) for a, b in pairwise(order)]
    # cost[j]: fewest tokens for the first j sorted rows; cut[j]: where its last group begins; start_of[j]:
    # that group's start (0: the row computed plainly)
    cost, cut, start_of = [0] * (len(order) + 1), [0] * (len(order) + 1), [0] * (len(order) + 1)
    for j in range(1, len(order) + 1):
        cost[j], cut[j], start_of[j] = cost[j - 1] + lengths[j - 1], j - 1, 0
        start, rest = shareable[j - 1], lengths[j - 1]
        for i in range(j - 2, max(j - GROUP_ROWS, 0) - 1, -1):  # the group order[i:j], grown backwards
            start = min(start, shareable[i], adjacent[i])
            if start < PREFIX_MIN_TOKENS:
                break  # a shorter start only gets shorter as the group grows
            rest += lengths[i]
            total = cost[i] + start + rest - (j - i) * start
            if total < cost[j]:
                cost[j], cut[j], start_of[j] = total, i, start
    groups, plain, j = [], [], len(order)
    while j > 0:
        i = cut[j]
        if start_of[j]:
            groups.append((start_of[j], sorted(order[i:j])))
        else:
            plain += order[i:j]
        j = i
    groups.reverse()
    return [*groups, (0, sorted(plain))] if plain else groups


def _batches(model: Any, pad_id: int, examples: list[Example], batch_size: int,
             ) -> Iterator[tuple[list[int], dict[str, Any], dict[str, Any]]]:
    """(example indices, padded batch of their tokens after the start, model keyword arguments that
    continue from the start) over all examples, each group's start computed once; at most
    `batch_size` rows and the token budget of `token_batches` per batch."""
    collate = PadToLongest(pad_id)
    groups = start_groups(examples) if supports(model) else [(0, list(range(len(examples))))]
    for start, members in groups:
        layers = start_layers(model, examples[members[0]]["input_ids"][:start]) if start else None
        lengths = [len(examples[i]["input_ids"]) - start for i in members]
        for group in token_batches(lengths, batch_size):
            indices = [members[g] for g in group]
            chunk = [{"input_ids": examples[i]["input_ids"][start:], "labels": examples[i]["labels"][start:]}
                     for i in indices]
            batch = {k: v.to(model.device) for k, v in collate(chunk).items()}
            if not start:
                yield indices, batch, {}
                continue
            rows, width = batch["input_ids"].shape
            batch["attention_mask"] = torch.cat([batch["attention_mask"].new_ones(rows, start),
                                                 batch["attention_mask"]], dim=1)
            yield indices, batch, {"past_key_values": expanded_cache(model, layers, rows), "use_cache": True,
                                   "position_ids": torch.arange(start, start + width, device=model.device
                                                                ).expand(rows, width)}


def loss_sums(model: Any, pad_id: int, examples: list[Example], batch_size: int) -> tuple[float, int]:
    """(summed token loss, labelled tokens) over the examples, shared starts computed once."""
    scored = row_logps(model, pad_id, examples, batch_size)
    return -sum(value for value, _ in scored), sum(count for _, count in scored)


def row_logps(model: Any, pad_id: int, examples: list[Example], batch_size: int) -> list[tuple[float, int]]:
    """Each example's (summed log-probability of its labelled tokens, labelled tokens), in order."""
    out = [(0.0, 0)] * len(examples)
    with torch.inference_mode():
        for indices, batch, extra in _batches(model, pad_id, examples, batch_size):
            if not (batch["labels"][:, 1:] != IGNORE_INDEX).any():
                continue
            logps, counts, _ = sequence_logps(model, batch["input_ids"], batch["attention_mask"], batch["labels"],
                                              **extra)
            for i, value, count in zip(indices, logps.tolist(), counts.tolist(), strict=True):
                out[i] = (value, count)
    return out


class PairLogps(NamedTuple):
    chosen: list[float]  # each pair's summed log-prob of its chosen answer
    rejected: list[float]
    chosen_tokens: list[int]  # labelled tokens of each chosen answer (its eval loss is -chosen / tokens)


def pair_logps(model: Any, pad_id: int, pairs: list[Example], batch_size: int) -> PairLogps:
    """Summed answer log-probs of each preference pair's chosen and rejected conversation (`input_ids`/
    `labels` and `rejected_input_ids`/`rejected_labels`): a pair's prompt and a few-shot prompt's worked
    examples are computed once."""
    rows = [{"input_ids": p["input_ids"], "labels": p["labels"]} for p in pairs]
    rows += [{"input_ids": p["rejected_input_ids"], "labels": p["rejected_labels"]} for p in pairs]
    model.eval()
    scored = row_logps(model, pad_id, rows, batch_size)
    n = len(pairs)
    return PairLogps([v for v, _ in scored[:n]], [v for v, _ in scored[n:]], [c for _, c in scored[:n]])
