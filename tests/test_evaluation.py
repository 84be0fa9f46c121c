"""Evaluation: batched generation equals one prompt at a time and one model's scores (on the tiny model
of the real architecture); the forgetting probe on the real base model."""

import json
import math
from pathlib import Path

import pytest

from llmft.base_model import load_model
from llmft.chat_format import IGNORE_INDEX, build_messages, encode_messages, render_generation_prompt
from llmft.evaluate import shared_start
from llmft.evaluate.forgetting import load_probe, run_probe
from llmft.evaluate.scoring import eval_loss, score_generative
from llmft.generation import Sampling
from llmft.offline_generation import SHARED_START_TOKENS, generate
from llmft.serve import scheduler
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
    one_by_one = generate(model, tokenizer, prompts, 24, batch_size=1, engine="static")
    batched = generate(model, tokenizer, prompts, 24, batch_size=len(prompts), engine="static")
    assert batched == one_by_one
    assert len(batched) == len(prompts) and all(out.strip() for out in batched)
    # the continuous batcher (the default where the model allows it) gives the same answers, with fewer
    # rows decoding at once than there are prompts (rows join as others finish)
    assert generate(model, tokenizer, prompts, 24, batch_size=4) == one_by_one


def test_a_long_shared_start_is_prefilled_once_and_answers_do_not_change(model, tokenizer, rows):
    """Few-shot prompts share their worked examples: the offline path keeps that start (past the
    server's 1,024-token cap) and prefills only each row's own turn, with unchanged greedy answers."""
    shots = [m for r in rows[3:6] for m in ({"role": "user", "content": r["prompt"] * 20},
                                           {"role": "assistant", "content": r["response"]})]
    prompts = [render_generation_prompt(tokenizer, [{"role": "system", "content": INSTRUCTION}, *shots,
                                                    {"role": "user", "content": r["prompt"]}]) for r in rows[:3]]
    ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    shared = next(i for i, (a, b) in enumerate(zip(ids[0], ids[1], strict=False)) if a != b)
    assert shared > scheduler.PREFIX_MAX_TOKENS
    static = generate(model, tokenizer, prompts, 12, batch_size=3, engine="static")
    done = scheduler.complete_all(model, tokenizer, ids, 12, Sampling(), 3, SHARED_START_TOKENS)
    assert [c.text for c in done] == static
    assert scheduler.supports(model)


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


def test_eval_loss_with_the_shared_start_computed_once_equals_each_row_alone(model, tokenizer, rows):
    conversations = [[{"role": "system", "content": INSTRUCTION}, {"role": "user", "content": r["prompt"]},
                      {"role": "assistant", "content": r["response"]}] for r in rows]
    examples = [encode_messages(tokenizer, conv) for conv in conversations]
    start = shared_start.shared_start(examples)
    assert start >= scheduler.PREFIX_MIN_TOKENS  # the system turn
    assert all(t == IGNORE_INDEX for ex in examples for t in ex["labels"][:start + 1])
    shared = eval_loss(model, tokenizer, examples, batch_size=4)
    alone = [eval_loss(model, tokenizer, [ex], batch_size=1) for ex in examples]  # one row: nothing shared
    counts = [sum(t != IGNORE_INDEX for t in ex["labels"][1:]) for ex in examples]
    assert shared == pytest.approx(sum(a * c for a, c in zip(alone, counts, strict=True)) / sum(counts), rel=1e-4)
    assert shared_start.shared_start(examples[:1]) == 0
