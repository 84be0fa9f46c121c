"""The evaluation stages: the same sample of test rows for the base model, the fine-tuned candidate
and the registry's champion; the forgetting probe for the base and the candidate.

Each model's evaluation is its own function (and its own pipeline step), so the base model's and
an unchanged champion's scores, and the base model's probe answers, are served from ZenML's cache
when nothing that determines them changed. `compare` puts them side by side and logs the
comparison (metrics, predictions table, plots) to the active MLflow run.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from llmft import plots
from llmft.base_model import base_identity, load_model, load_tokenizer, resolve_base_model
from llmft.config import ModelConfig
from llmft.config_stages import EvalSettings, ProbeSettings, ReportSettings, RowDraw, ShotDraw
from llmft.contracts import (
    ChampionRef,
    EvalSample,
    Evaluation,
    Forgetting,
    ModelEvaluation,
    ProbeRun,
    SliceReport,
    SplitInfo,
    TrainingResult,
)
from llmft.evaluate import few_shot, simple_baselines
from llmft.evaluate.collapse import collapse_warning
from llmft.evaluate.forgetting import load_probe, run_probe
from llmft.evaluate.genai_tables import log_genai_evaluations
from llmft.evaluate.sampling import sample_rows
from llmft.evaluate.slices import left_out_line, metric_key, slice_names, slice_report, worst_line
from llmft.locations import tracking_uri
from llmft.precision import for_inference, inference_dtype
from llmft.registry import versions
from llmft.resolve import code_version
from llmft.tasks import get_task, primary_metric
from llmft.tasks.base import TaskSpec
from llmft.train.methods import load_trained

log = logging.getLogger(__name__)

Loader = Callable[[], tuple[Any, Any]]
SIMPLE_ROLE = "simple_baseline"


def draw_sample(test_split: pd.DataFrame, spec: TaskSpec, draw: RowDraw) -> tuple[pd.DataFrame, EvalSample]:
    """The evaluation rows: all of the test split, or a seeded (stratified) sample of eval.max_samples."""
    label_key = "label" if get_task(spec.name).classifier else None
    rows, sample = sample_rows(test_split.to_dict(orient="records"), draw.max_samples, draw.seed, label_key)
    return pd.DataFrame(rows, columns=list(test_split.columns)), sample


def score_model(role: str, identity: str, load: Loader, sample: pd.DataFrame, spec: TaskSpec,
                scoring: EvalSettings, labels: list[str] | None, note: str = "",
                version: str | None = None) -> ModelEvaluation:
    model, tokenizer = load()
    model = for_inference(model, scoring.precision)
    scores = get_task(spec.name).evaluate(model, tokenizer, sample.to_dict(orient="records"), spec.instruction,
                                          scoring, labels, desc=f"eval {role}")
    del model
    return ModelEvaluation(role=role, identity=identity, version=version, note=note, metrics=scores.metrics,
                           outputs=scores.outputs, row_scores=scores.row_scores, extras=scores.extras)


SHOT_COLUMNS = ["messages", "response", "text", "label"]


def draw_shots(train_split: pd.DataFrame, spec: TaskSpec, draw: ShotDraw) -> pd.DataFrame:
    """The few-shot base's worked examples: eval.few_shot_k training rows (never test), seeded by
    eval.sample_seed, stratified by label for classification; the user's own rows only (replayed or
    synthetic training rows are not what the task looks like)."""
    label_key = "label" if get_task(spec.name).classifier else None
    if "origin" in train_split.columns:
        train_split = train_split[train_split["origin"] == "data"]
    columns = [c for c in SHOT_COLUMNS if c in train_split.columns]
    rows = few_shot.draw_shots(train_split[columns].to_dict(orient="records"), draw.k, draw.seed, label_key)
    return pd.DataFrame(rows, columns=columns)


def evaluate_prompted_base(role: str, sample: pd.DataFrame, shots: pd.DataFrame | None, spec: TaskSpec,
                           model: ModelConfig, split: SplitInfo, scoring: EvalSettings) -> ModelEvaluation:
    """The pretrained (instruct) model prompted for the task on the evaluation rows: zero-shot
    without `shots`, else with them as earlier turns. A classifier's base is the language model told
    the label set and scored by each label's likelihood (never a randomly initialised head)."""

    task = get_task(spec.name)
    base = resolve_base_model(model)
    labels = split.labels if task.classifier else None
    shot_rows = [] if shots is None else shots.to_dict(orient="records")
    # the causal LM, also for a classification task
    llm, tokenizer = for_inference(load_model(base), scoring.precision), load_tokenizer(base)
    scores = task.evaluate_prompted(llm, tokenizer, sample.to_dict(orient="records"), spec.instruction,
                                    scoring, labels, shot_rows, desc=f"eval {role}")
    del llm
    identity = base_identity(model.base, model.revision)
    if shot_rows and not scores.metrics:  # not one shot fits: the score would be zero-shot's again
        budget = scores.extras["few_shot"].get("budget_tokens", scoring.max_seq_length)
        return ModelEvaluation(role=role, available=False, identity=identity, extras=scores.extras,
                               note=f"not applicable: none of the {len(shot_rows)} worked examples fits beside a row "
                                    f"in {budget:.0f} tokens (eval.few_shot_max_tokens, within the model's context)")
    how = ("label likelihood" if task.classifier else "greedy generation") + (
        f", {len(shot_rows)} shots drawn, {scores.extras['few_shot']['used_mean']:.2f} used per row on average"
        if shot_rows else ", zero-shot")
    return ModelEvaluation(role=role, identity=identity,
                           note=f"{model.base}, prompted ({how}), same instruction and rows", metrics=scores.metrics,
                           outputs=scores.outputs, row_scores=scores.row_scores, extras=scores.extras)


def evaluate_base(sample: pd.DataFrame, spec: TaskSpec, model: ModelConfig, split: SplitInfo,
                  scoring: EvalSettings) -> ModelEvaluation:
    """The base model zero-shot: the task's instruction, nothing else."""
    return evaluate_prompted_base("base", sample, None, spec, model, split, scoring)


def evaluate_base_few_shot(sample: pd.DataFrame, shots: pd.DataFrame, spec: TaskSpec, model: ModelConfig,
                           split: SplitInfo, scoring: EvalSettings) -> ModelEvaluation:
    """The base model with eval.few_shot_k worked examples from the training split before each row."""
    if shots.empty:
        return ModelEvaluation(role="base_few_shot", available=False, note="few-shot base off (eval.few_shot_k=0)")
    return evaluate_prompted_base("base_few_shot", sample, shots, spec, model, split, scoring)


def _user_rows(split: pd.DataFrame) -> list[dict[str, Any]]:
    """The user's own rows of a split (replayed general-purpose rows are not what the task looks like)."""
    if "origin" in split.columns:
        split = split[split["origin"] == "data"]
    columns = [c for c in SHOT_COLUMNS if c in split.columns]
    return split[columns].to_dict(orient="records")


def evaluate_simple_baseline(train: pd.DataFrame, validation: pd.DataFrame, sample: pd.DataFrame, spec: TaskSpec,
                             split: SplitInfo, primary_metric_name: str | None) -> ModelEvaluation:
    """The task's simple non-LLM baseline (`simple_baselines`), fitted on the training split, a knob
    chosen on validation, scored on the evaluation rows by the task's own scorer."""
    task = get_task(spec.name)
    rows = sample.to_dict(orient="records")
    primary = primary_metric(task, primary_metric_name, rows)
    found = simple_baselines.simple_baseline(spec.name, _user_rows(train), _user_rows(validation), rows,
                                             spec.instruction, split.labels if task.classifier else None, primary)
    if isinstance(found, str):
        return ModelEvaluation(role=SIMPLE_ROLE, available=False, note=f"not applicable: {found}")
    scores = found.scores
    return ModelEvaluation(role=SIMPLE_ROLE, identity=found.method, note=f"{found.method}: {found.detail}",
                           metrics=scores.metrics, outputs=scores.outputs, row_scores=scores.row_scores,
                           extras=scores.extras)


def champion_comparable(champion: ChampionRef | None, spec: TaskSpec, labels: list[str] | None,
                        enabled: bool) -> str | None:
    """Why the champion cannot be compared with this run's model, or None when it can."""
    if not enabled:
        return "champion re-evaluation off (eval.champion=false)"
    if champion is None:
        return "no current champion"
    if champion.task != spec.name:
        return f"no comparable champion: task {champion.task} vs {spec.name} (champion v{champion.version})"
    if labels is not None and sorted(champion.labels or []) != sorted(labels):
        return (f"no comparable champion: champion v{champion.version} has labels {champion.labels}, this data "
                f"{labels}")
    return None


SCORES_ARTIFACT = "evaluation/candidate_scores.json"


def scores_key(sample: pd.DataFrame, spec: TaskSpec, scoring: EvalSettings) -> str:
    """What determines a model's scores besides the model: the rows, the task and instruction, the
    generation settings, the dtype they were computed in and the project's code (greedy decoding is
    deterministic)."""
    import hashlib

    digest = hashlib.sha256()
    for row in sample[["messages", "response", "text", "label"]].itertuples(index=False):
        digest.update("\x1f".join(str(value) for value in row).encode() + b"\x1e")
    settings = {"task": spec.model_dump(), "max_new_tokens": scoring.max_new_tokens, "batch_size": scoring.batch_size,
                "max_seq_length": scoring.max_seq_length, "code": code_version(),
                "dtype": str(inference_dtype(scoring.precision))}  # what auto resolved to on this machine
    digest.update(json.dumps(settings, sort_keys=True).encode())
    return digest.hexdigest()[:24]


def _scores_from_its_own_run(champion: ChampionRef, key: str) -> ModelEvaluation | None:
    """The champion's scores as its own run measured them, when that run scored these very rows with
    the same settings and code: a re-measurement would give the same numbers."""
    import mlflow

    if not champion.run_id:
        return None
    try:
        saved = mlflow.artifacts.load_dict(f"runs:/{champion.run_id}/{SCORES_ARTIFACT}")
    except Exception:  # an older run, or artifacts gone: measure instead
        return None
    if saved.get("key") != key:
        return None
    found = ModelEvaluation.model_validate(saved["evaluation"])
    return found.model_copy(update={"role": "champion", "version": champion.version,
                                    "identity": f"models:/{champion.name}/{champion.version}",
                                    "note": f"champion v{champion.version}: same rows, settings and code as its own "
                                            "run's evaluation, scores reused"})


def evaluate_champion(sample: pd.DataFrame, spec: TaskSpec, champion: ChampionRef | None, split: SplitInfo,
                      scoring: EvalSettings, enabled: bool = True, trust_remote_code: bool = False) -> ModelEvaluation:
    """The registry's champion measured on this run's rows, never numbers from other rows (`enabled`:
    eval.champion)."""
    labels = split.labels if get_task(spec.name).classifier else None
    why_not = champion_comparable(champion, spec, labels, enabled)
    if why_not is not None or champion is None:
        return ModelEvaluation(role="champion", available=False, note=why_not or "no current champion")
    import mlflow


    mlflow.set_tracking_uri(tracking_uri())  # no experiment tracker on this (cached) step
    reused = _scores_from_its_own_run(champion, scores_key(sample, spec, scoring))
    if reused is not None:
        return reused
    return score_model("champion", f"models:/{champion.name}/{champion.version}",
                       lambda: versions.load_components(champion.name, champion.version, trust_remote_code), sample,
                       spec, scoring, labels, version=champion.version,
                       note=f"champion v{champion.version} re-evaluated on this run's rows")


def evaluate_candidate(trained_model: Path, training: TrainingResult, sample: pd.DataFrame, spec: TaskSpec,
                       model: ModelConfig, scoring: EvalSettings) -> ModelEvaluation:

    base = resolve_base_model(model)
    return score_model("finetuned", str(trained_model), lambda: load_trained(base, trained_model, training.labels),
                       sample, spec, scoring, training.labels, note=f"{training.method}, {training.steps} steps")


def compare(base: ModelEvaluation, base_few_shot: ModelEvaluation, candidate: ModelEvaluation,
            champion: ModelEvaluation, sample: pd.DataFrame, drawn: EvalSample, spec: TaskSpec,
            reporting: ReportSettings, scoring: EvalSettings, simple: ModelEvaluation | None = None) -> Evaluation:
    """All of them side by side; metrics, predictions table and plots go to the active MLflow run.
    With eval.slice_by, also the primary metric per slice of the rows (the bias check). `simple` is
    the non-LLM baseline (`evaluate_simple_baseline`)."""
    import mlflow


    task = get_task(spec.name)
    rows = sample.to_dict(orient="records")
    primary = primary_metric(task, reporting.primary_metric, rows)
    simple = simple or ModelEvaluation(role=SIMPLE_ROLE, available=False, note="not measured")
    models = [m for m in (base, base_few_shot, simple, candidate, champion) if m.available]
    for m in models:
        _log_model_metrics(m, drawn.n)
    table, slices = _predictions_table(rows, sample, models, task, reporting.slice_by, primary)
    mlflow.log_table(table, "evaluation/predictions.json")
    # the simple baseline's answers are in the predictions table; a GenAI table (a trace per row) would
    # only cost time
    genai_runs = log_genai_evaluations([m for m in models if m.role != SIMPLE_ROLE], table["input"],
                                       table["reference"], reporting.genai_table_rows, spec.name)
    mlflow.set_tags({f"evaluation.genai_run.{role}": run_id for role, run_id in genai_runs.items()})
    rates = [k for k in candidate.metrics if k not in ("eval_loss", "perplexity")]
    mlflow.log_figure(plots.metric_comparison({m.role: m.metrics for m in models}, rates),
                      "plots/metric_comparison.png")
    mlflow.log_dict(drawn.model_dump(), "evaluation/sample.json")
    mlflow.log_dict({"key": scores_key(sample, spec, scoring), "evaluation": candidate.model_dump()},
                    SCORES_ARTIFACT)
    mlflow.set_tags({"evaluation.champion": champion.note, "evaluation.sample": f"{drawn.n} of {drawn.of} test rows, "
                                                                                 f"{drawn.how}",
                     "evaluation.base": base.note, "evaluation.base_few_shot": base_few_shot.note,
                     "evaluation.simple_baseline": simple.note})
    shots = base_few_shot.extras.get("few_shot", {})  # also when no shot fitted (then not applicable)
    if shots:
        mlflow.log_metrics({f"few_shot/{k}": v for k, v in shots.items()})  # beside, not among, its metrics
    references = [str(r["label"]) if task.classifier else str(r["response"]) for r in rows]
    warnings = [w for w in [collapse_warning("fine-tuned", candidate.outputs, references)] if w]
    for warning in warnings:
        log.warning("%s", warning)
    if warnings:
        mlflow.set_tag("evaluation.warnings", " | ".join(warnings)[:4900])
    run = mlflow.active_run()
    return Evaluation(task=spec.name, primary_metric=primary, higher_is_better=task.higher_is_better(primary),
                      sample=drawn, metrics={"base": base.metrics,
                                             "base_few_shot": base_few_shot.metrics if base_few_shot.available
                                             else None,
                                             "simple_baseline": simple.metrics if simple.available else None,
                                             "finetuned": candidate.metrics,
                                             "champion": champion.metrics if champion.available else None},
                      champion_version=champion.version if champion.available else None,
                      champion_note=champion.note, mlflow_run_id=run.info.run_id if run else None, few_shot=shots,
                      few_shot_used=base_few_shot.extras.get("few_shot_used", []), few_shot_note=base_few_shot.note,
                      slices=slices, simple_baseline_method=simple.identity if simple.available else None,
                      simple_baseline_note=simple.note, warnings=warnings,
                      table_warnings=list(genai_runs.warnings))


def _predictions_table(rows: list[dict[str, Any]], sample: pd.DataFrame, models: list[ModelEvaluation], task: Any,
                       slice_by: str | None, primary: str) -> tuple[dict[str, list[Any]], SliceReport | None]:
    """The per-row table (input, reference, each model's answer and per-row scores) and, with
    eval.slice_by, the metric per slice (logged here)."""
    table: dict[str, list[Any]] = {
        "input": [r["text"] if task.classifier else _last_user(r) for r in rows],
        "reference": [str(r["label"]) if task.classifier else r["response"] for r in rows]}
    slices = None
    if slice_by:
        values = sample["slice"].tolist() if "slice" in sample.columns else [None] * len(rows)
        slices = slice_report(slice_by, values, rows, models, task, primary)
        table["slice"] = slice_names(values)
        _log_slices(slices)
    for m in models:
        table[f"{m.role}_output"] = m.outputs
    for m in models:
        for key in m.row_scores[0] if m.row_scores else ():
            table[f"{m.role}_{key}"] = [row[key] for row in m.row_scores]
    return table, slices


def _log_model_metrics(m: ModelEvaluation, rows: int) -> None:
    """One model's metrics, per-class scores and confusion matrix (with its plot) in the active run."""
    import mlflow


    mlflow.log_metrics({f"{m.role}/{k}": v for k, v in m.metrics.items() if math.isfinite(v)})
    for label, scores in m.extras.get("per_class", {}).items():
        mlflow.log_metrics({f"{m.role}/per_class/{metric_key(label)}/{k}": v for k, v in scores.items()})
    if "confusion" in m.extras:
        mlflow.log_dict({"labels": m.extras["labels"], "matrix": m.extras["confusion"]},
                        f"evaluation/confusion_{m.role}.json")
        figure = plots.confusion_matrix(m.extras["confusion"], m.extras["labels"], f"{m.role}: {rows} test rows")
        mlflow.log_figure(figure, f"plots/confusion_matrix_{m.role}.png")


def _log_slices(report: SliceReport) -> None:
    """Per slice and model `slice/<value>/<role>/<metric>` (and `slice/<value>/rows`), the worst slice
    as a tag and metrics, the whole report as JSON and the bars as a plot."""
    import mlflow


    for s in report.slices:
        mlflow.log_metrics({f"slice/{s.key}/rows": float(s.rows),
                            **{f"slice/{s.key}/{role}/{report.metric}": v for role, v in s.values.items()
                               if v is not None and math.isfinite(v)}})
    if report.worst is not None and report.worst_value is not None:
        mlflow.log_metric(f"slice_worst/finetuned/{report.metric}", report.worst_value)
        if report.worst_gap is not None:
            mlflow.log_metric(f"slice_worst/gap/{report.metric}", report.worst_gap)
    tags = {"evaluation.slice_by": report.column, "evaluation.worst_slice": report.worst or "",
            "evaluation.worst_slice_detail": worst_line(report)}
    left = left_out_line(report)
    if left:
        tags["evaluation.slices_left_out"] = left
    mlflow.set_tags(tags)
    mlflow.log_dict(report.model_dump(), "evaluation/slices.json")
    if report.slices:
        mlflow.log_figure(plots.slice_metric(report), f"plots/slices_{metric_key(report.metric)}.png")


def _last_user(row: dict[str, Any]) -> str:
    messages = json.loads(row["messages"])
    return next((m["content"] for m in reversed(messages) if m["role"] == "user"), row.get("prompt", ""))


# ---- forgetting probe ----

def probe(load: Loader, settings: ProbeSettings, desc: str) -> ProbeRun:

    model, tokenizer = load()
    model = for_inference(model, settings.precision)
    result = run_probe(model, tokenizer, load_probe(), settings.max_new_tokens, settings.batch_size, desc=desc)
    del model
    return ProbeRun(applicable=True, accuracy=result.accuracy, outputs=result.outputs, correct=result.correct)


def probe_base(spec: TaskSpec, model: ModelConfig, settings: ProbeSettings) -> ProbeRun:
    """The base model's probe answers (without the task instruction, as a user would chat with it)."""
    if not get_task(spec.name).probe_applies:
        return ProbeRun(applicable=False, reason="a classifier has no generative head: the forgetting probe does "
                                                 "not apply")

    base = resolve_base_model(model)
    return probe(lambda: (load_model(base), load_tokenizer(base)), settings, "probe base")


def probe_candidate(trained_model: Path, training: TrainingResult, base_probe: ProbeRun, model: ModelConfig,
                    settings: ProbeSettings) -> ProbeRun:
    """The candidate on the same probe as the base (not applicable where the base's was not)."""
    if not base_probe.applicable:
        return base_probe

    base = resolve_base_model(model)
    return probe(lambda: load_trained(base, trained_model, training.labels), settings, "probe finetuned")


def forgetting(base_probe: ProbeRun, tuned: ProbeRun, max_forgetting: float) -> Forgetting:
    """The drop in probe accuracy from the base to the candidate, which the gate bounds; both
    models' answers go to the active MLflow run."""
    if not base_probe.applicable or not tuned.applicable:
        return Forgetting(applicable=False, reason=base_probe.reason or tuned.reason, max_allowed=max_forgetting)
    import mlflow


    assert base_probe.accuracy is not None and tuned.accuracy is not None
    drop = base_probe.accuracy - tuned.accuracy
    mlflow.log_metrics({"forgetting/base_accuracy": base_probe.accuracy,
                        "forgetting/finetuned_accuracy": tuned.accuracy, "forgetting/drop": drop})
    questions = load_probe()
    mlflow.log_table({"question": [r["question"] for r in questions],
                      "answers": [" | ".join(r["answers"]) for r in questions],
                      "base_output": base_probe.outputs, "finetuned_output": tuned.outputs,
                      "base_correct": base_probe.correct, "finetuned_correct": tuned.correct},
                     "evaluation/forgetting_probe.json")
    return Forgetting(applicable=True, questions=len(questions), base=base_probe.accuracy, finetuned=tuned.accuracy,
                      drop=drop, max_allowed=max_forgetting)
