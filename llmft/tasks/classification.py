"""Classification: a sequence-classification head on the base model, and its metrics.

The label set is inferred from the training split unless `data.labels` pins it. Over-long texts
are cut to `train.max_seq_length` tokens (never dropped). Metrics are fractions in [0, 1] over the
evaluation rows: accuracy, and the macro averages (every label weighs the same, however rare) of
precision, recall and F1 (primary); per-class precision/recall/F1 and the confusion matrix come
with them. A label never predicted has precision 0, as does one with no test rows.
"""

from __future__ import annotations

from typing import Any, ClassVar

from llmft.chat_format import CHARS_PER_TOKEN_BOUND
from llmft.data.shapes import Example
from llmft.tasks.base import Encoded, EvalSettings, ModelScores, Task

PRIMARY_METRIC = "macro_f1"


def confusion(predicted: list[str], reference: list[str], labels: list[str]) -> list[list[int]]:
    """Rows: true label; columns: predicted label (order of `labels`)."""
    index = {name: i for i, name in enumerate(labels)}
    matrix = [[0] * len(labels) for _ in labels]
    for pred, ref in zip(predicted, reference, strict=True):
        matrix[index[ref]][index[pred]] += 1
    return matrix


def per_class(predicted: list[str], reference: list[str], labels: list[str]) -> dict[str, dict[str, float]]:
    """Precision, recall, F1 and support of every label."""
    matrix = confusion(predicted, reference, labels)
    out = {}
    for i, name in enumerate(labels):
        tp, predicted_i, actual_i = matrix[i][i], sum(row[i] for row in matrix), sum(matrix[i])
        p = tp / predicted_i if predicted_i else 0.0
        r = tp / actual_i if actual_i else 0.0
        out[name] = {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0,
                     "support": float(actual_i)}
    return out


def score(predicted: list[str], reference: list[str], labels: list[str]) -> dict[str, float]:
    matrix = confusion(predicted, reference, labels)
    precisions, recalls, f1s = [], [], []
    for i in range(len(labels)):
        tp = matrix[i][i]
        predicted_i = sum(row[i] for row in matrix)
        actual_i = sum(matrix[i])
        p = tp / predicted_i if predicted_i else 0.0
        r = tp / actual_i if actual_i else 0.0
        precisions.append(p)
        recalls.append(r)
        f1s.append(2 * p * r / (p + r) if p + r else 0.0)
    n = len(labels)
    return {"accuracy": sum(matrix[i][i] for i in range(n)) / max(len(reference), 1),
            "macro_precision": sum(precisions) / n, "macro_recall": sum(recalls) / n, "macro_f1": sum(f1s) / n}


def predict(model: Any, input_ids: list[list[int]], pad_token_id: int, batch_size: int,
            desc: str = "classify", progress: bool = True) -> tuple[list[int], list[list[float]]]:
    """Class indices and probabilities, batched (right padding: the head reads the last real token)."""
    import torch
    from tqdm.auto import tqdm

    from llmft.chat_format import PadToLongest

    pad = PadToLongest(pad_token_id)
    order = sorted(range(len(input_ids)), key=lambda i: len(input_ids[i]))  # less padding per batch
    classes: list[int] = [0] * len(input_ids)
    probs: list[list[float]] = [[] for _ in input_ids]
    model.eval()
    bar = tqdm(total=len(order), desc=desc, unit="row", disable=not progress, dynamic_ncols=True)
    with torch.inference_mode(), bar:
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            bar.update(len(idx))
            batch = pad([{"input_ids": input_ids[i]} for i in idx])
            logits = model(input_ids=batch["input_ids"].to(model.device),
                           attention_mask=batch["attention_mask"].to(model.device)).logits.float()
            for i, row in zip(idx, logits.softmax(-1).tolist(), strict=True):
                classes[i], probs[i] = max(range(len(row)), key=row.__getitem__), row
    return classes, probs


def eval_loss(probs: list[list[float]], targets: list[int]) -> float:
    import math

    return -sum(math.log(max(p[t], 1e-12)) for p, t in zip(probs, targets, strict=True)) / max(len(targets), 1)


def score_classifier(model: Any, tokenizer: Any, texts: list[str], references: list[str], labels: list[str],
                     batch_size: int, max_seq_length: int, desc: str) -> ModelScores:
    """Metrics, predicted labels, per-row scores (correct, probability of the true label), the
    confusion matrix and per-class scores of one classifier. Texts are tokenized with the model's
    own tokenizer; its head's own label names are used, so a champion with the same label set in
    another order still scores right."""
    names = [model.config.id2label[i] for i in range(len(model.config.id2label))]
    if sorted(names) != sorted(labels):
        raise ValueError(f"model labels {names} differ from the data's {labels}")
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"][:max_seq_length] for t in texts]
    classes, probs = predict(model, ids, tokenizer.pad_token_id, batch_size, desc=desc)
    predicted = [names[c] for c in classes]
    targets = [names.index(ref) for ref in references]
    metrics = {**score(predicted, references, labels), "eval_loss": eval_loss(probs, targets)}
    rows = [{"correct": float(p == r), "p_true": row[t]}
            for p, r, row, t in zip(predicted, references, probs, targets, strict=True)]
    extras = {"labels": labels, "confusion": confusion(predicted, references, labels),
              "per_class": per_class(predicted, references, labels)}
    return ModelScores(metrics=metrics, outputs=predicted, row_scores=rows, extras=extras)


class ClassificationTask(Task):
    name = "classification"
    summary = "Classification: the model assigns one label of a fixed set to a text (a classification head)."
    primary_metric = PRIMARY_METRIC
    metric_names = ("accuracy", "macro_precision", "macro_recall", "macro_f1", "eval_loss")
    classifier = True
    registry_flavor = "text-classification"
    probe_applies = False
    refused_methods: ClassVar[dict[str, str]] = {
        "prompt_tuning": "the text-classification pipeline would not prepend the learned tokens; use lora, full "
                         "or freeze"}

    def encode(self, tokenizer: Any, example: Example, system: str | None, max_seq_length: int) -> Encoded | None:
        text = example.text[: max_seq_length * CHARS_PER_TOKEN_BOUND]
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        return Encoded(ids[:max_seq_length], [], truncated=len(text) < len(example.text) or len(ids) > max_seq_length)

    def evaluate(self, model: Any, tokenizer: Any, rows: list[dict[str, Any]], system: str | None,
                 settings: EvalSettings, labels: list[str] | None, desc: str) -> ModelScores:
        if not labels:
            raise ValueError("classification needs the label set")
        return score_classifier(model, tokenizer, [r["text"] for r in rows], [str(r["label"]) for r in rows], labels,
                                settings.batch_size, settings.max_seq_length, desc)

    def smoke_request(self, system: str | None) -> dict[str, Any]:
        return {"inputs": ["The product arrived on time and works as described."]}

    def card_lines(self, labels: list[str] | None) -> list[str]:
        return [self.summary, f"Labels ({len(labels or [])}): {', '.join(labels or [])}."]
