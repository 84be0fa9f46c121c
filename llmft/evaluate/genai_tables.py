"""Evaluations in MLflow 3 form: each model's answers on the evaluation rows as an MLflow GenAI
evaluation run (nested under the training run), so the UI's evaluation view shows a per-row table
(input, reference, answer, per-row scores) comparable across runs and versions.

The scores are the task's own per-row metrics, computed once by the task; the `@scorer` functions
hand them to MLflow rather than scoring again. MLflow writes a trace per row, which costs
noticeable time on a small CPU, so the table holds the first `eval.genai_table_rows` rows of the
(seeded, stratified) sample; every row is also in `evaluation/predictions.json`. A table already
logged with the same rows, answers and scores (the base model's, or a reused training's, on a re-run)
is linked, not written again: the run's tag points at the existing evaluation run.

On a database store (the default sqlite file, or postgres/mysql directly) MLflow's evaluation harness
logs rows from ten threads at once, each with its own connection, beside the trace exporter's: past
the SQLAlchemy pool (5 + 10 overflow) rows were dropped after a 30 s wait each, with only a log line.
There the harness runs on `DB_STORE_WORKERS` threads; after logging, the rows that came back are
counted, a table missing any is never linked by a later run, and the loss is a warning (returned with
the run ids, tagged on the training run and logged).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from llmft.contracts import ModelEvaluation

log = logging.getLogger(__name__)

KEY_TAG = "llmft.genai_table_key"
ROWS_TAG = "llmft.genai_table_rows"  # "logged/asked" on the evaluation run
WARNING_TAG = "evaluation.genai_table_warnings"  # on the training run, when a table is missing rows
WORKERS_VAR = "MLFLOW_GENAI_EVAL_MAX_WORKERS"
DB_STORE_WORKERS = 2  # at most this many rows logged at once on a database store: within its connection pool


class GenAiTables(dict[str, str]):
    """Role -> evaluation run id, and `warnings`: tables that are missing rows, in words."""

    def __init__(self) -> None:
        super().__init__()
        self.warnings: list[str] = []


def _database_store(uri: str) -> bool:
    """A tracking URI MLflow opens with SQLAlchemy in this process (a connection pool of its own)."""
    return uri.split(":", 1)[0].split("+", 1)[0] in ("sqlite", "postgresql", "mysql", "mssql")


@contextmanager
def _workers_for_store() -> Iterator[None]:
    """MLflow's GenAI harness sized to the store: a few threads on a database store (unless the user
    chose a number), its default on a tracking server."""
    import mlflow

    if WORKERS_VAR in os.environ or not _database_store(mlflow.get_tracking_uri()):
        yield
        return
    os.environ[WORKERS_VAR] = str(DB_STORE_WORKERS)
    try:
        yield
    finally:
        os.environ.pop(WORKERS_VAR, None)


def _rows_logged(run_id: str, keys: list[str]) -> int:
    """Rows of the evaluation run that came back from the store with their scores."""
    import mlflow

    traces = mlflow.search_traces(run_id=run_id, return_type="list", include_spans=False, flush=True)
    return sum(1 for t in traces if any(a.name in keys for a in t.info.assessments or []))


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
                         task: str, warnings: list[str] | None = None) -> str | None:
    """One nested evaluation run for `model` (or the earlier one with the same table); its run id, or
    None when there is nothing to log. A table that came back missing rows adds a line to `warnings`."""
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
        with _workers_for_store():
            mlflow.genai.evaluate(data=data, scorers=[_scorer(k, model.row_scores) for k in keys])
        logged = _rows_logged(run.info.run_id, keys)
        mlflow.set_tag(ROWS_TAG, f"{logged}/{n}")
        if logged >= n:
            mlflow.set_tag(KEY_TAG, key)  # last, and only when whole: a table cut short is never linked
        elif warnings is not None:
            warnings.append(f"the MLflow GenAI evaluation table of {model.role} has {logged} of its {n} rows "
                            "(the tracking store dropped the rest; every row is in evaluation/predictions.json)")
    return run.info.run_id


def log_genai_evaluations(models: list[ModelEvaluation], inputs: list[str], references: list[str], rows: int,
                          task: str) -> GenAiTables:
    """Role -> evaluation run id, with `warnings` for tables missing rows (also logged, and tagged on the
    active run). A failure here never fails the run: the table is a view of numbers already logged."""
    import mlflow

    runs = GenAiTables()
    if rows <= 0:
        return runs
    for model in models:
        try:
            run_id = log_genai_evaluation(model, inputs, references, rows, task, runs.warnings)
        except Exception as exc:  # MLflow's GenAI harness: any failure only loses a view
            runs.warnings.append(f"the MLflow GenAI evaluation table of {model.role} was not logged: "
                                 f"{str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__}")
            continue
        if run_id:
            runs[model.role] = run_id
    for warning in runs.warnings:
        log.warning("%s", warning)
    if runs.warnings and mlflow.active_run() is not None:
        mlflow.set_tag(WARNING_TAG, " | ".join(runs.warnings)[:4900])
    return runs
