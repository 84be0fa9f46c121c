"""Which test rows evaluation scores: the whole split, or a seeded random sample of `eval.max_samples`
rows, stratified by label for classification. Never the head of a file: a file sorted by class
would leave whole classes unmeasured. The same sample is used for base, candidate and champion.
"""

from __future__ import annotations

import random
from collections import defaultdict
from typing import Any

from llmft.contracts import EvalSample


def sample_rows(rows: list[dict[str, Any]], max_samples: int | None, seed: int,
                label_key: str | None = None) -> tuple[list[dict[str, Any]], EvalSample]:
    """The rows to score (in their split order) and how they were drawn."""
    n = len(rows)
    if max_samples is None or max_samples >= n:
        return list(rows), EvalSample(n=n, of=n, seed=None, how="whole test split")
    rng = random.Random(seed)
    if label_key is None:
        chosen = set(rng.sample(range(n), max_samples))
        how = "seeded random sample"
    else:
        groups: dict[str, list[int]] = defaultdict(list)
        for i, row in enumerate(rows):
            groups[str(row[label_key])].append(i)
        # proportional allocation (largest remainders), at least one row per label while budget allows
        quotas = {label: max_samples * len(idx) / n for label, idx in groups.items()}
        take = {label: min(len(groups[label]), max(1, int(q))) for label, q in quotas.items()}
        by_remainder = sorted(groups, key=lambda lab: (quotas[lab] - int(quotas[lab]), lab), reverse=True)
        while sum(take.values()) > max_samples:  # more labels than the budget: drop the smallest quotas
            smallest = min((lab for lab in take if take[lab] > 0), key=lambda lab: (quotas[lab], lab))
            take[smallest] -= 1
        while sum(take.values()) < max_samples:
            room = [lab for lab in by_remainder if take[lab] < len(groups[lab])]
            for label in room[: max_samples - sum(take.values())]:
                take[label] += 1
        chosen = {i for label in sorted(groups) for i in rng.sample(groups[label], take[label])}
        how = "seeded sample stratified by label"
    return [row for i, row in enumerate(rows) if i in chosen], EvalSample(n=len(chosen), of=n, seed=seed, how=how)
