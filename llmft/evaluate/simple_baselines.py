"""Simple (non-LLM) baselines: what a user tries first without a language model, fitted on the
training split (the validation split picks the one knob where there is one) and scored on the same
evaluation rows by the task's own scorer, so its numbers sit beside the fine-tuned model's and the
promotion gate can ask whether fine-tuning was worth it.

- classification: TF-IDF (word 1-2 grams, sublinear tf) + logistic regression with balanced class
  weights (a rare class is not ignored); C chosen on validation;
- summarization: the first k sentences of the input (Lead-k), k in 1..5 chosen on validation;
- chat: nearest neighbour: the response of the training row whose last user turn is closest
  (TF-IDF cosine) to the row's last user turn;
- extraction: a dictionary of the values the training targets hold per field, looked up in the input
  (see `extraction`);
- preference: the longer of the two answers is preferred (`preference_accuracy` only: it ranks the
  given answers and writes none).
A metric only a language model has (a generative model's token-level eval loss and perplexity, a
pair's log-likelihood margin) is left out, so reports show no number there.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

from llmft.data.shapes import pair_conversations
from llmft.evaluate.scoring import ModelScores, score_outputs
from llmft.evaluate.slices import last_user
from llmft.evaluate.text_metrics import parse_json_object
from llmft.tasks import classification, get_task
from llmft.tasks.base import GenerativeTask
from llmft.tasks.extraction import leaves_keys_out

C_GRID = (1.0, 0.1, 10.0)  # the default first: a tie keeps it
LEAD_KS = (1, 2, 3, 4, 5)
MAX_CHOICE_ROWS = 300  # rows that pick a knob: enough to rank five candidates, cheap to score
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")


@dataclass
class SimpleBaseline:
    method: str  # a short name for tables: "tf-idf + logistic regression (class-weighted)"
    detail: str  # what was fitted and chosen, on how many rows
    scores: ModelScores


def _better(a: float, b: float, higher_is_better: bool) -> bool:
    return a > b if higher_is_better else a < b


def _tfidf() -> Any:
    from sklearn.feature_extraction.text import TfidfVectorizer

    return TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)


# ---- classification ----

def _fit_classifier(texts: list[str], labels: list[str], c: float) -> Any:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    return make_pipeline(_tfidf(), LogisticRegression(C=c, class_weight="balanced", max_iter=2000)).fit(texts, labels)


def _probabilities(model: Any, texts: list[str], labels: list[str]) -> list[list[float]]:
    """P(label) in the order of `labels`; a label training never saw gets 0."""
    proba = model.predict_proba(texts)
    column = {name: i for i, name in enumerate(model.classes_)}
    return [[float(p[column[name]]) if name in column else 0.0 for name in labels] for p in proba]


def _classifier_scores(probs: list[list[float]], references: list[str], labels: list[str]) -> ModelScores:
    predicted = [labels[max(range(len(labels)), key=p.__getitem__)] for p in probs]
    targets = [labels.index(ref) for ref in references]
    metrics = {**classification.score(predicted, references, labels),
               "eval_loss": classification.eval_loss(probs, targets)}
    rows = [{"correct": float(p == r), "p_true": row[t]}
            for p, r, row, t in zip(predicted, references, probs, targets, strict=True)]
    extras = {"labels": labels, "confusion": classification.confusion(predicted, references, labels),
              "per_class": classification.per_class(predicted, references, labels)}
    return ModelScores(metrics=metrics, outputs=predicted, row_scores=rows, extras=extras)


def classify(train: list[dict[str, Any]], validation: list[dict[str, Any]], rows: list[dict[str, Any]],
             labels: list[str], primary: str) -> SimpleBaseline:
    """TF-IDF + class-weighted logistic regression on the training texts; C from `C_GRID` by
    `primary` on the validation rows (C=1 without any); eval loss is the cross-entropy over the
    label set, as for the classifiers."""
    texts, y = [str(r["text"]) for r in train], [str(r["label"]) for r in train]
    references = [str(r["label"]) for r in rows]
    method = "tf-idf + logistic regression (class-weighted)"
    if len(set(y)) < 2:  # logistic regression needs two classes: the one label there is, always
        only = y[0] if y else labels[0]
        probs = [[float(name == only) for name in labels] for _ in rows]
        return SimpleBaseline(method, f"one label in {len(train)} training rows: always {only!r}",
                              _classifier_scores(probs, references, labels))
    chosen, how = 1.0, "C=1 (no validation rows)"
    checked = [r for r in validation if str(r["label"]) in labels][:MAX_CHOICE_ROWS]
    if checked:
        higher = get_task("classification").higher_is_better(primary)
        best: float | None = None
        for c in C_GRID:
            model = _fit_classifier(texts, y, c)
            probs = _probabilities(model, [str(r["text"]) for r in checked], labels)
            value = _classifier_scores(probs, [str(r["label"]) for r in checked], labels).metrics[primary]
            if best is None or _better(value, best, higher):
                chosen, best = c, value
        how = f"C={chosen:g} chosen on {len(checked)} validation rows by {primary}"
    model = _fit_classifier(texts, y, chosen)
    scores = _classifier_scores(_probabilities(model, [str(r["text"]) for r in rows], labels), references, labels)
    return SimpleBaseline(method, f"{len(train)} training rows; {how}", scores)


# ---- generative tasks ----

def sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]


def lead(text: str, k: int) -> str:
    return " ".join(sentences(text)[:k])


def _generative_metrics(task: GenerativeTask, outputs: list[str], rows: list[dict[str, Any]],
                        system: str | None) -> tuple[dict[str, float], list[dict[str, float]]]:
    return score_outputs(outputs, rows, system, task.score, task.overlap_metrics)


def summarize(train: list[dict[str, Any]], validation: list[dict[str, Any]], rows: list[dict[str, Any]],
              system: str | None, primary: str) -> SimpleBaseline:
    """Lead-k: the first k sentences of the input. k by `primary` on the validation rows (on training
    rows when there are none: nothing is fitted, so they are as unseen as validation)."""
    task = get_task("summarization")
    assert isinstance(task, GenerativeTask)
    choice, where = (validation, "validation") if validation else (train, "training")
    choice = choice[:MAX_CHOICE_ROWS]
    metric = primary if primary not in ("eval_loss", "perplexity") else task.primary_metric
    best_k, best = 3, None  # Lead-3, the classic, when there is nothing to choose on
    for k in LEAD_KS if choice else ():
        value = _generative_metrics(task, [lead(last_user(r), k) for r in choice], choice, system)[0][metric]
        if best is None or _better(value, best, task.higher_is_better(metric)):
            best_k, best = k, value
    outputs = [lead(last_user(r), best_k) for r in rows]
    metrics, row_scores = _generative_metrics(task, outputs, rows, system)
    how = f"k={best_k} chosen on {len(choice)} {where} rows by {metric}" if choice else "k=3 (no rows to choose on)"
    return SimpleBaseline(f"lead-{best_k} sentences", how, ModelScores(metrics, outputs, row_scores))


def nearest_neighbour(train: list[dict[str, Any]], rows: list[dict[str, Any]], system: str | None) -> SimpleBaseline:
    """The response of the training row whose last user turn is nearest (TF-IDF cosine); the most
    common training response for a row that shares no word with any of them."""
    task = get_task("chat")
    assert isinstance(task, GenerativeTask)
    responses = [str(r["response"]) for r in train]
    fallback = Counter(responses).most_common(1)[0][0] if responses else ""
    outputs = [fallback] * len(rows)
    try:
        vectorizer = _tfidf().fit([last_user(r) for r in train])
        similarity = vectorizer.transform([last_user(r) for r in rows]) @ vectorizer.transform(
            [last_user(r) for r in train]).T
        for i in range(len(rows)):
            line = similarity.getrow(i)
            if line.nnz:
                outputs[i] = responses[line.indices[line.data.argmax()]]
    except ValueError:  # no word in any training prompt (empty vocabulary): the fallback for every row
        pass
    metrics, row_scores = _generative_metrics(task, outputs, rows, system)
    return SimpleBaseline("nearest training prompt's response (tf-idf)", f"{len(train)} training rows",
                          ModelScores(metrics, outputs, row_scores))


def _surface(value: Any) -> str | None:
    """How a training value would be written in a text; None for what cannot be found verbatim."""
    if isinstance(value, bool) or value is None or isinstance(value, (dict, list)):
        return None
    text = str(value).strip()
    return text or None


def extraction(train: list[dict[str, Any]], rows: list[dict[str, Any]], system: str | None) -> SimpleBaseline | None:
    """A dictionary tagger: every value the training targets hold for a field (each item of a list
    field), looked up verbatim in the input (case-insensitive, whole words, longest first); a value
    seen under several fields belongs to the one it was seen under most. A list field answers every
    value found, in text order; a scalar field the found value seen most often in training; nothing
    found is null, or the key left out where the targets leave keys out. The answer is a JSON object
    shaped like the targets, so the extraction scorer reads it as it reads a model's.
    Why this one: it needs no features or per-field rules, learns only from the training targets,
    and is what a gazetteer gives: strong where values repeat (brands, colours, known entities), no
    help for values never seen (prices, new names) — exactly the margin fine-tuning must show.
    None when the targets are not JSON objects."""
    objs = [o for o in (parse_json_object(str(r["response"])) for r in train) if o is not None]
    if not objs:
        return None
    fields = list(dict.fromkeys(k for o in objs for k in o))
    is_list = {k: any(isinstance(o.get(k), list) for o in objs) for k in fields}
    seen: Counter[tuple[str, str]] = Counter()  # (field, folded surface)
    spelled: dict[tuple[str, str], Counter[Any]] = {}  # its spellings (and types) as the targets write them
    for o in objs:
        for k, v in o.items():
            for item in v if isinstance(v, list) else [v]:
                text = _surface(item)
                if text is not None:
                    seen[(k, text.casefold())] += 1
                    spelled.setdefault((k, text.casefold()), Counter())[json.dumps(item)] += 1
    owner: dict[str, tuple[str, int]] = {}  # surface -> (field, count): the field it was seen under most
    for (k, text), n in seen.items():
        if text not in owner or n > owner[text][1]:
            owner[text] = (k, n)
    patterns = {}
    for k in fields:
        mine = sorted((t for t, (f, _) in owner.items() if f == k), key=len, reverse=True)
        if mine:
            patterns[k] = re.compile(r"(?<!\w)(?:" + "|".join(map(re.escape, mine)) + r")(?!\w)", re.IGNORECASE)
    omit = leaves_keys_out(objs)
    outputs = []
    for row in rows:
        text, answer = last_user(row), {}
        for k in fields:
            found = list(dict.fromkeys(m.group(0).casefold() for m in patterns[k].finditer(text))) \
                if k in patterns else []
            values = [json.loads(spelled[(k, f)].most_common(1)[0][0]) for f in found]
            if is_list[k]:
                if values or not omit:
                    answer[k] = values
            elif values:
                answer[k] = values[max(range(len(found)), key=lambda i: (seen[(k, found[i])], -i))]
            elif not omit:
                answer[k] = None
        outputs.append(json.dumps(answer, ensure_ascii=False))
    task = get_task("extraction")
    assert isinstance(task, GenerativeTask)
    metrics, row_scores = _generative_metrics(task, outputs, rows, system)
    return SimpleBaseline("dictionary of training values found in the text",
                          f"{len(owner)} values of {len(fields)} fields from {len(train)} training rows",
                          ModelScores(metrics, outputs, row_scores))


def longer_answer(rows: list[dict[str, Any]]) -> SimpleBaseline | None:
    """Prefers the longer answer (characters; a tie is no preference, as a zero margin is not for a
    model). Only `preference_accuracy`: the rule ranks the two given answers and writes none, so it
    has no answer of its own for the chat metrics. None when the rows are not pairs."""
    picks, prefers = [], []
    for row in rows:
        chosen, rejected = pair_conversations(json.loads(row["messages"]))
        if rejected is None:
            return None
        a, b = chosen[-1]["content"], rejected[-1]["content"]
        prefers.append(float(len(a) > len(b)))
        picks.append(a if len(a) >= len(b) else b)
    metrics = {"preference_accuracy": sum(prefers) / max(len(prefers), 1)}
    return SimpleBaseline("the longer answer", "no training", ModelScores(metrics, picks,
                                                                         [{"prefers_chosen": p} for p in prefers]))


def simple_baseline(task_name: str, train: list[dict[str, Any]], validation: list[dict[str, Any]],
                    rows: list[dict[str, Any]], system: str | None, labels: list[str] | None,
                    primary: str) -> SimpleBaseline | str:
    """The task's simple baseline on `rows`, or why there is none (a sentence)."""
    if not rows:
        return "no evaluation rows"
    if task_name == "classification":
        return classify(train, validation, rows, labels or sorted({str(r["label"]) for r in train}), primary)
    if task_name == "summarization":
        return summarize(train, validation, rows, system, primary)
    if task_name == "chat":
        return nearest_neighbour(train, rows, system) if train else "no training rows"
    if task_name == "extraction":
        return extraction(train, rows, system) or "the training targets are not JSON objects: no dictionary to build"
    if task_name == "preference":
        found = longer_answer(rows)
        if found is None:
            return "the evaluation rows are not chosen/rejected pairs"
        if primary not in found.scores.metrics:
            return f"the longer-answer rule gives preference_accuracy only, not the primary metric {primary}"
        return found
    return f"no simple baseline for task {task_name}"
