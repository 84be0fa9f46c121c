"""The data stages as plain functions over DataFrames: ingest -> gate and tokenize -> split -> export.

Each pipeline step in `steps/data.py` wraps one of these; tests call them without a ZenML store.
"""

from __future__ import annotations

import json
import random
import shutil
from collections import Counter
from pathlib import Path

import pandas as pd

from llmft.base_model import load_model, load_tokenizer, resolve_base_model
from llmft.config import AugmentConfig, ConfigError, DataConfig, ModelConfig, ValidationConfig
from llmft.contracts import MISSING_SLICE, DatasetInfo, ExtraRows, GateReport, SplitInfo
from llmft.data import augment as paraphrasing
from llmft.data import figures, mix, pii
from llmft.data.export import export_dir, public_row, write_jsonl
from llmft.data.gate import DataGateError, GateResult, run_gate
from llmft.data.ingest import RawRow, read_rows
from llmft.data.shapes import Example, Rejection, normalise_text, to_examples
from llmft.data.split import split_frame
from llmft.locations import scratch_dir
from llmft.tasks import get_task
from llmft.tasks.base import TaskSpec

EXAMPLE_COLUMNS = ["where", "shape", "messages", "text", "label", "prompt", "response", "fields", "slice", "origin"]
ENCODED_COLUMNS = [*EXAMPLE_COLUMNS, "input_ids", "labels", "truncated"]
REJECTION_COLUMNS = ["where", "kind", "reason", "data"]
PII_COLUMN = "pii"  # per example: JSON list of [field, kind] found at ingest (values already redacted if asked)


def screen_rows(rows: list[RawRow], action: str, kinds: frozenset[str] = pii.ALL,
                ) -> tuple[list[RawRow], dict[str, list[list[str]]]]:
    """Every value of every row scanned for personal data of `kinds` (nested ones and numbers too); with
    `redact` the rows come back with placeholders, so nothing downstream ever holds the raw values."""
    screened, found = [], {}
    for row in rows:
        if action == "redact":
            data, findings = pii.scrub(row.data, kinds=kinds)
            row = RawRow(row.where, data)
        else:
            findings = pii.scan(row.data, kinds=kinds)
        if findings:
            found[row.where] = [[f.field, f.kind] for f in findings]
        screened.append(row)
    return screened, found


def slice_values(rows: list[RawRow], column: str, source: str) -> dict[str, str]:
    """Each row's value of `column` as a slice name (lists joined with "+", absent or empty: "(missing)")."""
    if rows and not any(column in r.data for r in rows):
        seen = sorted({k for r in rows[:200] for k in r.data})
        raise ConfigError(f"eval.slice_by: no column {column!r} in {source} (its columns: {', '.join(seen)})")
    out = {}
    for r in rows:
        value = r.data.get(column)
        if isinstance(value, list):
            value = "+".join(str(v) for v in value)
        out[r.where] = MISSING_SLICE if value is None or str(value).strip() == "" else str(value).strip()[:80]
    return out


def ingest_frames(data: DataConfig, validation: ValidationConfig | None = None,
                  slice_by: str | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every row of `data.source` as a canonical example, or a rejection with its reason.

    With `validation`, personal data is found here, per field, and under `pii_action: redact` removed
    before the rows become examples: the ingest artifact (examples and shape rejections) never holds it.
    With `slice_by`, each example keeps its value of that column (read before redaction would hide it:
    a slice is a category, not free text, and is cut to 80 characters).
    """
    rows = read_rows(data.source, limit=data.max_rows)
    slices = slice_values(rows, slice_by, data.source) if slice_by else {}
    found: dict[str, list[list[str]]] | None = None
    if validation is not None:
        rows, found = screen_rows(rows, validation.pii_action, frozenset(validation.pii_kinds))
    examples, rejections = to_examples(rows, data)
    for example in examples:
        example.slice = slices.get(example.where)
    records = [e.as_row() for e in examples]
    columns = EXAMPLE_COLUMNS
    if found is not None:
        records = [{**r, PII_COLUMN: json.dumps(found.get(r["where"], []), ensure_ascii=False)} for r in records]
        columns = [*EXAMPLE_COLUMNS, PII_COLUMN]
    return (pd.DataFrame(records, columns=columns),
            pd.DataFrame([{"where": r.where, "kind": r.kind, "reason": r.reason,
                           "data": json.dumps(r.data, default=str, ensure_ascii=False)} for r in rejections],
                         columns=REJECTION_COLUMNS))


def pii_found(examples: pd.DataFrame) -> dict[str, list[list[str]]] | None:
    """What ingest found per row ([field, kind]); None for a frame ingest did not screen (the gate scans it)."""
    if PII_COLUMN not in examples.columns:
        return None
    return {r["where"]: json.loads(r[PII_COLUMN]) for r in examples[["where", PII_COLUMN]].to_dict("records")}


def _rejections(frame: pd.DataFrame) -> list[Rejection]:
    return [Rejection(r["where"], r["reason"], json.loads(r["data"]), r["kind"]) for r in frame.to_dict("records")]


def gate_and_tokenize(examples: pd.DataFrame, shape_rejections: pd.DataFrame, spec: TaskSpec, model: ModelConfig,
                      data: DataConfig, validation: ValidationConfig, max_seq_length: int,
                      ) -> tuple[pd.DataFrame, pd.DataFrame, GateReport]:
    """The data gate; kept rows come back encoded by the task (input fitted to the token budget)."""
    task = get_task(spec.name)
    tokenizer = load_tokenizer(resolve_base_model(model))
    docs = scratch_dir("data-docs-")
    result = run_gate([Example.from_row(r) for r in examples.to_dict("records")], _rejections(shape_rejections),
                      data, validation, lambda ex: task.encode(tokenizer, ex, spec.instruction, max_seq_length),
                      max_seq_length, docs_dir=docs, pii_found=pii_found(examples))
    return _kept_frame(result), _rejected_frame(result), result.report


def _kept_frame(result: GateResult) -> pd.DataFrame:
    rows = []
    for r in result.kept:
        row = r.example.as_row()
        if r.messages is not None:  # what training saw, so evaluation renders the same prompt
            row["messages"] = json.dumps(r.messages, ensure_ascii=False)
        rows.append({**row, "input_ids": r.input_ids, "labels": r.labels, "truncated": r.truncated})
    return pd.DataFrame(rows, columns=ENCODED_COLUMNS)


def _rejected_frame(result: GateResult) -> pd.DataFrame:
    return pd.DataFrame([{"where": r.where, "kind": r.kind, "reason": r.reason,
                          "data": json.dumps(r.data, default=str, ensure_ascii=False)} for r in result.rejected],
                        columns=REJECTION_COLUMNS)


def write_gate_files(out: Path, rejected: pd.DataFrame, report: GateReport) -> None:
    write_jsonl(out / "rejected.jsonl", [{"where": r["where"], "kind": r["kind"], "reason": r["reason"],
                                          "row": json.loads(r["data"])} for r in rejected.to_dict("records")])
    (out / "great_expectations_result.json").write_text(json.dumps(report.ge_result, indent=1, default=str))
    if report.docs_dir and Path(report.docs_dir).is_dir():
        shutil.copytree(report.docs_dir, out / "data_docs", dirs_exist_ok=True)


def enforce_gate(report: GateReport, rejected: pd.DataFrame, source: str, run_name: str) -> None:
    """A failed gate keeps its evidence for the user, then stops the run before any training."""
    if report.success:
        return
    out = export_dir(run_name)
    write_gate_files(out, rejected, report)
    raise DataGateError(f"{source} (report: {out}): {report.verdict}")


def admit_extra_rows(examples: list[Example], splits: list[pd.DataFrame], spec: TaskSpec, encode_with: str,
                     model: ModelConfig, data: DataConfig, validation: ValidationConfig, max_seq_length: int,
                     labels: list[str] | None) -> tuple[pd.DataFrame, Counter[str]]:
    """Training-only rows through the gate's row rules (empty, length, personal data, duplicates among
    themselves), encoded like training rows; a row whose input any split already has is dropped (a
    replayed or paraphrased copy of a test prompt would leak it), as is a label the run does not train."""
    task, encoder = get_task(spec.name), get_task(encode_with)
    system = spec.instruction if encode_with == spec.name else None  # replayed chat keeps its own (no) system
    tokenizer = load_tokenizer(resolve_base_model(model))
    result = run_gate(examples, [], data, validation, lambda ex: encoder.encode(tokenizer, ex, system, max_seq_length),
                      max_seq_length, suite=False)
    dropped = Counter(r.kind for r in result.rejected)
    seen = {normalise_text(p) for frame in splits for p in frame["prompt"]}
    kept = []
    for row in result.kept:
        key = normalise_text(row.example.prompt_key)
        if key in seen:
            dropped["duplicate_of_a_split_row"] += 1
        elif task.classifier and labels is not None and row.example.label not in labels:
            dropped["label_not_trained"] += 1
        else:
            seen.add(key)
            kept.append(row)
    return _kept_frame(GateResult(report=result.report, kept=kept)), dropped


def mix_training(train: pd.DataFrame, validation: pd.DataFrame, test: pd.DataFrame, split: SplitInfo,
                 spec: TaskSpec, model: ModelConfig, data: DataConfig, validation_cfg: ValidationConfig,
                 max_seq_length: int) -> tuple[pd.DataFrame, list[ExtraRows]]:
    """The training split with each `data.mix` source's rows added (weight x the user's training rows,
    seeded by data.split_seed); validation and test are untouched."""
    task = get_task(spec.name)
    sources = mix.with_replay(data, task)
    if not sources:
        return train, []
    if task.name == "preference":
        raise ConfigError("data.mix: a preference run trains on pairs; mixing supervised rows in is not supported "
                          "(remove data.mix)")
    user_rows = int((train["origin"] == "data").sum()) if "origin" in train.columns else len(train)
    frames, reports = [train], []
    for i, source in enumerate(sources):
        examples = mix.read_mix_source(source, i, data)
        problem = mix.mix_kind_error(examples, task.classifier, f"data.mix[{i}]", source.source)
        if problem:
            raise ConfigError(problem)
        admitted, dropped = admit_extra_rows(examples, [*frames, validation, test], spec,
                                             spec.name if task.classifier else "chat", model, data, validation_cfg,
                                             max_seq_length, split.labels)
        chosen, note = mix.draw(list(range(len(admitted))), source.weight, user_rows,
                                f"{data.split_seed}:{source.source}")
        frames.append(admitted.iloc[chosen])
        reports.append(ExtraRows(origin="mix", source=source.source, weight=source.weight, read=len(examples),
                                 kept=len(admitted), used=len(chosen), dropped_by_reason=dict(dropped), note=note))
    return pd.concat(frames, ignore_index=True), reports


def augment_training(train: pd.DataFrame, validation: pd.DataFrame, test: pd.DataFrame, split: SplitInfo,
                     spec: TaskSpec, model: ModelConfig, augment: AugmentConfig, data: DataConfig,
                     validation_cfg: ValidationConfig, max_seq_length: int, batch_size: int,
                     ) -> tuple[pd.DataFrame, ExtraRows | None]:
    """The training split plus faithful paraphrases of (a seeded sample of) its rows' inputs."""
    if not augment.enabled:
        return train, None
    task = get_task(spec.name)
    if task.name == "preference":
        raise ConfigError("augment.enabled: preference pairs are not paraphrased (a reworded prompt changes what the "
                          "answers respond to); set augment.enabled=false")
    rows = [r for r in train.to_dict("records") if r.get("origin", "data") == "data"]
    if augment.max_rows is not None and augment.max_rows < len(rows):
        rows = random.Random(augment.seed).sample(rows, augment.max_rows)
    paraphraser = resolve_base_model(model if augment.model is None else
                                     model.model_copy(update={"base": augment.model, "revision": None}))
    tokenizer = load_tokenizer(paraphraser, padding_side="left")
    new, dropped, generated = paraphrasing.paraphrase(
        [Example.from_row(r) for r in rows], load_model(paraphraser), tokenizer, augment.per_row,
        augment.temperature, augment.max_new_tokens, batch_size, augment.seed, extraction=task.name == "extraction")
    admitted, gate_dropped = admit_extra_rows(new, [train, validation, test], spec, spec.name, model, data,
                                              validation_cfg, max_seq_length, split.labels)
    dropped.update(gate_dropped)
    report = ExtraRows(origin="synthetic", source=augment.model or model.base, read=generated, kept=len(admitted),
                       used=len(admitted), dropped_by_reason=dict(dropped),
                       note=f"{len(rows)} training rows paraphrased x{augment.per_row}")
    return pd.concat([train, admitted], ignore_index=True), report


def split_dataset(clean: pd.DataFrame, spec: TaskSpec, data: DataConfig,
                  ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, SplitInfo]:
    return split_frame(clean, data, get_task(spec.name).classifier)


def export_dataset(train: pd.DataFrame, validation: pd.DataFrame, test: pd.DataFrame, rejected: pd.DataFrame,
                   report: GateReport, split: SplitInfo, spec: TaskSpec, fingerprint: str, source: str,
                   max_seq_length: int, run_name: str, extras: list[ExtraRows] | None = None) -> DatasetInfo:
    """This run's dataset as files, and its lineage in the active MLflow run (inputs, gate, plots): the
    training split's rows from data.source, each mix source and the synthetic rows are separate inputs."""
    import mlflow

    out = export_dir(run_name)
    splits = {"train": train, "validation": validation, "test": test}
    for name, frame in splits.items():
        write_jsonl(out / f"{name}.jsonl", [public_row(r) for r in frame.to_dict("records")])
    write_gate_files(out, rejected, report)
    info = DatasetInfo(
        fingerprint=fingerprint, source=source, task=spec.name, task_reason=spec.reason, rows_in=report.rows_in,
        duplicates_removed=report.duplicates_removed, duplicate_examples=report.duplicate_examples,
        warnings=report.warnings, rejected=report.rejected, rejected_by_reason=report.rejected_by_reason,
        truncated=report.truncated, pii=report.pii, rows=split.rows, unused=split.unused, labels=split.labels,
        export_dir=str(out), verdict=report.verdict, extras=extras or [])
    origin = train["origin"] if "origin" in train.columns else pd.Series(["data"] * len(train), index=train.index)
    columns = ["prompt", "response", "label"]
    mlflow.log_input(mlflow.data.from_pandas(train.loc[origin == "data", columns], source=source,
                                             name=f"train-{fingerprint}", digest=fingerprint), context="training")
    for i, extra in enumerate(info.extras):
        rows = train.loc[origin == extra.origin, columns]
        if extra.origin == "mix":  # one input per source: rows of a source are the ones located in it
            rows = rows[train.loc[rows.index, "where"].str.startswith(extra.source)]
        name = f"{extra.origin}-{i}-{Path(extra.source).name}"
        # MLflow resolves a dataset source to a file or URI: a built-in set is its shipped file; paraphrases
        # have none (the paraphrasing model is in the tag below)
        where = mix.resolve_source(extra.source, f"data.mix[{i}]") if extra.origin == "mix" else None
        mlflow.log_input(mlflow.data.from_pandas(rows, source=where, name=name), context=f"training-{extra.origin}")
        mlflow.log_metrics({f"data/{extra.origin}_{i}/used": extra.used, f"data/{extra.origin}_{i}/kept": extra.kept})
        mlflow.set_tag(f"data.{extra.origin}.{i}", f"{extra.source}: {extra.used} rows"
                                                   + (f" (weight {extra.weight})" if extra.weight else ""))
    mlflow.set_tags({"dataset_fingerprint": fingerprint, "dataset_source": source, "data_gate": "passed",
                     "task": spec.name, "task.reason": spec.reason})
    mlflow.log_metrics({"data/rows_in": info.rows_in, "data/duplicates_removed": info.duplicates_removed,
                        "data/rejected": info.rejected, "data/truncated": info.truncated,
                        **{f"data/rows_{k}": v for k, v in info.rows.items()}})
    mlflow.log_dict(report.ge_result, "data/great_expectations_result.json")
    mlflow.log_artifact(str(out / "rejected.jsonl"), "data")
    if (out / "data_docs").is_dir():
        mlflow.log_artifacts(str(out / "data_docs"), "data/data_docs")
    lengths = {k: [len(ids) for ids in v["input_ids"]] for k, v in splits.items()}
    mlflow.log_figure(figures.token_lengths(lengths, max_seq_length), "plots/token_lengths.png")
    if split.label_counts:
        mlflow.log_figure(figures.class_balance(split.label_counts), "plots/class_balance.png")
    run = mlflow.active_run()
    info.mlflow_run_id = run.info.run_id if run else None
    return info

