"""The data gate: a Great Expectations suite run on the ingested records before any compute.

A failing gate raises `DataGateError` with one line naming the failed checks and the worst
offending rows, so the pipeline stops before training and nothing gets registered.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

from llmft.config import ValidationConfig
from llmft.errors import UserFacingError
from llmft.ingest import Record


class DataGateError(UserFacingError, ValueError):
    """The data failed the validation gate."""


@dataclass
class GateReport:
    success: bool
    rows: int
    checks: list[dict[str, Any]] = field(default_factory=list)
    duplicate_fraction: float = 0.0
    ge_result: dict[str, Any] = field(default_factory=dict)

    @property
    def verdict(self) -> str:
        failed = [c for c in self.checks if not c["success"]]
        if not failed:
            return (f"data gate passed: {self.rows} rows, {len(self.checks)} checks, "
                    f"duplicate fraction {self.duplicate_fraction:.3f}")
        parts = []
        for c in failed:
            rows = c.get("rows") or []
            shown = f" (rows {', '.join(str(r) for r in rows[:5])}{', ...' if len(rows) > 5 else ''})" if rows else ""
            parts.append(f"{c['check']}: {c['detail']}{shown}")
        return f"data gate FAILED on {self.rows} rows: " + "; ".join(parts)


def _normalise(text: str) -> str:
    return " ".join(text.lower().split())


def _build_suite(gx: Any, cfg: ValidationConfig) -> Any:
    e = gx.expectations
    suite = gx.ExpectationSuite(name="llmft_data_gate")
    suite.add_expectation(e.ExpectTableRowCountToBeBetween(min_value=cfg.min_rows))
    for column, lo, hi in (("prompt", cfg.min_prompt_chars, cfg.max_prompt_chars),
                           ("response", cfg.min_response_chars, cfg.max_response_chars)):
        suite.add_expectation(e.ExpectColumnToExist(column=column))
        suite.add_expectation(e.ExpectColumnValuesToNotMatchRegex(column=column, regex=r"^\s*$"))
        suite.add_expectation(e.ExpectColumnValuesToBeBetween(column=f"{column}_chars", min_value=lo, max_value=hi))
    suite.add_expectation(e.ExpectColumnProportionOfUniqueValuesToBeBetween(
        column="prompt_normalised", min_value=1.0 - cfg.max_duplicate_fraction))
    return suite


def run_gate(records: list[Record], cfg: ValidationConfig) -> GateReport:
    """Run the suite; returns the report (never raises for bad data: see `enforce`)."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    logging.getLogger("great_expectations").setLevel(logging.WARNING)  # its INFO chatter buries the verdict
    import great_expectations as gx
    import pandas as pd

    frame = pd.DataFrame(records, columns=["prompt", "response"])
    frame["prompt_chars"] = frame["prompt"].str.strip().str.len()
    frame["response_chars"] = frame["response"].str.strip().str.len()
    frame["prompt_normalised"] = frame["prompt"].map(_normalise)
    context = gx.get_context(mode="ephemeral")
    batch_def = (context.data_sources.add_pandas("records")
                 .add_dataframe_asset("records").add_batch_definition_whole_dataframe("all"))
    batch = batch_def.get_batch(batch_parameters={"dataframe": frame})
    result = batch.validate(_build_suite(gx, cfg), result_format="COMPLETE")

    checks = []
    for r in result.results:
        cfg_kwargs = r.expectation_config.kwargs
        column = cfg_kwargs.get("column", "table")
        res = r.result or {}
        rows = [int(i) + 1 for i in (res.get("unexpected_index_list") or [])]  # 1-based data rows
        if res.get("unexpected_count") is not None:
            detail = f"{res['unexpected_count']} rows unexpected"
        else:
            detail = f"observed {res.get('observed_value')}"
        checks.append({"check": f"{r.expectation_config.type}({column})", "success": bool(r.success),
                       "detail": detail, "rows": rows})
    dup = 1.0 - frame["prompt_normalised"].nunique() / max(len(frame), 1)
    return GateReport(success=bool(result.success), rows=len(frame), checks=checks,
                      duplicate_fraction=round(float(dup), 4), ge_result=result.to_json_dict())


def enforce(report: GateReport, source: str) -> None:
    if not report.success:
        raise DataGateError(f"{source}: {report.verdict}")
