"""The few-shot base's budget: worked examples fitted to eval.few_shot_max_tokens within the model's
context, not to the training length; shots used per row recorded; not applicable when none fits.
The real tokenizer, no model weights."""

from __future__ import annotations

import json
from types import SimpleNamespace

from llmft.config import EvalConfig
from llmft.evaluate.few_shot import fit_shots, prepare_shots, prompt_tokens, shot_budget
from llmft.report import few_shot_line
from llmft.tasks import get_task
from llmft.tasks.base import EvalSettings


def _model(context: int | None) -> SimpleNamespace:
    return SimpleNamespace(config=SimpleNamespace(max_position_embeddings=context))


def test_budget_is_the_configured_one_within_the_models_context():
    assert EvalConfig().few_shot_max_tokens == 2048
    assert shot_budget(_model(8192), 384, 2048, 72) == 2048
    assert shot_budget(_model(1024), 384, 2048, 72) == 1024 - 72  # room left for the answer it generates
    assert shot_budget(_model(None), 384, 2048, 72) == 2048  # a context the config does not state
    assert shot_budget(_model(8192), 384, None, 72) == 384  # no budget: the training length, as before
    assert shot_budget(_model(8192), 512, 256, 72) == 512  # never less than the row's own length


def _chat(user: str, answer: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]


LONG = "The committee reviewed the annual report and discussed the budget for next year in detail. "


def test_long_rows_get_their_shots_within_the_budget(tokenizer):
    row = [{"role": "system", "content": "Summarize."}, *_chat(LONG * 20, "A budget review.")]
    shots = [_chat(LONG * 8, "Shot one."), _chat(LONG * 8, "Shot two."), _chat(LONG * 8, "Shot three.")]
    own = prompt_tokens(tokenizer, row)
    assert 300 < own < 384  # the row alone fits the training length, leaving no room for a shot
    old = fit_shots(tokenizer, row, prepare_shots(tokenizer, shots, 3, 384), 384)
    assert old.shots_used == 0  # zero-shot under another name
    budget = shot_budget(_model(8192), 384, 2048, 72)
    new = fit_shots(tokenizer, row, prepare_shots(tokenizer, shots, 3, budget), budget)
    assert new.shots_used == 3 and prompt_tokens(tokenizer, new.conversation) <= 2048
    assert new.conversation[-2:] == row[-2:]  # the row itself unchanged


def test_no_shot_fits_is_not_applicable_rather_than_zero_shot_again(tokenizer):
    task = get_task("chat")
    rows = [{"messages": json.dumps([{"role": "system", "content": "Summarize."}, *_chat(LONG * 20, "Review.")]),
             "response": "Review."}]
    shots = [{"messages": json.dumps(_chat(LONG * 30, "Shot.")), "response": "Shot."}]
    tight = EvalSettings(max_new_tokens=8, batch_size=1, max_seq_length=384, few_shot_max_tokens=384)
    # no model call is made: the model is only asked for its context length
    scores = task.evaluate_prompted(_model(8192), tokenizer, rows, "Summarize.", tight, None, shots, "few")
    assert scores.metrics == {} and scores.outputs == []
    assert scores.extras["few_shot"] == {"k": 1.0, "used_mean": 0.0, "used_min": 0.0, "used_max": 0.0,
                                         "rows_with_all": 0.0, "budget_tokens": 384.0}
    assert scores.extras["few_shot_used"] == [0]
    labels = ["neg", "pos"]
    classify = get_task("classification")
    texts = [{"text": LONG * 21, "label": "pos"}]
    assert classify.evaluate_prompted(_model(8192), tokenizer, texts, None, tight, labels,
                                      [{"text": LONG * 30, "label": "neg"}], "few").metrics == {}


def test_report_says_not_applicable_and_the_budget():
    none = {"k": 3.0, "used_mean": 0.0, "used_min": 0.0, "used_max": 0.0, "budget_tokens": 384.0}
    note = "not applicable: none of the 3 worked examples fits beside a row in 384 tokens"
    assert few_shot_line(none, note) == note
    some = {"k": 3.0, "used_mean": 2.5, "used_min": 2.0, "used_max": 3.0, "budget_tokens": 2048.0}
    assert few_shot_line(some, "") == ("3 training rows as worked examples, 2.50 per row fitted a 2048-token prompt "
                                       "(eval.few_shot_max_tokens) (min 2, max 3)")
    assert few_shot_line({}, "") == "not measured (eval.few_shot_k=0)"
