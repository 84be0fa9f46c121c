from llmft.config import ValidationConfig
from llmft.splitting import split_records
from llmft.validation import DataGateError, enforce, run_gate

GOOD = [{"prompt": f"listing number {i}", "response": f'{{"n": {i}}}'} for i in range(40)]


def test_gate_passes_clean_data():
    report = run_gate(GOOD, ValidationConfig())
    assert report.success, report.verdict
    assert report.verdict.startswith("data gate passed: 40 rows")
    assert report.ge_result["success"] is True


def test_gate_fails_on_empty_fields_and_duplicates_naming_rows():
    bad = [*GOOD[:30], {"prompt": "   ", "response": "x"}, *[{"prompt": "Listing  number 1", "response": "y"}] * 5]
    report = run_gate(bad, ValidationConfig(max_duplicate_fraction=0.05))
    assert not report.success
    failed = {c["check"] for c in report.checks if not c["success"]}
    assert "expect_column_values_to_not_match_regex(prompt)" in failed
    assert "expect_column_proportion_of_unique_values_to_be_between(prompt_normalised)" in failed
    assert "rows 31" in report.verdict  # the blank prompt is data row 31
    try:
        enforce(report, "data.jsonl")
    except DataGateError as exc:
        assert str(exc).startswith("data.jsonl: data gate FAILED on 36 rows")
        assert "\n" not in str(exc)
    else:
        raise AssertionError("gate did not stop bad data")


def test_gate_enforces_length_bounds_and_row_count():
    report = run_gate(GOOD[:3], ValidationConfig(min_rows=8, max_prompt_chars=10))
    failed = [c["check"] for c in report.checks if not c["success"]]
    assert "expect_table_row_count_to_be_between(table)" in failed
    assert "expect_column_values_to_be_between(prompt_chars)" in failed


RECORDS = [{"prompt": f"Product listing {i}", "response": str(i)} for i in range(400)]


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
