"""Chat-template encoding with loss on response tokens only.

The same `build_messages` feeds training, evaluation and serving, so the template never drifts.
Prompt tokens are labelled -100; the response and its closing EOS token are labelled, so the
model learns to stop. Padding is masked by position, never by token id (pad == eos here).
"""

from __future__ import annotations

from typing import Any

from llmft.errors import UserFacingError

IGNORE_INDEX = -100


class MaskingError(UserFacingError, ValueError):
    """Label masking would train on nothing, or never on EOS."""


def build_messages(system: str | None, prompt: str, response: str | None = None) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": prompt})
    if response is not None:
        messages.append({"role": "assistant", "content": response})
    return messages


def render_prompt(tokenizer: Any, system: str | None, prompt: str) -> str:
    """The generation prompt exactly as training saw it (ends where the response begins)."""
    return tokenizer.apply_chat_template(build_messages(system, prompt), tokenize=False,
                                         add_generation_prompt=True)


def encode_example(tokenizer: Any, system: str | None, prompt: str, response: str) -> dict[str, list[int]]:
    prompt_text = render_prompt(tokenizer, system, prompt)
    full_text = tokenizer.apply_chat_template(build_messages(system, prompt, response), tokenize=False)
    if not full_text.startswith(prompt_text):
        raise MaskingError("chat template renders the prompt differently with and without the response")
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    completion_ids = tokenizer(full_text[len(prompt_text):], add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    if eos in completion_ids:  # stop at the turn's EOS: what follows it is template whitespace
        completion_ids = completion_ids[: completion_ids.index(eos) + 1]
    else:
        completion_ids = [*completion_ids, eos]
    return {"input_ids": prompt_ids + completion_ids,
            "labels": [IGNORE_INDEX] * len(prompt_ids) + completion_ids}


def check_labels(example: dict[str, list[int]], eos_token_id: int) -> None:
    labels = [t for t in example["labels"] if t != IGNORE_INDEX]
    if not labels:
        raise MaskingError("every label is -100: the model would learn nothing (check the chat template)")
    if eos_token_id not in labels:
        raise MaskingError(f"EOS token {eos_token_id} is not among the labels: the model would never learn to stop")


class PadToLongest:
    """Dynamic padding to the longest sequence in the batch; labels padded with -100."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, batch: list[dict[str, list[int]]]) -> dict[str, Any]:
        import torch

        width = max(len(ex["input_ids"]) for ex in batch)
        ids, labels, mask = [], [], []
        for ex in batch:
            pad = width - len(ex["input_ids"])
            ids.append(list(ex["input_ids"]) + [self.pad_token_id] * pad)
            labels.append(list(ex["labels"]) + [IGNORE_INDEX] * pad)
            mask.append([1] * len(ex["input_ids"]) + [0] * pad)
        return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels),
                "attention_mask": torch.tensor(mask)}
