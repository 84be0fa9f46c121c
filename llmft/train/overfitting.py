"""Overfitting, read from the training history: validation loss rising while training loss falls."""

from __future__ import annotations

import itertools
from typing import Any

RISES = 2  # consecutive validation rises before it counts: one noisy evaluation is not a trend


def overfitting_onset(history: list[dict[str, Any]]) -> int | None:
    """The step after which validation loss rose `RISES` evaluations in a row while the training loss
    over the same steps kept falling; None when that never happened (or too few evaluations)."""
    evals = [(int(h["step"]), float(h["eval_loss"])) for h in history if "eval_loss" in h]
    train = [(int(h["step"]), float(h["loss"])) for h in history if "loss" in h]
    for i in range(len(evals) - RISES):
        window = evals[i:i + RISES + 1]
        if not all(b[1] > a[1] for a, b in itertools.pairwise(window)):
            continue
        start, end = window[0][0], window[-1][0]
        before = [loss for step, loss in train if step <= start]
        during = [loss for step, loss in train if start < step <= end]
        if before and during and sum(during) / len(during) < sum(before[-len(during):]) / len(before[-len(during):]):
            return start
    return None
