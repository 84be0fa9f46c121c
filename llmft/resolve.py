"""Resolve a run once, before its pipeline starts: the task (inferred with `task: auto`), the
registry name (derived from the source and task when `registry.model_name` is null), and the
primary metric, checked against what the task reports. The resolved config is what every step gets.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from llmft.base_model import resolve_base_model
from llmft.config import Config, ConfigError
from llmft.data import self_play
from llmft.data.ingest import read_rows
from llmft.data.shapes import to_examples
from llmft.tasks import get_task, primary_metric
from llmft.tasks.base import TaskSpec
from llmft.tasks.inference import resolve_task

_INFER_ROWS = 5000  # enough rows to see the data's shape; a huge file is not read twice in full


@dataclass
class ResolvedRun:
    cfg: Config  # task and registry.model_name concrete
    spec: TaskSpec


def derive_model_name(source: str, task: str) -> str:
    """`<source name>-<task>`, e.g. data/bbc-news.csv -> bbc-news-classification."""
    path = Path(source.rstrip("/"))
    stem = path.stem if path.suffix else path.name
    if ":" in stem:  # hub ids: org/name:split
        stem = stem.split(":", 1)[0]
    slug = re.sub(r"[^A-Za-z0-9.]+", "-", stem).strip("-.").lower() or "dataset"
    return f"{slug}-{task}"


def resolve_run(cfg: Config) -> ResolvedRun:
    resolve_base_model(cfg.model)  # a missing model or one that would run its own code fails before the run
    cfg = self_play.materialise(cfg)  # data.preference_pairs=self_play: the run reads the built pairs
    rows = read_rows(cfg.data.source, limit=min(cfg.data.max_rows or _INFER_ROWS, _INFER_ROWS))
    examples, _ = to_examples(rows, cfg.data)
    spec = resolve_task(cfg, examples)
    name = cfg.registry.model_name or derive_model_name(cfg.data.source, spec.name)
    resolved = cfg.model_copy(update={"task": spec.name,
                                      "registry": cfg.registry.model_copy(update={"model_name": name})})
    try:
        primary_metric(get_task(spec.name), cfg.eval.primary_metric)
    except ConfigError as exc:
        raise ConfigError(f"{exc} (task {spec.name}: {spec.reason})") from None
    return ResolvedRun(cfg=resolved, spec=spec)


def code_version() -> str:
    """Hash of the project's own code: a cached step is re-run when the code behind it changed."""
    import hashlib

    root = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for file in sorted(root.rglob("*")):
        if file.is_file() and file.suffix in (".py", ".jsonl") and "__pycache__" not in file.parts:
            digest.update(str(file.relative_to(root)).encode() + b"\0" + file.read_bytes())
    return digest.hexdigest()[:16]
