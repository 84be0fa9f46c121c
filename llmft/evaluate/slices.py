"""Slice metrics (the bias check behind `eval.slice_by`): every evaluated model's primary metric on the
rows of each value of a data column, and the fine-tuned model's worst slice.

A slice's metric is recomputed on its own rows with the task's own scorer, never a mean of per-row
scores: macro-F1 or corpus BLEU of a subset is not the mean of its rows' values. Everything comes
from what evaluation already holds (outputs, per-row scores, the rows), so no model is loaded
again. A metric that needs the model itself (a generative model's token-level eval loss, a
preference pair's likelihoods) is reported as not computable per slice rather than approximated.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from llmft.contracts import MISSING_SLICE as MISSING  # ingest names rows without a value
from llmft.contracts import ModelEvaluation, SliceReport, SliceScores
from llmft.evaluate import text_metrics
from llmft.tasks import classification
from llmft.tasks.base import GenerativeTask, Task

MAX_SHOWN = 20

# (model, row indices) -> the metric on those rows, or None when outputs alone cannot give it
SubsetScorer = Callable[[ModelEvaluation, list[int]], float | None]


def metric_key(name: str) -> str:
    """MLflow metric names allow letters, digits and _-. /: anything else becomes _ (and / too, so a
    value cannot add a level to the metric's path)."""
    return "".join(ch if ch.isalnum() or ch in "_-. " else "_" for ch in name).strip() or "_"


def last_user(row: dict[str, Any]) -> str:
    """The row's last user turn (what the task's scorer and the simple baselines read as the input)."""
    import json

    messages = json.loads(row["messages"])
    return next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")


def _row_values(model: ModelEvaluation, idx: list[int], key: str) -> list[float] | None:
    """One per-row score of the rows `idx`, or None when the model's rows do not carry it."""
    if len(model.row_scores) <= max(idx) or any(key not in model.row_scores[i] for i in idx):
        return None
    return [model.row_scores[i][key] for i in idx]


def subset_scorer(task: Task, metric: str, rows: list[dict[str, Any]]) -> SubsetScorer:
    """How `metric` is recomputed on a subset of the evaluation rows, for any model scored on them."""
    if task.classifier:

        references = [str(r["label"]) for r in rows]

        def classify(model: ModelEvaluation, idx: list[int]) -> float | None:
            if metric == "eval_loss":  # the cross-entropy over the label set: each row's p(true label) has it
                p_true = _row_values(model, idx, "p_true")
                return None if p_true is None else classification.eval_loss([[p] for p in p_true], [0] * len(p_true))
            predicted, reference = [model.outputs[i] for i in idx], [references[i] for i in idx]
            # macro averages over the labels the slice has (in its references or predictions), as
            # scikit-learn does: a label absent from a slice is not a zero of that slice
            present = set(predicted) | set(reference)
            labels = [label for label in model.extras.get("labels", sorted(present)) if label in present]
            return classification.score(predicted, reference, labels).get(metric)

        return classify

    references = [str(r["response"]) for r in rows]
    sources = [last_user(r) for r in rows]  # what score_generative hands the task's scorer

    def generate(model: ModelEvaluation, idx: list[int]) -> float | None:
        outputs, refs, srcs = [model.outputs[i] for i in idx], [references[i] for i in idx], [sources[i] for i in idx]
        if metric == text_metrics.UNSUPPORTED_RATE:
            counts = _row_values(model, idx, text_metrics.UNSUPPORTED_ITEMS)
            return None if counts is None else text_metrics.unsupported_rate(counts)
        if metric in text_metrics.NAMES:
            return text_metrics.overlap(outputs, refs, (metric,))[0][metric]
        if isinstance(task, GenerativeTask):
            return task.score(outputs, refs, srcs)[0].get(metric)
        return None

    return generate


def slice_names(values: list[Any]) -> list[str]:
    """Each row's slice; no value (None, NaN, blank) is the "(missing)" slice, as ingest names it."""
    out = []
    for value in values:
        missing = value is None or (isinstance(value, float) and math.isnan(value)) or not str(value).strip()
        out.append(MISSING if missing else str(value))
    return out


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def slice_report(column: str, values: list[Any], rows: list[dict[str, Any]], models: list[ModelEvaluation],
                 task: Task, metric: str, max_shown: int = MAX_SHOWN) -> SliceReport:
    """The metric per slice for every model in `models` (available ones, scored on `rows` in order),
    the largest `max_shown` slices (the fine-tuned model's worst one always among them), and that
    worst slice: lowest when higher is better, else highest."""
    names = slice_names(values)
    if len(names) != len(rows):
        raise ValueError(f"eval.slice_by={column}: {len(names)} slice values for {len(rows)} evaluation rows")
    groups: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        groups.setdefault(name, []).append(i)
    score = subset_scorer(task, metric, rows)
    scored = [m for m in models if m.available and len(m.outputs) == len(rows)]
    keys: set[str] = set()
    every = []
    for name, idx in sorted(groups.items(), key=lambda item: (-len(item[1]), item[0])):
        key = metric_key(name)
        while key in keys:  # two values spelled alike once made safe: keep their metrics apart
            key += "_"
        keys.add(key)
        every.append(SliceScores(name=name, key=key, rows=len(idx), values={m.role: score(m, idx) for m in scored}))
    higher = task.higher_is_better(metric)
    ranked = [s for s in every if _finite(s.values.get("finetuned"))]
    worst = (min if higher else max)(ranked, key=lambda s: s.values["finetuned"]) if ranked else None
    shown = every[:max_shown]
    if worst is not None and worst not in shown:
        shown.append(worst)
    overall = {m.role: m.metrics.get(metric) for m in scored}
    left = [s for s in every if s not in shown]
    note = ""
    if not any(_finite(v) for s in every for v in s.values.values()):
        note = f"{metric} needs the model itself (not only its outputs): not recomputed per slice"
    elif list(groups) == [MISSING]:
        note = f"no evaluation row has a value of eval.slice_by={column}"
    report = SliceReport(column=column, metric=metric, higher_is_better=higher, overall=overall, slices=shown,
                         total=len(every), left_out=len(left), left_out_rows=sum(s.rows for s in left), note=note)
    if worst is not None:
        value = worst.values["finetuned"]
        base = overall.get("finetuned")
        report.worst, report.worst_rows, report.worst_value = worst.name, worst.rows, value
        report.worst_gap = value - base if value is not None and _finite(base) else None
    return report


ROLE_NAMES = {"base": "base", "base_few_shot": "base few-shot", "simple_baseline": "simple", "finetuned": "fine-tuned",
              "champion": "champion"}


def worst_line(report: SliceReport) -> str:
    """One sentence on the worst slice, the same in the run report and the model card."""
    if report.worst is None:
        return f"worst slice: none ({report.note or 'no slice has a fine-tuned value'})"
    gap = f", {report.worst_gap:+.4f} vs its overall {report.overall['finetuned']:.4f}" \
        if report.worst_gap is not None else ""
    way = "lowest" if report.higher_is_better else "highest"
    return (f"worst slice of the fine-tuned model ({way} {report.metric}): {report.column}={report.worst!r}, "
            f"{report.worst_value:.4f} on {report.worst_rows} rows{gap}")


def left_out_line(report: SliceReport) -> str | None:
    if not report.left_out:
        return None
    return (f"{report.left_out} smaller slices ({report.left_out_rows} rows) not shown: {len(report.slices)} of "
            f"{report.total} listed")


def roles(report: SliceReport) -> list[str]:
    """The models the report has values for, in the usual column order."""
    present = {role for s in report.slices for role in s.values}
    return [role for role in ROLE_NAMES if role in present]
