"""Issue 24, item 5 (rest): a rejection's reason quotes values from the row (a label, a role, a field
name); under `pii_action: redact`/`fail` it is redacted like the row's data, so neither `rejected.jsonl`
nor the gate's verdict carries what ingest would have replaced."""

from __future__ import annotations

import json
from pathlib import Path

from llmft.config_files import load_config
from llmft.data import stages
from llmft.data.gate import run_gate
from llmft.data.ingest import RawRow
from llmft.data.shapes import Example, to_examples
from llmft.tasks.base import Encoded

EMAIL = "alice.wong@example.com"
SECRET = "s3cr3t-Pa55w0rd"


def _encode(ex: Example) -> Encoded:
    return Encoded(list(range(len(ex.prompt_key.split()) + len(ex.target.split()) + 5)), [], truncated=False)


def _gate(rows: list[dict], *overrides: str):
    cfg = load_config(None, ["validation.pii_action=redact", *overrides])
    raw = [RawRow(f"d.jsonl, line {i}", r) for i, r in enumerate(rows, start=1)]
    examples, rejections = to_examples(raw, cfg.data)  # not screened by ingest: the gate sees raw values
    return run_gate(examples, rejections, cfg.data, cfg.validation, _encode, 64)


def test_rejection_reasons_quoting_raw_values_are_redacted_in_rejected_jsonl_and_verdict(tmp_path: Path):
    good = [{"messages": [{"role": "user", "content": f"question number {i}"},
                          {"role": "assistant", "content": f"answer number {i}"}]} for i in range(12)]
    bad = [
        # an unknown role: the shape reason quotes it
        {"messages": [{"role": f"DB_PASSWORD={SECRET}", "content": "hi"},
                      {"role": "assistant", "content": "hello"}]},
        {"messages": [{"role": EMAIL, "content": "hi"}, {"role": "assistant", "content": "hello"}]},
    ]
    result = _gate(good + bad)
    reasons = [r.reason for r in result.rejected]
    assert len(reasons) == 2 and all("unknown role" in r for r in reasons), reasons
    out = tmp_path / "gate"
    out.mkdir()
    stages.write_gate_files(out, stages._rejected_frame(result), result.report)
    written = (out / "rejected.jsonl").read_text()
    everything = written + result.report.verdict + json.dumps(reasons)
    assert SECRET not in everything and EMAIL not in everything, everything
    assert "[SECRET]" in written and "[EMAIL]" in written


def test_a_rare_label_that_is_personal_data_is_not_quoted_raw():
    rows = [{"text": f"review number {i} is fine", "label": "ok" if i % 2 else "bad"} for i in range(20)]
    rows.append({"text": "contact me please", "label": EMAIL})
    result = _gate(rows)
    rare = [r for r in result.rejected if r.kind == "rare_label"]
    assert len(rare) == 1 and "has only 1 rows" in rare[0].reason
    assert EMAIL not in rare[0].reason and "[EMAIL]" in rare[0].reason
    assert EMAIL not in result.report.verdict
