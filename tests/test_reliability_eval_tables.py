"""Issue 24, item 9: on the default sqlite store every logged GenAI evaluation table has all its rows
(MLflow's harness logged ten rows at once and overflowed the store's connection pool, dropping rows
after 30 s waits), and a table that still comes back short is a warning, never linked by a later run."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import mlflow
import pytest
from mlflow.genai.evaluation import harness

from llmft.contracts import ModelEvaluation
from llmft.evaluate import genai_tables
from llmft.evaluate.genai_tables import KEY_TAG, WARNING_TAG, log_genai_evaluations

N = 40  # on the old code a table this long lost rows (26 of 40 came back) after 30 s pool time-outs
SHORT = 12


def _model(n: int = N, role: str = "base") -> ModelEvaluation:
    return ModelEvaluation(role=role, identity=f"{role}-model", outputs=[f"answer {i}" for i in range(n)],
                           row_scores=[{"rouge_l": i / n, "exact_match": float(i % 2)} for i in range(n)])


def _rows(n: int) -> tuple[list[str], list[str]]:
    return [f"question {i}" for i in range(n)], [f"reference {i}" for i in range(n)]


def _table(run_id: str, n: int) -> dict[int, float]:
    """Row index -> its exact_match score, read back from the store."""
    rows = {}
    for trace in mlflow.search_traces(run_id=run_id, return_type="list", include_spans=False):
        scores = {a.name: a.value for a in trace.info.assessments}
        if "rouge_l" in scores:
            rows[round(scores["rouge_l"] * n)] = scores["exact_match"]
    return rows


def test_a_table_of_many_rows_is_whole_on_a_fresh_sqlite_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.delenv(genai_tables.WORKERS_VAR, raising=False)
    sizes: list[tuple[int, int]] = []
    real = harness._get_pool_sizes

    def recorded(*args: Any, **kwargs: Any) -> tuple[int, int]:
        sizes.append(real(*args, **kwargs))
        return sizes[-1]

    monkeypatch.setattr(harness, "_get_pool_sizes", recorded)
    with mlflow.start_run() as parent:
        runs = log_genai_evaluations([_model()], *_rows(N), rows=N, task="chat")
    # rows are logged a few at a time, within the sqlite store's connection pool (5 + 10 overflow)
    assert sizes and max(max(s) for s in sizes) <= genai_tables.DB_STORE_WORKERS, sizes
    assert runs.warnings == [] and WARNING_TAG not in mlflow.get_run(parent.info.run_id).data.tags
    assert _table(runs["base"], N) == {i: float(i % 2) for i in range(N)}
    tags = mlflow.get_run(runs["base"]).data.tags
    assert tags["llmft.genai_table_rows"] == f"{N}/{N}" and KEY_TAG in tags
    assert genai_tables.WORKERS_VAR not in os.environ  # put back as it was


def test_rows_the_store_drops_are_a_warning_and_the_table_is_never_linked(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch):
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    real = harness._log_assessments
    dropped = {3, 7}

    def flaky(run_id, trace, assessments):  # as the pool overflow did: some rows' scores never land
        if any(a.name == "rouge_l" and round(a.value * SHORT) in dropped for a in assessments):
            raise TimeoutError("QueuePool limit of size 5 overflow 10 reached, connection timed out, timeout 30.00")
        return real(run_id=run_id, trace=trace, assessments=assessments)

    monkeypatch.setattr(harness, "_log_assessments", flaky)
    with mlflow.start_run() as parent:
        runs = log_genai_evaluations([_model(SHORT)], *_rows(SHORT), rows=SHORT, task="chat")
    assert runs.warnings == [f"the MLflow GenAI evaluation table of base has {SHORT - 2} of its {SHORT} rows (the "
                             "tracking store dropped the rest; every row is in evaluation/predictions.json)"]
    assert mlflow.get_run(parent.info.run_id).data.tags[WARNING_TAG] == runs.warnings[0]
    assert KEY_TAG not in mlflow.get_run(runs["base"]).data.tags
    monkeypatch.setattr(harness, "_log_assessments", real)
    with mlflow.start_run():  # a re-run logs the table again rather than linking the short one
        again = log_genai_evaluations([_model(SHORT)], *_rows(SHORT), rows=SHORT, task="chat")
    assert again["base"] != runs["base"] and len(_table(again["base"], SHORT)) == SHORT and again.warnings == []
