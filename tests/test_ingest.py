import json
import re
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


def test_csv_byte_order_mark_is_not_part_of_the_first_column(tmp_path: Path):
    path = tmp_path / "excel.csv"
    path.write_bytes("\ufefflabel,text\n1,great film\n-1,dull\n".encode())
    assert [r.data for r in read_rows(str(path))] == [{"label": "1", "text": "great film"},
                                                      {"label": "-1", "text": "dull"}]


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


# --- .json arrays are streamed element by element -------------------------------------------------------------

def _whole_file_error(text: str) -> str:
    """The `line N: malformed JSON (...)` that parsing the whole document (the pre-streaming reader) gives."""
    try:
        json.loads(text)
    except json.JSONDecodeError as exc:
        return f"line {exc.lineno}: malformed JSON ({exc.msg})"
    raise AssertionError("the document is valid")


class _CountingReads:
    """Path.open wrapper that adds up the bytes the reader actually pulls from the file."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.bytes = 0
        real_open = Path.open

        def counting_open(path: Path, *args, **kwargs):
            fh = real_open(path, *args, **kwargs)
            real_read = fh.read

            def read(n: int = -1) -> bytes:
                data = real_read(n)
                self.bytes += len(data)
                return data

            fh.read = read
            return fh

        monkeypatch.setattr(Path, "open", counting_open)


def test_json_array_limit_reads_only_a_prefix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """50k records then a malformed tail: a limit succeeds after reading about one chunk, where parsing
    the whole document would fail on the tail."""
    from llmft.data import ingest

    path = tmp_path / "big.json"
    body = ",\n".join(json.dumps({"prompt": f"q{i}", "response": f"a{i}"}) for i in range(50_000))
    path.write_text("[\n" + body + ',\n{"prompt": "cut')  # unterminated string, no closing bracket
    size = path.stat().st_size
    assert size > 2 * ingest._JSON_CHUNK
    reads = _CountingReads(monkeypatch)
    rows = read_rows(str(path), limit=3)
    assert [r.data for r in rows] == [{"prompt": f"q{i}", "response": f"a{i}"} for i in range(3)]
    assert [r.where for r in rows] == [f"{path}, record {i}" for i in (1, 2, 3)]
    assert reads.bytes <= ingest._JSON_CHUNK + (1 << 16) < size  # one chunk (+ the first-byte peek)
    expected = _whole_file_error(path.read_text())
    assert expected.startswith("line 50002: malformed JSON (Unterminated string")
    with pytest.raises(DataError, match=re.escape(f"{path}, {expected}")):
        read_rows(str(path))


_TRICKY = [
    {"prompt": "caf\u00e9 \u4e2d\u6587 \U0001F600 \\\" end", "response": "r\nwith \"quotes\" and \\u escapes"},
    {"prompt": "astral \U0001F600 kept", "n": -12.5e-3, "big": 123456789012345678901234567890,
     "lits": [True, False, None], "neg": -0, "nested": {"a": [1, [2, {"b": "\u00ff" * 5}]]}},
    {"prompt": "\u20ac" * 40, "response": "x" * 70},
    {},
]


def test_json_array_records_split_across_chunks_parse_like_json_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Chunk sizes from 1 byte up move the cuts through records, tokens and multi-byte UTF-8 characters
    (the first read ends at exactly `chunk` bytes); every split parses as json.load does."""
    from llmft.data import ingest

    path = tmp_path / "t.json"
    text = (" \n[\n  " + ",\n  ".join(json.dumps(r, ensure_ascii=False) for r in _TRICKY)
            + ' , {"esc": "\\u00e9\\ud83d\\ude00", "lone": "a\\ud800b", "inf": -Infinity, "nan": NaN, "e": 1E+2}'
            + "\n]\n\n")
    data = text.encode("utf-8")
    path.write_bytes(data)
    with path.open(encoding="utf-8") as fh:
        expected = json.load(fh)
    expected[-1]["lone"] = "a\ufffdb"  # _checked's lone-surrogate repair, as before
    for chunk in [*range(1, len(data) + 1), 1 << 20]:
        monkeypatch.setattr(ingest, "_JSON_CHUNK", chunk)
        rows = read_rows(str(path))
        got = [r.data for r in rows]
        assert json.dumps(got, sort_keys=True) == json.dumps(expected, sort_keys=True), chunk  # NaN-safe
        assert [r.where for r in rows] == [f"{path}, record {i}" for i in range(1, len(expected) + 1)]


@pytest.mark.parametrize("chunk", [1, 4, 1 << 20])
@pytest.mark.parametrize("tail", [
    '{"prompt": "x", "response": tru}\n]',  # bad literal
    '{"prompt": "x" "response": "y"}\n]',  # missing colon
    '{"prompt": "x",\n\n "response": "y"\n]',  # object closed by a bracket
    '{"prompt": "bad \\q escape"}]',
    '{"prompt": "x"} {"prompt": "y"}]',  # missing comma between records
    '{"prompt": "x"},\n\n]',  # trailing comma
    '{"prompt": "x"}\n',  # no closing bracket
    '{"prompt": "x"},',  # comma then end of file
    '{"prompt": "x"}]\n\n  trailing garbage',
    '{"prompt": "x"}] ]',
    '{"prompt": "unterminated\n',
])
def test_json_array_malformed_record_names_the_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int,
                                                    tail: str):
    from llmft.data import ingest

    monkeypatch.setattr(ingest, "_JSON_CHUNK", chunk)
    path = tmp_path / "m.json"
    text = "[\n" + ",\n".join(json.dumps(r) for r in ROWS) + ",\n" + tail
    path.write_text(text)
    expected = _whole_file_error(text)
    assert expected.split(":")[0] not in ("line 1", "line 2")  # the error is past the records
    with pytest.raises(DataError, match=re.escape(f"{path}, {expected}")):
        read_rows(str(path))
    assert len(read_rows(str(path), limit=len(ROWS))) == len(ROWS)  # the records before it still stream


@pytest.mark.parametrize("text", ["[", "[\n\n", "[,]", "[}", "[] x", "[{} 2]", "\n  [  \n  ]  \n ,"])
def test_json_array_broken_at_the_top_level_matches_a_whole_parse(tmp_path: Path, text: str):
    path = tmp_path / "b.json"
    path.write_text(text)
    with pytest.raises(DataError, match=re.escape(f"{path}, {_whole_file_error(text)}")):
        read_rows(str(path))


@pytest.mark.parametrize("chunk", [1, 2, 3, 1 << 20])
def test_json_array_non_object_record_and_empty_array(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int):
    """A scalar cut by a chunk ("1" of "1.5") is read whole before its type is judged."""
    from llmft.data import ingest

    monkeypatch.setattr(ingest, "_JSON_CHUNK", chunk)
    path = tmp_path / "n.json"
    for element, kind in [("[1, 2]", "list"), ("12345", "int"), ("1.5", "float"), ("-2e5", "float"), ('"text"', "str"),
                          ("null", "NoneType"), ("true", "bool")]:
        path.write_text(json.dumps(ROWS[:2]).rstrip("]") + ", " + element + "]")
        with pytest.raises(DataError, match=rf"n\.json, record 3: expected a JSON object, got {kind}$"):
            read_rows(str(path))
        assert len(read_rows(str(path), limit=2)) == 2
    for element, kind in [("1.5", "float"), ("-2e5", "float"), ("12345", "int"), ("nul", "")]:
        path.write_text(f"[{element}]")  # the first read ends inside the scalar
        with pytest.raises(DataError, match=rf"n\.json, record 1: expected a JSON object, got {kind}$" if kind
                           else r"n\.json, line 1: malformed JSON \(Expecting value\)"):
            read_rows(str(path))
    for empty in ("[]", " [ \n ] \n"):
        path.write_text(empty)
        with pytest.raises(DataError, match="no records"):
            read_rows(str(path))


def test_json_array_bad_utf8_names_its_line_after_the_records_before_it(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch):
    from llmft.data import ingest

    path = tmp_path / "u.json"
    good = "[\n" + ",\n".join(json.dumps(r) for r in ROWS) + ",\n"
    for bad in (b'{"prompt": "caf\xe9"}]', b'{"prompt": "\xe2\x82"}]', b'{"prompt": "x"}]\n\xff', b'{"p": "\xe2\x82'):
        for chunk in (1, 2, 1 << 20):
            monkeypatch.setattr(ingest, "_JSON_CHUNK", chunk)
            data = good.encode() + bad
            with pytest.raises(UnicodeDecodeError) as exc:  # the whole-file reader's line for the bad byte
                data.decode("utf-8")
            line = data[: exc.value.start].count(b"\n") + 1
            path.write_bytes(data)
            with pytest.raises(DataError, match=rf"u\.json, line {line}: not valid UTF-8"):
                read_rows(str(path))
            assert len(read_rows(str(path), limit=len(ROWS))) == len(ROWS)


def test_json_bom_and_deep_nesting_keep_their_errors(tmp_path: Path):
    path = tmp_path / "bom.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(ROWS).encode())
    with pytest.raises(DataError, match=r"bom\.json, line 1: malformed JSON \(Unexpected UTF-8 BOM"):
        read_rows(str(path))  # refused as before: json.loads refuses a BOM
    deep = tmp_path / "deep.json"
    deep.write_text('[{"prompt": "p"}, {"prompt": ' + "[" * 100_000 + "]" * 100_000 + "}]")
    with pytest.raises(DataError, match=r"deep\.json, record 2: JSON nested deeper than"):
        read_rows(str(deep))


def test_json_object_of_lists_is_still_read_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from llmft.data import ingest

    monkeypatch.setattr(ingest, "_JSON_CHUNK", 2)
    path = tmp_path / "cols.json"
    path.write_text('\n {"prompt": ["a", "b", "c"],\n "response": ["x", "y"]}')
    assert [r.data for r in read_rows(str(path))] == [{"prompt": "a", "response": "x"},
                                                      {"prompt": "b", "response": "y"},
                                                      {"prompt": "c", "response": None}]
    assert [r.where for r in read_rows(str(path), limit=2)] == [f"{path}, record 1", f"{path}, record 2"]
    path.write_text('{"prompt": ["a"],\n "response": ["x"]\n')
    with pytest.raises(DataError, match=re.escape(f"{path}, {_whole_file_error(path.read_text())}")):
        read_rows(str(path))


def test_json_object_of_lists_repairs_lone_surrogates(tmp_path: Path):
    path = tmp_path / "cols.json"
    path.write_text('{"prompt": ["ok", "broken \\ud800"], "response": ["pair \\ud83d\\ude00", "x"]}')
    assert [r.data for r in read_rows(str(path))] == [{"prompt": "ok", "response": "pair \U0001F600"},
                                                      {"prompt": "broken \ufffd", "response": "x"}]
