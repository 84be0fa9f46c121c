"""The masked causal-LM loss, shared by training and evaluation so both measure the same thing.

Cross-entropy over labelled tokens only (prompt and padding are -100); `sequence_logps` gives the
same per row (the preference losses compare rows). Logits are computed only at
positions whose next token is labelled in some row of the batch: the 49k-word projection at every
prompt position was most of a CPU step's time, and it does not change the loss.

Classification: `class_weighted_loss` with `balanced_class_weights` from the training split's label
counts (train.class_weights: balanced), so a classifier gains nothing by answering the majority class.
Generative rows in groups (extraction: rows with no entity and the rest): `row_weighted_lm_loss` with
`balanced_group_weights`, so an all-empty answer gains nothing either.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from llmft.chat_format import IGNORE_INDEX


def masked_lm_loss(model: Any, input_ids: Any, attention_mask: Any, labels: Any, **model_kwargs: Any,
                   ) -> tuple[Any, Any, Any]:
    """(sum of token losses, number of labelled tokens, model outputs) for one batch."""
    import torch

    targets = labels[:, 1:]
    positions = (targets != IGNORE_INDEX).any(0).nonzero().squeeze(-1)
    outputs = model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=positions, **model_kwargs)
    logits = outputs.logits
    loss_sum = torch.nn.functional.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), targets[:, positions].reshape(-1),
        ignore_index=IGNORE_INDEX, reduction="sum")
    return loss_sum, (targets != IGNORE_INDEX).sum(), outputs


def sequence_logps(model: Any, input_ids: Any, attention_mask: Any, labels: Any, **model_kwargs: Any,
                   ) -> tuple[Any, Any, Any]:
    """(per-row sum of labelled-token log-probs, per-row labelled-token counts, model outputs).

    The log-likelihood of each row's response under the model, with the same masking and the same
    labelled-positions-only logits as `masked_lm_loss`: preference losses compare these per row.
    """
    import torch

    targets = labels[:, 1:]
    positions = (targets != IGNORE_INDEX).any(0).nonzero().squeeze(-1)
    outputs = model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=positions, **model_kwargs)
    logits = outputs.logits.float()
    kept = targets[:, positions]
    token_nll = torch.nn.functional.cross_entropy(  # fused log-softmax; -100 gives 0
        logits.reshape(-1, logits.shape[-1]), kept.reshape(-1), ignore_index=IGNORE_INDEX,
        reduction="none").view(kept.shape)
    return -token_nll.sum(-1), (kept != IGNORE_INDEX).sum(-1), outputs


def balanced_class_weights(counts: Sequence[int]) -> list[float]:
    """scikit-learn's "balanced" weights, n / (k * count) per class, from the training rows per class:
    every class weighs as much in total as any other, and the weighted mean over the training rows is
    1 (so the loss keeps its scale). A class with no training rows (a pinned `data.labels` entry) gets
    1.0; it has no training loss to weigh."""
    n = sum(counts)
    k = sum(1 for c in counts if c > 0)
    return [n / (k * c) if c > 0 else 1.0 for c in counts]


def balanced_group_weights(groups: Sequence[str]) -> dict[str, float]:
    """`balanced_class_weights` for named groups of rows (extraction: entity-free rows and the rest)."""
    counts = Counter(groups)
    order = sorted(counts)
    return dict(zip(order, balanced_class_weights([counts[g] for g in order]), strict=True))


def row_weighted_lm_loss(model: Any, input_ids: Any, attention_mask: Any, labels: Any, weights: Any,
                         **model_kwargs: Any) -> tuple[Any, Any, Any]:
    """`masked_lm_loss` with each row's token losses scaled by its weight: (weighted sum, number of
    labelled tokens, model outputs). Weights average 1 over the training rows, so the scale holds."""
    logps, counts, outputs = sequence_logps(model, input_ids, attention_mask, labels, **model_kwargs)
    return -(logps * weights.to(logps.dtype)).sum(), counts.sum(), outputs


def class_weighted_loss(logits: Any, labels: Any, weights: Sequence[float] | Any) -> Any:
    """Cross-entropy of class logits with a weight per class: sum over rows of weight[label] x loss,
    divided by the batch's total weight (torch's weighted mean; all-ones weights give the plain mean)."""
    import torch

    weight = torch.as_tensor(weights, dtype=torch.float32, device=logits.device)
    return torch.nn.functional.cross_entropy(logits.float().view(-1, logits.shape[-1]), labels.view(-1),
                                             weight=weight)
