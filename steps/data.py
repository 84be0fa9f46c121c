"""Data steps: ingest, validate (the gate), split and tokenize."""

from __future__ import annotations

from typing import Annotated, Any

import mlflow
import pandas as pd
from zenml import log_metadata, step

from llmft.base_model import load_tokenizer, resolve_base_model
from llmft.chat_format import check_labels, encode_example
from llmft.config import Config
from llmft.ingest import DataError, fingerprint, read_records
from llmft.splitting import split_records
from llmft.stack import TRACKER_NAME
from llmft.tasks import system_prompt
from llmft.validation import enforce, run_gate


@step(enable_cache=False)  # reads an external file: caching on parameters would serve stale data
def ingest(config: dict[str, Any]) -> tuple[
    Annotated[pd.DataFrame, "records"], Annotated[str, "dataset_fingerprint"]
]:
    cfg = Config.model_validate(config)
    records = read_records(cfg.data.source, cfg.data.prompt_column, cfg.data.response_column)
    if cfg.data.max_rows:
        records = records[: cfg.data.max_rows]
    fp = fingerprint(records)
    log_metadata({"rows": len(records), "fingerprint": fp, "source": cfg.data.source},
                 artifact_name="records", infer_artifact=True)
    return pd.DataFrame(records, columns=["prompt", "response"]), fp


@step(experiment_tracker=TRACKER_NAME)
def validate(records: pd.DataFrame, config: dict[str, Any]) -> Annotated[dict[str, Any], "data_gate_report"]:
    cfg = Config.model_validate(config)
    report = run_gate(records.to_dict(orient="records"), cfg.validation)
    mlflow.log_dict(report.ge_result, "data_gate/great_expectations_result.json")
    mlflow.log_metric("data/duplicate_fraction", report.duplicate_fraction)
    mlflow.set_tag("data_gate", "passed" if report.success else "failed")
    enforce(report, cfg.data.source)
    return {"success": report.success, "rows": report.rows, "verdict": report.verdict,
            "duplicate_fraction": report.duplicate_fraction, "checks": report.checks}


@step
def split_tokenize(records: pd.DataFrame, dataset_fingerprint: str, data_gate_report: dict[str, Any],
                   config: dict[str, Any]) -> tuple[
    Annotated[pd.DataFrame, "train_split"], Annotated[pd.DataFrame, "validation_split"],
    Annotated[pd.DataFrame, "test_split"],
]:
    cfg = Config.model_validate(config)
    splits = split_records(records.to_dict(orient="records"), cfg.data.split_seed,
                           cfg.data.validation_fraction, cfg.data.test_fraction, cfg.data.max_train_rows)
    if not splits["train"] or not splits["test"]:
        raise DataError(f"{cfg.data.source}: split left {len(splits['train'])} train and "
                         f"{len(splits['test'])} test rows; need at least one of each")
    tokenizer = load_tokenizer(resolve_base_model(cfg.model.base))
    system = system_prompt(cfg)
    frames = []
    for name in ("train", "validation", "test"):
        rows = []
        for rec in splits[name]:
            ex = encode_example(tokenizer, system, rec["prompt"], rec["response"])
            if len(ex["input_ids"]) <= cfg.train.max_seq_length:  # over-long rows are dropped, not cut
                rows.append({**rec, **ex})
        frames.append(pd.DataFrame(rows, columns=["prompt", "response", "input_ids", "labels"]))
    if frames[0].empty:
        raise DataError(f"{cfg.data.source}: every training row is longer than train.max_seq_length="
                         f"{cfg.train.max_seq_length} tokens")
    check_labels({"labels": list(frames[0]["labels"].iloc[0])}, tokenizer.eos_token_id)
    return frames[0], frames[1], frames[2]
