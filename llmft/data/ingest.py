"""Read the user's data into raw rows that remember where they came from.

Local JSONL, JSON (array, or object of lists), CSV/TSV (quoted fields may hold newlines), Parquet,
or a directory of such files; anything else that is not a local path is a hub dataset id
(`org/name`, `org/name:split` or `org/name/subset:split`) for online users. Parse errors name the
file and line; a non-UTF-8 byte is an error naming its line.
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmft.errors import UserFacingError


class DataError(UserFacingError, ValueError):
    """Bad input data; the message names the file, line and field."""


@dataclass
class RawRow:
    where: str  # "file, line N" (or "record N", "row N")
    data: dict[str, Any]


def _decode(raw: bytes, path: Path, lineno: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}, line {lineno}: not valid UTF-8 (byte {exc.start} of the line)") from None


_MAX_DEPTH = 32  # deeper nesting is not data a text model reads; it only risks recursion limits downstream
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")  # a \uD800-\uDFFF escape in the raw JSON
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _checked(obj: Any, where: str, raw: str) -> Any:
    """Refuse nesting deeper than _MAX_DEPTH; replace lone surrogates (a pair decodes to one character,
    so any surrogate left after json.loads is unpaired and not encodable as UTF-8) with U+FFFD."""
    stack: list[tuple[Any, int]] = [(obj, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict | list):
            if depth >= _MAX_DEPTH:
                raise DataError(f"{where}: JSON nested deeper than {_MAX_DEPTH} levels")
            stack.extend((child, depth + 1) for child in (node.values() if isinstance(node, dict) else node))
    return _fix_surrogates(obj) if _SURROGATE_ESCAPE.search(raw) else obj


def _fix_surrogates(node: Any) -> Any:
    if isinstance(node, str):
        return _LONE_SURROGATE.sub("\ufffd", node)
    if isinstance(node, list):
        return [_fix_surrogates(v) for v in node]
    if isinstance(node, dict):
        return {_fix_surrogates(k): _fix_surrogates(v) for k, v in node.items()}
    return node


def _loads(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except RecursionError:
        raise DataError(f"{where}: JSON nested deeper than Python can read") from None


def _read_jsonl(path: Path) -> Iterator[RawRow]:
    with path.open("rb") as fh:  # line by line: a large file is never held whole
        for lineno, raw in enumerate(fh, start=1):
            line = _decode(raw, path, lineno)
            if not line.strip():
                continue
            where = f"{path}, line {lineno}"
            try:
                obj = _loads(line, where)
            except json.JSONDecodeError as exc:
                raise DataError(f"{where}: malformed JSON ({exc.msg}, column {exc.colno})") from None
            if not isinstance(obj, dict):
                raise DataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
            yield RawRow(where, _checked(obj, where, line))


def _utf8_text(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DataError(f"{path}, line {line}: not valid UTF-8") from None


def _read_json(path: Path) -> Iterator[RawRow]:
    # one JSON document has to be parsed whole; large data belongs in JSONL, CSV or Parquet (streamed)
    text = _utf8_text(path)
    try:
        data = _loads(text, str(path))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}, line {exc.lineno}: malformed JSON ({exc.msg})") from None
    if isinstance(data, dict) and data and all(isinstance(v, list) for v in data.values()):
        n = max(len(v) for v in data.values())
        data = [{k: v[i] if i < len(v) else None for k, v in data.items()} for i in range(n)]
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON array of objects or an object of lists")
    for i, obj in enumerate(data, start=1):
        if not isinstance(obj, dict):
            raise DataError(f"{path}, record {i}: expected a JSON object, got {type(obj).__name__}")
        where = f"{path}, record {i}"
        yield RawRow(where, _checked(obj, where, text))


def _read_csv(path: Path) -> Iterator[RawRow]:
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    with path.open("rb") as fh:  # streamed record by record; decoded per line for exact error lines
        lines = (_decode(raw, path, lineno) for lineno, raw in enumerate(fh, start=1))
        reader = csv.DictReader(lines, delimiter=delimiter)
        start = 2  # line where the next record starts (header is line 1)
        try:
            for row in reader:
                if None in row:  # more fields than header columns
                    raise DataError(f"{path}, line {start}: {len(row) - 1 + len(row[None])} fields, header has "
                                    f"{len(reader.fieldnames or [])}")
                yield RawRow(f"{path}, line {start}", dict(row))
                start = reader.line_num + 1
        except csv.Error as exc:
            raise DataError(f"{path}, line {reader.line_num}: malformed CSV ({exc})") from None


def _read_parquet(path: Path) -> Iterator[RawRow]:
    import pyarrow.parquet as pq

    try:
        batches = pq.ParquetFile(path).iter_batches(batch_size=1024)  # streamed in row batches
        i = 0
        for batch in batches:
            for obj in batch.to_pylist():
                i += 1
                yield RawRow(f"{path}, row {i}", {k: _plain(v) for k, v in obj.items()})
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"{path}: not a readable Parquet file ({type(exc).__name__})") from None


def _plain(value: Any) -> Any:
    """numpy arrays / scalars from Parquet to plain Python, so shapes see lists and strings."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


READERS = {".jsonl": _read_jsonl, ".ndjson": _read_jsonl, ".json": _read_json, ".csv": _read_csv,
           ".tsv": _read_csv, ".parquet": _read_parquet}


def _files(path: Path) -> list[Path]:
    if path.is_file():
        if path.suffix.lower() not in READERS:
            raise DataError(f"{path}: unsupported file type {path.suffix!r}; use one of {', '.join(READERS)}")
        return [path]
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in READERS)
    if not files:
        raise DataError(f"{path}: directory holds no data files ({', '.join(READERS)})")
    return files


def _hub_rows(source: str) -> list[RawRow]:
    import datasets

    name, _, split = source.partition(":")
    parts = name.split("/")
    subset = parts[2] if len(parts) == 3 else None
    try:
        ds = datasets.load_dataset("/".join(parts[:2]), subset, split=split or "train")
    except Exception as exc:
        detail = str(exc).splitlines()[0] if str(exc) else ""
        raise DataError(f"data.source={source}: not a local file and the hub dataset could not be "
                        f"loaded ({type(exc).__name__}: {detail})") from None
    return [RawRow(f"{source}, row {i}", dict(obj)) for i, obj in enumerate(ds, start=1)]


def _local_path(source: str) -> Path | None:
    """The path when `source` names a local file or directory (which must exist); None for a hub id."""
    path = Path(source).expanduser()
    if not (path.exists() or path.suffix.lower() in READERS or source.startswith((".", "/", "~"))):
        return None
    if not path.exists():
        raise DataError(f"{path}: data file not found")
    return path


def read_rows(source: str, limit: int | None = None) -> list[RawRow]:
    """The source's records, or its first `limit` (files are streamed: reading stops there)."""
    path = _local_path(source)
    if path is not None:
        stream = (row for file in _files(path) for row in READERS[file.suffix.lower()](file))
        rows = list(itertools.islice(stream, limit))
    else:
        rows = _hub_rows(source)[:limit]
    if not rows:
        raise DataError(f"{source}: no records (empty file)")
    return rows


def source_fingerprint(source: str) -> str:
    """Hash of the data's bytes (local) or records (hub): the cache key of every data step."""
    digest = hashlib.sha256()
    path = _local_path(source)
    if path is not None:
        for file in _files(path):
            digest.update(str(file.relative_to(path) if path.is_dir() else file.name).encode() + b"\0")
            with file.open("rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
    else:
        for row in _hub_rows(source):
            digest.update(json.dumps(row.data, sort_keys=True, default=str).encode() + b"\n")
    return digest.hexdigest()[:16]
