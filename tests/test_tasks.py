"""Task objects: inference from real column names, label inference, naming, sampling, task metrics."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from llmft.config import ConfigError
from llmft.config_files import load_config
from llmft.data.ingest import DataError, RawRow, read_rows
from llmft.data.shapes import to_examples
from llmft.data.split import split_frame
from llmft.evaluate import text_metrics
from llmft.evaluate.sampling import sample_rows
from llmft.evaluate.scoring import support_text
from llmft.evaluate.text_metrics import unsupported_items
from llmft.resolve import derive_model_name
from llmft.tasks import TASKS, GenerativeTask, get_task
from llmft.tasks.extraction import instruction_for
from llmft.tasks.inference import infer_task, resolve_task
from llmft.tasks.summarization import unsupported_share

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT / "tests" / "data" / "real"


def examples(rows: list[dict], *overrides: str):
    cfg = load_config(None, list(overrides))
    raw = [RawRow(f"d.jsonl, line {i}", r) for i, r in enumerate(rows, start=1)]
    return to_examples(raw, cfg.data)[0]


def long_text(i: int) -> str:
    return f"The council met on day {i} and discussed the harbour, the budget and the new school buildings."


@pytest.mark.parametrize(("rows", "task", "reason"), [
    ([{"document": long_text(i), "summary": f"Council meeting {i}."} for i in range(10)], "summarization",
     "inferred from columns document/summary"),
    ([{"article": long_text(i), "highlights": f"Meeting {i}."} for i in range(10)], "summarization",
     "inferred from columns article/highlights"),
    ([{"dialogue": long_text(i), "summary": f"They met {i}."} for i in range(10)], "summarization",
     "inferred from columns dialogue/summary"),
    ([{"text": long_text(i), "label": ["sport", "politics"][i % 2]} for i in range(10)], "classification",
     "inferred from columns text/label"),
    ([{"sentence": f"great film {i}", "label": i % 2} for i in range(10)], "classification",
     "inferred from columns sentence/label"),
    ([{"review": f"great film {i}", "sentiment": "positive"} for i in range(10)], "classification",
     "inferred from columns review/sentiment"),
    ([{"question": f"What is {i}+1?", "answer": f"It is {i + 1}."} for i in range(10)], "chat",
     "inferred from columns question/answer: free-text responses"),
    ([{"instruction": "Name a colour", "input": "", "output": f"Blue {i}"} for i in range(10)], "chat",
     "inferred from columns instruction/input/output: free-text responses"),
    ([{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": f"hello {i}"}]}
      for i in range(10)], "chat", "inferred from conversations in column messages"),
    ([{"conversation": ["Are you a robot?", f"Maybe {i}.", "Really?"]} for i in range(10)], "chat",
     "inferred from conversations in column conversation"),
    ([{"instruction": "Summarize this text", "input": long_text(i), "output": f"Met {i}."} for i in range(10)],
     "summarization", "inferred from prompts: 10 of 10 ask for a summary"),
    ([{"prompt": f"Lumora jacket {i} $9.99", "response": f'{{"brand": "Lumora", "price": {i}}}'}
      for i in range(10)], "extraction", "inferred from responses: 10 of 10 are JSON objects"),
    ([{"": str(i), "spam": i % 2, "text": f"Free entry to win a prize number {i} now"} for i in range(20)],
     "classification", "inferred from columns text/spam"),
])
def test_task_is_inferred_from_public_column_names(rows, task, reason):
    assert infer_task(examples(rows)) == (task, reason)


def test_the_turns_shape_drops_an_unanswered_last_turn():
    ex = examples([{"conversation": ["Are you a robot?", "Maybe.", "Really?"]}])[0]
    assert [m["role"] for m in ex.messages] == ["user", "assistant"]


def test_a_set_task_is_checked_against_the_data():
    labelled = examples([{"text": f"great film {i}", "label": "pos"} for i in range(4)])
    with pytest.raises(ConfigError, match=r"task=chat trains on conversations.*task=classification or task=auto"):
        resolve_task(load_config(None, ["task=chat"]), labelled)
    chat = examples([{"prompt": "hi", "response": "hello"}])
    with pytest.raises(ConfigError, match="task=classification needs text/label rows"):
        resolve_task(load_config(None, ["task=classification"]), chat)
    with pytest.raises(ConfigError, match=r"train\.method=prompt_tuning does not suit task classification"):
        resolve_task(load_config(None, ["train.method=prompt_tuning"]), labelled)


def test_chat_keeps_the_datas_own_system_message_and_adds_one_only_when_set():
    chat = examples([{"prompt": "hi", "response": "hello"}])
    assert resolve_task(load_config(None), chat).instruction is None
    assert resolve_task(load_config(None, ["data.system_prompt=Be brief"]), chat).instruction == "Be brief"


def test_extraction_instruction_is_written_from_the_data():
    rows = [{"prompt": f"item {i}", "response": f'{{"brand": "B{i % 2}", "category": "{["home", "sports"][i % 2]}", '
                                                f'"price": {i}.5}}'} for i in range(12)]
    text = instruction_for(examples(rows))
    assert text.startswith("Extract the fields from the text. Answer with only a JSON object with the keys brand, "
                           "category, price.")
    assert "category is one of home, sports." in text and "price is a number." in text
    assert text.endswith("Use null for anything not stated.")


def test_extraction_instruction_for_entity_lists():
    # NER-style targets: list values, keys present only when the sentence has such an entity
    targets = ['{"PER": ["Ann"], "LOC": ["Rome"]}', '{"LOC": ["Oslo", "Bergen"]}', '{"PER": ["Bo"]}', "{}"] * 3
    text = instruction_for(examples([{"prompt": f"s{i}", "response": t} for i, t in enumerate(targets)]))
    assert "one of ." not in text and "keys are among PER, LOC, each with the list" in text
    assert text.endswith("Leave out a type the text has none of; answer {} when it has none.")


def test_every_task_reports_its_primary_metric():
    for task in TASKS.values():
        assert task.primary_metric in task.metric_names
    with pytest.raises(ConfigError, match="not a task"):
        get_task("translation")


@pytest.mark.parametrize(("source", "task", "name"), [
    ("data/bbc-news.csv", "classification", "bbc-news-classification"),
    ("/tmp/My Dialogs/", "chat", "my-dialogs-chat"),
    ("org/cnn_dailymail:train", "summarization", "cnn-dailymail-summarization"),
    ("data/products.jsonl", "extraction", "products-extraction"),
])
def test_registry_name_is_derived_from_source_and_task(source, task, name):
    assert derive_model_name(source, task) == name


def frame(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame([{"prompt": r["text"], "text": r["text"], "label": r["label"]} for r in rows])


def test_labels_are_inferred_from_the_training_split_unless_pinned():
    rows = [{"text": f"text {i}", "label": ["b", "a", "c"][i % 3]} for i in range(90)]
    cfg = load_config(None, ["data.max_train_rows=null"])
    _train, _validation, _test, info = split_frame(frame(rows), cfg.data, classifier=True)
    assert info.labels == ["a", "b", "c"]
    assert sum(info.rows.values()) == 90 and set(info.label_counts["test"]) == {"a", "b", "c"}
    pinned = load_config(None, ["data.labels=[c, b, a]", "data.max_train_rows=null"])
    assert split_frame(frame(rows), pinned.data, classifier=True)[3].labels == ["c", "b", "a"]
    with pytest.raises(DataError, match="needs at least 2"):
        split_frame(frame([{"text": f"t {i}", "label": "only"} for i in range(30)]), cfg.data, classifier=True)


def test_integer_labels_take_optional_names():
    rows = [{"text": f"story {i}", "label": i % 3} for i in range(9)]
    assert {e.label for e in examples(rows)} == {"0", "1", "2"}
    named = examples(rows, "data.label_names=[World, Sports, Business]")
    assert {e.label for e in named} == {"World", "Sports", "Business"}
    cfg = load_config(None, ["data.label_names=[World, Sports]"])
    kept, rejected = to_examples([RawRow("d.csv, line 2", {"text": "x y", "label": 1}),
                                  RawRow("d.csv, line 3", {"text": "x z", "label": 7})], cfg.data)
    assert [e.label for e in kept] == ["Sports"]
    assert rejected[0].reason == "integer label 7 has no name in data.label_names (2 names)"


def test_capped_evaluation_is_a_seeded_stratified_sample_never_the_head():
    # a file sorted by class: the head would hold one class only
    rows = [{"label": label, "i": i} for label in ("a", "b", "c", "d", "e") for i in range(40)]
    chosen, sample = sample_rows(rows, 20, seed=3, label_key="label")
    assert Counter(r["label"] for r in chosen) == {"a": 4, "b": 4, "c": 4, "d": 4, "e": 4}
    assert sample.n == 20 and sample.of == 200 and sample.seed == 3 and "stratified" in sample.how
    assert sample_rows(rows, 20, seed=3, label_key="label")[0] == chosen  # seeded: the same rows again
    assert sample_rows(rows, 20, seed=4, label_key="label")[0] != chosen
    uneven = [{"label": "big", "i": i} for i in range(90)] + [{"label": "small", "i": i} for i in range(10)]
    picked = Counter(r["label"] for r in sample_rows(uneven, 10, 0, "label")[0])
    assert picked == {"big": 9, "small": 1}
    tiny_budget = Counter(r["label"] for r in sample_rows(rows, 3, 0, "label")[0])
    assert sum(tiny_budget.values()) == 3
    plain, info = sample_rows(rows, 30, seed=0)
    assert len(plain) == 30 and info.how == "seeded random sample" and len({r["label"] for r in plain}) > 1
    whole, info = sample_rows(rows, None, seed=0)
    assert len(whole) == 200 and info.how == "whole test split" and info.seed is None


def test_summarization_faithfulness_and_length_ratio():
    source = "The council approved a budget of 4.5 million for parks on Tuesday."
    assert unsupported_share("Council approved 4.5 million for parks.", source) == 0.0
    assert unsupported_share("Mayor Smith approved 9 million.", source) == pytest.approx(3 / 5)
    task = get_task("summarization")
    metrics, rows = task.score(["a b c d", "a b"], ["a b", "a b c d"], ["a b c d", "a b c d"])
    assert metrics["length_ratio"] == pytest.approx((2.0 + 0.5) / 2) and len(rows) == 2


def test_unsupported_items_in_free_text_hand_checked():
    source = ("The council approved a budget of 1,000 dollars and 4.50 percent on Tuesday. Mayor Jane Doe said "
              "\"we need green space\".")
    faithful = "The council approved 1000 dollars. Mayor Doe's plan: \"We need green space\", on Tuesday."
    assert unsupported_items(faithful, source) == []  # figures compared as figures, quotes and names folded
    made_up = "The council approved 9 dollars at 4.5 percent. Then Mayor Smith said \"parks first\"."
    assert unsupported_items(made_up, source) == ["9", '"parks first"', "Smith"]
    # a sentence's first word, a list's numbering and "I" are capitalised or numbered anyway
    assert unsupported_items("1. Approved it.\n2) Then I left. Council met.", source) == []


def test_unsupported_items_in_a_json_answer_are_its_field_values():
    prompt = ("Extract the fields. category is one of outerwear, shoes. Use null for anything not stated.\n"
              "Lumora rain jacket | navy blue | Size M | $79.99")
    good = '```json\n{"brand": "Lumora", "color": "navy", "size": "M", "price": 79.99, "category": "outerwear", ' \
           '"material": null, "sale": false}\n```'
    assert unsupported_items(good, prompt) == []  # an allowed value named by the instruction is supported
    bad = '{"brand": "Lumina", "color": "navy", "size": "L", "price": "$89.99", "tags": ["rain", "waterproof"]}'
    assert unsupported_items(bad, prompt) == ["Lumina", "L", "$89.99", "waterproof"]


def test_unsupported_output_rate_is_the_share_of_outputs_with_any_item():
    assert text_metrics.unsupported_rate([0.0, 2.0, 0.0, 1.0]) == 0.5
    assert text_metrics.unsupported_rate([]) == 0.0
    # what the answer may draw on: system turns and the row's own turns, not a few-shot prompt's examples
    prompt = [{"role": "system", "content": "sys"}, {"role": "user", "content": "shot q"},
              {"role": "assistant", "content": "shot 42"}, {"role": "user", "content": "own q"}]
    assert support_text(prompt, 3) == "sys\nown q"
    assert support_text(prompt, 0) == "sys\nshot q\nshot 42\nown q"


def test_every_generative_task_reports_the_unsupported_rate_lower_is_better():
    generative = [t for t in TASKS.values() if isinstance(t, GenerativeTask)]
    assert {t.name for t in generative} >= {"chat", "summarization", "extraction"}
    for task in generative:
        assert text_metrics.UNSUPPORTED_RATE in task.metric_names
        assert not task.higher_is_better(text_metrics.UNSUPPORTED_RATE)
    assert "unsupported_content" in get_task("summarization").metric_names  # the older signal stays beside it
    assert text_metrics.UNSUPPORTED_RATE not in get_task("classification").metric_names


def test_extraction_scorer_takes_prose_references():
    metrics, rows = get_task("extraction").score(["Paris", '{"a": 1}'], ["paris", '{"a": 1}'], ["", ""])
    assert metrics["field_accuracy"] == 1.0 and rows[0]["field_accuracy"] == 1.0


@pytest.mark.parametrize(("name", "task", "fields"), [
    ("dialog.jsonl", "chat", "conversation"), ("classification.jsonl", "classification", "text/label"),
    ("summarization.jsonl", "summarization", "document/summary"), ("messy.csv", "classification", "text/spam"),
])
def test_real_corpus_slices_are_recognised(name, task, fields):
    cfg = load_config(ROOT / "configs" / "finetune.yaml", [f"data.source={REAL / name}"])
    found, rejected = to_examples(read_rows(cfg.data.source), cfg.data)
    assert not rejected and len(found) >= 60
    assert resolve_task(cfg, found).name == task and found[0].fields == fields


def test_champion_is_compared_only_when_comparable():
    from llmft.contracts import ChampionRef
    from llmft.evaluate.stage import champion_comparable
    from llmft.tasks.base import TaskSpec

    spec = TaskSpec(name="classification", reason="r")
    same = ChampionRef(name="m", version="2", task="classification", labels=["b", "a"])
    assert champion_comparable(same, spec, ["a", "b"], True) is None
    assert champion_comparable(None, spec, ["a", "b"], True) == "no current champion"
    assert champion_comparable(same, spec, ["a", "b"], False) == "champion re-evaluation off (eval.champion=false)"
    other_task = same.model_copy(update={"task": "chat"})
    assert champion_comparable(other_task, spec, ["a", "b"], True) == (
        "no comparable champion: task chat vs classification (champion v2)")
    assert "has labels ['b', 'a'], this data ['a', 'b', 'c']" in champion_comparable(same, spec, ["a", "b", "c"], True)


def test_scores_key_follows_rows_and_settings():
    from llmft.evaluate.stage import scores_key
    from llmft.tasks.base import TaskSpec

    rows = pd.DataFrame([{"messages": "[]", "response": "x", "text": "", "label": None},
                         {"messages": "[]", "response": "y", "text": "", "label": float("nan")}])
    spec = TaskSpec(name="chat", reason="r")
    scoring = load_config(None).eval.scoring(384)
    key = scores_key(rows, spec, scoring)
    assert key == scores_key(rows.copy(), spec, scoring)
    assert key != scores_key(rows.iloc[:1], spec, scoring)
    assert key != scores_key(rows, spec, scoring.model_copy(update={"max_new_tokens": 8}))
    assert key != scores_key(rows, spec.model_copy(update={"instruction": "Be brief"}), scoring)
    # the few-shot base's budget is not part of a model's own scores
    assert key == scores_key(rows, spec, scoring.model_copy(update={"few_shot_max_tokens": 64}))
    # scores computed in bf16 are not fp32's (a champion scored in one is re-measured in the other); auto is
    # keyed by the dtype it resolves to here
    fp32, bf16 = (scores_key(rows, spec, scoring.model_copy(update={"precision": p})) for p in ("fp32", "bf16"))
    assert fp32 != bf16 and key in (fp32, bf16)


def test_the_config_task_literal_lists_the_registry_names():
    """`task:` in the config schema and the task registry cannot drift apart."""
    from typing import get_args

    from llmft.config import Config
    from llmft.tasks import TASKS

    assert get_args(Config.model_fields["task"].annotation) == ("auto", *TASKS)
