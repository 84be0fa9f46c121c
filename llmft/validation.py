"""The data gate, run before any compute is spent.

Row by row: shape problems, empty fields, length bounds, unknown labels and (with `pii_action:
fail`) personal data become rejections with a reason; exact and normalised duplicates are removed
and counted; personal data is redacted or reported. Then a Great Expectations suite judges the
whole set against the thresholds in `validation.*` (duplicate rate, rejected share, minimum rows,
token lengths, class balance, PII) and its result and HTML data docs are kept. A failing gate
raises `DataGateError` with one line naming the failed checks and the worst offending rows.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmft import pii
from llmft.config import DataConfig, ValidationConfig
from llmft.errors import UserFacingError
from llmft.shapes import Example, Rejection


class DataGateError(UserFacingError, ValueError):
    """The data failed the validation gate."""


@dataclass
class GateResult:
    success: bool
    verdict: str
    kept: list[Example]
    rejected: list[Rejection]  # every row that is not kept, duplicates included, each with its reason
    rows_in: int
    duplicates_removed: int
    pii: dict[str, int]
    checks: list[dict[str, Any]] = field(default_factory=list)
    ge_result: dict[str, Any] = field(default_factory=dict)
    docs_dir: str | None = None

    @property
    def rejected_by_reason(self) -> dict[str, int]:
        return dict(Counter(r.kind for r in self.rejected if r.kind != "duplicate"))

    @property
    def rejected_count(self) -> int:
        return sum(1 for r in self.rejected if r.kind != "duplicate")


def normalise(text: str) -> str:
    return " ".join(text.lower().split())


def _texts(ex: Example) -> list[str]:
    return [ex.text] if ex.shape == "text_label" else [m["content"] for m in ex.messages]


def _redacted(ex: Example) -> Example:
    if ex.shape == "text_label":
        return Example(ex.where, ex.shape, text=pii.redact(ex.text), label=ex.label)
    return Example(ex.where, ex.shape, messages=[{**m, "content": pii.redact(m["content"])} for m in ex.messages])


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        return pii.redact(value)
    if isinstance(value, list):
        return [_scrub(v) for v in value]
    if isinstance(value, dict):
        return {k: _scrub(v) for k, v in value.items()}
    return value


def _row_problem(ex: Example, data: DataConfig, cfg: ValidationConfig) -> tuple[str, str] | None:
    """(kind, reason) when a single row cannot be used, else None."""
    if ex.shape == "text_label":
        if not ex.text.strip():
            return "empty", "empty field 'text'"
        if not (ex.label or "").strip():
            return "empty", "empty field 'label'"
        if data.labels is not None and ex.label not in data.labels:
            return "unknown_label", f"unknown label {ex.label!r} (allowed: {', '.join(data.labels)})"
    else:
        for m in ex.messages:
            if not m["content"].strip():
                return "empty", f"empty {m['role']} turn"
    prompt, target = ex.prompt_key.strip(), ex.target.strip()
    if not cfg.min_prompt_chars <= len(prompt) <= cfg.max_prompt_chars:
        return "length", (f"prompt has {len(prompt)} chars, outside validation.min/max_prompt_chars="
                          f"{cfg.min_prompt_chars}..{cfg.max_prompt_chars}")
    if ex.shape != "text_label" and not cfg.min_response_chars <= len(target) <= cfg.max_response_chars:
        return "length", (f"response has {len(target)} chars, outside validation.min/max_response_chars="
                          f"{cfg.min_response_chars}..{cfg.max_response_chars}")
    return None


def run_gate(examples: list[Example], shape_rejections: list[Rejection], data: DataConfig,
             cfg: ValidationConfig, count_tokens: Callable[[Example], int], max_seq_length: int,
             docs_dir: Path | None = None) -> GateResult:
    """Apply the row rules, deduplicate, then run the GE suite over every input row."""
    rejected = list(shape_rejections)
    table: list[dict[str, Any]] = [
        {"where": r.where, "prompt": "", "response": "", "tokens": None, "pii_matches": 0, "label": None,
         "is_rejected": 1, "is_duplicate": 0} for r in shape_rejections]
    kept: list[Example] = []
    pii_counts: Counter[str] = Counter()
    seen_exact: dict[str, str] = {}
    seen_norm: dict[str, str] = {}
    for ex in examples:
        row = {"where": ex.where, "prompt": ex.prompt_key, "response": ex.target, "tokens": None,
               "pii_matches": 0, "label": ex.label, "is_rejected": 0, "is_duplicate": 0}
        table.append(row)
        problem = _row_problem(ex, data, cfg)
        if problem:
            rejected.append(Rejection(ex.where, problem[1], ex.as_row(), kind=problem[0]))
            row["is_rejected"] = 1
            continue
        found = [kind for text in _texts(ex) for kind in pii.find(text)]
        row["pii_matches"] = len(found)
        pii_counts.update(found)
        if found and cfg.pii_action == "fail":
            rejected.append(Rejection(ex.where, f"personal data: {', '.join(sorted(set(found)))}", {},
                                      kind="pii"))  # the row itself is not copied anywhere
            row["is_rejected"] = 1
            continue
        if found and cfg.pii_action == "redact":
            ex = _redacted(ex)
        exact = repr((_texts(ex), ex.label))
        norm = repr(([normalise(t) for t in _texts(ex)], ex.label))
        first = seen_exact.get(exact) or seen_norm.get(norm)
        if first:
            kind = "exact" if exact in seen_exact else "normalised"
            rejected.append(Rejection(ex.where, f"{kind} duplicate of {first}", ex.as_row(), kind="duplicate"))
            row["is_duplicate"] = 1
            continue
        seen_exact[exact], seen_norm[norm] = ex.where, ex.where
        row["tokens"] = count_tokens(ex)
        if row["tokens"] > max_seq_length and cfg.length_policy == "drop":
            rejected.append(Rejection(ex.where, f"{row['tokens']} tokens > train.max_seq_length={max_seq_length}",
                                      ex.as_row(), kind="too_long"))
            row["is_rejected"] = 1
            continue
        kept.append(ex)

    labels = Counter(ex.label for ex in kept if ex.shape == "text_label")
    for row in table:
        kept_row = not row["is_rejected"] and not row["is_duplicate"]
        row["kept"] = int(kept_row)
        row["label_share"] = labels[row["label"]] / sum(labels.values()) if kept_row and labels else None

    if cfg.pii_action != "warn":  # rejected rows are written to files: they must not leak what we redact
        rejected = [Rejection(r.where, r.reason, _scrub(r.data), r.kind) for r in rejected]
    ge_result, checks, docs = _run_suite(table, data, cfg, max_seq_length, bool(labels), docs_dir)
    success = all(c["success"] for c in checks)
    result = GateResult(success=success, verdict="", kept=kept, rejected=rejected, rows_in=len(table),
                        duplicates_removed=sum(r["is_duplicate"] for r in table), pii=dict(pii_counts),
                        checks=checks, ge_result=ge_result, docs_dir=docs)
    result.verdict = _verdict(result)
    return result


def _suite(gx: Any, data: DataConfig, cfg: ValidationConfig, max_seq_length: int, classification: bool) -> Any:
    e = gx.expectations
    row_share = 1.0 - cfg.max_rejected_fraction  # per-row checks tolerate what the gate may reject
    suite = gx.ExpectationSuite(name="llmft_data_gate")
    suite.add_expectation(e.ExpectColumnSumToBeBetween(column="kept", min_value=cfg.min_rows))
    suite.add_expectation(e.ExpectColumnMeanToBeBetween(column="is_rejected", max_value=cfg.max_rejected_fraction))
    suite.add_expectation(e.ExpectColumnMeanToBeBetween(column="is_duplicate", max_value=cfg.max_duplicate_fraction))
    for column in ("prompt", "response"):
        suite.add_expectation(e.ExpectColumnValuesToNotMatchRegex(column=column, regex=r"^\s*$", mostly=row_share))
    if cfg.length_policy != "truncate":  # truncated rows are cut to fit at tokenization
        suite.add_expectation(e.ExpectColumnValuesToBeBetween(
            column="tokens", max_value=max_seq_length, mostly=1.0 if cfg.length_policy == "fail" else row_share))
    if cfg.pii_action == "fail":
        suite.add_expectation(e.ExpectColumnValuesToBeBetween(column="pii_matches", max_value=0))
    if classification:
        if data.labels:
            suite.add_expectation(e.ExpectColumnValuesToBeInSet(column="label", value_set=data.labels,
                                                                mostly=row_share))
        suite.add_expectation(e.ExpectColumnMinToBeBetween(column="label_share", min_value=cfg.min_class_fraction))
    return suite


def _run_suite(table: list[dict[str, Any]], data: DataConfig, cfg: ValidationConfig, max_seq_length: int,
               classification: bool, docs_dir: Path | None) -> tuple[dict[str, Any], list[dict[str, Any]], str | None]:
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    logging.getLogger("great_expectations").setLevel(logging.WARNING)  # its INFO chatter buries the verdict
    import great_expectations as gx
    import pandas as pd

    frame = pd.DataFrame(table)
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)  # one bar per metric floods the log
    batch_def = (context.data_sources.add_pandas("records")
                 .add_dataframe_asset("records").add_batch_definition_whole_dataframe("all"))
    suite = context.suites.add(_suite(gx, data, cfg, max_seq_length, classification))
    definition = context.validation_definitions.add(gx.ValidationDefinition(data=batch_def, suite=suite,
                                                                            name="llmft_data_gate"))
    checkpoint = context.checkpoints.add(gx.Checkpoint(
        name="llmft_data_gate", validation_definitions=[definition], result_format="COMPLETE",
        actions=[gx.checkpoint.UpdateDataDocsAction(name="data_docs")]))
    run = checkpoint.run(batch_parameters={"dataframe": frame})
    result = next(iter(run.run_results.values()))

    checks = []
    for r in result.results:
        kwargs, res = r.expectation_config.kwargs, r.result or {}
        indices = res.get("unexpected_index_list") or []
        if res.get("unexpected_count") is not None:
            detail = f"{res['unexpected_count']} of {len(frame)} rows unexpected"
        else:
            detail = f"observed {_number(res.get('observed_value'))}"
        bounds = " and ".join(f"{'>=' if k == 'min_value' else '<='} {_number(kwargs[k])}"
                              for k in ("min_value", "max_value") if kwargs.get(k) is not None)
        checks.append({"check": f"{r.expectation_config.type}({kwargs.get('column', 'table')})",
                       "success": bool(r.success), "detail": detail + (f", expected {bounds}" if bounds else ""),
                       "rows": [str(frame["where"].iloc[int(i)]) for i in indices[:5]]})
    docs = None
    if docs_dir is not None:
        site = next(iter(context.get_docs_sites_urls()), {}).get("site_url", "")
        if site.startswith("file://"):
            docs_dir.mkdir(parents=True, exist_ok=True)
            shutil.copytree(Path(site[len("file://"):]).parent, docs_dir, dirs_exist_ok=True)
            docs = str(docs_dir)
    return result.to_json_dict(), checks, docs


def _number(value: Any) -> str:
    value = value.item() if hasattr(value, "item") else value
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _verdict(result: GateResult) -> str:
    head = (f"{result.rows_in} rows in, {len(result.kept)} kept, {result.duplicates_removed} duplicates removed, "
            f"{result.rejected_count} rejected")
    if result.rejected_count:
        head += " (" + ", ".join(f"{k}: {v}" for k, v in sorted(result.rejected_by_reason.items())) + ")"
    if result.pii:
        head += ", personal data " + ", ".join(f"{k}: {v}" for k, v in sorted(result.pii.items()))
    failed = [c for c in result.checks if not c["success"]]
    if not failed:
        return f"data gate passed: {head}"
    parts = []
    for c in failed:
        rows = f" (e.g. {'; '.join(c['rows'][:3])})" if c["rows"] else ""
        parts.append(f"{c['check']}: {c['detail']}{rows}")
    worst = [r for r in result.rejected if r.kind != "duplicate"][:3]
    if worst:
        parts.append("worst offenders: " + "; ".join(f"{r.where}: {r.reason}" for r in worst))
    return f"data gate FAILED: {head}; " + "; ".join(parts)


def enforce(result: GateResult, source: str) -> None:
    if not result.success:
        raise DataGateError(f"{source}: {result.verdict}")
