"""The stage functions the steps wrap, called directly: no ZenML store, the real tokenizer, a
temporary MLflow store where a stage logs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmft.config_files import load_config
from llmft.contracts import DatasetInfo, EvalSample, Evaluation, PromotionDecision, TrainingResult
from llmft.data import stages
from llmft.data.gate import DataGateError
from llmft.evaluate.stage import draw_sample
from llmft.registry.stage import run_description
from llmft.resolve import resolve_run
from llmft.train.stage import checkpoint_key, training_examples

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT / "tests" / "data" / "real"


@pytest.fixture(scope="module")
def summarization(tokenizer):  # the base model resolved (its tokenizer encodes), never loaded
    cfg = load_config(ROOT / "configs" / "finetune.yaml", [f"data.source={REAL / 'summarization.jsonl'}",
                                                            "train.max_seq_length=160"])
    run = resolve_run(cfg)
    examples, rejections = stages.ingest_frames(run.cfg.data)
    clean, rejected, report = stages.gate_and_tokenize(examples, rejections, run.spec, run.cfg.model, run.cfg.data,
                                                       run.cfg.validation, run.cfg.train.max_seq_length)
    return run, clean, rejected, report


def test_resolve_names_the_task_and_the_model(summarization):
    run = summarization[0]
    assert run.spec.name == "summarization" and run.cfg.task == "summarization"
    assert run.cfg.registry.model_name == "summarization-summarization"
    assert run.spec.instruction and "Summarize" in run.spec.instruction


def test_gate_encodes_with_the_task_cutting_long_documents(summarization, tokenizer):
    run, clean, _, report = summarization
    assert report.success and report.rows_in == 102 and report.kept == len(clean) == 102
    assert report.truncated == int(clean["truncated"].sum()) > 0  # 160 tokens cannot hold the longer abstracts
    for row in clean.itertuples():
        assert len(row.input_ids) <= 160
        messages = json.loads(row.messages)
        assert messages[0] == {"role": "system", "content": run.spec.instruction}
        assert messages[-1]["content"] == row.response  # the target is never cut
        labelled = [t for t in row.labels if t != -100]
        assert tokenizer.decode(labelled).startswith(row.response[:20])


def test_split_and_sample_and_training_rows(summarization):
    run, clean, _, _ = summarization
    train, validation, test, info = stages.split_dataset(clean, run.spec, run.cfg.data)
    assert info.rows == {"train": len(train), "validation": len(validation), "test": len(test)}
    assert info.labels is None and sum(info.rows.values()) + info.unused == len(clean)
    rows, sample = draw_sample(test, run.spec, run.cfg.eval.model_copy(update={"max_samples": 5}).row_draw())
    assert len(rows) == sample.n == 5 and sample.of == len(test) and sample.how == "seeded random sample"
    examples = training_examples(train, None)
    assert set(examples[0]) == {"input_ids", "labels"}
    key = checkpoint_key(run.spec, run.cfg.model, run.cfg.train, examples)
    assert key == checkpoint_key(run.spec, run.cfg.model, run.cfg.train.model_copy(update={"resume": False}),
                                 examples)
    assert key != checkpoint_key(run.spec, run.cfg.model, run.cfg.train, examples[1:])


def test_export_logs_the_dataset_to_mlflow(summarization, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import mlflow

    run, clean, rejected, report = summarization
    monkeypatch.setenv("LLMFT_HOME", str(tmp_path))
    train, validation, test, info = stages.split_dataset(clean, run.spec, run.cfg.data)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_experiment("stages")
    with mlflow.start_run() as active:
        dataset = stages.export_dataset(train, validation, test, rejected, report, info, run.spec, "abc123",
                                        run.cfg.data.source, 160, "test-run")
    assert dataset.task == "summarization" and dataset.rows == info.rows and dataset.truncated == report.truncated
    assert dataset.mlflow_run_id == active.info.run_id
    assert {f"{n}.jsonl" for n in ("train", "validation", "test", "rejected")} <= {
        p.name for p in Path(dataset.export_dir).iterdir()}
    logged = mlflow.get_run(active.info.run_id)
    assert logged.data.tags["task"] == "summarization" and logged.data.metrics["data/truncated"] == report.truncated
    mlflow.set_tracking_uri("")


def test_a_refused_gate_keeps_its_evidence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("LLMFT_HOME", str(tmp_path))
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join(json.dumps({"prompt": "hi" if i < 3 else " ", "response": "ok"}) + "\n" for i in range(10)))
    cfg = load_config(None, [f"data.source={bad}"])
    run = resolve_run(cfg)
    examples, rejections = stages.ingest_frames(run.cfg.data)
    _, rejected, report = stages.gate_and_tokenize(examples, rejections, run.spec, run.cfg.model, run.cfg.data,
                                                   run.cfg.validation, 64)
    with pytest.raises(DataGateError, match=r"set validation\.max_rejected_fraction=0\.70 to accept") as err:
        stages.enforce_gate(report, rejected, str(bad), "refused-run")
    folder = Path(str(err.value).split("(report: ")[1].split(")")[0])
    assert len((folder / "rejected.jsonl").read_text().splitlines()) == 9  # 7 empty + 2 duplicates


def test_run_description_says_task_data_and_verdict():
    spec_reason = "inferred from columns text/label"
    from llmft.tasks.base import TaskSpec

    text = run_description(
        TaskSpec(name="classification", reason=spec_reason),
        DatasetInfo(fingerprint="f", source="bbc.jsonl", task="classification", task_reason=spec_reason, rows_in=10,
                    duplicates_removed=0, rejected=0, rows={"train": 7, "validation": 1, "test": 2}, unused=0,
                    export_dir="/x", verdict="ok"),
        TrainingResult(method="lora", steps=30, train_loss=1, first_loss=1, last_loss=1, validation_loss=None,
                       best_validation_loss=None, stopped_early=False, resumed_from_step=None, tokens=1,
                       padding_fraction=0, tokens_per_second=1, wall_seconds=1, trainable_parameters=1,
                       total_parameters=1),
        Evaluation(task="classification", primary_metric="macro_f1", higher_is_better=True,
                   sample=EvalSample(n=2, of=2, seed=None, how="whole test split"), champion_version=None,
                   champion_note="no current champion",
                   metrics={"base": {"macro_f1": 0.2}, "finetuned": {"macro_f1": 0.9}, "champion": None}),
        PromotionDecision(promoted=True, reasons=[]))
    assert text == ("classification (inferred from columns text/label) on bbc.jsonl: 7 training rows, lora for 30 "
                    "steps. macro_f1: base 0.2000 -> fine-tuned 0.9000 on 2 test rows. Promoted to champion.")
