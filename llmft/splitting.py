"""Deterministic train/validation/test split by a stable hash of the normalised prompt.

A record's split depends only on its own prompt (and `split_seed`), never on row order or dataset
size: appending rows never moves an existing record, and equal prompts always land in the same
split, so retraining never leaks test prompts into training. For classification the hash split is
stratified in expectation, and every label with at least 3 examples is given at least one test
example (its lowest-hash example), so each class is measured.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")
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


def split_items(items: Sequence[T], key: Callable[[T], str], seed: int, validation_fraction: float,
                test_fraction: float, max_train_rows: int | None = None,
                label: Callable[[T], str | None] | None = None) -> dict[str, list[T]]:
    out: dict[str, list[T]] = {name: [] for name in SPLITS}
    for item in items:
        out[assign_split(key(item), seed, validation_fraction, test_fraction)].append(item)
    if label is not None:
        tested = {label(i) for i in out["test"]}
        for value in sorted({label(i) for i in items} - tested, key=str):
            group = [i for i in items if label(i) == value]
            if len(group) < 3:
                continue
            # move every example sharing the chosen prompt, so a prompt never spans two splits
            chosen = key(min(group, key=lambda i: _unit_hash(key(i), seed)))
            norm = " ".join(chosen.lower().split())
            for name in ("train", "validation"):
                moving = [i for i in out[name] if " ".join(key(i).lower().split()) == norm]
                out[name] = [i for i in out[name] if i not in moving]
                out["test"] += moving
    if max_train_rows is not None and len(out["train"]) > max_train_rows:
        # keep the lowest hashes: a stable subset that only grows with the cap
        out["train"].sort(key=lambda i: _unit_hash(key(i), seed + 1))
        out["train"] = out["train"][:max_train_rows]
    return out

