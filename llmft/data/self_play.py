"""Preference pairs from supervised data (`data.preference_pairs: self_play`).

For users with prompt/response data but no pairs: chosen = the reference response, rejected = the
starting model's own greedy answer to the same prompt (the self-play construction of SPIN, Chen et
al. 2024: the model learns to move from what it says now towards what the data says). Answers are
generated in batches through the project's generation path, and the pairs are written once as a
JSONL dataset under `$LLMFT_CACHE/self_play/<key>/`, keyed by the source's bytes, the model and the
generation settings; the run then reads that file like any pairs file (same gate, same split on
the prompt, its own dataset fingerprint). A pair whose generated answer equals the reference is
left out: there is nothing to prefer.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from llmft.base_model import base_identity, load_model, load_tokenizer, resolve_base_model
from llmft.chat_format import render_generation_prompt, with_system
from llmft.config import Config
from llmft.data.ingest import DataError, read_rows, source_fingerprint
from llmft.data.shapes import Example, normalise_text, pair_conversations, to_examples
from llmft.locations import model_cache
from llmft.offline_generation import generate

log = logging.getLogger(__name__)


def self_play_pairs(examples: list[Example], model: Any, tokenizer: Any, system: str | None, max_new_tokens: int,
                    batch_size: int) -> list[dict[str, Any]]:
    """One pairs row per supervised example: its prompt turns, the reference as chosen, the model's
    greedy answer as rejected (examples the model already answers exactly are dropped)."""
    conversations = [pair_conversations(ex.messages)[0] for ex in examples]
    prompts = [render_generation_prompt(tokenizer, with_system(system, conv[:-1])) for conv in conversations]
    answers = generate(model, tokenizer, prompts, max_new_tokens, batch_size, desc="self-play")
    rows = []
    for ex, conv, answer in zip(examples, conversations, answers, strict=True):
        if not answer.strip() or normalise_text(answer) == normalise_text(conv[-1]["content"]):
            continue
        rows.append({"prompt": conv[:-1], "chosen": conv[-1]["content"], "rejected": answer, "source": ex.where})
    return rows


def _key(cfg: Config, fingerprint: str) -> str:
    settings = {"source": fingerprint, "model": base_identity(cfg.model.base, cfg.model.revision),
                "max_new_tokens": cfg.data.self_play_max_new_tokens, "system": cfg.data.system_prompt,
                "max_rows": cfg.data.max_rows, "format": cfg.data.format, "columns": cfg.data.columns.model_dump()}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def materialise(cfg: Config) -> Config:
    """With `data.preference_pairs: self_play` and supervised rows: the config with `data.source`
    pointing at the (cached) pairs dataset built from them; any other config unchanged."""
    if cfg.data.preference_pairs != "self_play":
        return cfg
    rows = read_rows(cfg.data.source, limit=cfg.data.max_rows)
    examples, _ = to_examples(rows, cfg.data)
    if any(ex.shape == "preference" for ex in examples):
        return cfg  # the data already has pairs
    if any(ex.shape == "text_label" for ex in examples):
        raise DataError(f"{cfg.data.source}: data.preference_pairs=self_play needs prompt/response rows, not "
                        "text/label rows")
    stem = Path(cfg.data.source.rstrip("/")).stem.split(":", 1)[0] or "data"
    out = model_cache() / "self_play" / _key(cfg, source_fingerprint(cfg.data.source)) / f"{stem}-pairs.jsonl"
    if not out.is_file():
        base = resolve_base_model(cfg.model)
        log.info("self-play: generating the rejected answers for %d rows with %s", len(examples), cfg.model.base)
        pairs = self_play_pairs(examples, load_model(base), load_tokenizer(base), cfg.data.system_prompt,
                                cfg.data.self_play_max_new_tokens, cfg.eval.batch_size)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in pairs), encoding="utf-8")
        tmp.replace(out)  # atomic: a killed run never leaves half a dataset to reuse
    # the pairs file has standard columns: the source's renames and format no longer apply
    data = cfg.data.model_copy(update={"source": str(out), "format": "auto", "max_rows": None,
                                       "columns": type(cfg.data.columns)()})
    return cfg.model_copy(update={"data": data})
