"""Augmentation: paraphrases of training inputs as extra, synthetic training rows (`augment.*`).

The paraphrasing model (default: the base model) is asked to reword each sampled training row's input
(a classification text, or the last user turn of a conversation) and the row's target is kept. A
paraphrase is only a new example if it says the same thing: it must differ from the input, keep every
number of it (and, for extraction, every field value the answer takes from it) and be of a similar
length; the caller then passes survivors through the data gate and drops any that duplicates a row of
any split. Synthetic rows go to training only and are marked `origin: synthetic`.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import replace
from typing import Any

from llmft.chat_format import render_generation_prompt
from llmft.data.shapes import Example, normalise_text
from llmft.generation import Sampling
from llmft.offline_generation import generate

REQUEST = ("Rewrite the text below in different words. Keep its meaning and every fact, name and number. "
           "Reply with the rewritten text only.\n\nText: {text}")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
# openers small models put before the answer; not part of the paraphrase
_PREAMBLE = re.compile(r"^(sure|here is|here's|certainly|rewritten text|paraphrase)[^\n:]*:\s*", re.IGNORECASE)


def input_of(ex: Example) -> str:
    if ex.shape == "text_label":
        return ex.text
    return next(m["content"] for m in reversed(ex.messages) if m["role"] == "user")


def with_input(ex: Example, text: str, k: int) -> Example:
    """The example with its input replaced by a paraphrase, marked synthetic, located at its original."""
    where = f"{ex.where}, paraphrase {k + 1}"
    if ex.shape == "text_label":
        return replace(ex, text=text, where=where, origin="synthetic")
    last = max(i for i, m in enumerate(ex.messages) if m["role"] == "user")
    messages = [dict(m) for m in ex.messages]
    messages[last]["content"] = text
    return replace(ex, messages=messages, where=where, origin="synthetic")


def clean(output: str) -> str:
    text = _PREAMBLE.sub("", output.strip()).strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        text = text[1:-1].strip()
    return text


def _field_values(response: str) -> list[str]:
    try:
        parsed = json.loads(response)
    except ValueError:
        return []
    if not isinstance(parsed, dict):
        return []
    return [str(v) for v in parsed.values() if isinstance(v, str | int | float) and not isinstance(v, bool)]


def problem(source: str, paraphrase: str, ex: Example, extraction: bool) -> str | None:
    """Why a paraphrase is not a faithful new example (a reason kind), or None."""
    if not paraphrase:
        return "empty"
    if normalise_text(paraphrase) == normalise_text(source):
        return "unchanged"
    ratio = len(paraphrase) / max(len(source), 1)
    if not 0.5 <= ratio <= 2.0:
        return "length"
    if set(_NUMBER.findall(source)) - set(_NUMBER.findall(paraphrase)):
        return "lost_number"
    if extraction:
        said = paraphrase.lower()
        if any(v.lower() in source.lower() and v.lower() not in said for v in _field_values(ex.target)):
            return "lost_field_value"
    return None


def paraphrase(examples: list[Example], model: Any, tokenizer: Any, per_row: int, temperature: float,
               max_new_tokens: int, batch_size: int, seed: int, extraction: bool,
               ) -> tuple[list[Example], Counter[str], int]:
    """(faithful paraphrased examples, dropped counts by reason, paraphrases generated). Inputs longer
    than the generation budget are skipped (a cut-off paraphrase would lose their end)."""
    import torch

    dropped: Counter[str] = Counter()
    todo = []
    for ex in examples:
        if len(tokenizer(input_of(ex), add_special_tokens=False)["input_ids"]) > int(max_new_tokens * 0.8):
            dropped["too_long_to_paraphrase"] += per_row
            continue
        todo.append(ex)
    rounds = 1 if temperature <= 0 else per_row  # greedy says the same thing every time
    prompts = [render_generation_prompt(tokenizer, [{"role": "user", "content": REQUEST.format(text=input_of(ex))}])
               for ex in todo]
    out: list[Example] = []
    generated = 0
    for k in range(rounds):
        torch.manual_seed(seed + k)
        texts = generate(model, tokenizer, prompts, max_new_tokens, batch_size, desc=f"paraphrase {k + 1}/{rounds}",
                         sampling=Sampling(temperature=temperature, top_p=0.95 if temperature > 0 else 1.0))
        generated += len(texts)
        for ex, text in zip(todo, texts, strict=True):
            text = clean(text)
            reason = problem(input_of(ex), text, ex, extraction)
            if reason:
                dropped[reason] += 1
            else:
                out.append(with_input(ex, text, k))
    return out, dropped, generated
