"""Data steps: fingerprint -> ingest -> validate (the gate) -> split/tokenize -> export.

The fingerprint of the source bytes is an input of every downstream data step, so an unchanged
re-run is served from ZenML's cache and a changed file never serves stale data. The data steps get
`config.data_view()` only, so changing training settings does not invalidate their cache.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Annotated, Any

import mlflow
import pandas as pd
from zenml import get_step_context, log_metadata, step

from llmft import plots
from llmft.base_model import load_tokenizer, resolve_base_model
from llmft.chat_format import IGNORE_INDEX, check_labels, encode_messages, truncate, with_system
from llmft.config import Config
from llmft.dataset_export import export_dir, public_row, write_jsonl
from llmft.ingest import DataError, read_rows, source_fingerprint
from llmft.shapes import Example, to_examples
from llmft.splitting import split_items
from llmft.stack import TRACKER_NAME
from llmft.tasks import system_prompt
from llmft.validation import GateResult, enforce, run_gate

_ROW_COLUMNS = ["where", "shape", "messages", "text", "label", "prompt", "response"]


def _example(row: dict[str, Any]) -> Example:
    return Example(row["where"], row["shape"], messages=json.loads(row["messages"]), text=row["text"] or "",
                   label=row["label"])


def _encode(tokenizer: Any, system: str | None, ex: Example) -> dict[str, list[int]]:
    if ex.shape == "text_label":
        return {"input_ids": tokenizer(ex.text, add_special_tokens=False)["input_ids"], "labels": []}
    return encode_messages(tokenizer, with_system(system, ex.messages))


def _rejected_rows(result: GateResult) -> list[dict[str, Any]]:
    return [{"where": r.where, "kind": r.kind, "reason": r.reason, "row": r.data} for r in result.rejected]


_REJECTED_COLUMNS = ["where", "kind", "reason", "row_json"]


def _write_gate_files(out: Path, rejected: list[dict[str, Any]], ge_result: dict[str, Any], docs: Path) -> None:
    write_jsonl(out / "rejected.jsonl", rejected)
    (out / "great_expectations_result.json").write_text(json.dumps(ge_result, indent=1, default=str))
    if docs.is_dir():
        shutil.copytree(docs, out / "data_docs", dirs_exist_ok=True)


@step(enable_cache=False)  # always re-hash the source: this is what makes the cache below safe
def fingerprint_data(data_config: dict[str, Any]) -> Annotated[str, "dataset_fingerprint"]:
    return source_fingerprint(Config.model_validate(data_config).data.source)


@step
def ingest(dataset_fingerprint: str, data_config: dict[str, Any]) -> tuple[
    Annotated[pd.DataFrame, "examples"], Annotated[pd.DataFrame, "shape_rejections"]
]:
    cfg = Config.model_validate(data_config)
    rows = read_rows(cfg.data.source)
    if cfg.data.max_rows:
        rows = rows[: cfg.data.max_rows]
    examples, rejections = to_examples(rows, cfg.data)
    log_metadata({"rows": len(rows), "fingerprint": dataset_fingerprint, "source": cfg.data.source},
                 artifact_name="examples", infer_artifact=True)
    return (pd.DataFrame([e.as_row() for e in examples], columns=_ROW_COLUMNS),
            pd.DataFrame([{"where": r.where, "reason": r.reason, "kind": r.kind,
                           "data": json.dumps(r.data, default=str)} for r in rejections],
                         columns=["where", "reason", "kind", "data"]))


@step
def validate(examples: pd.DataFrame, shape_rejections: pd.DataFrame, data_config: dict[str, Any]) -> tuple[
    Annotated[pd.DataFrame, "clean_examples"], Annotated[pd.DataFrame, "rejected_rows"],
    Annotated[dict[str, Any], "data_gate_report"], Annotated[Path, "data_docs"],
]:
    from llmft.shapes import Rejection

    cfg = Config.model_validate(data_config)
    tokenizer = load_tokenizer(resolve_base_model(cfg.model.base))
    system = system_prompt(cfg)
    shape_rej = [Rejection(r["where"], r["reason"], json.loads(r["data"]), r["kind"])
                 for r in shape_rejections.to_dict(orient="records")]
    docs = Path(tempfile.mkdtemp(prefix="llmft-data-docs-"))
    encoded: dict[str, dict[str, list[int]]] = {}  # by row location; reused by split_tokenize

    def count_tokens(ex: Example) -> int:  # the gate sees rows after redaction, as training will
        encoded[ex.where] = _encode(tokenizer, system, ex)
        return len(encoded[ex.where]["input_ids"])

    result = run_gate([_example(r) for r in examples.to_dict(orient="records")], shape_rej, cfg.data,
                      cfg.validation, count_tokens, cfg.train.max_seq_length, docs_dir=docs)
    if not result.success:  # keep the evidence for the user, then stop the run before any training
        out = export_dir(get_step_context().pipeline_run.name)
        _write_gate_files(out, _rejected_rows(result), result.ge_result, docs)
        enforce(result, f"{cfg.data.source} (report: {out})")
    report = {"success": result.success, "verdict": result.verdict, "rows_in": result.rows_in,
              "duplicates_removed": result.duplicates_removed, "rejected": result.rejected_count,
              "rejected_by_reason": result.rejected_by_reason, "pii": result.pii, "checks": result.checks,
              "ge_result": result.ge_result}
    return (pd.DataFrame([{**e.as_row(), **encoded[e.where]} for e in result.kept],
                         columns=[*_ROW_COLUMNS, "input_ids", "labels"]),
            pd.DataFrame([{**r, "row_json": json.dumps(r.pop("row"), default=str)} for r in _rejected_rows(result)],
                         columns=_REJECTED_COLUMNS),
            report, docs)


@step
def split_tokenize(clean_examples: pd.DataFrame, dataset_fingerprint: str, data_config: dict[str, Any]) -> tuple[
    Annotated[pd.DataFrame, "train_split"], Annotated[pd.DataFrame, "validation_split"],
    Annotated[pd.DataFrame, "test_split"],
]:
    cfg = Config.model_validate(data_config)
    rows = clean_examples.to_dict(orient="records")
    classification = bool(rows) and rows[0]["shape"] == "text_label"
    splits = split_items(rows, lambda r: r["prompt"], cfg.data.split_seed, cfg.data.validation_fraction,
                         cfg.data.test_fraction, cfg.data.max_train_rows,
                         label=(lambda r: r["label"]) if classification else None)
    if len(splits["test"]) < cfg.data.min_test_rows or not splits["train"]:
        raise DataError(f"{cfg.data.source}: split gives {len(splits['train'])} train and {len(splits['test'])} "
                        f"test rows; need train > 0 and test >= data.min_test_rows={cfg.data.min_test_rows}")
    frames = []
    for name in ("train", "validation", "test"):
        kept = []
        for row in splits[name]:  # token ids come from the gate, which encoded every kept row
            ex = truncate({"input_ids": list(row["input_ids"]), "labels": list(row["labels"])},
                          cfg.train.max_seq_length)
            if not classification and all(t == IGNORE_INDEX for t in ex["labels"]):
                continue  # truncation left no response token: nothing to learn from this row
            kept.append({**row, **ex})
        frames.append(pd.DataFrame(kept, columns=[*_ROW_COLUMNS, "input_ids", "labels"]))
    if not classification:
        eos = load_tokenizer(resolve_base_model(cfg.model.base)).eos_token_id
        check_labels({"labels": list(frames[0]["labels"].iloc[0])}, eos)
    return frames[0], frames[1], frames[2]


@step(experiment_tracker=TRACKER_NAME, enable_cache=False)
def export_dataset(clean_examples: pd.DataFrame, train_split: pd.DataFrame, validation_split: pd.DataFrame,
                   test_split: pd.DataFrame, rejected_rows: pd.DataFrame, data_gate_report: dict[str, Any],
                   data_docs: Path, dataset_fingerprint: str,
                   data_config: dict[str, Any]) -> Annotated[dict[str, Any], "dataset"]:
    """This run's dataset as files, and its lineage in MLflow (input dataset, gate result, plots)."""
    cfg = Config.model_validate(data_config)
    out = export_dir(get_step_context().pipeline_run.name)
    splits = {"train": train_split, "validation": validation_split, "test": test_split}
    for name, frame in splits.items():
        write_jsonl(out / f"{name}.jsonl", [public_row(r) for r in frame.to_dict(orient="records")])
    rejected = [{"where": r["where"], "kind": r["kind"], "reason": r["reason"], "row": json.loads(r["row_json"])}
                for r in rejected_rows.to_dict(orient="records")]
    _write_gate_files(out, rejected, data_gate_report["ge_result"], Path(data_docs))

    summary = {"fingerprint": dataset_fingerprint, "source": cfg.data.source,
               "rows_in": data_gate_report["rows_in"], "duplicates_removed": data_gate_report["duplicates_removed"],
               "rejected": data_gate_report["rejected"], "rejected_by_reason": data_gate_report["rejected_by_reason"],
               "pii": data_gate_report["pii"], "rows": {k: len(v) for k, v in splits.items()},
               # kept by the gate but left out of training by data.max_train_rows (or emptied by truncation)
               "unused": len(clean_examples) - sum(len(v) for v in splits.values()),
               "export_dir": str(out), "verdict": data_gate_report["verdict"]}
    train_df = train_split[["prompt", "response", "label"]]
    mlflow.log_input(mlflow.data.from_pandas(train_df, source=cfg.data.source, name=f"train-{dataset_fingerprint}",
                                             digest=dataset_fingerprint), context="training")
    mlflow.set_tags({"dataset_fingerprint": dataset_fingerprint, "dataset_source": cfg.data.source,
                     "data_gate": "passed"})
    mlflow.log_metrics({"data/rows_in": summary["rows_in"], "data/duplicates_removed": summary["duplicates_removed"],
                        "data/rejected": summary["rejected"],
                        **{f"data/rows_{k}": v for k, v in summary["rows"].items()}})
    mlflow.log_dict(data_gate_report["ge_result"], "data/great_expectations_result.json")
    mlflow.log_artifact(str(out / "rejected.jsonl"), "data")
    if (out / "data_docs").is_dir():
        mlflow.log_artifacts(str(out / "data_docs"), "data/data_docs")
    lengths = {k: [len(ids) for ids in v["input_ids"]] for k, v in splits.items()}
    mlflow.log_figure(plots.token_lengths(lengths, cfg.train.max_seq_length), "plots/token_lengths.png")
    labels = {k: v["label"].dropna().value_counts().to_dict() for k, v in splits.items()}
    if any(labels.values()):
        mlflow.log_figure(plots.class_balance(labels), "plots/class_balance.png")
    log_metadata({k: v for k, v in summary.items() if k != "verdict"}, artifact_name="dataset", infer_artifact=True)
    run = mlflow.active_run()
    return {**summary, "mlflow_run_id": run.info.run_id if run else None}
