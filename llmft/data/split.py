"""Deterministic train/validation/test split by a stable hash of the normalised prompt.

A record's split depends only on its own prompt (and `split_seed`), never on row order or dataset
size: appending rows never moves an existing record, and equal prompts always land in the same
split, so retraining never leaks test prompts into training. For classification the hash split is
stratified in expectation, and every label with at least 3 examples is given at least one test
example (its lowest-hash example), so each class is measured.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from llmft.config import DataConfig
from llmft.contracts import SplitInfo
from llmft.data.ingest import DataError

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



def split_frame(clean: Any, data: DataConfig, classifier: bool) -> tuple[Any, Any, Any, SplitInfo]:
    """Train/validation/test frames of the gate's kept rows, and their sizes and label set.

    The label set is the training split's (sorted) unless `data.labels` pins it; a label seen only
    outside training cannot be learned, so its rows are left out and counted as unused.
    """
    import pandas as pd

    rows = clean.to_dict(orient="records")
    splits = split_items(rows, lambda r: r["prompt"], data.split_seed, data.validation_fraction, data.test_fraction,
                         data.max_train_rows, label=(lambda r: r["label"]) if classifier else None)
    if len(splits["test"]) < data.min_test_rows or not splits["train"]:
        raise DataError(f"{data.source}: split gives {len(splits['train'])} train and {len(splits['test'])} test "
                        f"rows; need train > 0 and test >= data.min_test_rows={data.min_test_rows} (lower "
                        f"data.min_test_rows, or raise data.test_fraction)")
    labels = None
    if classifier:
        labels = list(data.labels) if data.labels else sorted({str(r["label"]) for r in splits["train"]})
        if len(labels) < 2:
            raise DataError(f"{data.source}: the training split has {len(labels)} label(s) {labels}; classification "
                            "needs at least 2 (check the label column, or data.columns.label)")
        for name in ("validation", "test"):
            splits[name] = [r for r in splits[name] if str(r["label"]) in labels]
    frames = [pd.DataFrame(splits[name], columns=list(clean.columns)) for name in SPLITS]
    used = sum(len(f) for f in frames)
    counts = {name: dict(Counter(str(r["label"]) for r in splits[name])) for name in SPLITS} if classifier else {}
    info = SplitInfo(rows={name: len(f) for name, f in zip(SPLITS, frames, strict=True)}, unused=len(rows) - used,
                     labels=labels, label_counts=counts)
    return frames[0], frames[1], frames[2], info
