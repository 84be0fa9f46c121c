"""`data.mix`: extra sources sampled into the training split only (replay, weighted mixing).

A mix source is read like `data.source` (same readers, same shape detection, its own `format` and
`columns`) and its rows are marked `origin: mix` with their own location, so lineage shows where every
training row came from. `builtin:general` is the project's replay set (`llmft/data/replay/`): general
questions with the base model's own answers, disjoint from the forgetting probe.
"""

from __future__ import annotations

import random
from pathlib import Path

from llmft.config import ConfigError, DataConfig, MixSource
from llmft.data.ingest import read_rows
from llmft.data.replay import REPLAY_DIR
from llmft.data.shapes import Example, to_examples
from llmft.tasks.base import Task

BUILTIN_PREFIX = "builtin:"


def builtin_sources() -> dict[str, Path]:

    return {f"{BUILTIN_PREFIX}{p.stem}": p for p in sorted(REPLAY_DIR.glob("*.jsonl"))}


def resolve_source(source: str, key: str) -> str:
    """A mix source as a path read_rows takes; `builtin:NAME` is a file shipped with the project."""
    if not source.startswith(BUILTIN_PREFIX):
        return source
    known = builtin_sources()
    if source not in known:
        raise ConfigError(f"{key}.source: unknown built-in source {source!r}; built-in: {', '.join(known)}")
    return str(known[source])


def read_mix_source(mix: MixSource, index: int, data: DataConfig) -> list[Example]:
    """Every usable row of one mix source as an example marked `origin: mix` (rows with no usable shape
    are left out here and counted by the caller as read minus examples)."""
    key = f"data.mix[{index}]"
    path = resolve_source(mix.source, key)
    rows = read_rows(path)
    cfg = data.model_copy(update={"source": path, "format": mix.format, "columns": mix.columns, "max_rows": None,
                                  "system_prompt": None})
    examples, _ = to_examples(rows, cfg)
    if mix.source.startswith(BUILTIN_PREFIX):  # locations users can read, not a site-packages path
        for ex in examples:
            ex.where = ex.where.replace(path, mix.source, 1)
    for ex in examples:
        ex.origin = "mix"
    return examples


REPLAY_SOURCE = f"{BUILTIN_PREFIX}general"


def with_replay(data: DataConfig, task: Task) -> list[MixSource]:
    """`data.mix` plus the default defence against forgetting: `data.replay` rows of builtin:general per
    training row, for a generative task the probe measures (not a classifier, not preference pairs),
    unless the user already mixes builtin:general in (their weight wins)."""
    sources = list(data.mix)
    applies = task.probe_applies and not task.classifier and task.name != "preference"
    if applies and data.replay > 0 and all(s.source != REPLAY_SOURCE for s in sources):
        sources.append(MixSource(source=REPLAY_SOURCE, weight=data.replay))
    return sources


def mix_kind_error(examples: list[Example], classifier: bool, key: str, source: str) -> str | None:
    """Why these rows cannot join this task's training split, or None."""
    if not examples:
        return f"{key}.source: {source} has no usable rows"
    shapes = {ex.shape for ex in examples}
    if classifier and shapes != {"text_label"}:
        return (f"{key}.source: {source} has conversation rows; a classification run can only mix in text/label "
                f"rows (set {key}.format/columns)")
    if not classifier and "text_label" in shapes:
        return (f"{key}.source: {source} has text/label rows; a generative run mixes in conversations "
                f"(prompt/response or messages)")
    if "preference" in shapes:
        return f"{key}.source: {source} has preference pairs; data.mix adds supervised rows only"
    return None


def draw(kept: list[int], weight: float, user_rows: int, seed: str) -> tuple[list[int], str]:
    """Which of the admitted rows join training: weight x the user's training rows, seeded, capped at
    what the source has (the note says so when capped)."""
    asked = round(weight * user_rows)
    chosen = random.Random(seed).sample(kept, min(asked, len(kept)))
    note = "" if asked <= len(kept) else f"asked for {asked} rows, the source has {len(kept)} usable"
    return sorted(chosen), note
