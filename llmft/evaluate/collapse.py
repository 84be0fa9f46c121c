"""Collapse to one answer: a model that gives (nearly) the same answer to every row, while the gold
answers are not that concentrated, has learned the majority, not the task (all "not spam" on SMS
spam, `{}` for every tweet). Its macro-F1 or exact-match share can still beat weak prompted
baselines, so the run summary and the promotion gate's reasons say so in words.
"""

from __future__ import annotations

import json
from collections import Counter

from llmft.evaluate.text_metrics import parse_json_object

SHARE = 0.9  # one answer covers at least this share of the predictions ...
MARGIN = 0.05  # ... and at least this much more than of the gold answers (a 91% model on 89% gold is fine)
MIN_ROWS = 5  # fewer rows say nothing about a distribution


def canonical(answer: str) -> str:
    """One spelling per answer: a JSON object with sorted keys, other text case- and space-folded."""
    text = answer.strip()
    obj = parse_json_object(text) if text.startswith(("{", "```")) else None
    if obj is not None:
        return json.dumps(obj, sort_keys=True, ensure_ascii=False)
    return " ".join(text.casefold().split())


def collapse_warning(role: str, outputs: list[str], references: list[str], share: float = SHARE,
                     margin: float = MARGIN) -> str | None:
    """A sentence when one answer covers at least `share` of `outputs` but less than `share` (and
    `margin` less) of `references`; None otherwise."""
    if len(outputs) < MIN_ROWS or len(outputs) != len(references):
        return None
    answer, count = Counter(canonical(o) for o in outputs).most_common(1)[0]
    predicted = count / len(outputs)
    gold = sum(canonical(r) == answer for r in references) / len(references)
    if predicted < share or gold >= share or predicted - gold < margin:
        return None
    shown = "empty" if not answer else repr(answer if len(answer) <= 60 else answer[:57] + "...")
    return (f"collapse: {predicted:.0%} of the {role} answers are {shown} ({count} of {len(outputs)} rows), "
            f"against {gold:.0%} of the gold answers: it answers the majority, not the task")
