"""Classification: a sequence-classification head on the base model, and its metrics.

The label set is inferred from the training split unless `data.labels` pins it. Over-long texts
are cut to `train.max_seq_length` tokens (never dropped). Metrics are fractions in [0, 1] over the
evaluation rows: accuracy, and the macro averages (every label weighs the same, however rare) of
precision, recall and F1 (primary); per-class precision/recall/F1 and the confusion matrix come
with them. A label never predicted has precision 0, as does one with no test rows.
"""

from __future__ import annotations

from typing import Any

from llmft.chat_format import CHARS_PER_TOKEN_BOUND, PadToLongest, encode_to_fit, render_chat, render_generation_prompt
from llmft.data.shapes import Example
from llmft.evaluate.few_shot import fit_shots, prepare_shots, shot_budget, usage
from llmft.tasks.base import Encoded, EvalSettings, ModelScores, Task, no_shot_fits

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


def label_instruction(system: str | None, labels: list[str]) -> str:
    """The prompted classifier's system turn: the data's instruction (if any) and the label set."""
    ask = f"Classify the text. Answer with exactly one of these labels: {', '.join(labels)}."
    return f"{system}\n{ask}" if system else ask


def label_completions(tokenizer: Any, prompt: list[dict[str, str]], labels: list[str]) -> list[list[int]]:
    """Each label as the assistant's whole answer: its tokens and the end-of-turn token, as the chat
    template renders it (so "tech" and "technology" are different answers, not prefixes)."""
    prefix = render_generation_prompt(tokenizer, prompt)
    out = []
    for label in labels:
        completion = render_chat(tokenizer, [*prompt, {"role": "assistant", "content": label}])[len(prefix):]
        cut = completion.find(tokenizer.eos_token) if tokenizer.eos_token else -1
        completion = completion[: cut + len(tokenizer.eos_token)] if cut >= 0 else completion
        out.append(tokenizer(completion, add_special_tokens=False)["input_ids"])
    return out


def label_logprobs(model: Any, tokenizer: Any, prompts: list[list[dict[str, str]]], labels: list[str],
                   desc: str = "label likelihood", progress: bool = True) -> list[list[float]]:
    """log P(label | prompt) of every label for every prompt (a causal LM, no generation): the prompt
    runs once, its cache is repeated for the labels, which then run together."""
    import torch
    from tqdm.auto import tqdm

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    model.eval()
    out: list[list[float]] = []
    with torch.inference_mode():
        for messages in tqdm(prompts, desc=desc, unit="row", disable=not progress, dynamic_ncols=True):
            prompt_ids = tokenizer(render_generation_prompt(tokenizer, messages), add_special_tokens=False)["input_ids"]
            completions = label_completions(tokenizer, messages, labels)
            first = model(input_ids=torch.tensor([prompt_ids], device=model.device), use_cache=True)
            head = first.logits[0, -1].float().log_softmax(-1)
            scores = [float(head[c[0]]) for c in completions]
            width = max(len(c) for c in completions)
            if width > 1:  # later label tokens: one batch over the labels on the shared prompt cache
                cache = first.past_key_values
                cache.batch_repeat_interleave(len(labels))
                tail = torch.tensor([c + [pad] * (width - len(c)) for c in completions], device=model.device)
                mask = torch.tensor([[1] * (len(prompt_ids) + len(c)) + [0] * (width - len(c)) for c in completions],
                                    device=model.device)
                rest = model(input_ids=tail, attention_mask=mask, past_key_values=cache).logits.float().log_softmax(-1)
                for i, c in enumerate(completions):
                    scores[i] += sum(float(rest[i, j - 1, c[j]]) for j in range(1, len(c)))
            out.append(scores)
    return out


def score_label_likelihood(model: Any, tokenizer: Any, prompts: list[list[dict[str, str]]], references: list[str],
                           labels: list[str], desc: str) -> ModelScores:
    """A causal LM as a classifier: the label with the highest likelihood after the prompt. Same
    metrics as the classification head; eval loss is the cross-entropy over the label set."""
    import math

    logps = label_logprobs(model, tokenizer, prompts, labels, desc=desc)
    probs = []
    for row in logps:
        top = max(row)
        weights = [math.exp(v - top) for v in row]
        probs.append([w / sum(weights) for w in weights])
    predicted = [labels[max(range(len(labels)), key=p.__getitem__)] for p in probs]
    targets = [labels.index(ref) for ref in references]
    metrics = {**score(predicted, references, labels), "eval_loss": eval_loss(probs, targets)}
    rows = [{"correct": float(p == r), "p_true": row[t]}
            for p, r, row, t in zip(predicted, references, probs, targets, strict=True)]
    extras = {"labels": labels, "confusion": confusion(predicted, references, labels),
              "per_class": per_class(predicted, references, labels), "scored_by": "label likelihood"}
    return ModelScores(metrics=metrics, outputs=predicted, row_scores=rows, extras=extras)


class ClassificationTask(Task):
    name = "classification"
    summary = "Classification: the model assigns one label of a fixed set to a text (a classification head)."
    primary_metric = PRIMARY_METRIC
    metric_names = ("accuracy", "macro_precision", "macro_recall", "macro_f1", "eval_loss")
    classifier = True
    registry_flavor = "text-classification"
    probe_applies = False

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

    def prompt_conversation(self, row: dict[str, Any], system: str | None,
                            labels: list[str] | None) -> list[dict[str, str]]:
        return [{"role": "system", "content": label_instruction(system, labels or [])},
                {"role": "user", "content": str(row["text"])}, {"role": "assistant", "content": str(row["label"])}]

    def evaluate_prompted(self, model: Any, tokenizer: Any, rows: list[dict[str, Any]], system: str | None,
                          settings: EvalSettings, labels: list[str] | None, shots: list[dict[str, Any]],
                          desc: str) -> ModelScores:
        """The instruct model (causal LM) told the label set, scored by each label's likelihood; the
        random-head classifier is no baseline. Texts are cut to fit with the longest label, so the
        true label's length never decides how much text is shown."""
        if not labels:
            raise ValueError("classification needs the label set")
        longest = max(labels, key=lambda name: len(tokenizer(name, add_special_tokens=False)["input_ids"]))
        conversations = []
        for row in rows:
            conversation = self.prompt_conversation({**row, "label": longest}, system, labels)
            fitted = encode_to_fit(tokenizer, conversation, settings.max_seq_length)
            conversations.append(fitted[1] if fitted is not None else conversation)
        budget = shot_budget(model, settings.max_seq_length, settings.few_shot_max_tokens, settings.max_new_tokens)
        examples = prepare_shots(tokenizer, [self.prompt_conversation(s, None, labels) for s in shots], len(shots),
                                 budget) if shots else []
        with_shots = [fit_shots(tokenizer, c, examples, budget) for c in conversations]
        used = [f.shots_used for f in with_shots]
        empty = no_shot_fits(used, len(shots), budget) if shots else None
        if empty is not None:
            return empty
        scores = score_label_likelihood(model, tokenizer, [f.conversation[:-1] for f in with_shots],
                                        [str(r["label"]) for r in rows], labels, desc)
        if shots:
            scores.extras["few_shot"] = usage(used, len(shots), budget)
            scores.extras["few_shot_used"] = used
        return scores

    def card_lines(self, labels: list[str] | None) -> list[str]:
        return [self.summary, f"Labels ({len(labels or [])}): {', '.join(labels or [])}."]
