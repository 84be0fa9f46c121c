"""The data gate, run before any compute is spent, and the one place rows are tokenized.

Row by row: shape problems, empty fields and (with `pii_action: fail`) personal data become
rejections with a reason; exact and normalised duplicates are removed, counted and shown by
example; personal data is redacted or reported; classification labels that differ only in case are
merged, and labels too rare to learn are dropped; each row is encoded by the task, which shortens
an over-long input and keeps the target (a row is dropped only when its target alone cannot fit).

Then a Great Expectations suite judges the whole set against the limits in `validation.*` (minimum
rows, rejected share, duplicate share when a limit is set, token lengths under `length_policy:
fail`, pinned labels, class balance when a limit is set, PII under `pii_action: fail`); its result
and HTML data docs are kept. A failing gate raises `DataGateError` with one line: what failed with
counts, up to three example rows, the config key that changes the outcome and a value that passes.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from llmft.config import DataConfig, ValidationConfig
from llmft.contracts import GateCheck, GateReport
from llmft.data import pii
from llmft.data.shapes import Example, Rejection
from llmft.errors import UserFacingError


class DataGateError(UserFacingError, ValueError):
    """The data failed the validation gate."""


@dataclass
class EncodedRow:
    example: Example
    input_ids: list[int]
    labels: list[int]
    truncated: bool
    messages: list[dict[str, str]] | None  # as encoded (system turn included, input shortened)


# example -> its encoding, or None when the target alone does not fit the token budget
Encoder = Callable[[Example], Any]


@dataclass
class GateResult:
    report: GateReport
    kept: list[EncodedRow]
    rejected: list[Rejection] = field(default_factory=list)  # every row not kept, duplicates included

    @property
    def success(self) -> bool:
        return self.report.success


NAME_WARNING_SHARE = 0.02  # names redacted in more rows than this: say what that does to the training text


def normalise(text: str) -> str:
    return " ".join(text.lower().split())


def _texts(ex: Example) -> list[str]:
    return [ex.text] if ex.shape == "text_label" else [m["content"] for m in ex.messages]


def _redacted(ex: Example, kinds: frozenset[str]) -> Example:
    if ex.shape == "text_label":
        return replace(ex, text=pii.redact(ex.text, kinds))
    return replace(ex, messages=[{**m, "content": pii.redact(m["content"], kinds)} for m in ex.messages])


def _scrub(value: Any, kinds: frozenset[str]) -> Any:
    return pii.scrub(value, kinds=kinds)[0]  # strings, numbers, keys, at any depth


def _pii_findings(ex: Example, kinds: frozenset[str]) -> list[list[str]]:
    """[field, kind] per match, for rows that ingest did not screen."""
    if ex.shape == "text_label":
        return [["text", kind] for kind in pii.find(ex.text, kinds)]
    return [[f"messages[{i}].content", kind] for i, m in enumerate(ex.messages)
            for kind in pii.find(m["content"], kinds)]


def merge_label_spellings(examples: list[Example]) -> dict[str, str]:
    """Labels that differ only in case or inner spacing become the most common spelling; returns the map."""
    spellings: dict[str, Counter[str]] = {}
    for ex in examples:
        if ex.shape == "text_label" and ex.label:
            spellings.setdefault(normalise(ex.label), Counter())[ex.label] += 1
    merged = {}
    for counts in spellings.values():
        if len(counts) > 1:
            winner = counts.most_common(1)[0][0]
            merged.update({spelling: winner for spelling in counts if spelling != winner})
    for ex in examples:
        if ex.label in merged:
            ex.label = merged[ex.label]
    return merged


def _row_problem(ex: Example, cfg: ValidationConfig) -> tuple[str, str] | None:
    """(kind, reason) when a single row cannot be used, else None."""
    if ex.shape == "text_label":
        if not ex.text.strip():
            return "empty", "empty text"
        if not (ex.label or "").strip():
            return "empty", "empty label"
    else:
        for m in ex.messages:
            if not m["content"].strip():
                return "empty", f"empty {m['role']} turn"
    if len(ex.prompt_key.strip()) < cfg.min_prompt_chars:
        return "length", f"input shorter than validation.min_prompt_chars={cfg.min_prompt_chars}"
    if ex.shape != "text_label" and len(ex.target.strip()) < cfg.min_response_chars:
        return "length", f"response shorter than validation.min_response_chars={cfg.min_response_chars}"
    return None


def _share_to_pass(share: float) -> str:
    """A limit just above an observed share, rounded up to two decimals."""
    return f"{min(math.ceil(round(share * 100, 6)) / 100, 1.0):.2f}"


@dataclass
class _Screen:
    """What the row rules found, row by row: the GE table, rejections, the rows left to encode."""

    table: list[dict[str, Any]]
    rejected: list[Rejection]
    candidates: list[tuple[Example, dict[str, Any]]] = field(default_factory=list)
    pii_counts: Counter[str] = field(default_factory=Counter)
    duplicate_examples: list[str] = field(default_factory=list)


def _table_row(ex: Example | None, where: str, rejected: bool) -> dict[str, Any]:
    return {"where": where, "prompt": ex.prompt_key[:200] if ex else "", "response": ex.target[:200] if ex else "",
            "tokens": None, "pii_matches": 0, "label": ex.label if ex else None, "is_rejected": int(rejected),
            "is_duplicate": 0, "is_truncated": 0}


def _screen(examples: list[Example], shape_rejections: list[Rejection], cfg: ValidationConfig,
            pii_found: dict[str, list[list[str]]] | None) -> _Screen:
    """The row rules, personal data and duplicates, in file order; the first of equal rows is kept."""
    kinds = frozenset(cfg.pii_kinds)
    screen = _Screen(table=[_table_row(None, r.where, True) for r in shape_rejections], rejected=list(shape_rejections))
    seen_exact: dict[str, str] = {}
    seen_norm: dict[str, str] = {}
    for ex in examples:
        row = _table_row(ex, ex.where, False)
        screen.table.append(row)
        problem = _row_problem(ex, cfg)
        if problem:
            screen.rejected.append(Rejection(ex.where, problem[1], ex.as_row(), kind=problem[0]))
            row["is_rejected"] = 1
            continue
        findings = _pii_findings(ex, kinds) if pii_found is None else pii_found.get(ex.where, [])
        found = [kind for _, kind in findings]
        row["pii_matches"] = len(found)
        screen.pii_counts.update(found)
        if found and cfg.pii_action == "fail":
            fields = ", ".join(sorted({field for field, _ in findings}))
            screen.rejected.append(Rejection(ex.where, f"personal data: {', '.join(sorted(set(found)))} in field(s) "
                                                       f"{fields} (validation.pii_action=fail)", {},
                                             kind="pii"))  # the row itself is not copied anywhere
            row["is_rejected"] = 1
            continue
        if found and cfg.pii_action == "redact" and pii_found is None:  # ingest already redacted screened rows
            ex = _redacted(ex, kinds)
        exact = repr((_texts(ex), ex.label))
        norm = repr(([normalise(t) for t in _texts(ex)], ex.label))
        first = seen_exact.get(exact) or seen_norm.get(norm)
        if first:
            kind = "exact" if exact in seen_exact else "normalised"
            screen.rejected.append(Rejection(ex.where, f"{kind} duplicate of {first}", ex.as_row(), kind="duplicate"))
            row["is_duplicate"] = 1
            if len(screen.duplicate_examples) < 2:
                article = "an" if kind == "exact" else "a"
                screen.duplicate_examples.append(f"{ex.where} is {article} {kind} duplicate of {first}")
            continue
        seen_exact[exact], seen_norm[norm] = ex.where, ex.where
        screen.candidates.append((ex, row))
    return screen


def _encode_rows(screen: _Screen, data: DataConfig, cfg: ValidationConfig, encode: Encoder,
                 max_seq_length: int) -> list[EncodedRow]:
    """Drop labels too rare to learn or to measure (reported), then encode: a target that cannot fit is
    rejected, an over-long input truncated (or dropped under validation.length_policy=drop)."""
    counts = Counter(ex.label for ex, _ in screen.candidates if ex.shape == "text_label")
    rare = {label for label, n in counts.items() if n < cfg.min_class_rows}
    kept: list[EncodedRow] = []
    for ex, row in screen.candidates:
        if ex.label in rare and data.labels is None:
            screen.rejected.append(Rejection(ex.where, f"label {ex.label!r} has only {counts[ex.label]} rows "
                                                       f"(< validation.min_class_rows={cfg.min_class_rows})",
                                             ex.as_row(), kind="rare_label"))
            row["is_rejected"] = 1
            continue
        encoded = encode(ex)
        if encoded is None:
            screen.rejected.append(Rejection(ex.where, f"the target alone does not fit train.max_seq_length="
                                                       f"{max_seq_length} tokens", ex.as_row(), kind="too_long"))
            row["is_rejected"] = 1
            continue
        row["tokens"] = len(encoded.input_ids)
        if encoded.truncated:
            row["is_truncated"] = 1
            if cfg.length_policy == "drop":
                screen.rejected.append(Rejection(ex.where, f"over train.max_seq_length={max_seq_length} tokens "
                                                           "(validation.length_policy=drop)", ex.as_row(),
                                                 kind="too_long"))
                row["is_rejected"] = 1
                continue
        kept.append(EncodedRow(ex, list(encoded.input_ids), list(encoded.labels), bool(encoded.truncated),
                               encoded.messages))
    return kept


def _gate_warnings(screen: _Screen, cfg: ValidationConfig, merged: dict[str, str]) -> list[str]:
    """A high duplicate share, names redacted in many rows, label spellings merged."""
    table = screen.table
    duplicates = sum(r["is_duplicate"] for r in table)
    warnings = []
    share = duplicates / len(table) if table else 0.0
    if cfg.max_duplicate_fraction is None and share > cfg.duplicate_warning_fraction:
        warnings.append(f"{share:.1%} of rows were duplicates ({duplicates} of {len(table)}, removed); set "
                        f"validation.max_duplicate_fraction to refuse such data")
    names = screen.pii_counts.get("name", 0)
    if cfg.pii_action == "redact" and names and names >= NAME_WARNING_SHARE * len(table):
        warnings.append(f"{names} person names replaced by [NAME], public figures' too (the model "
                        "learns to write [NAME]); set validation.pii_kinds without name to keep names")
    if merged:
        warnings.append("labels merged: " + ", ".join(f"{a!r} -> {b!r}" for a, b in sorted(merged.items())))
    return warnings


def run_gate(examples: list[Example], shape_rejections: list[Rejection], data: DataConfig, cfg: ValidationConfig,
             encode: Encoder, max_seq_length: int, docs_dir: Path | None = None,
             pii_found: dict[str, list[list[str]]] | None = None, suite: bool = True) -> GateResult:
    """Apply the row rules, deduplicate, encode, then run the GE suite over every input row.

    `pii_found`: what ingest found per row ([field, kind]; under `redact` already removed from the rows);
    None means ingest did not screen, and the gate scans the example texts itself. `suite=False` applies
    the row rules only (training-only extra rows: their counts are reported, not gated on)."""
    kinds = frozenset(cfg.pii_kinds)
    merged = merge_label_spellings(examples)
    screen = _screen(examples, shape_rejections, cfg, pii_found)
    kept = _encode_rows(screen, data, cfg, encode, max_seq_length)
    labels = Counter(r.example.label for r in kept if r.example.shape == "text_label")
    for row in screen.table:
        kept_row = not row["is_rejected"] and not row["is_duplicate"]
        row["kept"] = int(kept_row)
        row["label_share"] = labels[row["label"]] / sum(labels.values()) if kept_row and labels else None
    rejected = screen.rejected
    if cfg.pii_action != "warn":  # rejected rows are written to files: they must not leak what we redact
        # reasons quote values too (a label, a role, a field name), so they are redacted like the data
        rejected = [Rejection(r.where, pii.redact(r.reason, kinds), _scrub(r.data, kinds), r.kind)
                    for r in rejected]
    ge_result, checks, docs = (_run_suite(screen.table, data, cfg, max_seq_length, labels, docs_dir) if suite
                               else ({}, [], None))
    not_dup = [r for r in rejected if r.kind != "duplicate"]
    report = GateReport(
        success=all(c.success for c in checks), verdict="", rows_in=len(screen.table), kept=len(kept),
        duplicates_removed=sum(r["is_duplicate"] for r in screen.table),
        duplicate_examples=screen.duplicate_examples, warnings=_gate_warnings(screen, cfg, merged),
        rejected=len(not_dup), rejected_by_reason=dict(Counter(r.kind for r in not_dup)),
        truncated=sum(r.truncated for r in kept), labels_normalised=merged, pii=dict(screen.pii_counts),
        checks=checks, ge_result=ge_result, docs_dir=docs)
    report.verdict = _verdict(report, not_dup)
    return GateResult(report=report, kept=kept, rejected=rejected)


def _suite(gx: Any, table: list[dict[str, Any]], data: DataConfig, cfg: ValidationConfig, max_seq_length: int,
           labels: Counter[str]) -> tuple[Any, list[tuple[str | None, str | None, str]]]:
    """The expectations, each with (config key, a value that would pass, what it means in words)."""
    e = gx.expectations
    n = max(len(table), 1)
    kept = sum(1 for r in table if not r["is_rejected"] and not r["is_duplicate"])
    rejected_share = sum(r["is_rejected"] for r in table) / n
    duplicate_share = sum(r["is_duplicate"] for r in table) / n
    suite = gx.ExpectationSuite(name="llmft_data_gate")
    meaning: list[tuple[str | None, str | None, str]] = []

    def add(expectation: Any, key: str | None, passing: str | None, words: str) -> None:
        suite.add_expectation(expectation)
        meaning.append((key, passing, words))

    add(e.ExpectColumnSumToBeBetween(column="kept", min_value=cfg.min_rows), "validation.min_rows",
        str(kept) if kept else None, f"{kept} rows kept, need at least validation.min_rows={cfg.min_rows}")
    add(e.ExpectColumnMeanToBeBetween(column="is_rejected", max_value=cfg.max_rejected_fraction),
        "validation.max_rejected_fraction", _share_to_pass(rejected_share),
        f"{rejected_share:.1%} of rows rejected, over validation.max_rejected_fraction={cfg.max_rejected_fraction}")
    if cfg.max_duplicate_fraction is not None:
        add(e.ExpectColumnMeanToBeBetween(column="is_duplicate", max_value=cfg.max_duplicate_fraction),
            "validation.max_duplicate_fraction", _share_to_pass(duplicate_share),
            f"{duplicate_share:.1%} of rows are duplicates, over validation.max_duplicate_fraction="
            f"{cfg.max_duplicate_fraction}")
    if cfg.length_policy == "fail":
        longest = max((r["tokens"] or 0) for r in table) if table else 0
        add(e.ExpectColumnValuesToBeBetween(column="is_truncated", max_value=0), "validation.length_policy",
            "truncate", f"rows over train.max_seq_length={max_seq_length} tokens (longest {longest}) with "
                        "validation.length_policy=fail")
    if cfg.pii_action == "fail":
        add(e.ExpectColumnValuesToBeBetween(column="pii_matches", max_value=0), "validation.pii_action", "redact",
            "rows with personal data under validation.pii_action=fail")
    if labels or data.labels:
        if data.labels:
            found = Counter(r["label"] for r in table if r["label"] is not None)
            listing = ", ".join(f"{k} ({v})" for k, v in found.most_common(12))
            add(e.ExpectColumnValuesToBeInSet(column="label", value_set=data.labels), "data.labels", "null",
                f"data.labels pins [{', '.join(data.labels)}] but the data has labels {listing}")
        if cfg.min_class_fraction is not None:
            rarest = min(labels.values()) / sum(labels.values()) if labels else 0.0
            add(e.ExpectColumnMinToBeBetween(column="label_share", min_value=cfg.min_class_fraction),
                "validation.min_class_fraction", f"{math.floor(rarest * 100) / 100:.2f}",
                f"the rarest label is {rarest:.1%} of rows, under validation.min_class_fraction="
                f"{cfg.min_class_fraction}")
    return suite, meaning


def _run_suite(table: list[dict[str, Any]], data: DataConfig, cfg: ValidationConfig, max_seq_length: int,
               labels: Counter[str], docs_dir: Path | None) -> tuple[dict[str, Any], list[GateCheck], str | None]:
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    import pandas as pd
    from great_expectations.data_context.types.base import ProgressBarsConfig

    logging.getLogger("great_expectations").setLevel(logging.WARNING)  # (after its import, which resets it)

    frame = pd.DataFrame(table)
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)  # one bar per metric floods the log
    batch_def = (context.data_sources.add_pandas("records")
                 .add_dataframe_asset("records").add_batch_definition_whole_dataframe("all"))
    suite_def, meaning = _suite(gx, table, data, cfg, max_seq_length, labels)
    suite = context.suites.add(suite_def)
    definition = context.validation_definitions.add(gx.ValidationDefinition(data=batch_def, suite=suite,
                                                                            name="llmft_data_gate"))
    checkpoint = context.checkpoints.add(gx.Checkpoint(
        name="llmft_data_gate", validation_definitions=[definition], result_format="COMPLETE",
        actions=[gx.checkpoint.UpdateDataDocsAction(name="data_docs")]))
    run = checkpoint.run(batch_parameters={"dataframe": frame})
    result = next(iter(run.run_results.values()))

    checks = []
    # GE returns results in suite order
    for r, (key, passing, words) in zip(result.results, meaning, strict=True):
        res = r.result or {}
        indices = res.get("unexpected_index_list") or []
        detail = words
        if res.get("unexpected_count") is not None:
            detail += f" ({res['unexpected_count']} of {len(frame)} rows)"
        checks.append(GateCheck(check=f"{r.expectation_config.type}({r.expectation_config.kwargs.get('column')})",
                                success=bool(r.success), detail=detail,
                                rows=[str(frame["where"].iloc[int(i)]) for i in indices[:3]],
                                config_key=key, passing_value=passing))
    docs = None
    site = next(iter(context.get_docs_sites_urls()), {}).get("site_url", "")
    if site.startswith("file://"):  # GE's ephemeral site is a temp folder: copy what is kept, leave none behind
        built = Path(site[len("file://"):]).parent
        if docs_dir is not None:
            docs_dir.mkdir(parents=True, exist_ok=True)
            shutil.copytree(built, docs_dir, dirs_exist_ok=True)
            docs = str(docs_dir)
        shutil.rmtree(built, ignore_errors=True)
    return result.to_json_dict(), checks, docs


def _verdict(report: GateReport, rejected: list[Rejection]) -> str:
    head = (f"{report.rows_in} rows in, {report.kept} kept, {report.duplicates_removed} duplicates removed, "
            f"{report.rejected} rejected")
    if report.rejected:
        head += " (" + ", ".join(f"{k}: {v}" for k, v in sorted(report.rejected_by_reason.items())) + ")"
    if report.truncated:
        head += f", {report.truncated} truncated to fit"
    if report.pii:
        head += ", personal data " + ", ".join(f"{k}: {v}" for k, v in sorted(report.pii.items()))
    failed = [c for c in report.checks if not c.success]
    if not failed:
        return f"data gate passed: {head}"
    parts = []
    for c in failed:
        example = f" (e.g. {'; '.join(c.rows[:3])})" if c.rows else ""
        fix = (f"; set {c.config_key}={c.passing_value} to accept" if c.config_key and c.passing_value
               else f"; change {c.config_key}" if c.config_key else "")
        if (c.config_key == "validation.max_rejected_fraction"
                and report.rejected_by_reason.get("too_long", 0) * 2 > report.rejected):
            fix += " (most rejected rows are too long: a larger train.max_seq_length keeps them)"
        parts.append(f"{c.detail}{example}{fix}")
    worst = rejected[:3]
    if worst:
        parts.append("first rejected: " + "; ".join(f"{r.where}: {r.reason}" for r in worst))
    return f"data gate FAILED: {head}; " + "; ".join(parts)


def enforce(report: GateReport, source: str) -> None:
    if not report.success:
        raise DataGateError(f"{source}: {report.verdict}")
