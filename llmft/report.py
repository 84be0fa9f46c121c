"""Run summaries (JSON for scripts) and the closing table (for people), read from the run's typed
step outputs."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from llmft.contracts import (
    ChampionMove,
    DatasetInfo,
    Deployment,
    Evaluation,
    ExtraRows,
    Forgetting,
    ModelEvaluation,
    PromotionDecision,
    Registration,
    SliceReport,
    TrainingResult,
)
from llmft.credentials import mask
from llmft.evaluate.slices import ROLE_NAMES, left_out_line, roles, worst_line
from llmft.run_summary import RegisteredModelRef, RunSummary, SummaryDataset, SweepRunSummary, TrainSummary
from llmft.sweep import SweepResult

UI_URL = "http://127.0.0.1:5000"
TRAIN_KEYS = tuple(TrainSummary.model_fields)  # what the summary keeps of TrainingResult, in the summary's order


def _load(run: Any, step_name: str, output: str) -> Any:
    return run.steps[step_name].outputs[output][0].load()


def cached_steps(run: Any) -> list[str]:
    return sorted(name for name, step in run.steps.items() if str(step.status.value) == "cached")


def step_seconds(run: Any) -> dict[str, float]:
    """Wall seconds of each step that ran (cached steps take none)."""
    out = {}
    for name, step in run.steps.items():
        if step.start_time and step.end_time and str(step.status.value) != "cached":
            out[name] = round((step.end_time - step.start_time).total_seconds(), 1)
    return out


def finetune_summary(run: Any, tracking_uri: str, wall_seconds: float) -> RunSummary:
    evaluation: Evaluation = _load(run, "compare_models", "evaluation")
    registered: Registration = _load(run, "register", "registration")
    promotion: PromotionDecision = _load(run, "promote", "promotion")
    dataset: DatasetInfo = _load(run, "export_dataset", "dataset")
    training: TrainingResult = _load(run, "guard_forgetting", "guarded_training")  # the candidate as gated
    forgetting: Forgetting = _load(run, "measure_forgetting", "forgetting")
    deployment: Deployment = _load(run, "deploy_if_promoted", "deployment")
    champion: ModelEvaluation = _load(run, "evaluate_champion", "champion_evaluation")
    cached = cached_steps(run)
    return RunSummary(
        task=evaluation.task,
        task_reason=dataset.task_reason,
        zenml_run_id=str(run.id),
        mlflow_run_id=evaluation.mlflow_run_id,
        tracking_uri=tracking_uri,
        primary_metric=evaluation.primary_metric,
        higher_is_better=evaluation.higher_is_better,
        metrics=evaluation.metrics,
        eval_sample=evaluation.sample,
        eval_samples=evaluation.sample.n,
        champion_evaluated=evaluation.champion_version,
        champion_note=evaluation.champion_note,
        champion_identity=champion.identity or None,
        forgetting=forgetting,
        registered_model=RegisteredModelRef(name=registered.name, version=registered.version,
                                            uri=registered.model_uri, reused_from_run=registered.reused_from_run),
        training_reused_from_run=training.trained_in_run if "finetune" in cached else None,
        promoted=promotion.promoted,
        already_champion=promotion.already_champion,
        promotion_reasons=promotion.reasons,
        baseline_used=promotion.baseline_used,
        simple_baseline_method=evaluation.simple_baseline_method,
        simple_baseline_note=evaluation.simple_baseline_note,
        warnings=[*evaluation.warnings, *evaluation.table_warnings],
        few_shot=evaluation.few_shot,
        few_shot_used_per_row=evaluation.few_shot_used,
        few_shot_note=evaluation.few_shot_note,
        slices=evaluation.slices,
        champion_version=promotion.champion,
        previous_champion=promotion.previous_champion,
        dataset=SummaryDataset.model_validate(dataset.model_dump(exclude={"mlflow_run_id"})),
        labels=training.labels,
        deployment=deployment,
        cached_steps=cached,
        step_seconds=step_seconds(run),
        train=TrainSummary(**{k: getattr(training, k) for k in TRAIN_KEYS}),
        wall_seconds=round(wall_seconds, 1),
    )


def sweep_summary(run: Any, tracking_uri: str, wall_seconds: float) -> SweepRunSummary:
    """The finetune summary of the best trial's candidate, plus every trial of the study."""
    result: SweepResult = _load(run, "sweep", "sweep")
    # every field as set (not re-validated), then the two that differ; field order keeps "sweep" last
    best = dict(finetune_summary(run, tracking_uri, wall_seconds))
    return SweepRunSummary(**{**best, "pipeline": "sweep", "sweep": result})


def sweep_lines(sweep: SweepResult | dict[str, Any]) -> list[str]:
    """One line per trial (parameters, validation metric, state), then the best."""
    def params(values: dict[str, Any]) -> str:
        return ", ".join(f"{k.removeprefix('train.')}={v:.3g}" if isinstance(v, float) else
                         f"{k.removeprefix('train.')}={v}" for k, v in values.items())

    study = sweep if isinstance(sweep, SweepResult) else SweepResult.model_validate(sweep)
    trials = study.trials
    pruned = sum(t.state == "PRUNED" for t in trials)
    head = (f"sweep {study.study_name}: {len(trials)} trials ({pruned} pruned), {study.metric} on the "
            f"validation split, {study.direction}")
    if study.finished_before:
        head += f"; resumed: {study.finished_before} finished before, {study.ran_now} run now"
    lines = ["", head]
    for t in trials:
        if t.state == "PRUNED":
            state = f"pruned at step {t.pruned_at_step}"
        elif t.state == "COMPLETE":
            state = f"{t.value:.4f}"
        else:
            state = t.state.lower()
        mark = " <- best" if t.number == study.best_trial else ""
        lines.append(f"  trial {t.number:>3}  {state:<22} {params(t.params)}{mark}")
    lines.append(f"best trial {study.best_trial}: {study.metric} {study.best_value:.4f} with "
                 f"{params(study.best_params)}; the candidate below was trained with these settings")
    if study.plots_skipped:
        lines.append("plots skipped: " + "; ".join(f"{k}: {v}" for k, v in study.plots_skipped.items()))
    return lines


def data_summary(run: Any, tracking_uri: str, wall_seconds: float) -> dict[str, Any]:
    dataset: DatasetInfo = _load(run, "export_dataset", "dataset")
    return {"pipeline": "data", "task": dataset.task, "zenml_run_id": str(run.id),
            "mlflow_run_id": dataset.mlflow_run_id, "tracking_uri": tracking_uri,
            "dataset": dataset.model_dump(exclude={"mlflow_run_id"}), "cached_steps": cached_steps(run),
            "wall_seconds": round(wall_seconds, 1)}


def data_table(summary: dict[str, Any]) -> str:
    dataset, cached = summary["dataset"], summary["cached_steps"]
    rows = dataset["rows"]
    lines = ["", dataset["verdict"],
             f"task {dataset['task']} ({dataset['task_reason']})",
             f"rows in {dataset['rows_in']} -> train {rows['train']} / validation {rows['validation']} / "
             f"test {rows['test']} (+{dataset['unused']} unused, data.max_train_rows); "
             f"duplicates removed {dataset['duplicates_removed']}; rejected {dataset['rejected']}; "
             f"truncated {dataset['truncated']}",
             *[f"  duplicate: {d}" for d in dataset["duplicate_examples"]],
             *[ExtraRows.model_validate(e).line() for e in dataset.get("extras", [])],
             *[f"warning: {w}" for w in dataset["warnings"]],
             f"fingerprint {dataset['fingerprint']}; files in {dataset['export_dir']}",
             f"served from cache: {', '.join(cached) if cached else 'nothing'}"]
    return "\n".join(lines)


def deploy_summary(run: Any, tracking_uri: str, wall_seconds: float) -> dict[str, Any]:
    dep: Deployment = _load(run, "serve_champion", "deployment")
    return {"pipeline": "deploy", "zenml_run_id": str(run.id), "tracking_uri": tracking_uri,
            **dep.model_dump(), "wall_seconds": round(wall_seconds, 1)}


def promote_summary(run: Any, tracking_uri: str, wall_seconds: float) -> dict[str, Any]:
    moved: ChampionMove = _load(run, "move_champion", "promotion")
    return {"pipeline": "promote", "zenml_run_id": str(run.id), "tracking_uri": tracking_uri, **moved.model_dump(),
            "wall_seconds": round(wall_seconds, 1)}


def write_summary(summary: BaseModel | dict[str, Any], path: str | None) -> None:
    """The summary as JSON (a RunSummary, or the other pipelines' dicts). Python-mode dump, then json.dumps
    as before: the same text (mode="json" would write inf/nan as null, json.dumps writes Infinity/NaN)."""
    if path:
        data = summary.model_dump() if isinstance(summary, BaseModel) else summary
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(mask(json.dumps(data, indent=2, default=str)) + "\n")


def slice_lines(slices: SliceReport | dict[str, Any] | None) -> list[str]:
    """The bias check (eval.slice_by): the primary metric per slice and model, then the worst slice."""
    if not slices:
        return []
    report = slices if isinstance(slices, SliceReport) else SliceReport.model_validate(slices)
    head = f"{report.metric} by {report.column}" + (f" ({report.note})" if report.note else "")
    columns = roles(report)
    lines = ["", head, f"{'slice':<28}{'rows':>6}" + "".join(f"{ROLE_NAMES[r]:>15}" for r in columns)]
    for s in report.slices:
        cells = "".join(f"{v:>15.4f}" if v is not None else f"{'-':>15}" for v in (s.values.get(r) for r in columns))
        mark = " <- worst" if s.name == report.worst else ""
        lines.append(f"{s.name[:27]:<28}{s.rows:>6}{cells}{mark}")
    left = left_out_line(report)
    return [*lines, *([left] if left else []), worst_line(report)]


def few_shot_line(shots: dict[str, float], note: str) -> str:
    """How the few-shot base was prompted: shots drawn and used per row within which budget, or why
    it is not applicable."""
    if not shots:
        return "not measured (eval.few_shot_k=0)"
    if shots.get("used_max", 1) == 0:
        return note or f"not applicable: none of the {shots['k']:.0f} worked examples fits beside a row"
    budget = (f"a {shots['budget_tokens']:.0f}-token prompt (eval.few_shot_max_tokens)" if "budget_tokens" in shots
              else "train.max_seq_length")
    return (f"{shots['k']:.0f} training rows as worked examples, {shots['used_mean']:.2f} per row fitted {budget} "
            f"(min {shots['used_min']:.0f}, max {shots['used_max']:.0f})")


def training_lines(train: TrainSummary | Mapping[str, Any] | None) -> list[str]:
    """How much training the candidate had: steps, epochs seen, why the time budget cut it; the class
    weights of a classifier's loss. Nothing for a summary from before these were recorded."""
    t = train if isinstance(train, TrainSummary) else TrainSummary.model_validate(train or {})
    if t.epochs_seen is None:
        return []
    line = f"training: {t.steps} steps, {t.epochs_seen:.2f} epochs of the training rows"
    if t.kept_step is not None and t.kept_step != t.steps:
        line += f"; the weights of step {t.kept_step} kept ({t.kept_by or 'lowest validation loss'}, train.keep_best)"
    if t.budget_note:
        line += f"; {t.budget_note}"
    lines = [line, *([t.guard_note] if t.guard_note else [])]
    weights = t.class_weights
    if not weights:
        return lines
    shown = ", ".join(f"{name} {w:.3g}" for name, w in list(weights.items())[:12])
    more = f" (+{len(weights) - 12} more)" if len(weights) > 12 else ""
    return [*lines, f"class weights (train.class_weights): {shown}{more}"]


BASELINE_WORDS = {"zero_shot": "base zero-shot", "few_shot": "base few-shot", "simple": "the simple baseline"}


def finetune_table(summary: RunSummary | dict[str, Any], ui_command: str) -> str:
    """The closing table: every metric for every model on the same rows, then the footer. Takes a
    RunSummary, or a summary's dict (validated: an older one's missing fields take their defaults)."""
    run = summary if isinstance(summary, RunSummary) else RunSummary.model_validate(summary)
    metrics = run.metrics
    base, tuned, champion = metrics["base"], metrics["finetuned"], metrics.get("champion")
    few = metrics.get("base_few_shot") or {}
    shots = run.few_shot
    # measured shots but not one fitted a row: the column is not applicable, not a repeat of zero-shot
    few_na = not few and bool(shots) and shots.get("used_max", 1) == 0
    simple = metrics.get("simple_baseline") or {}
    # keyed on the role being there (even as None): a summary from before the simple baseline has no column
    with_simple = "simple_baseline" in metrics
    used = run.baseline_used or "zero_shot"
    # delta: fine-tuned minus the baseline the gate used
    against = {"few_shot": few, "simple": simple}.get(used) or base
    delta_of = used if against is not base else "zero_shot"
    champ_head = f"champion v{run.champion_evaluated}" if champion else "champion"
    width = 22 + 10 + 16 + (10 if with_simple else 0) + 12 + 10 + 16
    lines = ["", f"{'metric':<22}{'base':>10}{'base few-shot':>16}" + (f"{'simple':>10}" if with_simple else "")
             + f"{'fine-tuned':>12}{'delta':>10}{champ_head:>16}", "-" * width]

    def cell(values: dict[str, float] | None, name: str, size: int, missing: str = "-") -> str:
        value = (values or {}).get(name)
        return f"{value:>{size}.4f}" if value is not None else f"{missing:>{size}}"

    for name in tuned:
        mark = " *" if name == run.primary_metric else ""
        ref = against.get(name)
        delta = f"{tuned[name] - ref:>+10.4f}" if ref is not None else f"{'-':>10}"
        lines.append(f"{name + mark:<22}{cell(base, name, 10)}{cell(few, name, 16, 'n/a' if few_na else '-')}"
                     + (cell(simple, name, 10) if with_simple else "")
                     + f"{tuned[name]:>12.4f}{delta}{cell(champion, name, 16)}")
    lines += _finetune_footer(run, width, with_simple, delta_of, ui_command)
    return "\n".join(lines)


def _finetune_footer(run: RunSummary, width: int, with_simple: bool, delta_of: str, ui_command: str) -> list[str]:
    """Below the metric table: what the columns are, the data, training, warnings, the gate's decision."""
    reg, dataset, sample, forgetting, deployment = (run.registered_model, run.dataset, run.eval_sample,
                                                    run.forgetting, run.deployment)
    rows = dataset.rows
    if run.already_champion:
        decision = f"unchanged: v{reg.version} already is @champion"
    else:
        decision = "PROMOTED to @champion" if run.promoted else "NOT promoted (stays @challenger)"
    reused = run.training_reused_from_run
    return [
        "-" * width,
        f"* primary metric ({'higher' if run.higher_is_better else 'lower'} is better); {sample.n} of "
        f"{sample.of} test rows ({sample.how}), the same rows for every column",
        f"delta: fine-tuned minus {BASELINE_WORDS[delta_of]}, the baseline the promotion gate compared with "
        "(promotion.baseline)",
        *([f"simple baseline (no LLM, fitted on the training split): {run.simple_baseline_note or '-'}"]
          if with_simple else []),
        "base few-shot: " + few_shot_line(run.few_shot, run.few_shot_note),
        *slice_lines(run.slices),
        f"task {run.task} ({run.task_reason}); rows in {dataset.rows_in}, train/validation/test = "
        f"{rows['train']}/{rows['validation']}/{rows['test']}; duplicates removed {dataset.duplicates_removed}, "
        f"rejected {dataset.rejected}, truncated {dataset.truncated}",
        *[extra.line() for extra in dataset.extras],
        *training_lines(run.train),
        *[f"warning: {w}" for w in [*dataset.warnings, *run.warnings]],
        f"champion: {run.champion_note}",
        ("forgetting probe: " + (f"base {forgetting.base:.3f} -> fine-tuned {forgetting.finetuned:.3f} on "
                                 f"{forgetting.questions} questions" if forgetting.applicable
                                 else forgetting.reason)),
        *([f"training: reused from MLflow run {reused} (same data, settings, base model and code; "
            "--set train.reuse=false trains again)"] if reused else []),
        (f"registered: nothing new, {reg.name} version {reg.version} is this very model (registered by run "
         f"{reg.reused_from_run})" if reg.reused_from_run
         else f"registered: {reg.name} version {reg.version} (@challenger)"),
        f"promotion: {decision}",
        *[f"  {reason}" for reason in run.promotion_reasons],
        ("deployed: " + f"{deployment.action} at {deployment.endpoint}"
         if deployment.deployed else f"not deployed ({deployment.reason})"),
        f"served from cache: {', '.join(run.cached_steps) or 'nothing'}",
        f"wall time: {run.wall_seconds:.0f} s",
        f"MLflow UI: {ui_command}" + (f"   (then open {UI_URL})" if ui_command.startswith("mlflow") else ""),
    ]
