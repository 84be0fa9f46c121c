"""Chat-template encoding with loss on assistant turns only.

The same rendering feeds training, evaluation and serving, so the template never drifts. Every
assistant turn is labelled up to and including its EOS token, so the model learns to stop; system
and user turns are labelled -100. Padding is masked by position, never by token id (pad == eos
for SmolLM2).

Message content never speaks the template's language: special-token text in it (`<|im_start|>`,
`<|im_end|>`, ...) is escaped before rendering, so it tokenizes as plain text and a user cannot
forge a system turn. The rule is the same at training, evaluation and serving time.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

from llmft.errors import UserFacingError

IGNORE_INDEX = -100
# padded tokens per no-grad scoring forward (eval loss, preference log-probs): its logits at labelled
# positions (4096 x a 49k vocabulary, float32: 0.8 GB, and as much again for the log-softmax) stay bounded
# however long the rows are; rows of a few hundred tokens still go eval.batch_size at a time
SCORE_TOKENS = 4096


class MaskingError(UserFacingError, ValueError):
    """Label masking would train on nothing, or never on EOS."""


def with_system(system: str | None, messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """Prepend the task's system prompt unless the conversation brings its own."""
    if system and (not messages or messages[0]["role"] != "system"):
        return [{"role": "system", "content": system}, *messages]
    return list(messages)


def build_messages(system: str | None, prompt: str, response: str | None = None) -> list[dict[str, str]]:
    messages = [{"role": "user", "content": prompt}]
    if response is not None:
        messages.append({"role": "assistant", "content": response})
    return with_system(system, messages)


# inserted after the first character of special-token text in content: invisible, and no special token
# contains it, so `<\u200b|im_start|>` can only tokenize as ordinary text
ESCAPE_MARK = "\u200b"


def special_token_texts(tokenizer: Any) -> tuple[str, ...]:
    """Every string the tokenizer turns into a special token when it appears in text."""
    # computed per call this was a sixth of the gate's time on a large corpus; remembered on the
    # tokenizer and recomputed when its vocabulary grows (added tokens)
    size = len(tokenizer) if hasattr(tokenizer, "__len__") else None
    cached = getattr(tokenizer, "_llmft_special_texts", None)
    if cached is not None and size is not None and cached[0] == size:
        return cached[1]
    texts = _special_token_texts(tokenizer)
    if size is not None:
        try:
            tokenizer._llmft_special_texts = (size, texts)
        except AttributeError:  # a tokenizer that takes no attributes is simply asked every time
            pass
    return texts


def _special_token_texts(tokenizer: Any) -> tuple[str, ...]:
    found = set(getattr(tokenizer, "all_special_tokens", []) or [])
    for added in (getattr(tokenizer, "added_tokens_decoder", None) or {}).values():
        if getattr(added, "special", False):
            found.add(str(added.content))
    # longest first, so the regex takes `<|im_start|>` before any shorter token it contains
    return tuple(sorted((t for t in found if len(t) >= 2), key=lambda t: (-len(t), t)))


@lru_cache(maxsize=16)
def _special_pattern(texts: tuple[str, ...]) -> re.Pattern[str] | None:
    return re.compile("|".join(re.escape(t) for t in texts)) if texts else None


def escape_special_tokens(tokenizer: Any, text: str) -> str:
    """`text` with every special-token string broken by ESCAPE_MARK, so it tokenizes as plain text."""
    pattern = _special_pattern(special_token_texts(tokenizer))
    if pattern is None:
        return text
    while pattern.search(text):  # again until none is left (escaping can never create one, but be sure)
        text = pattern.sub(lambda m: m.group()[0] + ESCAPE_MARK + m.group()[1:], text)
    return text


def escape_messages(tokenizer: Any, messages: list[dict[str, str]]) -> list[dict[str, str]]:
    return [{**m, "content": escape_special_tokens(tokenizer, m["content"])} if isinstance(m.get("content"), str)
            else dict(m) for m in messages]


def render_chat(tokenizer: Any, messages: list[dict[str, str]], add_generation_prompt: bool = False) -> str:
    """The model's chat template over the messages, their special-token text escaped."""
    return tokenizer.apply_chat_template(escape_messages(tokenizer, messages), tokenize=False,
                                         add_generation_prompt=add_generation_prompt)


def render_generation_prompt(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    """The prompt exactly as training saw it before an assistant turn."""
    return render_chat(tokenizer, messages, add_generation_prompt=True)


def encode_messages(tokenizer: Any, messages: list[dict[str, str]]) -> dict[str, list[int]]:
    """Token ids and labels for a conversation; every assistant turn (with its EOS) is labelled."""
    eos_id, eos_text = tokenizer.eos_token_id, tokenizer.eos_token
    ids: list[int] = []
    labels: list[int] = []
    consumed = ""
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt_text = render_generation_prompt(tokenizer, messages[:i])
        full_text = render_chat(tokenizer, messages[: i + 1])
        if not prompt_text.startswith(consumed) or not full_text.startswith(prompt_text):
            raise MaskingError("the chat template renders earlier turns differently as the conversation grows")
        completion = full_text[len(prompt_text):]
        cut = completion.find(eos_text) if eos_text else -1
        completion = completion[: cut + len(eos_text)] if cut >= 0 else completion
        context_ids = tokenizer(prompt_text[len(consumed):], add_special_tokens=False)["input_ids"]
        completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
        if not completion_ids or completion_ids[-1] != eos_id:
            completion_ids = [*completion_ids, eos_id]
        ids += context_ids + completion_ids
        labels += [IGNORE_INDEX] * len(context_ids) + completion_ids
        consumed = prompt_text + completion
    return {"input_ids": ids, "labels": labels}


def truncate(example: dict[str, list[int]], max_length: int) -> dict[str, list[int]]:
    return {"input_ids": example["input_ids"][:max_length], "labels": example["labels"][:max_length]}


# a token is rarely longer than this many characters: text past max_length * this can never fit,
# so it is cut before tokenizing (a 5 MB record would otherwise tokenize for seconds)
CHARS_PER_TOKEN_BOUND = 12


def _cut_tokens(tokenizer: Any, text: str, keep: int) -> str:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return tokenizer.decode(ids[:max(keep, 0)]).rstrip() if keep > 0 else ""


def encode_to_fit(tokenizer: Any, messages: list[dict[str, str]], max_length: int,
                  ) -> tuple[dict[str, list[int]], list[dict[str, str]], bool] | None:
    """Encode a conversation within `max_length` tokens by shortening its input, never its target.

    Returns (encoding, the messages that were encoded, truncated), or None when the final assistant
    turn (the target) cannot fit even with an empty input. Oldest exchanges go first (a system turn
    is kept); then the last user turn is cut from its end, keeping its beginning (the lead of a
    document).
    """
    char_cap = max_length * CHARS_PER_TOKEN_BOUND
    msgs = [dict(m) for m in messages]
    cut = False
    for m in msgs[:-1]:
        if len(m["content"]) > char_cap:
            m["content"], cut = m["content"][:char_cap], True
    encoded = encode_messages(tokenizer, msgs)
    while len(encoded["input_ids"]) > max_length:
        first = 1 if msgs[0]["role"] == "system" else 0
        later_user = [i for i, m in enumerate(msgs[:-1]) if m["role"] == "user" and i > first]
        if later_user:  # drop everything before the next user turn: the oldest exchange
            msgs = msgs[:first] + msgs[later_user[0]:]
        else:
            last_user = max(i for i, m in enumerate(msgs) if m["role"] == "user")
            content = msgs[last_user]["content"]
            if not content:
                return None
            overflow = len(encoded["input_ids"]) - max_length
            kept = len(tokenizer(content, add_special_tokens=False)["input_ids"]) - overflow - 2
            msgs[last_user] = {**msgs[last_user], "content": _cut_tokens(tokenizer, content, kept)}
        cut = True
        encoded = encode_messages(tokenizer, msgs)
    return encoded, msgs, cut


def check_labels(example: dict[str, list[int]], eos_token_id: int) -> None:
    labels = [t for t in example["labels"] if t != IGNORE_INDEX]
    if not labels:
        raise MaskingError("every label is -100: the model would learn nothing (check the chat template)")
    if eos_token_id not in labels:
        raise MaskingError(f"EOS token {eos_token_id} is not among the labels: the model would never learn to stop")


def token_batches(lengths: list[int], max_rows: int, max_tokens: int = SCORE_TOKENS) -> list[list[int]]:
    """Indices of rows grouped for forward passes, shortest first: at most `max_rows` rows, and at most
    `max_tokens` once padded to the group's longest row (a longer row goes alone)."""
    groups: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lambda i: lengths[i]):
        group = groups[-1] if groups else None
        if group is not None and len(group) < max_rows and (len(group) + 1) * lengths[i] <= max_tokens:
            group.append(i)
        else:
            groups.append([i])
    return groups


class PadToLongest:
    """Dynamic padding to the longest sequence in the batch; labels (when present) padded with -100."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, batch: list[dict[str, list[int]]]) -> dict[str, Any]:
        import torch

        width = max(len(ex["input_ids"]) for ex in batch)
        ids, labels, mask = [], [], []
        for ex in batch:
            pad = width - len(ex["input_ids"])
            ids.append(list(ex["input_ids"]) + [self.pad_token_id] * pad)
            mask.append([1] * len(ex["input_ids"]) + [0] * pad)
            if "labels" in ex:
                labels.append(list(ex["labels"]) + [IGNORE_INDEX] * pad)
        out = {"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask)}
        if labels:
            out["labels"] = torch.tensor(labels)
        if all("weight" in ex for ex in batch):  # train.class_weights: balanced over groups of rows
            out["weight"] = torch.tensor([float(ex["weight"]) for ex in batch])
        return out
