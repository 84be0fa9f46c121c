"""The classification task: a sequence-classification head on the base model, and its metrics.

Metrics are fractions in [0, 1] over the test rows: accuracy, and the macro averages (every label
weighs the same, however rare) of precision, recall and F1 (primary). A label never predicted
has precision 0, as does one with no test rows (it cannot be recalled).
"""

from __future__ import annotations

from typing import Any

PRIMARY_METRIC = "macro_f1"


def confusion(predicted: list[str], reference: list[str], labels: list[str]) -> list[list[int]]:
    """Rows: true label; columns: predicted label (order of `labels`)."""
    index = {name: i for i, name in enumerate(labels)}
    matrix = [[0] * len(labels) for _ in labels]
    for pred, ref in zip(predicted, reference, strict=True):
        matrix[index[ref]][index[pred]] += 1
    return matrix


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
    with torch.inference_mode():
        for start in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch", disable=not progress):
            idx = order[start:start + batch_size]
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
                     batch_size: int, max_seq_length: int, desc: str) -> tuple[dict[str, float], list[str],
                                                                                list[dict[str, float]]]:
    """Metrics, predicted labels and per-row scores (correct, probability of the true label) for one
    classifier. Texts are tokenized with the model's own tokenizer; its head's own label names are
    used, so a champion with the same label set in another order still scores right."""
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
    return metrics, predicted, rows
