import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from llmft.data.ingest import DataError, read_rows, source_fingerprint

ROOT = Path(__file__).resolve().parents[1]
ROWS = [{"prompt": f"listing {i}", "response": json.dumps({"brand": f"B{i}"})} for i in range(5)]


def test_shipped_dataset_is_large_enough_and_reproducible(tmp_path: Path):
    rows = read_rows(str(ROOT / "data" / "products.jsonl"))
    assert len(rows) >= 400
    assert all(json.loads(r.data["response"]).keys() >= {"brand", "price"} for r in rows)
    out = tmp_path / "products.jsonl"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "generate_product_data.py"), "--out", str(out)],
                   check=True, capture_output=True)
    assert out.read_bytes() == (ROOT / "data" / "products.jsonl").read_bytes()


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".tsv", ".parquet"])
def test_formats_read_the_same_rows(tmp_path: Path, suffix: str):
    path = tmp_path / f"data{suffix}"
    frame = pd.DataFrame(ROWS)
    if suffix == ".jsonl":
        frame.to_json(path, orient="records", lines=True)
    elif suffix == ".json":
        path.write_text(json.dumps(ROWS))
    elif suffix in (".csv", ".tsv"):
        frame.to_csv(path, index=False, sep="\t" if suffix == ".tsv" else ",")
    else:
        frame.to_parquet(path)
    assert [r.data for r in read_rows(str(path))] == ROWS


def test_json_object_of_lists(tmp_path: Path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps({"prompt": ["a", "b"], "response": ["x", "y"]}))
    expected = [{"prompt": "a", "response": "x"}, {"prompt": "b", "response": "y"}]
    assert [r.data for r in read_rows(str(path))] == expected


def test_csv_quoted_newlines_keep_line_numbers(tmp_path: Path):
    path = tmp_path / "d.csv"
    path.write_text('prompt,response\n"two\nlines","a, b"\nplain,"say ""hi"""\n')
    rows = read_rows(str(path))
    assert [r.data for r in rows] == [{"prompt": "two\nlines", "response": "a, b"},
                                      {"prompt": "plain", "response": 'say "hi"'}]
    assert [r.where for r in rows] == [f"{path}, line 2", f"{path}, line 4"]


def test_malformed_jsonl_names_the_line(tmp_path: Path):
    path = tmp_path / "d.jsonl"
    lines = [json.dumps(r) for r in ROWS] + ['{"prompt": "x", "response": ', json.dumps(ROWS[0])]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"d\.jsonl, line 6: malformed JSON"):
        read_rows(str(path))


def test_empty_non_utf8_missing_and_unsupported(tmp_path: Path):
    empty = tmp_path / "e.jsonl"
    empty.write_text("\n")
    with pytest.raises(DataError, match="no records"):
        read_rows(str(empty))
    bad = tmp_path / "b.jsonl"
    bad.write_bytes(json.dumps(ROWS[0]).encode() + b"\n" + b'{"prompt": "caf\xe9", "response": "x"}\n')
    with pytest.raises(DataError, match=r"b\.jsonl, line 2: not valid UTF-8"):
        read_rows(str(bad))
    bad_csv = tmp_path / "b.csv"
    bad_csv.write_bytes(b"prompt,response\nok,fine\ncaf\xe9,x\n")
    with pytest.raises(DataError, match=r"b\.csv, line 3: not valid UTF-8"):
        read_rows(str(bad_csv))
    with pytest.raises(DataError, match="not found"):
        read_rows(str(tmp_path / "missing.jsonl"))
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(DataError, match=r"unsupported file type '\.txt'"):
        read_rows(str(tmp_path / "x.txt"))


def test_csv_row_with_extra_fields_names_the_line(tmp_path: Path):
    path = tmp_path / "d.csv"
    path.write_text("prompt,response\na,b\nc,d,e\n")
    with pytest.raises(DataError, match=r"d\.csv, line 3: 3 fields, header has 2"):
        read_rows(str(path))


def test_hub_id_offline_is_one_clear_error(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match=r"data.source=someorg/no-such-dataset: not a local file") as err:
        read_rows("someorg/no-such-dataset")
    assert "\n" not in str(err.value)


def test_source_fingerprint_follows_bytes(tmp_path: Path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n")
    first = source_fingerprint(str(path))
    assert source_fingerprint(str(path)) == first
    path.write_text(json.dumps(ROWS[1]) + "\n")
    assert source_fingerprint(str(path)) != first


def test_deep_nesting_is_a_one_line_error_not_a_recursion_error(tmp_path: Path):
    deep = tmp_path / "deep.jsonl"
    deep.write_text(json.dumps(ROWS[0]) + "\n" + '{"prompt": ' + "[" * 100_000 + "]" * 100_000 + ', "response": "x"}\n')
    with pytest.raises(DataError, match=r"deep\.jsonl, line 2: JSON nested deeper than"):
        read_rows(str(deep))
    nested = tmp_path / "nested.json"
    nested.write_text(json.dumps([{"prompt": "p", "response": "r", "meta": {"a": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[
        "too deep"]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}}]))
    with pytest.raises(DataError, match=r"nested\.json, record 1: JSON nested deeper than 32 levels"):
        read_rows(str(nested))


def test_a_lone_surrogate_becomes_a_replacement_character(tmp_path: Path):
    path = tmp_path / "s.jsonl"
    path.write_text('{"prompt": "broken \\ud800 text", "response": "pair \\ud83d\\ude00 ok"}\n')
    (row,) = read_rows(str(path))
    assert row.data == {"prompt": "broken \ufffd text", "response": "pair \U0001F600 ok"}
    row_text = json.dumps(row.data, ensure_ascii=False)
    row_text.encode("utf-8")  # encodable: export and artifacts can write it


def test_reading_stops_at_the_limit(tmp_path: Path):
    """Files are streamed: a limit reads only that many records (the rest may even be malformed)."""
    path = tmp_path / "big.csv"
    path.write_text("prompt,response\n" + "".join(f"q{i},a{i}\n" for i in range(5)) + "too,many,fields\n")
    assert [r.data["prompt"] for r in read_rows(str(path), limit=3)] == ["q0", "q1", "q2"]
    with pytest.raises(DataError, match=r"big\.csv, line 7: 3 fields, header has 2"):
        read_rows(str(path))
    import pandas as pd

    parquet = tmp_path / "big.parquet"
    pd.DataFrame({"prompt": [f"q{i}" for i in range(3000)], "response": ["a"] * 3000}).to_parquet(parquet)
    rows = read_rows(str(parquet), limit=2500)  # crosses a batch boundary
    assert len(rows) == 2500 and rows[-1].where.endswith("row 2500") and rows[-1].data["prompt"] == "q2499"
