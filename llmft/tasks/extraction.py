"""Extraction: text in, a JSON object of fields out (the default demo: product attributes).

The instruction is written from the data: the keys the reference objects use, the allowed values
of fields with few distinct values, which fields are numbers, and null for what is not stated.
Base and fine-tuned models get the same instruction (a fair zero-shot baseline). Scores are
fractions in [0, 1]:
- json_validity: the output parses as a JSON object;
- field_accuracy (primary): per (record, field) pair, the predicted value equals the gold value
  after normalisation (case and whitespace for strings, 0.01 tolerance for numbers, null == null);
  unparseable outputs score 0 on every field;
- field_precision: per predicted (non-null) field, it is a gold field with the gold value; an output
  that invents fields the text does not have (an entity list with extra types) loses here, not in
  field_accuracy; field_f1 is their harmonic mean (lists compare as sets of normalised items);
- entity_f1: micro-F1 over (field, value) pairs, pooled over all records: each item of a list is a
  pair, a scalar field one pair, null or an empty list none. It gives partial credit for a list that
  is half right, and an answer that states nothing scores 0 on a record that has entities (where
  field_accuracy on sparse entity lists rewards the all-empty answer). Primary when the targets hold
  lists (entity extraction); field_accuracy stays primary for records of scalar fields;
- all_fields_correct: every field of a record correct and none invented (text-level exact match is a
  generic metric); a record whose gold object is empty is right only when the answer states nothing;
- unsupported_output_rate (as for every generative task, lower is better): the share of outputs with a
  field value that the input text and instruction do not contain.
"""

from __future__ import annotations

from typing import Any

from llmft.data.shapes import Example
from llmft.evaluate import text_metrics
from llmft.evaluate.text_metrics import parse_json_object  # one parser: scoring and the support check agree
from llmft.tasks.base import GenerativeTask

PRIMARY_METRIC = "field_accuracy"
LIST_PRIMARY_METRIC = "entity_f1"  # when the targets' values are lists (entities), see ExtractionTask.primary_for
_MAX_ENUM = 8  # a string field with at most this many distinct values is described by its values


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
    if isinstance(value, list):  # an entity list: the same items in any order, each normalised
        items = [_norm(v) for v in value]
        return tuple(sorted(repr(v) for v in items if v is not None)) or None
    return value


def _equal(pred: Any, gold: Any) -> bool:
    p, g = _norm(pred), _norm(gold)
    if isinstance(p, float) and isinstance(g, float):
        return abs(p - g) <= 0.01
    return p == g


def entity_pairs(obj: dict[str, Any] | None) -> set[tuple[str, str]]:
    """The (field, normalised value) pairs an object states: every item of a list, a scalar field
    itself; null and empty lists state nothing."""
    pairs = set()
    for key, value in (obj or {}).items():
        for item in value if isinstance(value, list) else [value]:
            norm = _norm(item)
            if norm is not None:
                pairs.add((key, repr(norm)))
    return pairs


def _pair_counts(pred: dict[str, Any] | None, gold: dict[str, Any]) -> dict[str, float]:
    p, g = entity_pairs(pred), entity_pairs(gold)
    return {"pairs_predicted": float(len(p)), "pairs_gold": float(len(g)), "pairs_correct": float(len(p & g))}


def score_one(prediction: str, reference: str) -> dict[str, float]:
    gold = parse_json_object(reference)
    if gold is None:  # a reference that is not a JSON object is one field: the whole answer
        same = " ".join(prediction.lower().split()) == " ".join(reference.lower().split())
        return {"json_valid": float(parse_json_object(prediction) is not None), "fields_correct": float(same),
                "fields_total": 1.0, "exact": float(same), "pairs_predicted": float(bool(prediction.strip())),
                "pairs_gold": 1.0, "pairs_correct": float(same)}
    pred = parse_json_object(prediction)
    if pred is None:
        return {"json_valid": 0.0, "fields_correct": 0.0, "fields_total": float(len(gold)), "exact": 0.0,
                "predicted": 0.0, "predicted_correct": 0.0, **_pair_counts(None, gold)}
    correct = sum(_equal(pred.get(k), v) for k, v in gold.items())
    stated = [k for k, v in pred.items() if _norm(v) is not None]  # null is "not stated", not a claim
    right = sum(k in gold and _equal(pred[k], gold[k]) for k in stated)
    return {"json_valid": 1.0, "fields_correct": float(correct), "fields_total": float(len(gold)),
            "exact": float(correct == len(gold) and right == len(stated)),
            "predicted": float(len(stated)), "predicted_correct": float(right), **_pair_counts(pred, gold)}


def micro_f1(correct: float, predicted: float, gold: float) -> float:
    """2 TP / (predicted + gold); 1 when there was nothing to find and nothing was claimed."""
    return 2 * correct / (predicted + gold) if predicted + gold else 1.0


def score(predictions: list[str], references: list[str]) -> tuple[dict[str, float], list[dict[str, float]]]:
    """Aggregate scores, and per row: json_valid and field_accuracy (for the predictions table)."""
    if not predictions or len(predictions) != len(references):
        raise ValueError(f"need equal, non-zero numbers of predictions and references "
                         f"({len(predictions)} vs {len(references)})")
    rows = [score_one(p, r) for p, r in zip(predictions, references, strict=True)]
    n = len(rows)
    total = sum(r["fields_total"] for r in rows)
    stated = sum(r.get("predicted", 0.0) for r in rows)
    accuracy = sum(r["fields_correct"] for r in rows) / total if total else 0.0
    # nothing stated anywhere: no wrong claim, so precision is 1 when the gold has nothing either
    precision = sum(r.get("predicted_correct", 0.0) for r in rows) / stated if stated else float(total == 0)
    aggregate = {
        "json_validity": sum(r["json_valid"] for r in rows) / n,
        "field_accuracy": accuracy,
        "field_precision": precision,
        "field_f1": 2 * accuracy * precision / (accuracy + precision) if accuracy + precision else 0.0,
        "entity_f1": micro_f1(*(sum(r[k] for r in rows) for k in ("pairs_correct", "pairs_predicted", "pairs_gold"))),
        "all_fields_correct": sum(r["exact"] for r in rows) / n,
    }
    per_row = [{"json_valid": r["json_valid"],
                "field_accuracy": r["fields_correct"] / r["fields_total"] if r["fields_total"] else r["exact"]}
               for r in rows]
    return aggregate, per_row


def objects(examples: list[Example]) -> list[dict[str, Any]]:
    """The reference JSON objects of the examples (targets that parse as one)."""
    found = []
    for ex in examples:
        if ex.messages:
            obj = parse_json_object(ex.target)
            if obj is not None and ex.target.strip().startswith("{"):
                found.append(obj)
    return found


def leaves_keys_out(objs: list[dict[str, Any]]) -> bool:
    """What the targets do with a field the text does not state: leave the key out (targets whose
    keys vary and never hold null, e.g. entity lists), else null."""
    return len({frozenset(obj) for obj in objs}) > 1 and not any(v is None for obj in objs for v in obj.values())


def list_targets(objs: list[dict[str, Any]]) -> bool:
    """Every stated value of the targets is a list (entity lists), and there is at least one."""
    values = [v for obj in objs for v in obj.values() if v is not None]
    return bool(values) and all(isinstance(v, list) for v in values)


def instruction_for(examples: list[Example]) -> str:
    """An instruction naming the keys, enumerable values and numeric fields seen in the targets."""
    objs = objects(examples)
    ordered = list(dict.fromkeys(k for obj in objs for k in obj))  # first-seen order, as the data writes them
    if list_targets(objs) and leaves_keys_out(objs):  # entity lists, empty ones left out (data.empty_lists)
        return (f"Extract the entities from the text. Answer with only a JSON object whose keys are among "
                f"{', '.join(ordered)}, each with the list of the text's entities of that type. Leave out a type "
                "the text has none of; answer {} when it has none.")
    lines = [f"Extract the fields from the text. Answer with only a JSON object with the keys {', '.join(ordered)}."]
    for key in ordered:
        values = [obj[key] for obj in objs if obj.get(key) is not None]
        if values and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            lines.append(f"{key} is a number.")
            continue
        if values and all(isinstance(v, list) for v in values):
            lines.append(f"{key} is a list.")
            continue
        if not values or not all(isinstance(v, str) for v in values):
            continue  # mixed or nested values: no enumeration to offer
        distinct = sorted(set(values))
        if len(distinct) <= _MAX_ENUM and len(values) >= 3 * len(distinct):
            lines.append(f"{key} is one of {', '.join(distinct)}.")
    if leaves_keys_out(objs):
        lines.append("Leave out any key the text does not state.")
    elif list_targets(objs) and not any(v is None for obj in objs for v in obj.values()):
        lines.append("Use an empty list for a key the text has nothing for.")
    else:
        lines.append("Use null for anything not stated.")
    return " ".join(lines)


class ExtractionTask(GenerativeTask):
    name = "extraction"
    summary = "Extraction: the model reads a text and answers with a JSON object of the fields it states."
    primary_metric = PRIMARY_METRIC
    overlap_metrics = text_metrics.NAMES
    metric_names = ("json_validity", "field_accuracy", "field_precision", "field_f1", "entity_f1", "all_fields_correct",
                    *overlap_metrics,
                    text_metrics.UNSUPPORTED_RATE, "eval_loss", "perplexity")
    smoke_prompt = "Lumora rain jacket | navy blue | 100% nylon | Size M | $79.99"
    smoke_max_tokens = 48

    def instruction(self, examples: list[Example]) -> str | None:
        return instruction_for(examples)

    def balance_groups(self, responses: list[str]) -> list[str] | None:
        """Entity lists with many entity-free rows: rows that state nothing and rows that state
        something weigh the same in total, so answering empty lists everywhere stops paying."""
        objs = [parse_json_object(r) for r in responses]
        if not list_targets([o for o in objs if o is not None]):
            return None
        groups = ["states" if entity_pairs(o) else "empty" for o in objs]
        return groups if len(set(groups)) == 2 else None

    def primary_for(self, rows: list[dict[str, Any]]) -> str:
        """entity_f1 when the evaluation rows' targets are entity lists: field_accuracy cannot tell an
        all-empty answer from a model that finds entities there; field_accuracy otherwise."""
        objs = [obj for obj in (parse_json_object(str(r.get("response") or "")) for r in rows) if obj is not None]
        return LIST_PRIMARY_METRIC if list_targets(objs) else PRIMARY_METRIC

    def score(self, predictions: list[str], references: list[str],
              sources: list[str]) -> tuple[dict[str, float], list[dict[str, float]]]:
        return score(predictions, references)
