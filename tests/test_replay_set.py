"""The shipped general replay set (llmft/data/replay/general.jsonl): well-formed and disjoint from the forgetting
probe, by the same rule the build script applied (llmft.data.replay.overlaps_probe). No model is loaded."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from llmft.data.replay import GENERAL, overlap, overlaps_probe
from llmft.evaluate.forgetting import load_probe


@pytest.fixture(scope="module")
def rows() -> list[dict[str, Any]]:
    lines = GENERAL.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def test_parses_with_enough_rows(rows: list[dict[str, Any]]) -> None:
    assert len(rows) >= 250
    for row in rows:
        assert set(row) == {"prompt", "response", "category"}
        assert isinstance(row["prompt"], str) and row["prompt"].strip() == row["prompt"] and row["prompt"]
        assert isinstance(row["response"], str) and row["response"].strip() == row["response"] and row["response"]
        assert row["category"] in {"ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"}  # TREC's coarse labels


def test_no_duplicate_prompts(rows: list[dict[str, Any]]) -> None:
    keys = [" ".join(row["prompt"].lower().split()) for row in rows]
    assert len(keys) == len(set(keys))


def test_disjoint_from_the_forgetting_probe(rows: list[dict[str, Any]]) -> None:
    probe = load_probe()
    overlapping = [row["prompt"] for row in rows if overlaps_probe(row["prompt"], probe)]
    assert overlapping == []
    # no response hands a probe question to training either
    quoting = [row["response"] for row in rows
               if any(" ".join(p["question"].lower().split()) in " ".join(row["response"].lower().split())
                      for p in probe)]
    assert quoting == []


def test_rule_catches_probe_topics() -> None:
    """The rule drops what would teach a probe item and keeps an unrelated question."""
    probe = load_probe()
    assert overlaps_probe("What is the capital of Zimbabwe?", probe)  # same topic pattern as the capitals
    assert overlaps_probe("Who lived in Tokyo in 1900?", probe)  # a probe answer, as whole words
    assert overlaps_probe("How many legs does a centipede have?", probe)
    assert not overlaps_probe("Who invented the telephone?", probe)
    # the probe's answer "A" (first letter of the alphabet) is only a stopword: the article must not count
    assert not overlaps_probe("Who invented a telephone?", probe)
    assert overlap("What is the capital of France?", "what's THE capital of france") == 1.0


def test_module_does_not_import_torch() -> None:
    code = "import sys, llmft.data.replay; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
