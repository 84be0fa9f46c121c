"""Generation metrics through Hugging Face `evaluate`: ROUGE-1/2/L/Lsum, BLEU, chrF, exact match, word error
rate (the project's own metric module, loaded from a file so it works offline), and perplexity.

`LOWER_IS_BETTER` tells the promotion gate which way each metric points.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any

MODULE = Path(__file__).parent / "metric_modules" / "text_overlap.py"
NAMES = ("rouge1", "rouge2", "rougeL", "rougeLsum", "bleu", "chrf", "exact_match", "wer")
LOWER_IS_BETTER = frozenset({"eval_loss", "perplexity", "wer", "unsupported_content"})


@functools.cache
def _module() -> Any:
    import evaluate

    return evaluate.load(str(MODULE))


def overlap(predictions: list[str], references: list[str],
            names: tuple[str, ...] = NAMES) -> tuple[dict[str, float], list[float]]:
    """Corpus scores (those in `names`), and ROUGE-L per row."""
    if not predictions or len(predictions) != len(references):
        raise ValueError(f"need equal, non-zero numbers of predictions and references "
                         f"({len(predictions)} vs {len(references)})")
    result = _module().compute(predictions=predictions, references=references)
    per_row = [float(v) for v in result.pop("rougeL_per_row")]
    return {name: float(result[name]) for name in names}, per_row


def perplexity(eval_loss: float) -> float:
    """exp(mean token cross-entropy); inf when the loss is too large to exponentiate."""
    if math.isnan(eval_loss):
        return math.nan
    return math.exp(eval_loss) if eval_loss < 700 else math.inf
