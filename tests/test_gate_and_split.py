import json

import pytest

from llmft.config import load_config
from llmft.data.gate import DataGateError, enforce, run_gate
from llmft.data.ingest import RawRow
from llmft.data.shapes import Example, to_examples
from llmft.data.split import split_items


def gate(rows: list[dict], *overrides: str, tokens=lambda ex: len(ex.prompt_key.split()) + 5, max_seq=64):
    cfg = load_config(None, list(overrides))
    raw = [RawRow(f"d.jsonl, line {i}", r) for i, r in enumerate(rows, start=1)]
    examples, rejections = to_examples(raw, cfg.data)
    return run_gate(examples, rejections, cfg.data, cfg.validation, tokens, max_seq)


GOOD = [{"prompt": f"listing number {i}", "response": f'{{"n": {i}}}'} for i in range(40)]


def test_gate_passes_clean_data():
    result = gate(GOOD)
    assert result.success, result.verdict
    assert result.verdict.startswith("data gate passed: 40 rows in, 40 kept, 0 duplicates removed, 0 rejected")
    assert result.ge_result["success"] is True


def test_exact_and_normalised_duplicates_are_removed_and_counted():
    rows = [*GOOD, GOOD[0], {"prompt": "  LISTING number 1 ", "response": '{"n": 1}'}]
    result = gate(rows)
    assert result.success, result.verdict
    assert result.duplicates_removed == 2 and len(result.kept) == 40
    reasons = sorted(r.reason for r in result.rejected)
    assert reasons == ["exact duplicate of d.jsonl, line 1", "normalised duplicate of d.jsonl, line 2"]


def test_too_many_duplicates_fail_the_gate():
    result = gate(GOOD[:20] + GOOD[:5])
    assert not result.success
    assert "expect_column_mean_to_be_between(is_duplicate)" in result.verdict


def test_empty_fields_are_rejected_with_reason_and_counted():
    result = gate([*GOOD, {"prompt": "   ", "response": "x"}, {"prompt": "ok then", "response": ""}])
    assert result.success
    assert result.rejected_by_reason == {"empty": 2}
    assert {r.reason for r in result.rejected} == {"empty user turn", "empty assistant turn"}


def test_every_row_rejected_fails_with_one_line():
    result = gate([{"prompt": " ", "response": "x"}] * 10)
    assert not result.success and len(result.kept) == 0
    with pytest.raises(DataGateError) as err:
        enforce(result, "d.jsonl")
    assert "\n" not in str(err.value) and "10 rows in, 0 kept" in str(err.value)


def test_single_row_fails_minimum_rows():
    result = gate(GOOD[:1])
    assert not result.success
    assert "expect_column_sum_to_be_between(kept)" in result.verdict and "observed 1" in result.verdict


def test_huge_record_is_rejected_by_length_without_tokenizing():
    huge = {"prompt": "x" * 10_000_000, "response": "y"}

    def tokens(ex: Example) -> int:
        assert len(ex.prompt_key) < 1000, "the 10 MB record must not reach the tokenizer"
        return 10

    result = gate([*GOOD, huge], tokens=tokens)
    assert result.success
    assert result.rejected_by_reason == {"length": 1}
    assert "prompt has 10000000 chars" in result.rejected[0].reason


@pytest.mark.parametrize("policy,success,kept", [("drop", True, 39), ("truncate", True, 40), ("fail", False, 40)])
def test_token_length_policies(policy, success, kept):
    rows = [*GOOD[:39], {"prompt": "long " * 100, "response": "r"}]
    result = gate(rows, f"validation.length_policy={policy}")
    assert result.success is success, result.verdict
    assert len(result.kept) == kept
    if policy == "drop":
        assert result.rejected[0].reason == "105 tokens > train.max_seq_length=64"
    if policy == "fail":
        assert "expect_column_values_to_be_between(tokens)" in result.verdict and "d.jsonl, line 40" in result.verdict


PII_ROWS = [*GOOD, {"prompt": "mail jane.doe@example.com or call +1 415-555-0132",
                    "response": "card 4111 1111 1111 1111"}]


def test_pii_redact():
    result = gate(PII_ROWS, "validation.pii_action=redact")
    assert result.success and result.pii == {"email": 1, "phone": 1, "card": 1}
    row = next(e for e in result.kept if "mail" in e.prompt_key)
    assert row.messages[0]["content"] == "mail [EMAIL] or call [PHONE]" and row.target == "card [CARD]"


def test_pii_warn_keeps_text_and_fail_stops_without_copying_the_row():
    warned = gate(PII_ROWS, "validation.pii_action=warn")
    assert warned.success and any("jane.doe@example.com" in e.prompt_key for e in warned.kept)
    failed = gate(PII_ROWS, "validation.pii_action=fail")
    assert not failed.success and "pii_matches" in failed.verdict and "d.jsonl, line 41" in failed.verdict
    assert failed.rejected[0].data == {} and "jane" not in json.dumps([r.data for r in failed.rejected])


def test_rejected_rows_are_scrubbed_of_pii():
    rows = [*GOOD, {"prompt": "x", "response": "reach me at bob@example.org"}]  # rejected: prompt too short
    result = gate(rows)
    assert result.rejected[0].kind == "length"
    assert "bob@example.org" not in json.dumps(result.rejected[0].data)


LABELLED = [{"text": f"review number {i}", "label": ["positive", "negative", "neutral"][i % 3]} for i in range(60)]


def test_classification_labels_unknown_and_balance():
    rows = [*LABELLED, {"text": "odd one", "label": "sarcastic"}]
    result = gate(rows, "data.labels=[positive, negative, neutral]")
    assert result.success, result.verdict
    assert result.rejected_by_reason == {"unknown_label": 1}
    skewed = LABELLED + [{"text": f"more praise {i}", "label": "positive"} for i in range(600)]
    result = gate(skewed, "validation.min_class_fraction=0.05", "validation.max_duplicate_fraction=1")
    assert not result.success and "expect_column_min_to_be_between(label_share)" in result.verdict


RECORDS = [{"prompt": f"Product listing {i}", "response": str(i)} for i in range(400)]


def split_records(records, seed, validation_fraction, test_fraction, max_train_rows=None):
    return split_items(records, lambda r: r["prompt"], seed, validation_fraction, test_fraction, max_train_rows)


def test_split_is_deterministic_and_roughly_proportional():
    a = split_records(RECORDS, 0, 0.1, 0.2)
    b = split_records(list(reversed(RECORDS)), 0, 0.1, 0.2)
    assert {k: sorted(r["prompt"] for r in v) for k, v in a.items()} == \
           {k: sorted(r["prompt"] for r in v) for k, v in b.items()}
    assert 50 <= len(a["test"]) <= 110 and 20 <= len(a["validation"]) <= 65


def test_split_is_stable_when_rows_are_appended():
    before = split_records(RECORDS[:300], 0, 0.1, 0.2)
    after = split_records(RECORDS, 0, 0.1, 0.2)
    for name in before:
        assert {r["prompt"] for r in before[name]} <= {r["prompt"] for r in after[name]}


def test_same_prompt_never_lands_in_two_splits():
    dupes = [{"prompt": "  SAME listing ", "response": "a"}, {"prompt": "same listing", "response": "b"}] * 10
    splits = split_records(RECORDS + dupes, 0, 0.1, 0.2)
    homes = {name for name, rows in splits.items() for r in rows if r["prompt"].strip().lower() == "same listing"}
    assert len(homes) == 1


def test_train_cap_keeps_a_stable_subset():
    small = split_records(RECORDS, 0, 0.1, 0.2, max_train_rows=100)
    large = split_records(RECORDS, 0, 0.1, 0.2, max_train_rows=200)
    assert len(small["train"]) == 100
    assert {r["prompt"] for r in small["train"]} <= {r["prompt"] for r in large["train"]}


def test_every_label_is_measured_in_test():
    rows = [{"prompt": f"text {i}", "label": "common"} for i in range(200)] + \
           [{"prompt": f"rare text {i}", "label": "rare"} for i in range(3)]
    for seed in range(10):
        splits = split_items(rows, lambda r: r["prompt"], seed, 0.1, 0.1, label=lambda r: r["label"])
        assert {r["label"] for r in splits["test"]} == {"common", "rare"}
        assert sum(len(v) for v in splits.values()) == len(rows)
