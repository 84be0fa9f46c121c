"""Preference tuning: the pair shapes, the gate and split on pairs, the DPO and ORPO losses on
hand-computed values, training on the real model, and one end-to-end run through the gate."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from llmft.config import DataConfig, ValidationConfig
from llmft.config_files import load_config
from llmft.data.gate import run_gate
from llmft.data.ingest import RawRow
from llmft.data.shapes import Example, Rejection, to_example, to_examples
from llmft.data.split import split_items
from llmft.tasks import get_task
from llmft.tasks.inference import infer_task, resolve_task

ROOT = Path(__file__).resolve().parents[1]
PAIRS = ROOT / "tests" / "data" / "real" / "preference.jsonl"


def _example(data: dict) -> Example:
    found = to_example(RawRow("row 1", data), DataConfig())
    assert isinstance(found, Example), getattr(found, "reason", found)
    return found


@pytest.mark.parametrize("data", [
    {"prompt": "Capital of France?", "chosen": "Paris.", "rejected": "Lyon."},
    {"question": "Capital of France?", "chosen": "Paris.", "rejected": "Lyon."},
    {"instruction": "Capital of France?", "chosen": "Paris.", "rejected": "Lyon."},
    {"prompt": [{"role": "user", "content": "Capital of France?"}],
     "chosen": [{"role": "assistant", "content": "Paris."}], "rejected": [{"role": "assistant", "content": "Lyon."}]},
    {"chosen": [{"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "Paris."}],
     "rejected": [{"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "Lyon."}]},
    {"chosen": "\n\nHuman: Capital of France?\n\nAssistant: Paris.",
     "rejected": "\n\nHuman: Capital of France?\n\nAssistant: Lyon."},
    # LLaMA-Factory's ShareGPT-style pairs: {from, value} turns, one turn per answer
    {"conversations": [{"from": "human", "value": "Capital of France?"}],
     "chosen": {"from": "gpt", "value": "Paris."}, "rejected": {"from": "gpt", "value": "Lyon."}},
])
def test_pair_shapes_become_one_preference_example(data: dict):
    ex = _example(data)
    assert ex.shape == "preference" and ex.prompt_key == "Capital of France?" and ex.target == "Paris."
    assert ex.messages[-1] == {"role": "rejected", "content": "Lyon."}
    assert infer_task([ex])[0] == "preference"


def test_shared_history_turns_are_the_prompt_and_bad_pairs_are_rejected():
    history = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
               {"role": "user", "content": "And France?"}]
    ex = _example({"chosen": [*history, {"role": "assistant", "content": "Paris."}],
                   "rejected": [*history, {"role": "assistant", "content": "No idea."}]})
    assert [m["content"] for m in ex.messages] == ["Hi", "Hello!", "And France?", "Paris.", "No idea."]
    same = to_example(RawRow("row 2", {"prompt": "q", "chosen": "Same answer", "rejected": "same  answer"}),
                      DataConfig())
    assert isinstance(same, Rejection) and "same answer" in same.reason
    with pytest.raises(Exception, match="mixed shapes"):
        to_examples([RawRow("a", {"prompt": "q", "chosen": "a", "rejected": "b"}),
                     RawRow("b", {"prompt": "q", "response": "a"})], DataConfig())


def test_task_and_method_checks():
    pairs = [_example({"prompt": "q", "chosen": "a", "rejected": "b"})]
    sft = [_example({"prompt": "q", "response": "a"})]
    assert resolve_task(load_config(None, ["train.method=dpo"]), pairs).name == "preference"
    with pytest.raises(Exception, match=r"data\.preference_pairs=self_play"):
        resolve_task(load_config(None, ["train.method=dpo"]), sft)
    with pytest.raises(Exception, match="task=preference"):
        resolve_task(load_config(None, ["task=chat"]), pairs)


def test_gate_redacts_and_deduplicates_the_rejected_answer_and_split_keeps_a_prompt_together(tokenizer):
    rows = [{"prompt": f"Question {i}?", "chosen": f"Answer {i}.", "rejected": f"Wrong {j}."}
            for i in range(12) for j in range(3)]
    rows.append({"prompt": "Question 0?", "chosen": "Answer 0.", "rejected": "wrong 0."})  # normalised duplicate
    rows.append({"prompt": "Mail?", "chosen": "No.", "rejected": "Write to jane.doe@example.com"})
    examples, rejected = to_examples([RawRow(f"line {i}", r) for i, r in enumerate(rows)], DataConfig())
    task = get_task("preference")
    result = run_gate(examples, rejected, DataConfig(), ValidationConfig(),
                      lambda ex: task.encode(tokenizer, ex, None, 128), 128)
    assert result.report.duplicates_removed == 1 and len(result.kept) == 37
    mail = next(r for r in result.kept if r.example.prompt_key == "Mail?")
    assert "jane.doe@example.com" not in json.dumps(mail.messages) and mail.messages[-1]["role"] == "rejected"
    splits = split_items([r.example.as_row() for r in result.kept], lambda r: r["prompt"], 0, 0.2, 0.3)
    where = {}
    for name, items in splits.items():
        for item in items:
            assert where.setdefault(item["prompt"], name) == name  # one prompt never spans two splits


def test_encoding_fits_both_answers_after_the_same_prompt(tokenizer):
    from llmft.tasks.preference import pair_example

    ex = _example({"prompt": "word " * 300, "chosen": "Short.", "rejected": "A much longer answer " * 5})
    encoded = get_task("preference").encode(tokenizer, ex, "Be brief.", 96)
    assert encoded is not None and encoded.truncated
    pair = pair_example(tokenizer, encoded.messages, 96)
    assert len(pair["rejected_input_ids"]) <= 96 and pair["input_ids"] == encoded.input_ids
    prompt_len = pair["labels"].index(next(t for t in pair["labels"] if t != -100))
    assert pair["input_ids"][:prompt_len] == pair["rejected_input_ids"][:prompt_len]
    assert pair["rejected_labels"][-1] == tokenizer.eos_token_id


def test_answers_longer_than_the_budget_are_cut_at_their_end_after_a_prompt_of_at_most_half(tokenizer):
    from llmft.tasks.preference import pair_example

    long_answer = " ".join(f"step {i} of the detailed plan." for i in range(200))
    ex = _example({"prompt": "Plan my week. " * 60, "chosen": long_answer, "rejected": "No." + long_answer})
    encoded = get_task("preference").encode(tokenizer, ex, None, 128)
    assert encoded is not None and encoded.truncated
    pair = pair_example(tokenizer, encoded.messages, 128)
    assert len(pair["input_ids"]) == len(pair["rejected_input_ids"]) == 128
    prompt_tokens = sum(label == -100 for label in pair["labels"])
    assert prompt_tokens <= 64 and prompt_tokens == sum(label == -100 for label in pair["rejected_labels"])
    assert tokenizer.eos_token_id not in pair["labels"]  # cut, not ended: no stop is taught at the cut


def test_dpo_loss_on_hand_computed_values():
    import torch

    from llmft.train.preference import dpo_loss

    # policy margin (-1) - (-2) = 1, reference margin 0: beta * 1 = 0.1 -> -log sigmoid(0.1)
    losses, chosen, rejected = dpo_loss(torch.tensor([-1.0, -3.0]), torch.tensor([-2.0, -1.0]),
                                        torch.tensor([-1.5, -2.0]), torch.tensor([-1.5, -2.0]), beta=0.1)
    assert losses.tolist() == pytest.approx([math.log(1 + math.exp(-0.1)), math.log(1 + math.exp(0.2))], abs=1e-6)
    assert chosen.tolist() == pytest.approx([0.05, -0.1]) and rejected.tolist() == pytest.approx([-0.05, 0.1])


def test_orpo_loss_on_hand_computed_values():
    import torch

    from llmft.train.preference import orpo_loss

    def log_odds(p: float) -> float:  # log(p / (1 - p)) with p = exp(mean log-prob)
        return math.log(math.exp(p) / (1 - math.exp(p)))

    ratio = log_odds(-0.5) - log_odds(-1.0)  # 0.974...
    loss, odds, chosen, rejected = orpo_loss(torch.tensor([-0.5]), torch.tensor([-1.0]), torch.tensor(0.5), 0.1)
    assert odds.item() == pytest.approx(ratio, abs=1e-5)
    assert loss.item() == pytest.approx(0.5 + 0.1 * math.log(1 + math.exp(-ratio)), abs=1e-6)
    assert chosen.item() == pytest.approx(-0.05) and rejected.item() == pytest.approx(-0.1)


def test_sequence_logps_sum_to_the_masked_lm_loss(tiny_model_path: str, tokenizer):
    import torch

    from llmft.base_model import load_model
    from llmft.chat_format import PadToLongest, build_messages, encode_messages
    from llmft.loss import masked_lm_loss, sequence_logps

    rows = [encode_messages(tokenizer, build_messages(None, p, r))
            for p, r in (("Capital of France?", "Paris."), ("Say hi", "Hello there, how are you today?"))]
    batch = PadToLongest(tokenizer.pad_token_id)(rows)
    model = load_model(tiny_model_path).eval()
    with torch.no_grad():
        logps, counts, _ = sequence_logps(model, **batch)
        total, count, _ = masked_lm_loss(model, **batch)
        alone, _, _ = sequence_logps(model, **PadToLongest(tokenizer.pad_token_id)(rows[:1]))
    assert counts.tolist() == [sum(t != -100 for t in r["labels"][1:]) for r in rows]
    assert logps.sum().item() == pytest.approx(-total.item(), rel=1e-5) and int(count) == int(counts.sum())
    assert logps[0].item() == pytest.approx(alone[0].item(), abs=1e-3)  # padding changes nothing


def test_pair_log_probs_equal_each_row_alone_whatever_the_grouping_and_token_budget(
        tiny_model_path: str, tokenizer, monkeypatch: pytest.MonkeyPatch):
    """Pairs are scored with the starts they share computed once (a pair's prompt, a few-shot prompt's
    worked examples) and a few at a time (chat_format.SCORE_TOKENS bounds a forward's logits: 16 few-shot
    preference pairs of 2k tokens in one forward ran a 24 GB machine out of memory), in the caller's order,
    with each row's log-probs those of a plain forward of that row alone."""
    import torch

    from llmft.base_model import load_model
    from llmft.chat_format import PadToLongest, build_messages, encode_messages
    from llmft.evaluate import shared_start
    from llmft.loss import sequence_logps

    shots = [{"role": "user", "content": "Capital of Italy? " * 6}, {"role": "assistant", "content": "Rome."}]

    def pair(prompt: str, good: str, bad: str, few_shot: bool) -> dict[str, list[int]]:
        head = [{"role": "system", "content": "Answer briefly."}, *shots] if few_shot else []
        chosen = encode_messages(tokenizer, [*head, *build_messages(None, prompt, good)])
        rejected = encode_messages(tokenizer, [*head, *build_messages(None, prompt, bad)])
        return {**chosen, "rejected_input_ids": rejected["input_ids"], "rejected_labels": rejected["labels"]}

    pairs = [pair("Capital of France? " * n, "Paris. " * n, "Rome.", few_shot=n % 2 == 1) for n in (9, 1, 4, 2, 7, 3)]
    model = load_model(tiny_model_path).eval()
    rows = [{"input_ids": p["input_ids"], "labels": p["labels"]} for p in pairs]
    rows += [{"input_ids": p["rejected_input_ids"], "labels": p["rejected_labels"]} for p in pairs]
    groups = shared_start.start_groups(rows)
    assert sorted(i for _, members in groups for i in members) == list(range(len(rows)))
    assert sum(1 for start, _ in groups if start) >= 2  # the few-shot rows, and a long prompt's pair
    with torch.inference_mode():
        plain = [sequence_logps(model, **PadToLongest(tokenizer.pad_token_id)([row])) for row in rows]
    together = shared_start.pair_logps(model, tokenizer.pad_token_id, pairs, batch_size=16)
    calls = []
    real = shared_start.token_batches
    monkeypatch.setattr(shared_start, "token_batches",
                        lambda lengths, size: calls.append(real(lengths, size, max_tokens=160)) or calls[-1])
    budgeted = shared_start.pair_logps(model, tokenizer.pad_token_id, pairs, batch_size=16)
    assert any(len(c) > 1 for c in calls)  # the budget split a group
    for got in (together, budgeted):
        assert got.chosen == pytest.approx([p[0].item() for p in plain[:len(pairs)]], abs=1e-3)  # same pair, same place
        assert got.rejected == pytest.approx([p[0].item() for p in plain[len(pairs):]], abs=1e-3)
        assert got.chosen_tokens == [p[1].item() for p in plain[:len(pairs)]]


def test_start_groups_give_each_family_of_rows_its_own_start():
    """Rows sorted and cut where that computes fewest tokens: two families sharing long starts get one
    group each, a row that shares nothing worth it goes plainly, and no row is ever trained on a shared
    token (nor is the token before its first labelled one shared)."""
    from llmft.chat_format import IGNORE_INDEX
    from llmft.evaluate.shared_start import start_groups

    def row(start: list[int], own: list[int], answer: list[int]) -> dict[str, list[int]]:
        unlabelled = start + own
        return {"input_ids": unlabelled + answer, "labels": [IGNORE_INDEX] * len(unlabelled) + answer}

    a, b = list(range(100, 140)), list(range(100, 120)) + list(range(500, 540))  # b shares 20 tokens with a
    rows = [row(a, [1, 2], [7, 8]), row(b, [3], [9]), row(a, [4], [7]), row([5] * 10, [6], [7]),
            row(b, [2, 2], [8]), row(a, [9, 9, 9], [9])]
    groups = dict((tuple(members), start) for start, members in start_groups(rows))
    assert groups == {(0, 2, 5): 40, (1, 4): 60, (3,): 0}
    assert start_groups(rows[:1]) == [(0, [0])]
    # a start never reaches the token before the first labelled one, even for identical prompts
    twins = [row(a, [], [7, 8]), row(a, [], [9])]
    assert start_groups(twins) == [(39, [0, 1])]


def test_start_groups_hold_at_most_group_rows_rows(monkeypatch: pytest.MonkeyPatch):
    """A large family is cut into groups of at most GROUP_ROWS rows, so grouping a whole test split stays
    linear; every row is still in exactly one group."""
    from llmft.evaluate import shared_start

    monkeypatch.setattr(shared_start, "GROUP_ROWS", 4)
    rows = [{"input_ids": [1] * 40 + [i, 5], "labels": [-100] * 41 + [5]} for i in range(10)]
    groups = shared_start.start_groups(rows)
    assert [len(members) for _, members in groups] == [4, 4, 2] and {start for start, _ in groups} == {40}
    assert sorted(i for _, members in groups for i in members) == list(range(10))


@pytest.mark.parametrize("method", ["dpo", "orpo"])
def test_preference_methods_train(method: str, tiny_model_path: str, tokenizer, tmp_path: Path):
    from llmft.tasks.preference import pair_example
    from llmft.train.loop import train
    from llmft.train.methods import load_trained

    task = get_task("preference")
    pairs = [("Capital of France?", "Paris.", "I do not know."), ("What is 2 + 2?", "4.", "Five, probably.")]
    examples = [pair_example(tokenizer, task.encode(tokenizer, _example(
        {"prompt": p, "chosen": c, "rejected": r}), None, 128).messages, 128) for p, c, r in pairs] * 2
    cfg = load_config(None, [f"train.method={method}", "train.max_steps=3", "train.batch_size=4",
                             "train.learning_rate=5e-3", "train.warmup_ratio=0", "train.eval_steps=2"]).train
    result = train(tiny_model_path, examples, examples[:2], cfg, tmp_path, log_to_mlflow=False)
    logged = [h for h in result.history if "rewards/margin" in h]
    assert result.steps == 3 and len(logged) == 3 and any("eval_rewards/accuracy" in h for h in result.history)
    assert logged[-1]["rewards/margin"] > logged[0]["rewards/margin"]  # it learned to prefer the chosen answers
    if method == "dpo":  # step 1: the adapter starts at zero, so the policy is the reference
        assert logged[0]["rewards/chosen"] == pytest.approx(0.0, abs=1e-6)
        assert logged[0]["loss"] == pytest.approx(math.log(2), abs=1e-4)
    model, _ = load_trained(tiny_model_path, result.output_dir)
    assert not hasattr(model, "peft_config")  # merged: one plain model for evaluation and the registry


def test_self_play_pairs_take_the_models_own_answer_as_rejected(tiny_model_path: str, tokenizer):
    from llmft.base_model import load_model
    from llmft.data.self_play import self_play_pairs

    examples, _ = to_examples([RawRow(f"line {i}", {"prompt": p, "response": r}) for i, (p, r) in enumerate(
        [("What is the capital of France?", "Paris is the capital of France."), ("Say hi", "Hi.")])], DataConfig())
    rows = self_play_pairs(examples, load_model(tiny_model_path), tokenizer, None, max_new_tokens=8, batch_size=2)
    assert rows and all(r["rejected"] and r["rejected"] != r["chosen"] for r in rows)
    assert rows[0] == {"prompt": [{"role": "user", "content": "What is the capital of France?"}],
                       "chosen": "Paris is the capital of France.", "rejected": rows[0]["rejected"],
                       "source": "line 0"}
    pairs, _ = to_examples([RawRow("x", r) for r in rows], DataConfig())  # the cached file reads back as pairs
    assert {ex.shape for ex in pairs} == {"preference"}


def test_an_unknown_registered_base_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from llmft.base_model import BaseModelError, resolve_base_model

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    with pytest.raises(BaseModelError, match="models:/nothing@champion: no such registered model version"):
        resolve_base_model("models:/nothing@champion")


@pytest.mark.e2e
def test_dpo_run_on_real_pairs_goes_through_the_gate_and_registers(run_env: dict[str, str], tmp_path: Path):
    from test_e2e import run_py

    out = tmp_path / "summary.json"
    proc = run_py(run_env, "--pipeline", "finetune", "--set", "train.method=dpo", "--set", f"data.source={PAIRS}",
                  "--set", "train.max_steps=3", "--set", "train.eval_steps=null", "--set", "train.save_steps=1000",
                  "--set", "eval.max_samples=6", "--set", "eval.max_new_tokens=8", "--summary", str(out),
                  timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    s = json.loads(out.read_text())
    assert s["task"] == "preference" and s["primary_metric"] == "preference_accuracy"
    assert s["registered_model"]["name"] == "preference-preference" and s["dataset"]["rows_in"] == 40
    for role in ("base", "finetuned"):
        assert {"preference_accuracy", "reward_margin", "rougeL", "eval_loss"} <= set(s["metrics"][role])
    assert s["forgetting"]["applicable"]
    assert [r.split(":")[0].split(" ", 1)[1] for r in s["promotion_reasons"]] == ["base", "champion", "forgetting"]
