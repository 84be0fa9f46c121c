"""Read the user's data into prompt/response records and fingerprint it.

Local JSONL, JSON, CSV and Parquet files are read here with line-accurate errors; anything that is
not a local path is treated as a hub dataset id (`org/name` or `org/name:split`) for online users.
"""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path
from typing import Any

from llmft.errors import UserFacingError

Record = dict[str, str]


class DataError(UserFacingError, ValueError):
    """Bad input data; the message names the file, line and field."""


def _as_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, (dict, list)):  # structured answers (e.g. gold JSON) are kept as JSON text
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _pick(row: dict[str, Any], where: str, prompt_col: str, response_col: str) -> Record:
    missing = [c for c in (prompt_col, response_col) if c not in row]
    if missing:
        raise DataError(f"{where}: missing field {missing[0]!r} (fields present: {', '.join(map(str, row)) or 'none'})")
    prompt, response = _as_text(row[prompt_col]), _as_text(row[response_col])
    # empty or null values are kept and judged by the validation gate, which counts them
    return {"prompt": prompt or "", "response": response or ""}


def _read_jsonl(path: Path, pc: str, rc: str) -> list[Record]:
    records = []
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(f"{path}, line {lineno}: not valid UTF-8 (byte {exc.start})") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}, line {lineno}: malformed JSON ({exc.msg}, column {exc.colno})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}, line {lineno}: expected a JSON object, got {type(row).__name__}")
            records.append(_pick(row, f"{path}, line {lineno}", pc, rc))
    return records


def _read_json(path: Path, pc: str, rc: str) -> list[Record]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not valid UTF-8 (byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}, line {exc.lineno}: malformed JSON ({exc.msg})") from None
    if isinstance(data, dict) and all(isinstance(v, list) for v in data.values()):  # columns of lists
        n = len(next(iter(data.values()), []))
        data = [{k: v[i] if i < len(v) else None for k, v in data.items()} for i in range(n)]
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON array of objects or an object of lists")
    out = []
    for i, row in enumerate(data):
        if not isinstance(row, dict):
            raise DataError(f"{path}, record {i + 1}: expected a JSON object")
        out.append(_pick(row, f"{path}, record {i + 1}", pc, rc))
    return out


def _read_csv(path: Path, pc: str, rc: str) -> list[Record]:
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh, delimiter=delimiter)
            return [_pick(row, f"{path}, line {reader.line_num}", pc, rc) for row in reader]
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not valid UTF-8 (byte {exc.start})") from None
    except csv.Error as exc:
        raise DataError(f"{path}: malformed CSV ({exc})") from None


def _read_parquet(path: Path, pc: str, rc: str) -> list[Record]:
    import pandas as pd

    frame = pd.read_parquet(path)
    return [_pick(row, f"{path}, row {i + 1}", pc, rc)
            for i, row in enumerate(frame.to_dict(orient="records"))]


_READERS = {".jsonl": _read_jsonl, ".ndjson": _read_jsonl, ".json": _read_json, ".csv": _read_csv,
            ".tsv": _read_csv, ".parquet": _read_parquet}


def _read_hub(source: str, pc: str, rc: str) -> list[Record]:
    import datasets

    name, _, split = source.partition(":")
    try:
        ds = datasets.load_dataset(name, split=split or "train")
    except Exception as exc:
        raise DataError(f"data.source={source}: not a local file and the hub dataset could not be "
                        f"loaded ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
    return [_pick(dict(row), f"{source}, row {i + 1}", pc, rc) for i, row in enumerate(ds)]


def read_records(source: str, prompt_column: str = "prompt", response_column: str = "response") -> list[Record]:
    path = Path(source).expanduser()
    if path.is_file():
        reader = _READERS.get(path.suffix.lower())
        if reader is None:
            raise DataError(f"{path}: unsupported file type {path.suffix!r}; use one of {', '.join(_READERS)}")
        records = reader(path, prompt_column, response_column)
    elif path.suffix.lower() in _READERS or source.startswith((".", "/")):
        raise DataError(f"{path}: data file not found")
    else:
        records = _read_hub(source, prompt_column, response_column)
    if not records:
        raise DataError(f"{source}: no records (empty file)")
    return records


def fingerprint(records: list[Record]) -> str:
    """Content hash of the records, independent of file name, format and mtime."""
    digest = hashlib.sha256()
    for rec in records:
        digest.update(json.dumps([rec["prompt"], rec["response"]], ensure_ascii=False).encode())
        digest.update(b"\n")
    return digest.hexdigest()[:16]
