"""Read the user's data into raw rows that remember where they came from.

Local JSONL, JSON (an array, streamed like JSONL; or an object of lists), CSV/TSV (quoted fields may hold
newlines), Parquet, or a directory of such files; anything else that is not a local path is a hub dataset id
(`org/name`, `org/name:split` or `org/name/subset:split`) for online users. Parse errors name the
file and line; a non-UTF-8 byte is an error naming its line.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import itertools
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, NoReturn

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


_JSON_CHUNK = 1 << 20  # bytes read per refill of a streamed JSON array (tests shrink it to split records)
_JSON_WS = re.compile(r"[ \t\n\r]*")  # JSON's whitespace, exactly what json.loads skips
# An element that failed to parse may only be cut off by the end of the buffer (not malformed) when the
# decoder stopped inside an unterminated string, or within a token's length of the buffer's end (longest:
# "-Infinity", a \uXXXX escape, a number's "1e+"); any other failure is malformed whatever bytes follow,
# so it is reported at once instead of reading the rest of a large file into the buffer first. Likewise a
# number parsed within this margin of the end may still go on.
_CUT_OFF_MARGIN = 32
_DECODER = json.JSONDecoder()


def _read_json(path: Path) -> Iterator[RawRow]:
    if _first_byte(path) == b"[":
        yield from _JsonArrayStream(path).rows()
    else:
        # An object of lists (column-oriented JSON) cannot be streamed: record 1 needs the first value of
        # every column, and the last column is at the end of the file. It (and anything that is not an
        # array: a scalar, an empty file, a BOM, which json.loads refuses) is read whole as before; large
        # data belongs in JSONL, CSV, Parquet or a JSON array (streamed).
        yield from _read_json_whole(path)


def _first_byte(path: Path) -> bytes:
    """The file's first byte that is not JSON whitespace (b"" when there is none)."""
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 16), b""):
            rest = block.lstrip(b" \t\n\r")
            if rest:
                return rest[:1]
    return b""


def _read_json_whole(path: Path) -> Iterator[RawRow]:
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
    # _checked only asks whether the raw text holds a surrogate escape: search the file once, not per record
    raw = "\\ud800" if _SURROGATE_ESCAPE.search(text) else ""
    for i, obj in enumerate(data, start=1):
        if not isinstance(obj, dict):
            raise DataError(f"{path}, record {i}: expected a JSON object, got {type(obj).__name__}")
        where = f"{path}, record {i}"
        yield RawRow(where, _checked(obj, where, raw))


class _JsonArrayStream:
    """A top-level JSON array read element by element, so a `limit` stops reading early and memory holds
    about one record plus a chunk, not the file. Errors name the same line, with the same message, as
    json.loads on the whole file would; they are raised when reading reaches them (like JSONL), so records
    before a bad byte or a malformed record are still read."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fh: BinaryIO  # open while rows() runs
        self.decoder = codecs.getincrementaldecoder("utf-8")()
        self.buf = ""  # decoded text not yet dropped
        self.pos = 0  # parse position in buf
        self.mark = 0  # buf[mark:] is kept on refill (the text an error message may still need)
        self.lines_dropped = 0  # newlines in the text dropped from buf: the line numbers' base
        self.byte_lines = 0  # newlines in the bytes decoded so far: the base for a bad byte's line
        self.eof = False
        self.bad_utf8: DataError | None = None  # raised once the text before the bad byte is used up

    def rows(self) -> Iterator[RawRow]:
        with self.path.open("rb") as self.fh:  # closed when the generator is, e.g. at read_rows' limit
            yield from self._rows()

    def _rows(self) -> Iterator[RawRow]:
        self._skip_ws()
        self.pos += 1  # the "[" (_read_json checked it)
        i = 0
        if self._skip_ws() and self.buf[self.pos] == "]":
            self.mark = self.pos
        else:
            while True:
                i += 1
                where = f"{self.path}, record {i}"
                obj, raw = self._element(where)
                if not isinstance(obj, dict):
                    raise DataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
                yield RawRow(where, _checked(obj, where, raw))
                self.mark = self.pos  # an array-level error is re-parsed from here
                if not self._skip_ws() or self.buf[self.pos] not in ",]":
                    self._array_syntax_error()
                if self.buf[self.pos] == "]":
                    break
                self.pos += 1
                if self._skip_ws() and self.buf[self.pos] == "]":  # trailing comma
                    self._array_syntax_error()
        self.pos += 1  # the "]"
        if self._skip_ws():  # anything but whitespace after the array
            self._array_syntax_error()

    def _element(self, where: str) -> tuple[Any, str]:
        """The next element and its text; refills while it is cut off by the end of the buffer."""
        while True:
            self.mark = self.pos
            try:
                obj, end = _DECODER.raw_decode(self.buf, self.pos)
            except RecursionError:
                raise DataError(f"{where}: JSON nested deeper than Python can read") from None
            except json.JSONDecodeError as exc:
                cut_off = exc.msg.startswith("Unterminated string") or exc.pos >= len(self.buf) - _CUT_OFF_MARGIN
                offset = exc.pos - self.pos  # _more() moves the text in the buffer
                if cut_off and self._more():
                    continue
                raise self._malformed(exc.msg, self.pos + offset) from None
            # a number near the buffer's end may go on in the next chunk: "12" of "125", and "1" of "1.5"
            # (the decoder stops before a "." or "e" with no digit after it yet)
            if not isinstance(obj, dict | list | str) and end >= len(self.buf) - _CUT_OFF_MARGIN and self._more():
                continue
            raw = self.buf[self.pos:end]
            self.pos = end
            return obj, raw

    def _skip_ws(self) -> bool:
        """Move past whitespace; True when a character follows, False at the end of the file."""
        while True:
            self.pos = _JSON_WS.match(self.buf, self.pos).end()  # `*`: always matches
            if self.pos < len(self.buf):
                return True
            if not self._more():
                return False

    def _more(self) -> bool:
        """Append the next decoded chunk to the buffer, first dropping the text before `mark`; False at the
        end of the file. Raises the deferred UTF-8 error when the parse needs text past the bad byte."""
        if self.bad_utf8 is not None:
            raise self.bad_utf8
        if self.eof:
            return False
        self.lines_dropped += self.buf.count("\n", 0, self.mark)
        self.buf, self.pos, self.mark = self.buf[self.mark:], self.pos - self.mark, 0
        text = ""
        while not text and not self.eof:
            # at least as much as the kept text: a record larger than a chunk is re-parsed after each
            # refill, so doubling keeps that linear in its size instead of quadratic
            data = self.fh.read(max(_JSON_CHUNK, len(self.buf)))
            self.eof = not data
            try:
                text = self.decoder.decode(data, final=self.eof)
            except UnicodeDecodeError as exc:
                # exc.object is this chunk behind any partial character held back from the last one
                # (bytes >= 0x80, never a newline), so the newlines before exc.start are this chunk's
                good = exc.object[: exc.start]
                line = self.byte_lines + good.count(b"\n") + 1
                self.bad_utf8 = DataError(f"{self.path}, line {line}: not valid UTF-8")
                text = good.decode("utf-8")
                if not text:
                    raise self.bad_utf8 from None
                break
            self.byte_lines += data.count(b"\n")
        self.buf += text
        return bool(text)

    def _malformed(self, msg: str, pos: int) -> DataError:
        line = self.lines_dropped + self.buf.count("\n", 0, pos) + 1
        return DataError(f"{self.path}, line {line}: malformed JSON ({msg})")

    def _array_syntax_error(self) -> NoReturn:
        """Raise the error json.loads gives for the array syntax after buf[mark] (a missing comma or
        bracket, a trailing comma, text after the array): re-parsing that text behind a stand-in element
        yields json's own message and position, whatever this Python's version words it as."""
        try:
            json.loads("[null" + self.buf[self.mark:])
        except json.JSONDecodeError as exc:
            raise self._malformed(exc.msg, self.mark + exc.pos - len("[null")) from None
        raise self._malformed("Expecting ',' delimiter", self.pos)  # not reached: the text is not valid


def _read_csv(path: Path) -> Iterator[RawRow]:
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    with path.open("rb") as fh:  # streamed record by record; decoded per line for exact error lines
        # a byte-order mark (what Excel writes) would otherwise glue itself to the first column's name
        lines = (_decode(raw, path, lineno).removeprefix("\ufeff") if lineno == 1 else _decode(raw, path, lineno)
                 for lineno, raw in enumerate(fh, start=1))
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
