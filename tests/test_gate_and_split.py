import json

import pytest

from llmft.config_files import load_config
from llmft.data.gate import DataGateError, enforce, run_gate
from llmft.data.ingest import RawRow
from llmft.data.shapes import Example, to_examples
from llmft.data.split import split_items
from llmft.tasks.base import Encoded


def words_encoder(max_seq: int):
    """A stand-in tokenizer (one token per word, 5 for the template) with the tasks' truncation rule:
    the input is cut, the target kept; None when the target alone does not fit."""
    def encode(ex: Example) -> Encoded | None:
        target = len(ex.target.split()) + 1 if ex.shape != "text_label" else 0
        tokens = len(ex.prompt_key.split()) + 5 + target
        if target + 5 > max_seq:
            return None
        return Encoded(list(range(min(tokens, max_seq))), [], truncated=tokens > max_seq)
    return encode


def gate(rows: list[dict], *overrides: str, encode=None, max_seq=64):
    cfg = load_config(None, list(overrides))
    raw = [RawRow(f"d.jsonl, line {i}", r) for i, r in enumerate(rows, start=1)]
    examples, rejections = to_examples(raw, cfg.data)
    return run_gate(examples, rejections, cfg.data, cfg.validation, encode or words_encoder(max_seq), max_seq)


GOOD = [{"prompt": f"listing number {i}", "response": f'{{"n": {i}}}'} for i in range(40)]


def kept_examples(result) -> list[Example]:
    return [r.example for r in result.kept]


def test_gate_passes_clean_data():
    result = gate(GOOD)
    assert result.success, result.report.verdict
    assert result.report.verdict.startswith("data gate passed: 40 rows in, 40 kept, 0 duplicates removed, 0 rejected")
    assert result.report.ge_result["success"] is True


def test_exact_and_normalised_duplicates_are_removed_counted_and_shown():
    rows = [*GOOD, GOOD[0], {"prompt": "  LISTING number 1 ", "response": '{"n": 1}'}]
    result = gate(rows)
    assert result.success, result.report.verdict
    assert result.report.duplicates_removed == 2 and len(result.kept) == 40
    reasons = sorted(r.reason for r in result.rejected)
    assert reasons == ["exact duplicate of d.jsonl, line 1", "normalised duplicate of d.jsonl, line 2"]
    assert result.report.duplicate_examples == ["d.jsonl, line 41 is an exact duplicate of d.jsonl, line 1",
                                                "d.jsonl, line 42 is a normalised duplicate of d.jsonl, line 2"]


def test_many_duplicates_are_a_warning_unless_a_limit_is_set():
    dialog = GOOD[:20] * 3  # two thirds duplicates, as in a real dialog corpus
    result = gate(dialog)
    assert result.success and len(result.kept) == 20
    assert result.report.warnings == ["66.7% of rows were duplicates (40 of 60, removed); set "
                                      "validation.max_duplicate_fraction to refuse such data"]
    refused = gate(dialog, "validation.max_duplicate_fraction=0.05")
    assert not refused.success
    assert "66.7% of rows are duplicates, over validation.max_duplicate_fraction=0.05" in refused.report.verdict
    assert "set validation.max_duplicate_fraction=0.67 to accept" in refused.report.verdict
    assert gate(dialog, "validation.max_duplicate_fraction=0.67").success


def test_empty_fields_are_rejected_with_reason_and_counted():
    result = gate([*GOOD, {"prompt": "   ", "response": "x"}, {"prompt": "ok then", "response": ""}])
    assert result.success
    assert result.report.rejected_by_reason == {"empty": 2}
    assert {r.reason for r in result.rejected} == {"empty user turn", "empty assistant turn"}


def test_short_prompts_are_valid():
    result = gate([*GOOD, {"prompt": "Hi", "response": "Hello! How can I help?"}])
    assert result.success and len(result.kept) == 41


def test_every_row_rejected_fails_with_one_line_naming_the_key_and_a_passing_value():
    result = gate([{"prompt": " ", "response": "x"}] * 10)
    assert not result.success and len(result.kept) == 0
    with pytest.raises(DataGateError) as err:
        enforce(result.report, "d.jsonl")
    msg = str(err.value)
    assert "\n" not in msg and "10 rows in, 0 kept" in msg
    assert "0 rows kept, need at least validation.min_rows=8" in msg
    assert "100.0% of rows rejected, over validation.max_rejected_fraction=0.2" in msg
    assert "set validation.max_rejected_fraction=1.00 to accept" in msg
    assert "first rejected: d.jsonl, line 1: empty user turn" in msg


def test_single_row_fails_minimum_rows_with_the_key():
    result = gate(GOOD[:1])
    assert not result.success
    assert "1 rows kept, need at least validation.min_rows=8" in result.report.verdict
    assert "set validation.min_rows=1 to accept" in result.report.verdict


def test_huge_record_is_cut_before_tokenizing_and_truncated():
    huge = {"prompt": "x " * 5_000_000, "response": "y"}
    from llmft.chat_format import CHARS_PER_TOKEN_BOUND

    assert CHARS_PER_TOKEN_BOUND * 64 < 10_000  # what encode_to_fit keeps of a 10 MB input
    result = gate([*GOOD, huge])
    assert result.success and result.report.truncated == 1 and len(result.kept) == 41


@pytest.mark.parametrize("policy,success,kept", [("drop", True, 39), ("truncate", True, 40), ("fail", False, 40)])
def test_token_length_policies(policy, success, kept):
    rows = [*GOOD[:39], {"prompt": "long " * 100, "response": "r"}]
    result = gate(rows, f"validation.length_policy={policy}")
    assert result.success is success, result.report.verdict
    assert len(result.kept) == kept
    assert result.report.truncated == (0 if policy == "drop" else 1)
    if policy == "drop":
        assert result.rejected[0].reason == "over train.max_seq_length=64 tokens (validation.length_policy=drop)"
    if policy == "fail":
        assert "validation.length_policy=fail" in result.report.verdict and "d.jsonl, line 40" in result.report.verdict
        assert "set validation.length_policy=truncate to accept" in result.report.verdict


def test_a_row_is_dropped_only_when_its_target_alone_cannot_fit():
    rows = [*GOOD, {"prompt": "short question", "response": "word " * 80}]
    result = gate(rows)
    assert result.success and result.report.rejected_by_reason == {"too_long": 1}
    assert result.rejected[0].reason == "the target alone does not fit train.max_seq_length=64 tokens"


def test_rejections_that_are_mostly_too_long_point_at_the_sequence_length():
    rows = [*GOOD[:10], *({"prompt": f"question {i}", "response": "word " * 80} for i in range(10))]
    result = gate(rows)
    assert not result.success
    assert "set validation.max_rejected_fraction=0.50 to accept (most rejected rows are too long: a larger " \
           "train.max_seq_length keeps them)" in result.report.verdict


PII_ROWS = [*GOOD, {"prompt": "mail jane.doe@example.com or call +1 415-555-0132",
                    "response": "card 4111 1111 1111 1111"}]


def test_pii_redact():
    result = gate(PII_ROWS, "validation.pii_action=redact")
    assert result.success and result.report.pii == {"email": 1, "phone": 1, "card": 1}
    row = next(e for e in kept_examples(result) if "mail" in e.prompt_key)
    assert row.messages[0]["content"] == "mail [EMAIL] or call [PHONE]" and row.target == "card [CARD]"


def test_pii_warn_keeps_text_and_fail_stops_without_copying_the_row():
    warned = gate(PII_ROWS, "validation.pii_action=warn")
    assert warned.success and any("jane.doe@example.com" in e.prompt_key for e in kept_examples(warned))
    failed = gate(PII_ROWS, "validation.pii_action=fail")
    assert not failed.success and "personal data" in failed.report.verdict
    assert "d.jsonl, line 41" in failed.report.verdict and "validation.pii_action=redact" in failed.report.verdict
    assert failed.rejected[0].data == {} and "jane" not in json.dumps([r.data for r in failed.rejected])


def test_rejected_rows_are_scrubbed_of_pii():
    rows = [*GOOD, {"prompt": "x", "response": "reach me at bob@example.org"}]
    result = gate(rows, "validation.min_prompt_chars=2")  # rejected: prompt too short
    assert result.rejected[0].kind == "length"
    assert "bob@example.org" not in json.dumps(result.rejected[0].data)


LABELLED = [{"text": f"review number {i}", "label": ["positive", "negative", "neutral"][i % 3]} for i in range(60)]


def test_pinned_labels_and_other_labels_in_the_data_name_data_labels():
    rows = [*LABELLED, {"text": "odd one", "label": "sarcastic"}, {"text": "odd two", "label": "sarcastic"}]
    result = gate(rows, "data.labels=[positive, negative]")
    assert not result.success
    verdict = result.report.verdict
    assert "data.labels pins [positive, negative] but the data has labels" in verdict
    assert "neutral (20)" in verdict and "sarcastic (2)" in verdict and "set data.labels=null to accept" in verdict


def test_label_spellings_are_merged_and_rare_labels_dropped():
    rows = [*LABELLED, {"text": "a b", "label": "Positive"}, {"text": "c d", "label": "POSITIVE "},
            {"text": "e f", "label": "sarcastic"}]
    result = gate(rows)
    assert result.success, result.report.verdict
    assert result.report.labels_normalised == {"Positive": "positive", "POSITIVE": "positive"}
    assert {e.label for e in kept_examples(result)} == {"positive", "negative", "neutral"}
    assert result.report.rejected_by_reason == {"rare_label": 1}
    assert "label 'sarcastic' has only 1 rows" in result.rejected[0].reason


def test_class_balance_limit_is_opt_in_and_names_its_key():
    skewed = LABELLED + [{"text": f"more praise {i}", "label": "positive"} for i in range(600)]
    assert gate(skewed).success
    result = gate(skewed, "validation.min_class_fraction=0.05")
    assert not result.success and "validation.min_class_fraction=0.05" in result.report.verdict
    assert "set validation.min_class_fraction=0.03 to accept" in result.report.verdict


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
