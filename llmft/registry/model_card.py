"""The model card: one markdown page per registered version, logged to MLflow and set as the
version's description, so the registry UI says what a model is before anyone serves it."""

from __future__ import annotations

import json
from typing import Any

from llmft.config import TrainConfig
from llmft.contracts import DatasetInfo, Evaluation, Forgetting, PromotionDecision, SliceReport, TrainingResult
from llmft.evaluate.slices import left_out_line, roles, worst_line
from llmft.tasks import get_task
from llmft.tasks.base import TaskSpec

SHIPPED_DEMOS = ("data/products.jsonl", "data/sentiment.jsonl")
HEADERS = {"base": "base", "base_few_shot": "base few-shot", "simple_baseline": "simple (no LLM)",
           "finetuned": "fine-tuned", "champion": "champion"}


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def render(name: str, version: str, spec: TaskSpec, base_model: str, dataset: DatasetInfo, training: TrainingResult,
           train: TrainConfig, evaluation: Evaluation, forgetting: Forgetting, decision: PromotionDecision,
           max_new_tokens: int) -> str:
    task = get_task(spec.name)
    verdict = ("already champion (training reused)" if decision.already_champion
               else "promoted to champion" if decision.promoted else "not promoted")
    lines = [f"# {name} v{version}", "",
             f"Task **{spec.name}** ({spec.reason}), method **{training.method}** on base model `{base_model}`. "
             f"Decision: **{verdict}**.", "", *task.card_lines(training.labels), ""]
    if spec.instruction:
        lines += [f"Instruction (system message at training, evaluation and serving): \"{spec.instruction}\"", ""]
    lines += _data_section(dataset, evaluation) + _training_section(training, train)
    lines += _metrics_section(evaluation, decision, task.classifier)
    lines += slice_section(evaluation.slices)
    lines += ["", "## Forgetting probe", ""]
    if forgetting.applicable:
        lines.append(f"{forgetting.questions} general-knowledge questions: base {_fmt(forgetting.base)}, "
                     f"fine-tuned {_fmt(forgetting.finetuned)}, drop {_fmt(forgetting.drop)} "
                     f"(allowed {forgetting.max_allowed}).")
    else:
        lines.append(forgetting.reason or "not run")
    if training.guard_note:
        lines.append(training.guard_note + " (promotion.forgetting_guard).")
    lines += ["", "## Promotion gate", ""] + [f"- {r}" for r in decision.reasons]
    lines += _limitations(task.classifier, max_new_tokens, dataset.source)
    return "\n".join(lines) + "\n"


def _data_section(dataset: DatasetInfo, evaluation: Evaluation) -> list[str]:
    rows, sample = dataset.rows, evaluation.sample
    return [
        "## Data", "",
        f"- source `{dataset.source}`, fingerprint `{dataset.fingerprint}`",
        f"- rows in {dataset.rows_in}, duplicates removed {dataset.duplicates_removed}, rejected {dataset.rejected} "
        f"{json.dumps(dataset.rejected_by_reason)}, truncated to fit {dataset.truncated}",
        f"- split train / validation / test: {rows.get('train')} / {rows.get('validation')} / {rows.get('test')}; "
        f"{sample.n} test rows scored ({sample.how}{f', seed {sample.seed}' if sample.seed is not None else ''})",
        *[f"- {extra.line()} (training split only)" for extra in dataset.extras],
        *[f"- warning: {w}" for w in dataset.warnings], ""]


def _training_section(training: TrainingResult, train: TrainConfig) -> list[str]:
    epochs = f", {training.epochs_seen:.2f} epochs of the training rows" if training.epochs_seen is not None else ""
    lines = ["## Training", "",
             f"- {training.steps} steps{epochs}, loss {_fmt(training.first_loss)} → {_fmt(training.last_loss)}, "
             f"validation loss {_fmt(training.validation_loss)}",
             f"- learning rate {train.rate:g}, batch {train.batch_size} × {train.gradient_accumulation_steps} "
             f"accumulation, max sequence {train.max_seq_length}"]
    if training.budget_note:
        lines.append(f"- {training.budget_note}")
    if training.class_weights:
        shown = ", ".join(f"{k} {v:.3g}" for k, v in list(training.class_weights.items())[:12])
        lines.append(f"- loss weights (train.class_weights): {shown}")
    return [*lines, ""]


def _metrics_section(evaluation: Evaluation, decision: PromotionDecision, classifier: bool) -> list[str]:
    metrics, primary = evaluation.metrics, evaluation.primary_metric
    columns = [role for role in HEADERS if metrics.get(role)]
    lines = ["## Metrics (same test rows for every column)", "",
             "| metric | " + " | ".join(HEADERS[c] for c in columns) + " |", "|---|" + "---:|" * len(columns)]
    for metric in metrics["finetuned"] or {}:
        mark = " (primary)" if metric == primary else ""
        lines.append(f"| {metric}{mark} | " + " | ".join(_fmt((metrics[c] or {}).get(metric)) for c in columns) + " |")
    lines += ["", f"Champion: {evaluation.champion_note}."]
    shots = evaluation.few_shot
    if shots and shots.get("used_max", 1) == 0:
        lines.append(f"Base few-shot: {evaluation.few_shot_note or 'not applicable: no worked example fits'}.")
    elif shots:
        budget = (f"a {shots['budget_tokens']:.0f}-token prompt (eval.few_shot_max_tokens)" if "budget_tokens" in shots
                  else "the context (train.max_seq_length)")
        lines.append(f"Base few-shot: {shots['k']:.0f} training rows as worked examples before each test row, "
                     f"{shots['used_mean']:.2f} per row on average fitted {budget}.")
    if evaluation.simple_baseline_method:
        lines.append(f"Simple baseline (no language model, fitted on the training split, same test rows): "
                     f"{evaluation.simple_baseline_note}.")
    elif evaluation.simple_baseline_note:
        lines.append(f"Simple baseline: {evaluation.simple_baseline_note}.")
    if decision.baseline_used:
        used = ("simple baseline" if decision.baseline_used == "simple"
                else f"base {decision.baseline_used.replace('_', '-')}")
        lines.append(f"The promotion gate compared with the {used} (promotion.baseline).")
    lines += [f"Warning: {w}." for w in evaluation.warnings]
    if classifier:
        lines.append("The base columns are the instruct model told the label set and scored by each label's "
                     "likelihood (no generation), not a randomly initialised classification head.")
    return lines


def _limitations(classifier: bool, max_new_tokens: int, source: str) -> list[str]:
    lines = ["", "## Known limitations", "",
             "- Scored on a held-out split of the same source as training: it says nothing about data from "
             "elsewhere.",
             "- Greedy decoding at evaluation; sampled answers can differ."]
    if not classifier:
        lines.append(f"- Generation capped at {max_new_tokens} new tokens; longer answers are cut.")
        lines.append("- The forgetting probe is short and English-only: it catches gross loss of general ability, "
                     "not subtle drift.")
    if source in SHIPPED_DEMOS:
        lines.append("- Trained on the shipped synthetic dataset: a demonstration, not a production model.")
    return lines


def slice_section(report: SliceReport | None) -> list[str]:
    """The bias check (eval.slice_by): the primary metric per slice, largest slices first."""
    if report is None:
        return []
    columns = roles(report)
    lines = ["", f"## {report.metric} by {report.column} (eval.slice_by)", ""]
    if report.note:
        lines += [report.note, ""]
    lines += ["| slice | rows | " + " | ".join(HEADERS[c] for c in columns) + " |",
              "|---|---:|" + "---:|" * len(columns)]
    for s in report.slices:
        name = s.name.replace("|", "\\|")  # a value with a pipe would split the table's cell
        mark = " (worst)" if s.name == report.worst else ""
        lines.append(f"| {name}{mark} | {s.rows} | " + " | ".join(_fmt(s.values.get(c)) for c in columns) + " |")
    left, worst = left_out_line(report), worst_line(report)
    lines += ["", *([f"{left}."] if left else []), f"{worst[0].upper()}{worst[1:]}."]
    return lines
