import json
from pathlib import Path

import pytest

from llmft.config_files import load_config
from llmft.data.ingest import DataError, RawRow, read_rows
from llmft.data.shapes import Example, Rejection, to_example, to_examples


def data_cfg(*overrides: str):
    return load_config(None, list(overrides)).data


def one(data: dict, *overrides: str) -> Example | Rejection:
    return to_example(RawRow("f.jsonl, line 1", data), data_cfg(*overrides))


@pytest.mark.parametrize("data", [
    {"prompt": "Q", "response": "A"}, {"prompt": "Q", "completion": "A"}, {"question": "Q", "answer": "A"},
])
def test_prompt_response_aliases(data):
    ex = one(data)
    assert ex.shape == "prompt_response"
    assert ex.messages == [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]


def test_alpaca_with_and_without_input():
    ex = one({"instruction": "Translate", "input": "hello", "output": "bonjour"})
    assert ex.shape == "alpaca" and ex.messages[0]["content"] == "Translate\n\nhello"
    assert one({"instruction": "Say hi", "input": "", "output": "hi"}).messages[0]["content"] == "Say hi"


def test_chat_multi_turn_with_system():
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"}, {"role": "user", "content": "bye"},
            {"role": "assistant", "content": "bye!"}]
    ex = one({"messages": msgs})
    assert ex.shape == "chat" and ex.messages == msgs
    assert ex.target == "bye!" and ex.prompt_key == "be brief\nhi\nhello\nbye"


def test_sharegpt_roles_are_mapped():
    ex = one({"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]})
    assert ex.shape == "sharegpt"
    assert [m["role"] for m in ex.messages] == ["user", "assistant"]


def test_text_label_and_bad_label_type():
    ex = one({"text": "great product", "label": "positive"})
    assert ex.shape == "text_label" and ex.label == "positive" and ex.target == "positive"
    assert one({"text": "ok", "label": 2}).label == "2"
    bad = one({"text": "ok", "label": {"x": 1}})
    assert isinstance(bad, Rejection) and "label must be a string or an integer" in bad.reason
    assert bad.kind == "bad_label"


def test_column_mapping():
    ex = one({"listing": "Lumora mug", "attributes": {"brand": "Lumora"}},
             "data.columns.prompt=listing", "data.columns.response=attributes")
    assert ex.messages[1]["content"] == '{"brand": "Lumora"}'


@pytest.mark.parametrize("data,reason", [
    ({"foo": 1}, "unrecognised shape (fields: foo)"),
    ({"messages": [{"role": "user", "content": "hi"}]}, "must end with an assistant turn"),
    ({"messages": "hi"}, "non-empty list of turns"),
    ({"messages": [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "y"}]}, "unknown role"),
])
def test_rows_that_do_not_fit_are_rejected_with_a_reason(data, reason):
    result = one(data)
    assert isinstance(result, Rejection) and reason in result.reason


def test_explicit_format_names_the_missing_field():
    result = one({"prompt": "x"}, "data.format=alpaca")
    assert isinstance(result, Rejection) and result.reason == "missing field 'instruction'"


def test_mixed_classification_and_conversation_rows_is_an_error():
    rows = [RawRow("a.jsonl, line 1", {"text": "t", "label": "x"}),
            RawRow("b.jsonl, line 1", {"prompt": "p", "response": "r"})]
    with pytest.raises(DataError, match=r"mixed shapes: .*a\.jsonl, line 1.*b\.jsonl, line 1"):
        to_examples(rows, data_cfg())


def test_no_usable_row_is_an_error():
    with pytest.raises(DataError, match=r"no row has a usable shape \(2 rows rejected"):
        to_examples([RawRow("x, line 1", {"a": 1}), RawRow("x, line 2", {"a": 2})], data_cfg())


def test_directory_with_several_conversation_shapes(tmp_path: Path):
    (tmp_path / "a.jsonl").write_text(json.dumps({"instruction": "i", "output": "o"}) + "\n")
    (tmp_path / "b.json").write_text(json.dumps([{"messages": [{"role": "user", "content": "u"},
                                                              {"role": "assistant", "content": "a"}]}]))
    (tmp_path / "c.csv").write_text('prompt,response\n"multi\nline",ok\n')
    examples, rejections = to_examples(read_rows(str(tmp_path)), data_cfg())
    assert not rejections
    assert sorted(e.shape for e in examples) == ["alpaca", "chat", "prompt_response"]
    assert any(e.messages[0]["content"] == "multi\nline" for e in examples)


def test_no_usable_row_hint_fits_the_file():
    pairs = [RawRow("p.json, record 1", {"chosen": {"speaker": "gpt", "text": "a"}, "rejected": "b", "q": "?"})]
    with pytest.raises(DataError, match=r"data\.columns\.prompt/chosen/rejected"):
        to_examples(pairs, data_cfg())
    # a CSV without a header line: its first record became the column names
    headless = [RawRow("s.csv, line 2", {"1": "-1", "the rock is destined to be the 21st century's new conan": "x"})]
    with pytest.raises(DataError, match=r"first line is read as the header and looks like a record"):
        to_examples(headless, data_cfg())


def test_conversations_with_true_false_feedback_are_refused_unless_the_format_is_named():
    rows = [RawRow(f"k.json, record {i}", {"messages": [{"role": "user", "content": f"q{i}"},
                                                        {"role": "assistant", "content": f"a{i}"}],
                                           "label": i % 2 == 0}) for i in range(1, 7)]
    with pytest.raises(DataError, match=r"k\.json, record 1: field 'label' marks each conversation true or false.*"
                                        r"data\.format=chat"):
        to_examples(rows, data_cfg())
    examples, _ = to_examples(rows, data_cfg("data.format=chat"))
    assert len(examples) == 6
