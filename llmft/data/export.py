"""Write a run's dataset to a folder people can open: train/validation/test/rejected JSONL."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from llmft.locations import project_home


def export_dir(run_name: str) -> Path:
    path = project_home() / "datasets" / run_name
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    # a lone surrogate (a "\ud800" escape in the source) is not UTF-8: written as its escape, not a crash
    with path.open("w", encoding="utf-8", errors="backslashreplace") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")


def public_row(row: dict[str, Any]) -> dict[str, Any]:
    """A split row as users read it: source location, conversation or text/label, no token ids."""
    out: dict[str, Any] = {"where": row["where"]}
    if row.get("origin") not in (None, "data"):  # lineage: replayed or synthetic, never from data.source
        out["origin"] = row["origin"]
    if row.get("shape") == "text_label":
        out.update(text=row["text"], label=row["label"])
    else:
        out["messages"] = json.loads(row["messages"])
    return out
