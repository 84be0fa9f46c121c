"""Evaluations in MLflow 3 form: each model's answers on the evaluation rows as an MLflow GenAI
evaluation run (nested under the training run), so the UI's evaluation view shows a per-row table
(input, reference, answer, per-row scores) comparable across runs and versions.

The scores are the task's own per-row metrics, computed once by the task; the `@scorer` functions
hand them to MLflow rather than scoring again. MLflow writes a trace per row, which costs
noticeable time on a small CPU, so the table holds the first `eval.genai_table_rows` rows of the
(seeded, stratified) sample; every row is also in `evaluation/predictions.json`. A table already
logged with the same rows, answers and scores (the base model's, or a reused training's, on a re-run)
is linked, not written again: the run's tag points at the existing evaluation run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from typing import Any

from llmft.contracts import ModelEvaluation

log = logging.getLogger(__name__)

KEY_TAG = "llmft.genai_table_key"


def _scorer(key: str, scores: list[dict[str, float]]) -> Any:
    from mlflow.genai.scorers import scorer

    @scorer(name=key)
    def task_metric(inputs: dict[str, Any]) -> float | None:
        value = scores[inputs["row"]].get(key)
        return None if value is None or not math.isfinite(value) else float(value)

    return task_metric


def table_key(data: list[dict[str, Any]], scores: list[dict[str, float]], task: str) -> str:
    """What the table shows: rows, answers and per-row scores (NaN written as null)."""
    clean = [{k: v if math.isfinite(v) else None for k, v in row.items()} for row in scores]
    return hashlib.sha256(json.dumps([task, data, clean], sort_keys=True, default=str).encode()).hexdigest()[:24]


def _logged_before(key: str) -> str | None:
    """A finished evaluation run of this experiment with the same table, if any."""
    import mlflow

    run = mlflow.active_run()
    if run is None:
        return None
    found = mlflow.search_runs(experiment_ids=[run.info.experiment_id], output_format="list", max_results=1,
                               filter_string=f"tags.`{KEY_TAG}` = '{key}' and attributes.status = 'FINISHED'")
    return found[0].info.run_id if found else None


def log_genai_evaluation(model: ModelEvaluation, inputs: list[str], references: list[str], rows: int,
                         task: str) -> str | None:
    """One nested evaluation run for `model` (or the earlier one with the same table); its run id, or
    None when there is nothing to log."""
    import mlflow

    n = min(rows, len(model.outputs), len(inputs))
    if n == 0 or not model.row_scores:
        return None
    data = [{"inputs": {"input": inputs[i], "row": i}, "outputs": model.outputs[i],
             "expectations": {"expected_response": references[i]}} for i in range(n)]
    key = table_key(data, model.row_scores[:n], task)
    earlier = _logged_before(key)
    if earlier is not None:
        return earlier
    keys = sorted(model.row_scores[0])
    with mlflow.start_run(run_name=f"evaluation-{model.role}", nested=True) as run:
        mlflow.set_tags({"llmft.evaluation.role": model.role, "llmft.evaluation.model": model.identity,
                         "llmft.task": task})
        mlflow.genai.evaluate(data=data, scorers=[_scorer(k, model.row_scores) for k in keys])
        mlflow.set_tag(KEY_TAG, key)  # last: a table cut short by a failure is never linked
    return run.info.run_id


def log_genai_evaluations(models: list[ModelEvaluation], inputs: list[str], references: list[str], rows: int,
                          task: str) -> dict[str, str]:
    """Role -> evaluation run id. A failure here never fails the run: the table is a view of numbers
    that are already logged."""
    runs: dict[str, str] = {}
    if rows <= 0:
        return runs
    for model in models:
        try:
            run_id = log_genai_evaluation(model, inputs, references, rows, task)
        except Exception as exc:  # MLflow's GenAI harness: any failure only loses a view
            log.warning("MLflow GenAI evaluation table for %s not logged: %s", model.role, exc)
            continue
        if run_id:
            runs[model.role] = run_id
    return runs
