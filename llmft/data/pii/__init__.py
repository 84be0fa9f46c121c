"""Find and redact personal data and secrets in text and in nested records.

Kinds: email, phone, card, iban, ssn, ip, secret, address, name (see `detectors.py`). Each match is
replaced by a typed placeholder such as `[EMAIL]`. Where matches of different kinds overlap, the
stronger kind wins (a checksummed card beats a phone pattern over the same digits), so each
character is redacted at most once. Everything runs in time linear in the text's length.

Records (JSON-like dicts and lists) are scanned value by value with the field's name as context
(`{"ssn": "123456789"}` is an SSN, `{"phone": 4155550132}` a phone); numbers are scanned as their
decimal text, so a card number stored as a JSON number is found too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from llmft.data.pii.detectors import DETECTORS, Span

KINDS = ("secret", "email", "iban", "card", "ssn", "ip", "phone", "address", "name")
PLACEHOLDER = {kind: f"[{kind.upper()}]" for kind in KINDS}
_RANK = {kind: i for i, kind in enumerate(KINDS)}  # earlier kinds win overlaps
# kinds a bare number can be; a number is never a name or an address
NUMBER_KINDS = frozenset({"card", "phone", "ssn", "iban"})


@dataclass(frozen=True)
class Finding:
    field: str  # where in the record, e.g. "messages[1].content" or "meta.contact"
    kind: str


ALL = frozenset(KINDS)


def spans(text: str, kinds: frozenset[str] = ALL) -> list[Span]:
    """Non-overlapping (start, end, kind) matches of the given kinds, in text order."""
    if not text:
        return []
    found = [span for detect in DETECTORS for span in detect(text) if span[2] in kinds]
    found.sort(key=lambda s: (_RANK[s[2]], -(s[1] - s[0]), s[0]))
    taken = bytearray(len(text))
    kept: list[Span] = []
    for start, end, kind in found:
        if end > start and not any(taken[start:end]):
            taken[start:end] = b"\x01" * (end - start)
            kept.append((start, end, kind))
    return sorted(kept)


def find(text: str, kinds: frozenset[str] = ALL) -> list[str]:
    """Kinds of personal data in the text, one entry per match."""
    return [kind for _, _, kind in spans(text, kinds)]


def _replace(text: str, matches: list[Span]) -> str:
    out, last = [], 0
    for start, end, kind in matches:
        out.append(text[last:start])
        out.append(PLACEHOLDER[kind])
        last = end
    out.append(text[last:])
    return "".join(out)


def redact(text: str, kinds: frozenset[str] = ALL) -> str:
    return _replace(text, spans(text, kinds))


def _in_context(value: str, key: str | None, kinds: frozenset[str]) -> tuple[str, list[Span]]:
    """Matches in `value`, with the field's name before it as a context word ("phone: ...")."""
    if not key:
        return value, spans(value, kinds)
    prefix = f"{key}: "
    shift = len(prefix)
    matches = [(s - shift, e - shift, k) for s, e, k in spans(prefix + value, kinds) if s >= shift]
    return value, matches


def _number(value: int, key: str | None, kinds: frozenset[str]) -> tuple[Any, list[str]]:
    text = str(value)
    _, matches = _in_context(text, key, kinds)
    found = [k for _, _, k in matches if k in NUMBER_KINDS]
    return (_replace(text, [m for m in matches if m[2] in NUMBER_KINDS]) if found else value), found


def _walk(value: Any, path: str, key: str | None, redact_it: bool, out: list[Finding],
          kinds: frozenset[str]) -> Any:
    if isinstance(value, str):
        _, matches = _in_context(value, key, kinds)
        out.extend(Finding(path, k) for _, _, k in matches)
        return _replace(value, matches) if redact_it and matches else value
    if isinstance(value, int) and not isinstance(value, bool):
        new, found = _number(value, key, kinds)
        out.extend(Finding(path, k) for k in found)
        return new if redact_it else value
    if isinstance(value, list | tuple):
        return [_walk(v, f"{path}[{i}]", key, redact_it, out, kinds) for i, v in enumerate(value)]
    if isinstance(value, dict):
        new_dict = {}
        for k, v in value.items():
            name = str(k)
            new_key = (_walk(k, f"{path}.<key>" if path else "<key>", None, redact_it, out, kinds)
                       if isinstance(k, str) else k)
            new_dict[new_key] = _walk(v, f"{path}.{name}" if path else name, name, redact_it, out, kinds)
        return new_dict
    return value  # floats, booleans, None: no personal data fits in them


def scan(value: Any, path: str = "", kinds: frozenset[str] = ALL) -> list[Finding]:
    """Every match in a (nested) value, with the field it is in."""
    out: list[Finding] = []
    _walk(value, path, None, False, out, kinds)
    return out


def scrub(value: Any, path: str = "", kinds: frozenset[str] = ALL) -> tuple[Any, list[Finding]]:
    """A copy of the value with every match replaced by its placeholder, and what was replaced."""
    out: list[Finding] = []
    return _walk(value, path, None, True, out, kinds), out
