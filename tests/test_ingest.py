import json
from pathlib import Path

import pandas as pd
import pytest

from llmft.ingest import DataError, fingerprint, read_records

ROWS = [{"prompt": f"listing {i}", "response": json.dumps({"brand": f"B{i}"})} for i in range(5)]


def test_shipped_dataset_is_large_enough():
    records = read_records(str(Path(__file__).resolve().parents[1] / "data" / "products.jsonl"))
    assert len(records) >= 400
    assert all(json.loads(r["response"]).keys() >= {"brand", "price"} for r in records)


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".parquet"])
def test_formats_read_the_same_records(tmp_path: Path, suffix: str):
    path = tmp_path / f"data{suffix}"
    frame = pd.DataFrame(ROWS)
    if suffix == ".jsonl":
        frame.to_json(path, orient="records", lines=True)
    elif suffix == ".json":
        path.write_text(json.dumps(ROWS))
    elif suffix == ".csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path)
    assert read_records(str(path)) == ROWS


def test_json_object_of_lists(tmp_path: Path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps({"prompt": ["a", "b"], "response": ["x", "y"]}))
    assert read_records(str(path)) == [{"prompt": "a", "response": "x"}, {"prompt": "b", "response": "y"}]


def test_malformed_jsonl_names_the_line(tmp_path: Path):
    path = tmp_path / "d.jsonl"
    lines = [json.dumps(r) for r in ROWS] + ['{"prompt": "x", "response": '] + [json.dumps(ROWS[0])]
    path.write_text("\n".join(lines[:6]) + "\n" + lines[6])
    with pytest.raises(DataError, match=r"d\.jsonl, line 6: malformed JSON"):
        read_records(str(path))


def test_missing_field_names_line_and_field(tmp_path: Path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n" + json.dumps({"prompt": "only"}) + "\n")
    with pytest.raises(DataError, match=r"line 2: missing field 'response'"):
        read_records(str(path))


def test_custom_columns_and_structured_response(tmp_path: Path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"q": "hi", "a": {"k": 1}}) + "\n")
    assert read_records(str(path), "q", "a") == [{"prompt": "hi", "response": '{"k": 1}'}]


def test_empty_and_non_utf8_and_missing(tmp_path: Path):
    empty = tmp_path / "e.jsonl"
    empty.write_text("\n")
    with pytest.raises(DataError, match="no records"):
        read_records(str(empty))
    bad = tmp_path / "b.jsonl"
    bad.write_bytes(json.dumps(ROWS[0]).encode() + b"\n" + b'{"prompt": "caf\xe9", "response": "x"}\n')
    with pytest.raises(DataError, match=r"line 2: not valid UTF-8"):
        read_records(str(bad))
    with pytest.raises(DataError, match="not found"):
        read_records(str(tmp_path / "missing.jsonl"))


def test_fingerprint_tracks_content_not_order_of_keys():
    assert fingerprint(ROWS) == fingerprint([dict(reversed(list(r.items()))) for r in ROWS])
    changed = [*ROWS[:-1], {**ROWS[-1], "response": "other"}]
    assert fingerprint(changed) != fingerprint(ROWS)


def test_shipped_dataset_is_reproduced_by_its_generator(tmp_path: Path):
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "products.jsonl"
    subprocess.run([sys.executable, str(root / "scripts" / "generate_product_data.py"), "--out", str(out)],
                   check=True, capture_output=True)
    assert out.read_bytes() == (root / "data" / "products.jsonl").read_bytes()


def test_hub_id_offline_is_one_clear_error(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match=r"data.source=someorg/no-such-dataset: not a local file") as err:
        read_records("someorg/no-such-dataset")
    assert "\n" not in str(err.value)
