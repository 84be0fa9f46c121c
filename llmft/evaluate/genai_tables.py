"""Evaluations in MLflow 3 form: each model's answers on the evaluation rows as an MLflow GenAI
evaluation run (nested under the training run), so the UI's evaluation view shows a per-row table
(input, reference, answer, per-row scores) comparable across runs and versions.

The scores are the task's own per-row metrics, computed once by the task, so nothing is scored
again: each row is written as the trace `mlflow.genai.evaluate` writes for a static row (one root
span with the row's input and answer; the reference as an `expected_response` expectation; one CODE
feedback per score, tied to the run), and the run is marked a GenAI evaluation with each score's
mean (`<score>/mean`). Written directly rather than through the evaluation harness, which spends
eleven transactions a row (trace, spans, each assessment) from worker threads and, past the
SQLAlchemy pool, dropped rows: here a row is one `start_trace` carrying its assessments and a table's
spans are one `log_spans` (four 20-row tables: 3.5 s instead of 22 s on a 2-core machine,
`benchmarks/genai_tables.py`). The table holds the first `eval.genai_table_rows` rows of the (seeded,
stratified) sample; every row is also in `evaluation/predictions.json`. A table already logged with
the same rows, answers and scores (the base model's, or a reused training's, on a re-run) is linked,
not written again: the run's tag points at the existing evaluation run.

No row is lost silently: after writing, the table is read back (each row's trace with its span,
reference and every score); a table missing any is never linked by a later run, and the loss is a
warning (returned with the run ids, tagged on the training run and logged).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
import uuid
from typing import Any

from llmft.contracts import ModelEvaluation

log = logging.getLogger(__name__)

KEY_TAG = "llmft.genai_table_key"
ROWS_TAG = "llmft.genai_table_rows"  # "logged/asked" on the evaluation run
WARNING_TAG = "evaluation.genai_table_warnings"  # on the training run, when a table is missing rows
REFERENCE = "expected_response"  # the expectation's name, as the GenAI harness names a row's reference
ROW_SPAN = "root_span"  # the span's (and trace's) name, as the harness names a static row's trace


class GenAiTables(dict[str, str]):
    """Role -> evaluation run id, and `warnings`: tables that are missing rows, in words."""

    def __init__(self) -> None:
        super().__init__()
        self.warnings: list[str] = []


def _row_trace(run_id: str, experiment_id: str, at_ms: int, row: dict[str, Any],
               scores: dict[str, float]) -> tuple[Any, Any]:
    """One row as an evaluation trace: its TraceInfo (with the reference and the finite scores as
    assessments) and its root span."""
    from mlflow.entities import AssessmentSource, Expectation, Feedback, Span, TraceInfo, TraceLocation, TraceState
    from mlflow.tracing import constant as c

    trace_id, span_id = f"tr-{uuid.uuid4().hex}", uuid.uuid4().hex[:16]
    request, response = json.dumps(row["inputs"]), json.dumps(row["outputs"])
    span = Span.from_dict({
        "trace_id": trace_id, "span_id": span_id, "parent_span_id": None, "name": ROW_SPAN,
        "start_time_unix_nano": at_ms * 1_000_000, "end_time_unix_nano": at_ms * 1_000_000,
        "status": {"code": "STATUS_CODE_OK", "message": ""},
        "attributes": {c.SpanAttributeKey.REQUEST_ID: json.dumps(trace_id), c.SpanAttributeKey.SPAN_TYPE: '"CHAIN"',
                       c.SpanAttributeKey.INPUTS: request, c.SpanAttributeKey.OUTPUTS: response}})
    meta = {c.AssessmentMetadataKey.SOURCE_RUN_ID: run_id}
    found: list[Any] = [Feedback(name=k, value=float(v), source=AssessmentSource(source_type="CODE", source_id=k),
                                 trace_id=trace_id, span_id=span_id, metadata=meta)
                        for k, v in sorted(scores.items()) if v is not None and math.isfinite(v)]
    found.append(Expectation(name=REFERENCE, value=row["expectations"][REFERENCE], trace_id=trace_id,
                             span_id=span_id, metadata=meta,
                             source=AssessmentSource(source_type="HUMAN", source_id="llmft")))
    info = TraceInfo(trace_id=trace_id, trace_location=TraceLocation.from_experiment_id(experiment_id),
                     request_time=at_ms, state=TraceState.OK, request_preview=request[:1000],
                     response_preview=response[:1000], execution_duration=0,
                     trace_metadata={c.TraceMetadataKey.SOURCE_RUN: run_id,
                                     c.TRACE_SCHEMA_VERSION_KEY: str(c.TRACE_SCHEMA_VERSION)},
                     tags={c.TraceTagKey.TRACE_NAME: ROW_SPAN}, assessments=found)
    return info, span


def _write_traces(run_id: str, experiment_id: str, traces: list[tuple[Any, Any]]) -> list[str]:
    """Each trace with its assessments (one transaction each), then all the spans at once; the errors, in
    words (a row whose write failed is retried once; what is still missing shows when read back)."""
    from mlflow.entities import TraceData
    from mlflow.tracing.client import TracingClient

    client, errors = TracingClient(), []
    written: dict[str, Any] = {}

    def note(exc: Exception) -> None:
        errors.append(f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}")

    for _ in range(2):
        for info, _span in traces:
            if info.trace_id not in written:
                try:
                    written[info.trace_id] = client.start_trace(info)
                except Exception as exc:  # a row the store refused: retried, then counted as missing
                    note(exc)
    spans = [span for info, span in traces if info.trace_id in written]
    try:
        try:
            client.log_spans(experiment_id, spans)
        except NotImplementedError:  # a store without span logging (file store, old server): as trace artifacts
            for span in spans:
                client._upload_trace_data(written[span.trace_id], TraceData(spans=[span]))
    except Exception as exc:  # rows without their span: counted as missing when read back
        note(exc)
    try:
        client.store.link_traces_to_run(list(written), run_id=run_id)  # as the harness links them, where it can
    except Exception as exc:  # the traces name their run in their metadata; the link is an extra
        log.debug("traces not linked to run %s: %s", run_id, exc)
    return errors


def _rows_logged(run_id: str, expected: dict[str, set[str]]) -> int:
    """Rows of the evaluation run that came back from the store with their span, reference and scores
    (`expected`: trace id -> the assessment names it must carry)."""
    import mlflow

    traces = mlflow.search_traces(run_id=run_id, return_type="list", include_spans=True)
    return sum(1 for t in traces if t.info.trace_id in expected and t.data.spans
               and expected[t.info.trace_id] <= {a.name for a in t.info.assessments or []})


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


def _means(scores: list[dict[str, float]]) -> dict[str, float]:
    """`<score>/mean` over the rows where the score is finite, as the harness aggregates a feedback."""
    values: dict[str, list[float]] = {}
    for row in scores:
        for k, v in row.items():
            if v is not None and math.isfinite(v):
                values.setdefault(k, []).append(float(v))
    return {f"{k}/mean": sum(vs) / len(vs) for k, vs in values.items()}


def log_genai_evaluation(model: ModelEvaluation, inputs: list[str], references: list[str], rows: int,
                         task: str, warnings: list[str] | None = None) -> str | None:
    """One nested evaluation run for `model` (or the earlier one with the same table); its run id, or
    None when there is nothing to log. A table that came back missing rows adds a line to `warnings`."""
    import mlflow
    from mlflow.utils.mlflow_tags import MLFLOW_RUN_TYPE, MLFLOW_RUN_TYPE_GENAI_EVALUATE

    n = min(rows, len(model.outputs), len(inputs))
    if n == 0 or not model.row_scores:
        return None
    data = [{"inputs": {"input": inputs[i], "row": i}, "outputs": model.outputs[i],
             "expectations": {REFERENCE: references[i]}} for i in range(n)]
    key = table_key(data, model.row_scores[:n], task)
    earlier = _logged_before(key)
    if earlier is not None:
        return earlier
    with mlflow.start_run(run_name=f"evaluation-{model.role}", nested=True) as run:
        run_id, experiment_id = run.info.run_id, run.info.experiment_id
        mlflow.set_tags({"llmft.evaluation.role": model.role, "llmft.evaluation.model": model.identity,
                         "llmft.task": task, MLFLOW_RUN_TYPE: MLFLOW_RUN_TYPE_GENAI_EVALUATE})
        now = int(time.time() * 1000)  # row 0 newest: the view's default order (newest first) is the table's
        traces = [_row_trace(run_id, experiment_id, now + n - i, data[i], model.row_scores[i]) for i in range(n)]
        errors = _write_traces(run_id, experiment_id, traces)
        mlflow.log_metrics(_means(model.row_scores[:n]))
        logged = _rows_logged(run_id, {info.trace_id: {a.name for a in info.assessments} for info, _ in traces})
        mlflow.set_tag(ROWS_TAG, f"{logged}/{n}")
        if logged >= n:
            mlflow.set_tag(KEY_TAG, key)  # last, and only when whole: a table cut short is never linked
        elif warnings is not None:
            warnings.append(f"the MLflow GenAI evaluation table of {model.role} has {logged} of its {n} rows "
                            "(the tracking store dropped the rest; every row is in evaluation/predictions.json)")
            for error in errors[:3]:
                log.warning("a row of the GenAI evaluation table of %s was not written: %s", model.role, error)
    return run_id


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
        except Exception as exc:  # any failure of the store only loses a view
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
