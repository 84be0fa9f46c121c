"""Slice metrics (eval.slice_by): each model's primary metric recomputed on each slice's rows with the
task's own scorer, the worst slice, the cap, and how the report, the model card and MLflow show it.
Outputs and references are built by hand; no model, no ZenML store."""

from __future__ import annotations

import json
import math
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from llmft.config_files import load_config
from llmft.contracts import EvalSample, ModelEvaluation
from llmft.evaluate.slices import MISSING, slice_report, worst_line
from llmft.evaluate.stage import compare
from llmft.registry.model_card import slice_section
from llmft.report import slice_lines
from llmft.tasks import classification, get_task
from llmft.tasks.base import TaskSpec

LABELS = ["neg", "pos"]
# slice A: 4 rows, B: 3 rows, one row without a value
REFS = ["pos", "pos", "neg", "neg", "pos", "neg", "pos", "pos"]
SLICES = ["A", "A", "A", "A", "B", "B", "B", None]
TUNED = ["pos", "pos", "neg", "neg", "neg", "neg", "pos", "pos"]  # A all right; B one pos called neg
BASE = ["pos"] * 8


def classified(role: str, outputs: list[str], p_true: list[float] | None = None) -> ModelEvaluation:
    p_true = p_true or [0.5] * len(outputs)
    return ModelEvaluation(role=role, outputs=outputs, metrics=classification.score(outputs, REFS, LABELS),
                           row_scores=[{"correct": float(o == r), "p_true": p}
                                       for o, r, p in zip(outputs, REFS, p_true, strict=True)],
                           extras={"labels": LABELS})


def classification_rows() -> list[dict]:
    return [{"text": f"text {i}", "label": label, "messages": "[]", "response": ""} for i, label in enumerate(REFS)]


def test_classification_slices_are_macro_f1_of_each_subset_not_a_mean_of_rows():
    models = [classified("base", BASE), classified("finetuned", TUNED),
              ModelEvaluation(role="champion", available=False, note="no current champion")]
    report = slice_report("source", SLICES, classification_rows(), models, get_task("classification"), "macro_f1")
    by_name = {s.name: s for s in report.slices}
    assert [s.name for s in report.slices] == ["A", "B", MISSING]  # largest first
    assert [s.rows for s in report.slices] == [4, 3, 1] and report.total == 3 and report.left_out == 0
    assert set(by_name["A"].values) == {"base", "finetuned"}  # an unavailable champion has no values
    assert by_name["A"].values["finetuned"] == pytest.approx(1.0)
    # B: neg p=1/2 r=1, pos p=1 r=1/2 -> F1 2/3 each
    assert by_name["B"].values["finetuned"] == pytest.approx(2 / 3)
    # base on A: pos F1 2/3, neg never predicted 0 -> macro 1/3, although half its rows are right
    assert by_name["A"].values["base"] == pytest.approx(1 / 3)
    # one pos row predicted pos: only pos is in this slice, so it is perfect, not (1 + 0) / 2
    assert by_name[MISSING].values["finetuned"] == pytest.approx(1.0)
    overall = (6 / 7 + 8 / 9) / 2  # all eight rows: neg p=3/4 r=1 (F1 6/7), pos p=1 r=4/5 (F1 8/9)
    assert report.overall["finetuned"] == pytest.approx(overall)
    assert report.worst == "B" and report.worst_rows == 3 and report.higher_is_better
    assert report.worst_value == pytest.approx(2 / 3) and report.worst_gap == pytest.approx(2 / 3 - overall)
    assert worst_line(report) == ("worst slice of the fine-tuned model (lowest macro_f1): source='B', 0.6667 on 3 "
                                  "rows, -0.2063 vs its overall 0.8730")


def test_lower_is_better_worst_slice_is_the_highest():
    p_true = [0.9, 0.9, 0.9, 0.9, 0.5, 0.5, 0.5, 0.1]
    models = [classified("finetuned", TUNED, p_true)]
    models[0].metrics["eval_loss"] = classification.eval_loss([[p] for p in p_true], [0] * 8)
    report = slice_report("source", SLICES, classification_rows(), models, get_task("classification"), "eval_loss")
    values = {s.name: s.values["finetuned"] for s in report.slices}
    assert values["A"] == pytest.approx(-math.log(0.9)) and values["B"] == pytest.approx(-math.log(0.5))
    assert not report.higher_is_better and report.worst == MISSING
    assert report.worst_value == pytest.approx(-math.log(0.1)) and report.worst_gap > 0
    assert "(highest eval_loss)" in worst_line(report)


def generative_rows(pairs: list[tuple[str, str]]) -> list[dict]:
    return [{"messages": json.dumps([{"role": "user", "content": prompt}, {"role": "assistant", "content": ref}]),
             "response": ref, "text": "", "label": None} for prompt, ref in pairs]


def test_extraction_field_accuracy_is_recomputed_over_the_slices_fields():
    refs = ['{"a": 1, "b": 2}', '{"a": 1, "b": 2, "c": 3, "d": 4}', '{"a": 5}']
    outputs = ['{"a": 1, "b": 2}', '{"a": 1, "b": 0, "c": 0, "d": 0}', '{"a": 6}']
    rows = generative_rows([("x", r) for r in refs])
    task = get_task("extraction")
    metrics, per_row = task.score(outputs, refs, ["x"] * 3)
    tuned = ModelEvaluation(role="finetuned", outputs=outputs, metrics=metrics, row_scores=per_row)
    report = slice_report("shop", ["X", "X", "Y"], rows, [tuned], task, "field_accuracy")
    values = {s.name: s.values["finetuned"] for s in report.slices}
    # X: 3 of 6 fields right (the mean of its rows' accuracies would be 0.625)
    assert values == {"X": pytest.approx(0.5), "Y": 0.0}
    assert report.worst == "Y" and report.worst_gap == pytest.approx(0.0 - 3 / 7)


def test_text_overlap_and_unsupported_rate_per_slice():
    rows = generative_rows([("q1", "yes"), ("q2", "no"), ("q3", "maybe")])
    chat = get_task("chat")
    tuned = ModelEvaluation(role="finetuned", outputs=["yes", "no", "perhaps"],
                            metrics={"exact_match": 2 / 3, "unsupported_output_rate": 1 / 3},
                            row_scores=[{"unsupported_items": 0.0}, {"unsupported_items": 2.0},
                                        {"unsupported_items": 0.0}])
    exact = slice_report("lang", ["en", "en", "de"], rows, [tuned], chat, "exact_match")
    assert {s.name: s.values["finetuned"] for s in exact.slices} == {"en": 1.0, "de": 0.0}
    rate = slice_report("lang", ["en", "en", "de"], rows, [tuned], chat, "unsupported_output_rate")
    assert {s.name: s.values["finetuned"] for s in rate.slices} == {"en": 0.5, "de": 0.0}
    assert not rate.higher_is_better and rate.worst == "en"  # lower is better: the highest rate is worst


def test_a_metric_that_needs_the_model_is_not_approximated():
    rows = generative_rows([("q", "a"), ("q", "b")])
    tuned = ModelEvaluation(role="finetuned", outputs=["a", "b"], metrics={"eval_loss": 1.0})
    report = slice_report("lang", ["en", "de"], rows, [tuned], get_task("chat"), "eval_loss")
    assert all(s.values["finetuned"] is None for s in report.slices)
    assert report.worst is None and "not recomputed per slice" in report.note
    assert worst_line(report).startswith("worst slice: none (eval_loss needs the model itself")


def test_slices_are_capped_largest_first_and_the_worst_is_always_shown():
    sizes = {f"s{k:02d}": 30 - k for k in range(25)}  # s00 has 30 rows ... s24 has 6
    slices = [name for name, n in sizes.items() for _ in range(n)]
    refs = ["pos"] * len(slices)
    outputs = ["neg" if name == "s24" else "pos" for name in slices]  # the smallest slice is all wrong
    rows = [{"text": "t", "label": r} for r in refs]
    tuned = ModelEvaluation(role="finetuned", outputs=outputs, metrics={"macro_f1": 0.5},
                            extras={"labels": LABELS})
    report = slice_report("src", slices, rows, [tuned], get_task("classification"), "macro_f1", max_shown=20)
    assert [s.name for s in report.slices] == [f"s{k:02d}" for k in range(20)] + ["s24"]
    assert report.total == 25 and report.left_out == 4 and report.left_out_rows == 10 + 9 + 8 + 7
    assert report.worst == "s24" and report.worst_value == 0.0
    lines = slice_lines(report.model_dump())
    assert "4 smaller slices (34 rows) not shown: 21 of 25 listed" in lines
    assert any(line.startswith("s24") and line.endswith("<- worst") for line in lines)


def test_values_spelled_alike_get_distinct_metric_keys():
    rows = [{"text": "t", "label": "pos"}] * 3
    tuned = ModelEvaluation(role="finetuned", outputs=["pos"] * 3, extras={"labels": LABELS})
    report = slice_report("src", ["a/b", "a/b", "a_b"], rows, [tuned], get_task("classification"), "accuracy")
    assert [(s.name, s.key) for s in report.slices] == [("a/b", "a_b"), ("a_b", "a_b_")]


def test_report_and_model_card_show_the_table_and_the_worst_slice():
    models = [classified("base", BASE), classified("finetuned", TUNED)]
    report = slice_report("source", SLICES, classification_rows(), models, get_task("classification"), "macro_f1")
    lines = slice_lines(report.model_dump())
    assert lines[1] == "macro_f1 by source"
    assert lines[2].split() == ["slice", "rows", "base", "fine-tuned"]
    assert lines[4].split() == ["B", "3", "0.4000", "0.6667", "<-", "worst"]
    assert lines[-1].startswith("worst slice of the fine-tuned model (lowest macro_f1): source='B'")
    card = "\n".join(slice_section(report))
    assert "## macro_f1 by source (eval.slice_by)" in card
    assert "| slice | rows | base | fine-tuned |" in card and "| B (worst) | 3 | 0.4000 | 0.6667 |" in card
    assert "Worst slice of the fine-tuned model" in card
    assert slice_section(None) == [] and slice_lines(None) == []


def test_compare_logs_slices_to_mlflow_and_returns_them(tmp_path: Path):
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    cfg = load_config(None, ["eval.slice_by=source", "eval.genai_table_rows=0"]).eval
    sample = pd.DataFrame([{**r, "slice": s} for r, s in zip(classification_rows(), SLICES, strict=True)])
    spec = TaskSpec(name="classification", reason="test")
    unavailable = ModelEvaluation(role="champion", available=False, note="no current champion")
    few = ModelEvaluation(role="base_few_shot", available=False, note="off")
    with mlflow.start_run() as run:
        evaluation = compare(classified("base", BASE), few, classified("finetuned", TUNED), unavailable, sample,
                             EvalSample(n=8, of=8, seed=None, how="whole test split"), spec, cfg.reporting(),
                             cfg.scoring(128))
    assert evaluation.slices is not None and evaluation.slices.worst == "B"
    logged = mlflow.get_run(run.info.run_id).data
    assert logged.metrics["slice/B/finetuned/macro_f1"] == pytest.approx(2 / 3)
    assert logged.metrics["slice/A/rows"] == 4 and "slice/_missing_/base/macro_f1" in logged.metrics
    assert logged.metrics["slice_worst/gap/macro_f1"] == pytest.approx(evaluation.slices.worst_gap)
    assert logged.tags["evaluation.worst_slice"] == "B"
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "plots")}
    assert "plots/slices_macro_f1.png" in artifacts
    unset = load_config(None, ["eval.genai_table_rows=0"]).eval
    with mlflow.start_run():
        assert compare(classified("base", BASE), few, classified("finetuned", TUNED), unavailable, sample,
                       EvalSample(n=8, of=8, seed=None, how="whole test split"), spec, unset.reporting(),
                       unset.scoring(128)).slices is None
