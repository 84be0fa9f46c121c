"""Deterministic train/validation/test split by a stable hash of the normalised prompt.

A record's split depends only on its own prompt (and `split_seed`), never on row order or
dataset size: appending rows never moves an existing record, and equal prompts always land in
the same split, so retraining never leaks test prompts into training.
"""

from __future__ import annotations

import hashlib

from llmft.ingest import Record

SPLITS = ("train", "validation", "test")


def _unit_hash(text: str, seed: int) -> float:
    normalised = " ".join(text.lower().split())
    digest = hashlib.sha256(f"{seed}\x00{normalised}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign_split(prompt: str, seed: int, validation_fraction: float, test_fraction: float) -> str:
    u = _unit_hash(prompt, seed)
    if u < test_fraction:
        return "test"
    if u < test_fraction + validation_fraction:
        return "validation"
    return "train"


def split_records(records: list[Record], seed: int, validation_fraction: float, test_fraction: float,
                  max_train_rows: int | None = None) -> dict[str, list[Record]]:
    out: dict[str, list[Record]] = {name: [] for name in SPLITS}
    for rec in records:
        out[assign_split(rec["prompt"], seed, validation_fraction, test_fraction)].append(rec)
    if max_train_rows is not None and len(out["train"]) > max_train_rows:
        # keep the records with the lowest hashes: a stable subset that grows with the cap
        out["train"].sort(key=lambda r: _unit_hash(r["prompt"], seed + 1))
        out["train"] = out["train"][:max_train_rows]
    return out
