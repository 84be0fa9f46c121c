"""Issue 24, item 9 and issue 25: on the default sqlite store every logged GenAI evaluation table has all
its rows (MLflow's harness logged ten rows at once and overflowed the store's connection pool, dropping
rows after 30 s waits; the rows are now written directly, a transaction per row), and a table that still
comes back short is a warning, never linked by a later run."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import mlflow
import pytest
from mlflow.genai.evaluation import harness
from mlflow.tracing.client import TracingClient

from llmft.contracts import ModelEvaluation
from llmft.evaluate.genai_tables import KEY_TAG, REFERENCE, WARNING_TAG, log_genai_evaluations

N = 40  # on the harness a table this long lost rows (26 of 40 came back) after 30 s pool time-outs
SHORT = 12
SCORES = ["rouge_l", "exact_match", "bleu", "chrf", "token_f1", "length_ratio", "json_valid", "field_accuracy"]


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

    def no_harness(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the rows are written directly, not through MLflow's evaluation harness")

    monkeypatch.setattr(harness, "run", no_harness)
    with mlflow.start_run() as parent:
        runs = log_genai_evaluations([_model()], *_rows(N), rows=N, task="chat")
    assert runs.warnings == [] and WARNING_TAG not in mlflow.get_run(parent.info.run_id).data.tags
    assert _table(runs["base"], N) == {i: float(i % 2) for i in range(N)}
    tags = mlflow.get_run(runs["base"]).data.tags
    assert tags["llmft.genai_table_rows"] == f"{N}/{N}" and KEY_TAG in tags
    assert tags["mlflow.runType"] == "genai_evaluate"  # what makes the UI list it as an evaluation run


def _drop_rows(monkeypatch: pytest.MonkeyPatch, where: str, dropped: set[int]) -> None:
    """As the pool overflow did: some rows never land, either the row (its trace and scores) or its span."""
    real_start, real_spans = TracingClient.start_trace, TracingClient.log_spans

    def row(info: Any) -> int:
        return next(round(a.value * SHORT) for a in info.assessments if a.name == "rouge_l")

    def start_trace(self: TracingClient, trace_info: Any) -> Any:
        if where == "trace" and row(trace_info) in dropped:
            raise TimeoutError("QueuePool limit of size 5 overflow 10 reached, connection timed out, timeout 30.00")
        return real_start(self, trace_info)

    def log_spans(self: TracingClient, location: str, spans: list[Any]) -> Any:
        if where == "span":
            spans = [s for s in spans if s.inputs["row"] not in dropped]
        return real_spans(self, location, spans)

    monkeypatch.setattr(TracingClient, "start_trace", start_trace)
    monkeypatch.setattr(TracingClient, "log_spans", log_spans)


@pytest.mark.parametrize("where", ["trace", "span"])
def test_rows_the_store_drops_are_a_warning_and_the_table_is_never_linked(tmp_path: Path, where: str,
                                                                         monkeypatch: pytest.MonkeyPatch):
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    with monkeypatch.context() as patched:
        _drop_rows(patched, where, {3, 7})
        with mlflow.start_run() as parent:
            runs = log_genai_evaluations([_model(SHORT)], *_rows(SHORT), rows=SHORT, task="chat")
    assert runs.warnings == [f"the MLflow GenAI evaluation table of base has {SHORT - 2} of its {SHORT} rows (the "
                             "tracking store dropped the rest; every row is in evaluation/predictions.json)"]
    assert mlflow.get_run(parent.info.run_id).data.tags[WARNING_TAG] == runs.warnings[0]
    tags = mlflow.get_run(runs["base"]).data.tags
    assert KEY_TAG not in tags and tags["llmft.genai_table_rows"] == f"{SHORT - 2}/{SHORT}"
    with mlflow.start_run():  # a re-run logs the table again rather than linking the short one
        again = log_genai_evaluations([_model(SHORT)], *_rows(SHORT), rows=SHORT, task="chat")
    assert again["base"] != runs["base"] and len(_table(again["base"], SHORT)) == SHORT and again.warnings == []


def test_a_row_that_fails_once_is_written_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    real, failed = TracingClient.start_trace, []

    def once(self: TracingClient, trace_info: Any) -> Any:
        if not failed:
            failed.append(trace_info.trace_id)
            raise TimeoutError("database is locked")
        return real(self, trace_info)

    monkeypatch.setattr(TracingClient, "start_trace", once)
    with mlflow.start_run():
        runs = log_genai_evaluations([_model(SHORT)], *_rows(SHORT), rows=SHORT, task="chat")
    assert failed and runs.warnings == [] and len(_table(runs["base"], SHORT)) == SHORT


def test_every_row_of_every_table_comes_back_with_its_answer_reference_and_scores(tmp_path: Path):
    """Four models (as compare_models logs them) x 20 rows x 8 per-row scores, read back as the UI reads a
    run's evaluation traces (`attributes.run_id`)."""
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    n, roles = 20, ["base", "base_few_shot", "finetuned", "champion"]
    inputs, references = [f"question {i} " + "x" * 300 for i in range(n)], [f"reference {i}" for i in range(n)]
    models = [ModelEvaluation(role=role, identity=role, outputs=[f"{role} answer {i}" for i in range(n)],
                              row_scores=[{k: (j + 1) / 100 + i / 1000 for j, k in enumerate(SCORES)}
                                          for i in range(n)]) for role in roles]
    models[2].row_scores[5]["bleu"] = math.nan  # a score the task could not compute: left out, as the harness did
    with mlflow.start_run():
        runs = log_genai_evaluations(models, inputs, references, rows=n, task="chat")
    assert runs.warnings == [] and list(runs) == roles and len(set(runs.values())) == 4
    for model in models:
        run_id = runs[model.role]
        traces = mlflow.search_traces(filter_string=f"attributes.run_id = '{run_id}'", return_type="list",
                                      locations=[mlflow.get_run(run_id).info.experiment_id])
        assert len(traces) == n
        rows = {}
        for trace in traces:
            span = trace.data.spans[0]
            i = span.inputs["row"]
            assert span.inputs == {"input": inputs[i], "row": i} and span.outputs == model.outputs[i]
            assert trace.info.trace_metadata["mlflow.sourceRun"] == run_id
            found = {a.name: (a.expectation or a.feedback).value for a in trace.info.assessments}
            assert all(a.metadata["mlflow.assessment.sourceRunId"] == run_id for a in trace.info.assessments)
            assert found.pop(REFERENCE) == references[i]
            rows[i] = found
        assert rows == {i: {k: v for k, v in model.row_scores[i].items() if math.isfinite(v)} for i in range(n)}
        metrics = mlflow.get_run(run_id).data.metrics
        assert metrics["rouge_l/mean"] == pytest.approx(sum(r["rouge_l"] for r in model.row_scores) / n)
        assert mlflow.get_run(run_id).data.tags["llmft.genai_table_rows"] == f"{n}/{n}"
