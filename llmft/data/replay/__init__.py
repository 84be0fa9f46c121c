"""Replay sets shipped with the project, mixed into training by `data.mix` (`source: builtin:general`).

`general.jsonl` holds real human-written questions with the base model's own greedy answers
(scripts/build_replay_set.py; README.md here). Replaying them keeps the base model's general behaviour
while it is fine-tuned. The forgetting probe measures exactly that behaviour, so no replay question may
teach a probe item: `overlaps_probe` is the one disjointness rule, used by the build script and the
tests alike.

Imports stay light (no torch, no pandas): config validation and the tests read this module.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

# the whole-word matcher the probe itself scores answers with, so "contains a probe answer" means here
# exactly what "answered correctly" means there
from llmft.evaluate.forgetting import answer_matches

REPLAY_DIR = Path(__file__).parent
GENERAL = REPLAY_DIR / "general.jsonl"

# Overlap of content words at or above this share of the smaller question's words is "the same question".
OVERLAP_THRESHOLD = 0.5

# Small on purpose: question words and function words only. Topic words ("capital", "largest", "color")
# must stay, since they are what makes two questions ask the same thing.
STOPWORDS = frozenset(
    """a an the of in on at to for from by with as into about and or but not no
    is are was were be been being am do does did done has have had can could will would shall should may might
    what which who whom whose when where why how many much
    it its this that these those there here i me my we our you your he him his she her they them their
    one s""".split()
)


def content_words(text: str) -> set[str]:
    """Lowercase alphanumeric words minus stopwords, crudely singularised ("bees" and "bee" count as one
    word, so "What do bees make?" and "What does a bee make?" overlap fully)."""
    words = re.findall(r"[a-z0-9]+", text.lower())
    return {w[:-1] if len(w) > 3 and w.endswith("s") and not w.endswith("ss") else w
            for w in words if w not in STOPWORDS}


def overlap(a: str, b: str) -> float:
    """Shared content words over the smaller question's content words (the overlap coefficient): a long
    question that asks a short probe question's topic ("... the capital of ...") still counts."""
    wa, wb = content_words(a), content_words(b)
    if not wa or not wb:
        return 0.0
    return len(wa & wb) / min(len(wa), len(wb))


def _matchable(answers: Iterable[str]) -> list[str]:
    # An answer made only of stopwords (the probe's "A", the first letter of the alphabet) would match the
    # article in nearly every question, and a question saying "a" teaches nothing about that probe item.
    return [a for a in answers if content_words(a)]


def probe_reason(question: str, probe_rows: Iterable[Mapping[str, Any]]) -> str | None:
    """Why `question` is not disjoint from the forgetting probe, or None when it is: it contains a probe answer
    as whole words (case-insensitive, as the probe scores answers), or shares at least OVERLAP_THRESHOLD of
    its content words with a probe question."""
    for row in probe_rows:
        hit = next((a for a in _matchable(row["answers"]) if answer_matches(question, [a])), None)
        if hit is not None:
            return f"contains probe answer {hit!r} ({row['question']})"
        share = overlap(question, row["question"])
        if share >= OVERLAP_THRESHOLD:
            return f"{share:.0%} content-word overlap with probe question {row['question']!r}"
    return None


def overlaps_probe(question: str, probe_rows: Iterable[Mapping[str, Any]]) -> bool:
    """True when `question` is not disjoint from the forgetting probe (the rule: `probe_reason`)."""
    return probe_reason(question, probe_rows) is not None
