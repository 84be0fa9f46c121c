"""Honest baselines: few-shot shots (seeded, stratified, fitted to the context), the prompted
classifier scored by label likelihood (its arithmetic on the tiny and the real model, its ranking on the
real one), and the gate beating the best baseline."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from conftest import REAL_GUARD, TINY_AND_REAL
from test_simple_baselines import summary_dict

from llmft.chat_format import IGNORE_INDEX, encode_messages
from llmft.config import PromotionConfig
from llmft.evaluate.few_shot import draw_shots, fit_shots, prepare_shots, prompt_tokens
from llmft.evaluate.scoring import _own_turns_only
from llmft.registry.promotion import decide, pick_baseline
from llmft.tasks import get_task
from llmft.tasks.base import EvalSettings
from llmft.tasks.classification import label_completions, label_instruction, label_logprobs

LABELED = [{"text": f"row {i}", "label": label} for i, label in enumerate(["a"] * 30 + ["b"] * 6 + ["c"] * 2)]


def test_shots_are_seeded_and_stratified():
    assert draw_shots(LABELED, 3, seed=0, label_key="label") == draw_shots(LABELED, 3, seed=0, label_key="label")
    draws = {tuple(r["text"] for r in draw_shots(LABELED, 3, seed=s, label_key="label")) for s in range(6)}
    assert len(draws) > 1  # the seed matters
    for seed in range(6):
        # 3 shots over 3 labels: one of each, though "a" is 79% of the rows
        assert Counter(r["label"] for r in draw_shots(LABELED, 3, seed, "label")) == {"a": 1, "b": 1, "c": 1}
        # more shots than labels: no label gets a second before every label has one; a rare label runs out
        six = Counter(r["label"] for r in draw_shots(LABELED, 6, seed, "label"))
        assert six == {"a": 2, "b": 2, "c": 2}
        assert Counter(r["label"] for r in draw_shots(LABELED, 8, seed, "label")) == {"a": 3, "b": 3, "c": 2}
    unlabeled = draw_shots(LABELED, 4, seed=1)
    assert len(unlabeled) == 4 and len({r["text"] for r in unlabeled}) == 4
    assert draw_shots(LABELED, 0, seed=0, label_key="label") == [] and draw_shots([], 3, 0) == []
    assert len(draw_shots(LABELED[:2], 5, 0, "label")) == 2


def _chat(user: str, answer: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]


def test_shots_fill_only_the_room_the_row_leaves(tokenizer):
    row = [{"role": "system", "content": "Answer briefly."}, *_chat("What is the capital of France?", "Paris.")]
    shots = [_chat("What is 2 + 2?", "4."), _chat("Describe the sea. " * 60, "Blue and wide."),
             _chat("Name a colour.", "Red.")]
    roomy = fit_shots(tokenizer, row, shots, 2048)
    assert roomy.shots_used == 3 and roomy.context_messages == 7
    assert roomy.conversation[0] == row[0] and roomy.conversation[-2:] == row[1:]  # shots after the system turn
    short = [row[0], *shots[0], *shots[2], *row[1:]]
    limit = prompt_tokens(tokenizer, short)  # room for the two short shots, never the long one
    tight = fit_shots(tokenizer, row, shots, limit)
    assert tight.shots_used == 2 and tight.conversation == short
    assert prompt_tokens(tokenizer, tight.conversation) <= limit
    none = fit_shots(tokenizer, row, shots, prompt_tokens(tokenizer, row) + 3)
    assert none.shots_used == 0 and none.conversation == row and none.context_messages == 1
    # a shot's input is cut to a fair share of the context, its answer kept whole
    cut = prepare_shots(tokenizer, shots, 3, 256)
    assert cut[1][-1] == shots[1][-1] and len(cut[1][0]["content"]) < len(shots[1][0]["content"])
    assert len(encode_messages(tokenizer, cut[1])["input_ids"]) <= 256 // 4


def test_eval_loss_of_a_few_shot_prompt_is_on_the_rows_own_answer(tokenizer):
    row = [{"role": "system", "content": "Answer briefly."}, *_chat("Capital of France?", "Paris.")]
    fitted = fit_shots(tokenizer, row, [_chat("2 + 2?", "4.")], 512)
    masked = _own_turns_only(tokenizer, fitted.conversation, fitted.context_messages)
    own = [t for t in masked["labels"] if t != IGNORE_INDEX]
    zero_shot = [t for t in encode_messages(tokenizer, row)["labels"] if t != IGNORE_INDEX]
    assert own == zero_shot  # the shot's answer "4." is context, not scored
    assert len([t for t in encode_messages(tokenizer, fitted.conversation)["labels"] if t != IGNORE_INDEX]) > len(own)


SENTIMENT = [
    ("I love it: wonderful, works perfectly, five stars, best purchase this year!", "positive"),
    ("Terrible. It broke after one day, support ignored me, a complete waste of money.", "negative"),
    ("Absolutely fantastic, I am delighted and would happily buy it again.", "positive"),
    ("Awful quality, it smells bad and fell apart. I hate it. Avoid.", "negative"),
    ("Great value and lovely design, my family is very happy with it.", "positive"),
    ("The worst product I have ever owned: broken, useless and overpriced.", "negative"),
]


_LOADED: dict[str, object] = {}


@pytest.fixture
def lm(model_path: str):
    from llmft.base_model import load_model

    if model_path not in _LOADED:  # each model once per module: the causal LM, no new head
        _LOADED[model_path] = load_model(model_path)
    return _LOADED[model_path]


@TINY_AND_REAL
def test_label_likelihood_is_the_probability_of_the_whole_answer(lm, tokenizer):
    """The cached-prompt scoring equals a plain forward over prompt + answer (EOS included)."""
    import torch

    from llmft.chat_format import render_generation_prompt

    labels = ["business", "entertainment", "tech"]
    prompt = [{"role": "system", "content": label_instruction(None, labels)},
              {"role": "user", "content": "Shares of the chip maker rose after record quarterly sales."}]
    fast = label_logprobs(lm, tokenizer, [prompt], labels, progress=False)[0]
    prompt_ids = tokenizer(render_generation_prompt(tokenizer, prompt), add_special_tokens=False)["input_ids"]
    for label, completion, got in zip(labels, label_completions(tokenizer, prompt, labels), fast, strict=True):
        assert completion[-1] == tokenizer.eos_token_id, label
        with torch.inference_mode():
            logp = lm(input_ids=torch.tensor([prompt_ids + completion])).logits[0].float().log_softmax(-1)
        slow = sum(float(logp[len(prompt_ids) + j - 1, t]) for j, t in enumerate(completion))
        assert got == pytest.approx(slow, abs=2e-3), label


@REAL_GUARD
def test_prompted_classifier_ranks_the_obvious_label_first(lm, tokenizer):
    task = get_task("classification")
    rows = [{"text": text, "label": label} for text, label in SENTIMENT]
    settings = EvalSettings(max_new_tokens=8, batch_size=4, max_seq_length=256)
    zero = task.evaluate_prompted(lm, tokenizer, rows, None, settings, ["negative", "positive"], [], "zero-shot")
    assert set(zero.metrics) == set(task.metric_names)
    # chance is 0.5: an instruct model told the labels gets most of these unmistakable rows right
    assert zero.metrics["accuracy"] >= 5 / 6, zero.outputs
    assert sum(r["p_true"] for r in zero.row_scores) / len(rows) > 0.5
    assert zero.extras["scored_by"] == "label likelihood" and "few_shot" not in zero.extras
    shots = [{"text": "Lovely, it works great.", "label": "positive"},
             {"text": "Broken and useless.", "label": "negative"}]
    few = task.evaluate_prompted(lm, tokenizer, rows[:2], None, settings, ["negative", "positive"], shots, "few")
    assert few.extras["few_shot"]["used_mean"] == 2 and few.extras["few_shot"]["k"] == 2
    assert set(few.metrics) == set(zero.metrics)
    tight = EvalSettings(max_new_tokens=8, batch_size=4, max_seq_length=64)  # room for the row only
    squeezed = task.evaluate_prompted(lm, tokenizer, rows[:2], None, tight, ["negative", "positive"], shots, "tight")
    assert squeezed.extras["few_shot"]["used_mean"] < 2


def test_generative_few_shot_prompt_keeps_the_row_and_scores_its_answer(lm, tokenizer):
    task = get_task("chat")
    system = "Reply in one short sentence."
    conversation = [{"role": "system", "content": system}, *_chat("Say hello.", "Hello!")]
    rows = [{"messages": json.dumps(conversation), "response": "Hello!", "text": "", "label": None}]
    shots = [{"messages": json.dumps(_chat("Say goodbye.", "Goodbye!")), "response": "Goodbye!", "text": "",
              "label": None}]
    settings = EvalSettings(max_new_tokens=6, batch_size=1, max_seq_length=256)
    zero = task.evaluate_prompted(lm, tokenizer, rows, system, settings, None, [], "zero")
    few = task.evaluate_prompted(lm, tokenizer, rows, system, settings, None, shots, "few")
    assert set(few.metrics) == set(zero.metrics) and few.extras["few_shot"]["used_mean"] == 1
    assert few.metrics["eval_loss"] != zero.metrics["eval_loss"]  # same answer tokens, another context


GATE = PromotionConfig(min_delta=0.05)


def test_gate_beats_the_best_baseline_and_says_which():
    both = {"zero_shot": 0.40, "few_shot": 0.55}
    assert pick_baseline(both, "best", True) == ("few_shot", 0.55)
    assert pick_baseline(both, "zero_shot", True) == ("zero_shot", 0.40)
    assert pick_baseline(both, "few_shot", True) == ("few_shot", 0.55)
    assert pick_baseline({"zero_shot": 0.4, "few_shot": 0.4}, "best", True) == ("zero_shot", 0.4)  # tie: simpler
    assert pick_baseline({"zero_shot": 0.4, "few_shot": None}, "best", True) == ("zero_shot", 0.4)
    assert pick_baseline({"zero_shot": 0.4, "few_shot": None}, "few_shot", True) == ("zero_shot", 0.4)
    assert pick_baseline({"zero_shot": 2.0, "few_shot": 1.5}, "best", False) == ("few_shot", 1.5)  # a loss
    assert pick_baseline({"zero_shot": 1.0, "few_shot": float("nan")}, "best", True) == ("zero_shot", 1.0)
    # 0.5 beats zero-shot by 0.10 but not few-shot + min_delta: rejected against the best, passed against zero-shot
    _, value = pick_baseline(both, "best", True)
    rejected = decide("macro_f1", True, 0.5, value, None, None, None, GATE, baseline="base few-shot (3 shots)")
    assert not rejected.promoted
    assert rejected.reasons[0] == ("FAIL base: macro_f1 0.5000 >= base few-shot (3 shots) 0.5500 + min_delta 0.05 = "
                                   "0.6000 (delta -0.0500)")
    _, zero = pick_baseline(both, "zero_shot", True)
    assert decide("macro_f1", True, 0.5, zero, None, None, None, GATE, baseline="base zero-shot").promoted
    with pytest.raises(ValueError):
        pick_baseline({"zero_shot": None, "few_shot": None}, "best", True)


def test_report_table_has_the_four_columns_and_the_baseline_used():
    from llmft.report import finetune_table

    # the simple-baseline test's summary, from before the simple baseline: no such column, few-shot the gate's
    summary = {k: v for k, v in summary_dict().items()
               if k not in ("simple_baseline_method", "simple_baseline_note", "warnings")}
    summary.update(metrics={"base": {"macro_f1": 0.2, "eval_loss": 1.5},
                            "base_few_shot": {"macro_f1": 0.4, "eval_loss": 1.2},
                            "finetuned": {"macro_f1": 0.9, "eval_loss": 0.3}, "champion": None},
                   baseline_used="few_shot", promoted=True, promotion_reasons=["PASS base: x"])
    table = finetune_table(summary, "mlflow ui")
    header = next(line for line in table.splitlines() if line.startswith("metric"))
    assert header.split()[1:6] == ["base", "base", "few-shot", "fine-tuned", "delta"] and "champion" in header
    row = next(line for line in table.splitlines() if line.startswith("macro_f1 *")).split()
    assert row[2:6] == ["0.2000", "0.4000", "0.9000", "+0.5000"]  # delta against few-shot, the baseline used
    assert "delta: fine-tuned minus base few-shot" in table
    assert "3 training rows as worked examples, 1.50 per row" in table
