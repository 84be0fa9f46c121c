"""Find and redact personal data: emails, phone numbers, payment card numbers, IBANs.

Card numbers must pass the Luhn check and IBANs the ISO 7064 mod-97 check, so SKUs, prices and
order numbers are not flagged. Redaction replaces each match with a typed placeholder.
"""

from __future__ import annotations

import re

_EMAIL = re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}\b")
# international (+CC ...) or North-American style numbers with separators; bare digit runs are not phones
_PHONE = re.compile(r"(?<![\w+])(?:\+\d{1,3}[\s.-]?)?(?:\(\d{2,4}\)[\s.-]?|\d{2,4}[\s.-])\d{3,4}[\s.-]\d{3,4}(?!\w)")
_CARD = re.compile(r"(?<!\d)(?:\d[ -]?){12,18}\d(?!\d)")
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?:\s?[A-Z0-9]){11,30}\b")

PLACEHOLDER = {"email": "[EMAIL]", "phone": "[PHONE]", "card": "[CARD]", "iban": "[IBAN]"}


def _luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _iban_ok(text: str) -> bool:
    compact = text.replace(" ", "")
    if not 15 <= len(compact) <= 34:
        return False
    moved = compact[4:] + compact[:4]
    return int("".join(str(int(ch, 36)) for ch in moved)) % 97 == 1


def _matches(text: str) -> list[tuple[int, int, str]]:
    found: list[tuple[int, int, str]] = []
    for m in _EMAIL.finditer(text):
        found.append((m.start(), m.end(), "email"))
    for m in _IBAN.finditer(text):
        if _iban_ok(m.group()):
            found.append((m.start(), m.end(), "iban"))
    for m in _CARD.finditer(text):
        digits = re.sub(r"\D", "", m.group())
        if 13 <= len(digits) <= 19 and _luhn_ok(digits):
            found.append((m.start(), m.end(), "card"))
    for m in _PHONE.finditer(text):
        if sum(ch.isdigit() for ch in m.group()) >= 9:
            found.append((m.start(), m.end(), "phone"))
    # keep the earliest, longest match where kinds overlap (a card number is not also a phone)
    found.sort(key=lambda f: (f[0], -(f[1] - f[0])))
    kept: list[tuple[int, int, str]] = []
    for start, end, kind in found:
        if not kept or start >= kept[-1][1]:
            kept.append((start, end, kind))
    return kept


def find(text: str) -> list[str]:
    """Kinds of personal data in the text, one entry per match."""
    return [kind for _, _, kind in _matches(text)]


def redact(text: str) -> str:
    out, last = [], 0
    for start, end, kind in _matches(text):
        out.append(text[last:start])
        out.append(PLACEHOLDER[kind])
        last = end
    out.append(text[last:])
    return "".join(out)
