"""Generation metrics through Hugging Face `evaluate`: ROUGE-1/2/L/Lsum, BLEU, chrF, exact match, word error
rate (the project's own metric module, loaded from a file so it works offline), perplexity, and the
hallucination signal every generative task reports, `unsupported_output_rate`: the share of outputs
with at least one item the prompt does not support (`unsupported_items`).

`LOWER_IS_BETTER` tells the promotion gate which way each metric points.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

MODULE = Path(__file__).parent / "metric_modules" / "text_overlap.py"
NAMES = ("rouge1", "rouge2", "rougeL", "rougeLsum", "bleu", "chrf", "exact_match", "wer")
UNSUPPORTED_RATE = "unsupported_output_rate"
UNSUPPORTED_ITEMS = "unsupported_items"  # the per-row count behind it (predictions table)
LOWER_IS_BETTER = frozenset({"eval_loss", "perplexity", "wer", "unsupported_content", UNSUPPORTED_RATE})


@functools.cache
def _module() -> Any:
    import evaluate

    return evaluate.load(str(MODULE))


def overlap(predictions: list[str], references: list[str],
            names: tuple[str, ...] = NAMES) -> tuple[dict[str, float], list[float]]:
    """Corpus scores (those in `names`), and ROUGE-L per row."""
    if not predictions or len(predictions) != len(references):
        raise ValueError(f"need equal, non-zero numbers of predictions and references "
                         f"({len(predictions)} vs {len(references)})")
    result = _module().compute(predictions=predictions, references=references)
    per_row = [float(v) for v in result.pop("rougeL_per_row")]
    return {name: float(result[name]) for name in names}, per_row


def perplexity(eval_loss: float) -> float:
    """exp(mean token cross-entropy); inf when the loss is too large to exponentiate."""
    if math.isnan(eval_loss):
        return math.nan
    return math.exp(eval_loss) if eval_loss < 700 else math.inf


# ---- hallucination signal: output content the prompt does not support ----

_FENCE = re.compile(r"^```(?:json)?\s*|\s*```$")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_THOUSANDS = re.compile(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?")
# "1." / "2)" opening a line: a list's numbering, not a figure the answer states
_LIST_MARKER = re.compile(r"^[ \t]*\d+[.)](?=\s)", re.MULTILINE)
_QUOTED = re.compile(r"\"([^\"\n]{1,200})\"|\u201c([^\u201d\n]{1,200})\u201d")
_SENTENCE_BREAK = re.compile(r"(?<=[.!?:;])\s+|\n+")
_WORD = re.compile(r"[^\W\d_][\w'\u2019-]*")  # starts with a letter; keeps O'Neil, Jean-Luc
_POSSESSIVE = re.compile(r"['\u2019]s?$")
# capitalised wherever they stand: their capital says nothing about a name
_ALWAYS_CAPITALISED = frozenset({"i", "i'm", "i've", "i'll", "i'd", "ok"})


def parse_json_object(text: str) -> dict[str, Any] | None:
    """The first JSON object in a model output, tolerating code fences and trailing chatter."""
    text = _FENCE.sub("", text.strip())
    start = text.find("{")
    if start < 0:
        return None
    try:
        obj, _ = json.JSONDecoder().raw_decode(text[start:])
    except json.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) else None


def _number(token: str) -> str:
    """A number's canonical spelling, so 1,000 / 1000 and 4.50 / 4.5 are the same figure."""
    token = token.strip().lstrip("$\u20ac\u00a3").rstrip("%")
    if _THOUSANDS.fullmatch(token):
        token = token.replace(",", "")
    try:
        return repr(float(token))
    except ValueError:
        return token


def _fold(text: str) -> str:
    return " ".join(text.casefold().split())


def _leaves(value: Any) -> Iterator[Any]:
    if isinstance(value, dict):
        for item in value.values():
            yield from _leaves(item)
    elif isinstance(value, list):
        for item in value:
            yield from _leaves(item)
    elif value is not None and not isinstance(value, bool):  # null and yes/no state nothing to look up
        yield value


class _Support:
    """What the prompt states: its numbers, its words, and its text (case and spacing folded)."""

    def __init__(self, text: str) -> None:
        self.text = _fold(text)
        self.numbers = {_number(t) for t in _NUMBER.findall(text)}
        self.words = {_POSSESSIVE.sub("", w) for w in _WORD.findall(self.text)}

    def has_phrase(self, phrase: str) -> bool:
        folded = _fold(phrase)
        # word-bounded: a size "m" is not supported by every word with an m in it
        return bool(folded) and re.search(rf"(?<!\w){re.escape(folded)}(?!\w)", self.text) is not None

    def has_value(self, value: Any) -> bool:
        if isinstance(value, (int, float)):
            return _number(str(value)) in self.numbers
        text = str(value).strip()
        if _fold(text) in ("", "null", "none", "n/a"):
            return True
        if _NUMBER.fullmatch(text.lstrip("$\u20ac\u00a3").rstrip("%").strip()):
            return _number(text) in self.numbers or self.has_phrase(text)
        return self.has_phrase(text)


def _free_text_items(output: str, support: _Support) -> list[str]:
    items = [t for t in _NUMBER.findall(_LIST_MARKER.sub(" ", output)) if _number(t) not in support.numbers]
    for match in _QUOTED.finditer(output):
        quoted = match.group(1) or match.group(2)
        if not support.has_phrase(quoted):
            items.append(f'"{quoted}"')
    for sentence in _SENTENCE_BREAK.split(output):
        for word in _WORD.findall(sentence)[1:]:  # the first word of a sentence is capitalised anyway
            bare = _POSSESSIVE.sub("", word)
            if bare[:1].isupper() and bare.casefold() not in _ALWAYS_CAPITALISED \
                    and bare.casefold() not in support.words:
                items.append(bare)
    return items


def unsupported_items(output: str, support: str) -> list[str]:
    """What `output` states that `support` (the prompt: system turn and the row's own turns) does not:
    an answer that is a JSON object, field by field (each value must occur in the prompt, numbers
    compared as figures); any other answer, its numbers, quoted strings, and capitalised words that
    do not open a sentence (names, places, brands), compared case-insensitively. Distinct items, in
    order. A cheap signal with no model: a correct answer from general knowledge (a chat answer
    naming a capital) counts too, so compare models on the same rows, not against zero."""
    found = _Support(support)
    stripped = _FENCE.sub("", output.strip())
    fields = parse_json_object(stripped) if stripped.startswith("{") else None
    if fields is not None:
        items = [str(v) for v in _leaves(fields) if not found.has_value(v)]
    else:
        items = _free_text_items(output, found)
    return list(dict.fromkeys(items))


def unsupported_rate(counts: list[float]) -> float:
    """Share of outputs with at least one unsupported item (per-row counts of `unsupported_items`)."""
    return sum(c > 0 for c in counts) / len(counts) if counts else 0.0
