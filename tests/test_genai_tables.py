"""Per-row evaluation tables in MLflow's GenAI evaluation view, with the task's own per-row scores."""

from __future__ import annotations

from pathlib import Path

import mlflow

from llmft.contracts import ModelEvaluation
from llmft.evaluate.genai_tables import log_genai_evaluations


def test_each_model_gets_a_nested_evaluation_run_with_its_rows_and_scores(tmp_path: Path) -> None:
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    base = ModelEvaluation(role="base", identity="base-model", outputs=["a", "b", "c", "d"],
                           row_scores=[{"rouge_l": 0.1, "exact_match": 0.0}, {"rouge_l": 0.2, "exact_match": 0.0},
                                       {"rouge_l": 0.3, "exact_match": 1.0}, {"rouge_l": 0.4, "exact_match": 0.0}])
    tuned = ModelEvaluation(role="finetuned", identity="candidate", outputs=["w", "x", "y", "z"],
                            row_scores=[{"rouge_l": 0.9, "exact_match": 1.0}] * 4)
    inputs, references = ["q1", "q2", "q3", "q4"], ["r1", "r2", "r3", "r4"]
    with mlflow.start_run() as parent:
        runs = log_genai_evaluations([base, tuned], inputs, references, rows=3, task="chat")
        assert mlflow.active_run().info.run_id == parent.info.run_id  # back in the training run
    assert set(runs) == {"base", "finetuned"}
    for role, run_id in runs.items():
        run = mlflow.get_run(run_id)
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.data.tags["llmft.evaluation.role"] == role
    traces = mlflow.search_traces(run_id=runs["base"], return_type="list")
    assert len(traces) == 3  # capped at `rows`
    by_row = {}
    for trace in traces:
        scores = {a.name: a.value for a in trace.info.assessments if a.name in ("rouge_l", "exact_match")}
        by_row[round(scores["rouge_l"], 4)] = scores["exact_match"]
    assert by_row == {0.1: 0.0, 0.2: 0.0, 0.3: 1.0}
    assert mlflow.get_run(runs["finetuned"]).data.metrics["rouge_l/mean"] == 0.9

    # a later run with the same tables (a re-run: the base again, a reused training as champion) links the
    # tables already logged; a model whose answers changed gets its own
    changed = tuned.model_copy(update={"role": "champion", "outputs": ["w", "x", "y!", "z"]})
    same = tuned.model_copy(update={"role": "champion"})
    with mlflow.start_run():
        again = log_genai_evaluations([base, changed], inputs, references, rows=3, task="chat")
    assert again["base"] == runs["base"] and again["champion"] != runs["finetuned"]
    with mlflow.start_run():
        assert log_genai_evaluations([same], inputs, references, rows=3, task="chat") == {
            "champion": runs["finetuned"]}
    assert len(mlflow.search_runs(search_all_experiments=True, output_format="list",
                                  filter_string="tags.`llmft.evaluation.role` != ''")) == 3


def test_off_when_rows_is_zero(tmp_path: Path) -> None:
    model = ModelEvaluation(role="base", outputs=["a"], row_scores=[{"rouge_l": 1.0}])
    assert log_genai_evaluations([model], ["q"], ["r"], rows=0, task="chat") == {}
