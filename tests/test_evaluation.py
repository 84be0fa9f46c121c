"""Evaluation: batched generation equals one prompt at a time and one model's scores (on the tiny model
of the real architecture); the forgetting probe on the real base model."""

import json
import math
from pathlib import Path

import pytest

from llmft.base_model import load_model
from llmft.chat_format import build_messages, render_generation_prompt
from llmft.evaluate.forgetting import load_probe, run_probe
from llmft.evaluate.scoring import score_generative
from llmft.generation import generate
from llmft.tasks import get_task

INSTRUCTION = ("Extract the fields from the text. Answer with only a JSON object with the keys brand, category, "
               "color, material, size, price. Use null for anything not stated.")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model(tiny_model_path: str):
    return load_model(tiny_model_path)


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    lines = (ROOT / "data" / "products.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines[:6]]


def test_batched_generation_equals_one_prompt_at_a_time(model, tokenizer, rows):
    # different lengths, so the batch really is left-padded
    prompts = [render_generation_prompt(tokenizer, build_messages(INSTRUCTION, r["prompt"])) for r in rows]
    assert len({len(p) for p in prompts}) > 1
    one_by_one = generate(model, tokenizer, prompts, 24, batch_size=1)
    batched = generate(model, tokenizer, prompts, 24, batch_size=len(prompts))
    assert batched == one_by_one
    assert len(batched) == len(prompts) and all(out.strip() for out in batched)


def test_score_generative_reports_every_metric_and_per_row_scores(model, tokenizer, rows):
    test = [{"messages": json.dumps([{"role": "user", "content": r["prompt"]},
                                     {"role": "assistant", "content": r["response"]}]),
             "prompt": r["prompt"], "response": r["response"]} for r in rows[:3]]
    task = get_task("extraction")
    scored = score_generative(model, tokenizer, INSTRUCTION, test, task.score, task.overlap_metrics, 16, 3, 384,
                              desc="test")
    assert set(scored.metrics) == set(task.metric_names)
    # a random model of a 49,152-token vocabulary: about ln(49152) = 10.8 nats per answer token
    assert 9 < scored.metrics["eval_loss"] < 13
    assert scored.metrics["perplexity"] == pytest.approx(math.exp(scored.metrics["eval_loss"]), rel=1e-3)
    assert len(scored.outputs) == 3 and len(scored.row_scores) == 3
    assert set(scored.row_scores[0]) == {"json_valid", "field_accuracy", "rougeL", "unsupported_items"}
    counts = [r["unsupported_items"] for r in scored.row_scores]
    assert scored.metrics["unsupported_output_rate"] == sum(c > 0 for c in counts) / 3


def test_forgetting_probe_on_the_base_model(base_model_path: str, tokenizer):
    probe = load_probe()[:8]
    result = run_probe(load_model(base_model_path), tokenizer, probe, 16, 8)
    assert len(result.outputs) == 8 and len(result.correct) == 8
    # the real base model knows the easiest facts (capitals come first in the set): greedy on CPU is
    # deterministic, and it answered 6 of these 8 (torch 2.13, transformers 5.23)
    assert result.accuracy >= 5 / 8, list(zip(probe, result.outputs, strict=True))
