"""One detector per kind of personal data; each yields (start, end, kind) spans.

Linear time by construction: every quantifier is bounded, no quantifier is nested, and most
patterns start with a look-behind that refuses to start inside a run of the same characters, so
each position of the text costs a bounded amount of work. Weak patterns are confirmed by a
checksum (Luhn, IBAN mod-97, SSN area rules, IP octets) or by a context word shortly before.
"""

from __future__ import annotations

import base64
import bisect
import ipaddress
import math
import re
from collections import Counter
from collections.abc import Callable, Iterator

from llmft.data.pii.names import FIRST_NAMES, NOT_NAMES, NOT_SURNAMES, SURNAMES

Span = tuple[int, int, str]

_CONTEXT_CHARS = 40  # how far back a context word may be


def _context(text: str, start: int, words: re.Pattern[str]) -> bool:
    return words.search(text, max(0, start - _CONTEXT_CHARS), start) is not None


class _ContextIndex:
    """Where a context pattern matched, found in one pass; answers 'a context word just before here?'."""

    def __init__(self, text: str, words: re.Pattern[str]) -> None:
        self.text, self.words, self.ends = text, words, None

    def before(self, start: int) -> bool:
        if self.ends is None:  # only texts with candidates pay for the pass
            self.ends = [m.end() for m in self.words.finditer(self.text)]
        i = bisect.bisect_right(self.ends, start)
        return i > 0 and self.ends[i - 1] >= start - _CONTEXT_CHARS


# --- e-mail: local part and domain are bounded runs; the domain is checked in Python, not by regex
_EMAIL = re.compile(r"(?<![\w.%+\-])[\w.%+\-]{1,64}@[\w.\-]{1,253}")


def emails(text: str) -> Iterator[Span]:
    for m in _EMAIL.finditer(text):
        local, _, domain = m.group().partition("@")
        domain = domain.rstrip(".-_")
        labels = domain.split(".")
        if local.strip(".") != local or len(labels) < 2 or not all(labels):
            continue
        if len(labels[-1]) < 2 or not labels[-1].isalpha():
            continue
        yield m.start(), m.start() + len(local) + 1 + len(domain), "email"


# --- IBAN: ISO 13616 country lengths, then ISO 7064 mod-97
_IBAN = re.compile(r"(?<![A-Za-z0-9])[A-Z]{2}\d{2}[A-Z0-9 ]{11,40}")
_IBAN_LENGTHS = {
    "AD": 24, "AT": 20, "BE": 16, "BG": 22, "CH": 21, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "EE": 20, "ES": 24,
    "FI": 18, "FR": 27, "GB": 22, "GR": 27, "HR": 21, "HU": 28, "IE": 22, "IS": 26, "IT": 27, "LI": 21, "LT": 20,
    "LU": 20, "LV": 21, "MC": 27, "MT": 31, "NL": 18, "NO": 15, "PL": 28, "PT": 25, "RO": 24, "SE": 24, "SI": 19,
    "SK": 24, "SM": 27, "TR": 26, "AE": 23, "SA": 24, "IL": 23, "BR": 29, "UA": 29,
}


def _mod97(compact: str) -> bool:
    moved = compact[4:] + compact[:4]
    return int("".join(str(int(ch, 36)) for ch in moved)) % 97 == 1


def ibans(text: str) -> Iterator[Span]:
    for m in _IBAN.finditer(text):
        cand = m.group()
        chars = [i for i, ch in enumerate(cand) if ch != " "]
        known = _IBAN_LENGTHS.get(cand[:2])
        for n in [known] if known else range(min(34, len(chars)), 14, -1):
            if n > len(chars):
                continue
            end = chars[n - 1] + 1
            after = cand[end] if end < len(cand) else text[m.end():m.end() + 1]
            if after.isalnum():  # the number runs on: not this length
                continue
            if _mod97("".join(cand[i] for i in chars[:n])):
                yield m.start(), m.start() + end, "iban"
                break


# --- payment cards: one kind of separator, Luhn, a card-network prefix; never glued to a code (SKU-4111-...)
_CARD = re.compile(r"(?<![\w.\-/#])\d[\d .\-]{11,23}\d(?![\w\-/])")


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _card_prefix(d: str) -> bool:
    two = int(d[:2])
    return (d[0] == "4" or 51 <= two <= 55 or 2221 <= int(d[:4]) <= 2720 or two in (30, 34, 35, 36, 37, 38)
            or d[0] == "6" or two == 50)


def _card_ok(cand: str) -> bool:
    digits = "".join(ch for ch in cand if ch.isdigit())
    if not 13 <= len(digits) <= 19 or len(set(digits)) == 1 or not _card_prefix(digits):
        return False
    seps = {ch for ch in cand if not ch.isdigit()}
    if len(seps) > 1:
        return False
    if seps:
        groups = cand.split(seps.pop())
        if len(groups[0]) != 4 or not all(3 <= len(g) <= 6 for g in groups):
            return False
    return _luhn(digits)


def _group_prefixes(cand: str) -> Iterator[str]:
    """The candidate, then shorter versions cut at separators (a card followed by another number)."""
    yield cand
    cut = len(cand)
    for _ in range(8):
        cut = max(cand.rfind(" ", 0, cut), cand.rfind("-", 0, cut), cand.rfind(".", 0, cut))
        if cut <= 0:
            return
        yield cand[:cut].rstrip(" .-/()")


def cards(text: str) -> Iterator[Span]:
    for m in _CARD.finditer(text):
        for cand in _group_prefixes(m.group()):
            if _card_ok(cand):
                yield m.start(), m.start() + len(cand), "card"
                break


# --- US social security numbers: dashed form alone, other forms only after a context word
_SSN = re.compile(r"(?<![\w\-./])(\d{3})([- ]?)(\d{2})\2(\d{4})(?![\w\-]|\.\d)")
_SSN_CONTEXT = re.compile(r"(?i)\bssn\b|social security|soc\.? sec|\bss#|sozialversicherung|taxpayer id|\btin\b")
_SSN_PUBLIC = {"078051120", "219099999"}  # numbers printed in advertising, known to everyone


def ssns(text: str) -> Iterator[Span]:
    for m in _SSN.finditer(text):
        area, sep, group, serial = m.groups()
        if area in ("000", "666") or area[0] == "9" or group == "00" or serial == "0000":
            continue
        if area + group + serial in _SSN_PUBLIC:
            continue
        if sep != "-" and not _context(text, m.start(), _SSN_CONTEXT):
            continue
        yield m.start(), m.end(), "ssn"


# --- IP addresses: IPv4 octets <= 255 (not loopback, not a version number); IPv6 through the stdlib parser
_IPV4 = re.compile(r"(?<![\w.])\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}(?!\w|\.\d)")
_VERSION = re.compile(r"(?i)\b(?:version|ver\.?|release|build|v)\s?$")
_IPV6 = re.compile(r"(?<![\w:.])[0-9A-Fa-f]{0,4}:[0-9A-Fa-f:.]{2,41}(?![\w:])")


def ips(text: str) -> Iterator[Span]:
    for m in _IPV4.finditer(text):
        octets = m.group().split(".")
        if any(len(o) > 1 and o[0] == "0" for o in octets) or any(int(o) > 255 for o in octets):
            continue
        if octets[0] in ("0", "127") or _VERSION.search(text, max(0, m.start() - 10), m.start()):
            continue
        yield m.start(), m.end(), "ip"
    for m in _IPV6.finditer(text):
        cand = m.group().rstrip(".")
        try:
            addr = ipaddress.IPv6Address(cand)
        except ValueError:
            continue
        groups = [g for g in cand.split(":") if g]
        if addr.is_loopback or addr.is_unspecified or (len(groups) < 3 and max(map(len, groups), default=0) < 3):
            continue  # "::1" is no one's address; "a::b" is C++, not an address
        yield m.start(), m.start() + len(cand), "ip"


# --- secrets: vendor key formats by prefix, PEM private keys, and high-entropy values after a key word
_SECRET_PREFIXED = re.compile(
    r"(?<![\w\-])(?:sk-[A-Za-z0-9_\-]{20,200}"
    r"|(?:AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}"
    r"|gh[pousr]_[A-Za-z0-9]{30,255}"
    r"|github_pat_[A-Za-z0-9_]{22,255}"
    r"|xox[abposr]-[A-Za-z0-9\-]{10,200}"
    r"|AIza[0-9A-Za-z_\-]{35}"
    r"|[sr]k_(?:live|test)_[A-Za-z0-9]{16,200}"
    r"|glpat-[A-Za-z0-9_\-]{20,100}"
    r"|hf_[A-Za-z0-9]{30,100}"
    r"|eyJ[A-Za-z0-9_\-]{8,2000}\.eyJ[A-Za-z0-9_\-]{2,4000}\.[A-Za-z0-9_\-]{8,2000})(?![\w\-])")
_PEM = re.compile(r"-----BEGIN [A-Z ]{0,30}PRIVATE KEY-----")
# the key word may end an environment-variable name (AWS_SECRET_ACCESS_KEY, DB_PASSWORD, HF_TOKEN): the
# look-behind refuses only a letter or digit, not "_"; a value never starts with "_", so "SECRET" cannot take
# "_ACCESS_KEY=..." as its value and hide the key word that follows
_SECRET_KV = re.compile(
    r"(?i)(?<![A-Za-z0-9])(?:api[_\-. ]?key|apikey|secret[_\-]?access[_\-]?key|access[_\-]?key|"
    r"secret[_\-]?key|client[_\-]?secret|secret|access[_\-]?token|auth[_\-]?token|refresh[_\-]?token|token|"
    r"password|passwd|passwort|pwd|bearer)"
    r"[\"']?[ \t]{0,3}[:=]?[ \t]{0,3}[\"']?([A-Za-z0-9\-./+=~!@#$%^&*][A-Za-z0-9_\-./+=~!@#$%^&*]{5,299})")
# an HTTP Authorization header: whatever the scheme (Basic, Bearer, Token, Digest ...), the credentials go
_AUTH_HEADER = re.compile(
    r"(?i)(?<![A-Za-z0-9])(?:proxy-)?authorization[\"']?[ \t]{0,3}[:=][ \t]{0,3}[\"']?"
    r"(?:(basic|bearer|token|digest|negotiate|apikey)[ \t]{1,3})?([A-Za-z0-9_\-./+=~:]{6,2000})")
# "Basic <base64 of user:password>" anywhere (curl -H, a config line): confirmed by decoding it
_BASIC = re.compile(r"(?<![A-Za-z0-9])(?i:basic)[ \t]{1,3}([A-Za-z0-9+/]{8,2000}={0,2})(?![A-Za-z0-9+/=])")
# credentials inside a URL: scheme://user:password@host
_URL_PASSWORD = re.compile(r"(?<=://)[^\s:/@?#]{1,200}:([^\s/@?#]{1,200})@(?=[A-Za-z0-9\[])")
_PLACEHOLDER_VALUE = re.compile(r"(?i)your|xxxx|example|placeholder|redacted|changeme|<|\*\*\*|^\[|none|null|"
                                r"true|false")


def _entropy(s: str) -> float:
    counts = Counter(s)
    return -sum(c / len(s) * math.log2(c / len(s)) for c in counts.values())


def _secret_value_ok(key: str, value: str) -> bool:
    if _PLACEHOLDER_VALUE.search(value) or len(set(value)) < 4:
        return False
    if key.lower().startswith(("pass", "pwd")):
        return len(value) >= 6
    classes = sum(any(f(ch) for ch in value) for f in (str.isdigit, str.islower, str.isupper))
    return len(value) >= 16 and classes >= 2 and _entropy(value) >= 3.0


def _basic_credentials(encoded: str) -> bool:
    """Does this base64 decode to 'user:password' text?"""
    try:
        decoded = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return False
    return ":" in decoded and decoded.isprintable()


def secrets(text: str) -> Iterator[Span]:
    for m in _SECRET_PREFIXED.finditer(text):
        yield m.start(), m.end(), "secret"
    end = -1
    for m in _PEM.finditer(text):
        if end < m.end():  # one forward search shared by all headers before the same end marker
            end = text.find("-----END", m.end())
            end = end if end >= 0 else len(text)
        stop = text.find("-----", end + 8, end + 60) if end - m.end() <= 10_000 else -1
        yield m.start(), (stop + 5 if stop >= 0 else m.end()), "secret"
    for m in _AUTH_HEADER.finditer(text):
        value = m.group(2).rstrip(".,;\"'")
        # with a scheme word it is a header; without one ("authorization: required") only a key-like value
        if (m.group(1) and not _PLACEHOLDER_VALUE.search(value)) or _secret_value_ok("authorization", value):
            yield m.start(2), m.start(2) + len(value), "secret"
    for m in _BASIC.finditer(text):
        if _basic_credentials(m.group(1)):
            yield m.start(1), m.end(1), "secret"
    for m in _URL_PASSWORD.finditer(text):
        if not _PLACEHOLDER_VALUE.search(m.group(1)):
            yield m.start(1), m.end(1), "secret"
    for m in _SECRET_KV.finditer(text):
        value = m.group(1).rstrip(".,;\"'")
        key = m.group()[: m.start(1) - m.start()].strip("\"' \t:=")
        if not m.group()[len(key):m.start(1) - m.start()].strip() and key.lower() != "bearer":
            continue  # "token abc" is prose: a key needs ':' or '=' (or is a bearer token)
        if _secret_value_ok(key, value):
            yield m.start(1), m.start(1) + len(value), "secret"


# --- phone numbers: international (+CC / 00CC), North American, European national (trunk 0); else context
_PHONE = re.compile(r"(?<![\w+\-/.])(?:\+|00)?\(?\d[\d ().\-/]{5,24}\d(?!\w|[.\-/]\d)")
_NANP = re.compile(r"(?:1[ .\-]?)?\(?[2-9]\d\d\)?[ .\-]?\d{3}[ .\-]\d{4}")
_PHONE_CONTEXT = re.compile(r"(?i)\b(?:call|phone|tel|telephone|mobile|cell|fax|whatsapp|sms|text me|ring|dial|"
                            r"reach me|contact|telefon|handy|tél|téléphone|portable|numéro|número|nummer|hotline)")


def _phone_ok(cand: str, context: _ContextIndex, start: int) -> bool:
    if cand.count("(") != cand.count(")") or "//" in cand:
        return False
    digits = "".join(ch for ch in cand if ch.isdigit())
    if len(set(digits)) <= 2:
        return False  # 0000 0000 ..., 1-1-1-1: filler, not a number anyone answers
    if cand.startswith("+"):
        return 8 <= len(digits) <= 15
    if cand.startswith("00"):
        return 8 <= len(digits) - 2 <= 15
    if _NANP.fullmatch(cand):
        return True
    groups = [g for g in re.split(r"[ ().\-/]", cand) if g]
    national = digits[0] == "0" and digits[1] != "0" and 9 <= len(digits) <= 12
    if national and len(groups) > 1 and all(len(g) >= 2 for g in groups):
        return True  # national format with trunk prefix: 030 12345678, 06 12 34 56 78, 020 7946 0958
    return 9 <= len(digits) <= 15 and context.before(start)


def phones(text: str) -> Iterator[Span]:
    context = _ContextIndex(text, _PHONE_CONTEXT)
    for m in _PHONE.finditer(text):
        for cand in _group_prefixes(m.group()):
            if sum(ch.isdigit() for ch in cand) < 8:
                break  # too short for any phone format, and cuts only get shorter
            if cand[-1].isdigit() and _phone_ok(cand, context, m.start()):
                yield m.start(), m.start() + len(cand), "phone"
                break


# --- postal addresses: house number + street words + street type; street-suffix + number; postcode + city
_EN_STREET = re.compile(r"(?<![\w])(?:Street|St|Avenue|Ave|Road|Rd|Boulevard|Blvd|Lane|Ln|Drive|Dr|Court|Ct|Way|"
                        r"Place|Pl|Terrace|Close|Crescent|Parkway|Pkwy|Square|Sq|Highway|Hwy|Row|Gardens)(?!\w)\.?")
_HOUSE_NUMBER = re.compile(r"(?<![\w,.])\d{1,5}[A-Za-z]?[ \t]")
_ORDINAL = re.compile(r"\d{1,3}(?:st|nd|rd|th)")
_SUFFIX_STREET = re.compile(r"(?i:straße|strasse|str\.|weg|gasse|platz|allee|damm|ufer|straat|gracht|laan|plein|kade|"
                            r"vej|gatan|gade|vägen|veien)[ \t]{0,2}\d{1,4}[a-z]?(?!\w)")
_LATIN_STREET = re.compile(
    r"(?<![\w])\d{1,4}[ \t]?(?:bis|ter)?,?[ \t]{1,2}(?i:rue|avenue|boulevard|bd|place|chemin|allée|impasse|quai|"
    r"route|calle|avenida|via|viale|piazza|corso|rua)[ \t]{1,2}[^\n,;:()]{2,40}")
_TYPE_FIRST = re.compile(r"(?<![\w])(?:Calle|Via|Viale|Piazza|Corso|Avenida|Rua|Plaza|Paseo|Rue)[ \t]{1,2}"
                         r"[^\n,;:()\d]{2,40},?[ \t]{0,2}\d{1,4}(?!\w)")
_PARTICLES = {"de", "la", "du", "des", "d'", "del", "della", "di", "le", "les", "do", "da", "dos", "van", "der", "den"}
_STATES = ("AL|AK|AZ|AR|CA|CO|CT|DE|FL|GA|HI|ID|IL|IN|IA|KS|KY|LA|ME|MD|MA|MI|MN|MS|MO|MT|NE|NV|NH|NJ|NM|NY|NC|ND|"
           "OH|OK|OR|PA|RI|SC|SD|TN|TX|UT|VT|VA|WA|WV|WI|WY|DC")
_US_CITY_ZIP = re.compile(rf"(?<![\w])[A-Z][A-Za-z.'\- ]{{1,30}},[ \t]{{0,2}}(?:{_STATES})[ \t]{{1,2}}\d{{5}}"
                          r"(?:-\d\d\d\d)?(?!\w)")
_UK_POSTCODE = re.compile(r"(?<![\w])[A-Z][A-Z]?\d[A-Z\d]?[ \t]\d[A-Z][A-Z](?!\w)")
_EU_POSTCODE_CITY = re.compile(r"(?<![\w\-.])(?:[A-Z]{1,2}-)?\d{4,5}[ \t]{1,2}[^\W\d_][\w'’\-]{2,30}")
_TAIL = re.compile(r"(?:,[ \t]{0,2}|[ \t]{1,2})(?:(?:N|S|E|W|NE|NW|SE|SW)\b,?[ \t]{0,2})?(?:"
                   rf"[A-Z][A-Za-z.'\- ]{{1,30}},[ \t]{{0,2}}(?:{_STATES})[ \t]{{1,2}}\d{{5}}(?:-\d\d\d\d)?"
                   r"|(?:[A-Z]{1,2}-)?\d{4,5}[ \t]{1,2}[^\W\d_][\w'’\-]{1,30}"
                   r"|(?:[A-Z][A-Za-z'\-]{1,30},?[ \t]{1,2})?[A-Z][A-Z]?\d[A-Z\d]?[ \t]\d[A-Z][A-Z])(?![\w-])")
_TAIL_CITY = re.compile(r",[ \t]{0,2}[A-Z][a-zäöüßéèàç]{2,30}(?![\w-])")  # ", London": only after a comma
_ADDRESS_CONTEXT = re.compile(r"(?i)address|adresse|anschrift|wohnt|wohnhaft|lives|living|located|moved to|ship to|"
                              r"deliver|plz|zip|post ?code|postal|domicile|habite")
_CITIES = frozenset("""
berlin hamburg münchen munich köln cologne frankfurt stuttgart düsseldorf leipzig dresden hannover nürnberg bremen
wien vienna zürich zurich genève geneva basel bern paris lyon marseille toulouse nice nantes bordeaux lille
strasbourg amsterdam rotterdam utrecht brussel bruxelles brussels antwerpen madrid barcelona valencia sevilla
milano milan roma rome napoli torino firenze lisboa porto kobenhavn københavn copenhagen stockholm oslo helsinki
warszawa praha budapest dublin luxembourg athens athina
""".split())


def _street_words_ok(words: list[str]) -> bool:
    return 1 <= len(words) <= 4 and all(w[0].isupper() or _ORDINAL.fullmatch(w) for w in words)


def _extend(text: str, end: int) -> int:
    """Take in what follows a street: postcode and city, or ', City' (then perhaps a postcode)."""
    tail = _TAIL.match(text, end)
    if tail:
        return tail.end()
    city = _TAIL_CITY.match(text, end)
    if city:
        tail = _TAIL.match(text, city.end())
        return tail.end() if tail else city.end()
    return end


def addresses(text: str) -> Iterator[Span]:
    for m in _EN_STREET.finditer(text):
        lo = max(0, m.start() - 60)
        best = None
        for h in _HOUSE_NUMBER.finditer(text, lo, m.start()):
            if _street_words_ok(text[h.end():m.start()].split()):
                best = h.start()
                break  # the earliest house number that is followed only by street words
        if best is not None:
            yield best, _extend(text, m.end()), "address"
    for m in _SUFFIX_STREET.finditer(text):
        start = m.start()
        while start > max(0, m.start() - 30) and (text[start - 1].isalpha() or text[start - 1] in "-'’"):
            start -= 1
        if start < m.start() and not text[start].isupper():
            continue
        if start == m.start():  # "Lange Straße 5": the type is its own word, take one word before it
            before = text[max(0, start - 31):start].rstrip(" \t")
            word = before.split()[-1] if before.split() else ""
            if not word[:1].isupper():
                continue
            start -= len(text[:start]) - len(text[:start].rstrip(" \t")) + len(word)
        yield start, _extend(text, m.end()), "address"
    for pattern in (_LATIN_STREET, _TYPE_FIRST):
        for m in pattern.finditer(text):
            yield from _latin(text, m, pattern is _LATIN_STREET)
    for pattern in (_US_CITY_ZIP, _UK_POSTCODE):
        for m in pattern.finditer(text):
            yield m.start(), m.end(), "address"
    for m in _EU_POSTCODE_CITY.finditer(text):
        code, city = m.group().split()[0], m.group().split()[-1]
        year_like = len(code) == 4 and code[:2] in ("19", "20")  # "In 2019 Berlin hosted ..."
        if (city.lower() in _CITIES and not year_like) or _context(text, m.start(), _ADDRESS_CONTEXT):
            yield m.start(), m.end(), "address"


def _latin(text: str, m: re.Match[str], number_first: bool) -> Iterator[Span]:
    """'12 rue de la Paix' / 'Via Roma 10': keep the capitalised street name, drop trailing prose."""
    if not number_first:
        yield m.start(), _extend(text, m.end()), "address"
        return
    words = m.group().split()
    idx = next(i for i, w in enumerate(words) if w.lower().rstrip(",") in {
        "rue", "avenue", "boulevard", "bd", "place", "chemin", "allée", "impasse", "quai", "route", "calle",
        "avenida", "via", "viale", "piazza", "corso", "rua"})
    keep = idx + 1
    named = False
    for w in words[idx + 1:idx + 6]:
        if w[0].isupper():
            named = True
        elif w.lower() not in _PARTICLES and not w.lower().startswith(("d'", "l'")):
            break
        keep += 1
    if not named:
        return
    end = m.start()
    for w in words[:keep]:
        end = text.index(w, end) + len(w)
    yield m.start(), _extend(text, end), "address"


# --- person names: a cue ("my name is", "Dear", "Mr.") before a capitalised word, or first name + surname
_WORD = re.compile(r"(?<![\w'’\-])[^\W\d_][\w'’\-]{0,30}")
_STRONG_CUE = re.compile(r"(?i)(?<!\w)(?:my name is|my name's|dear|mr\.?|mrs\.?|ms\.?|miss|mx\.?|dr\.?|prof\.?|"
                         r"herr|frau|"
                         r"monsieur|madame|mme\.?|señor|señora|signed|name:|full name:|contact person:|"
                         r"patient:|customer:|cardholder:|account holder:)[ \t\n]{1,3}(?=\w)")
_WEAK_CUE = re.compile(r"(?i)(?<!\w)(?:i am|i'm|this is|hello|hi|hey|regards,|sincerely,|thanks,|cheers,|best,|"
                       r"ich bin|ich heiße|je m'appelle|je suis|me llamo|mi chiamo)[ \t\n]{1,3}(?=\w)")
# words before a person that also stand before things ("from Brown corp"): only with a known first name
_VERB_CUE = re.compile(r"(?i)(?<!\w)(?:from|with|by|ask|call|tell|met|thank)[ \t\n]{1,3}(?=\w)")


def _capitalised(word: str) -> bool:
    return word[0].isupper() and not word.isupper()


def _known_first(word: str) -> bool:
    return word.lower() in FIRST_NAMES or word.split("-")[0].lower() in FIRST_NAMES


def names(text: str) -> Iterator[Span]:
    words = [(m.start(), m.end(), m.group()) for m in _WORD.finditer(text) if _capitalised(m.group())]
    if not words:
        return
    strong_at = {m.end() for m in _STRONG_CUE.finditer(text)}
    weak_at = {m.end() for m in _WEAK_CUE.finditer(text)}
    verb_at = {m.end() for m in _VERB_CUE.finditer(text)}
    i = 0
    while i < len(words):
        start, end, word = words[i]
        lower = word.lower().rstrip("'’")
        nxt = words[i + 1] if i + 1 < len(words) and text[end:words[i + 1][0]] in (" ", "  ") else None
        before = text[max(0, start - 24):start]
        # "the Dr.  Loved it": a title abbreviation followed by two spaces ended a sentence, not a name's title
        strong = start in strong_at and not (text[max(0, start - 3):start].endswith(".  "))
        weak = start in weak_at
        sentence_start = not before.strip() or before.rstrip()[-1] in ".!?:\n\"“"
        surname_next = nxt is not None and nxt[2].lower() not in NOT_SURNAMES and nxt[2].lower() not in NOT_NAMES
        hit = False
        if lower in NOT_NAMES or lower in NOT_SURNAMES:
            hit = False
        elif strong:
            hit = True
        elif _known_first(word) and (weak or start in verb_at or surname_next):
            hit = True
        elif weak and lower in SURNAMES:
            hit = True
        elif (not sentence_start and surname_next and nxt is not None and nxt[2].lower() in SURNAMES
              and not _known_first(nxt[2])):
            hit = True  # unknown given name before a known surname, mid-sentence: "met Keanu Smith"
        if not hit:
            i += 1
            continue
        stop = end
        j = i
        while j + 1 < len(words) and j - i < 3 and text[words[j][1]:words[j + 1][0]] in (" ", "  "):
            w = words[j + 1][2].lower()
            if w in NOT_SURNAMES or w in NOT_NAMES:
                break
            j += 1
            stop = words[j][1]
        yield start, stop, "name"
        i = j + 1


DETECTORS: tuple[Callable[[str], Iterator[Span]], ...] = (secrets, emails, ibans, cards, ssns, ips, phones,
                                                          addresses, names)
