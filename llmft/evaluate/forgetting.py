"""Catastrophic-forgetting probe: short general-knowledge questions the task data never touches.

The probe set (`probes/general_knowledge.jsonl`, written for this project) is asked of the base and
the fine-tuned model with no task instruction, the way a user would chat with the served model.
An answer counts when it contains one of the accepted answers as whole words (case-insensitive).
The gate compares accuracies: a fine-tune that wrecked general ability shows up as a drop.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmft.chat_format import render_generation_prompt
from llmft.offline_generation import generate

PROBE_FILE = Path(__file__).parent / "probes" / "general_knowledge.jsonl"


@dataclass
class ProbeResult:
    accuracy: float
    outputs: list[str]
    correct: list[bool]


def load_probe(path: Path = PROBE_FILE) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    for i, row in enumerate(rows, 1):
        if not row.get("question") or not row.get("answers"):
            raise ValueError(f"{path}, line {i}: needs a question and a non-empty answers list")
    return rows


def _words(text: str) -> str:
    return " " + " ".join(re.findall(r"[a-z0-9]+", text.lower())) + " "


def answer_matches(output: str, answers: list[str]) -> bool:
    said = _words(output)
    return any(_words(answer) in said for answer in answers)


def run_probe(model: Any, tokenizer: Any, probe: list[dict[str, Any]], max_new_tokens: int, batch_size: int,
              desc: str = "probe") -> ProbeResult:
    prompts = [render_generation_prompt(tokenizer, [{"role": "user", "content": row["question"]}]) for row in probe]
    outputs = generate(model, tokenizer, prompts, max_new_tokens, batch_size, desc=desc)
    correct = [answer_matches(out, row["answers"]) for out, row in zip(outputs, probe, strict=True)]
    return ProbeResult(accuracy=sum(correct) / len(correct), outputs=outputs, correct=correct)
