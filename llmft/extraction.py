"""The default task: product attribute extraction, and its scorers.

Base and fine-tuned models get the same instruction (a fair zero-shot baseline). Scores are
fractions in [0, 1]:
- json_validity: the output parses as a JSON object;
- field_accuracy (primary): per (record, field) pair, the predicted value equals the gold value
  after normalisation (case and whitespace for strings, 0.01 tolerance for numbers, null == null);
  unparseable outputs score 0 on every field;
- all_fields_correct: every field of a record correct (text-level exact match is a generic metric).
"""

from __future__ import annotations

import json
import re
from typing import Any

INSTRUCTION = (
    "Extract the product attributes from the listing. Answer with only a JSON object with the "
    "keys brand, category, color, material, size, price. category is one of clothing, footwear, "
    "electronics, home, sports, beauty. price is a number. Use null for anything not stated."
)

PRIMARY_METRIC = "field_accuracy"

_FENCE = re.compile(r"^```(?:json)?\s*|\s*```$")


def parse_json_object(text: str) -> dict[str, Any] | None:
    """The first JSON object in a model output, tolerating code fences and trailing chatter."""
    text = _FENCE.sub("", text.strip())
    start = text.find("{")
    if start < 0:
        return None
    try:
        obj, _ = json.JSONDecoder().raw_decode(text[start:])
    except json.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) else None


def _norm(value: Any) -> Any:
    if isinstance(value, str):
        text = " ".join(value.lower().split())
        if text in ("", "null", "none", "n/a"):
            return None
        try:  # "$49.99" vs 49.99
            return round(float(text.lstrip("$").replace(",", "")), 2)
        except ValueError:
            return text
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return round(float(value), 2)
    return value


def _equal(pred: Any, gold: Any) -> bool:
    p, g = _norm(pred), _norm(gold)
    if isinstance(p, float) and isinstance(g, float):
        return abs(p - g) <= 0.01
    return p == g


def score_one(prediction: str, reference: str) -> dict[str, float]:
    gold = json.loads(reference)
    pred = parse_json_object(prediction)
    if pred is None:
        return {"json_valid": 0.0, "fields_correct": 0.0, "fields_total": float(len(gold)), "exact": 0.0}
    correct = sum(_equal(pred.get(k), v) for k, v in gold.items())
    return {"json_valid": 1.0, "fields_correct": float(correct), "fields_total": float(len(gold)),
            "exact": float(correct == len(gold))}


def score(predictions: list[str], references: list[str]) -> tuple[dict[str, float], list[dict[str, float]]]:
    """Aggregate scores, and per row: json_valid and field_accuracy (for the predictions table)."""
    if not predictions or len(predictions) != len(references):
        raise ValueError(f"need equal, non-zero numbers of predictions and references "
                         f"({len(predictions)} vs {len(references)})")
    rows = [score_one(p, r) for p, r in zip(predictions, references, strict=True)]
    n = len(rows)
    total = sum(r["fields_total"] for r in rows)
    aggregate = {
        "json_validity": sum(r["json_valid"] for r in rows) / n,
        "field_accuracy": sum(r["fields_correct"] for r in rows) / total if total else 0.0,
        "all_fields_correct": sum(r["exact"] for r in rows) / n,
    }
    per_row = [{"json_valid": r["json_valid"],
                "field_accuracy": r["fields_correct"] / r["fields_total"] if r["fields_total"] else 0.0}
               for r in rows]
    return aggregate, per_row
