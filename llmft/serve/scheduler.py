"""Iteration-level (continuous) batching for the model server: sequences join and leave the running
batch between decoding steps, so a short request never waits for the longest one beside it.

transformers' own continuous batching (`generate_batch`) runs ~10x slower than static batching on
CPU, so this is a compact scheduler of our own over one batched KV cache:

- The active sequences share one `DynamicCache` whose rows are right-aligned: row i's valid keys are
  the last `length_i` positions, the rest is left padding masked out by a 2-D attention mask (as
  `generate` does for a left-padded batch). Positions come from each row's own length, so a row
  decodes exactly as it would alone.
- `admit` prefills new prompts (grouped, left-padded, only the last position's logits computed),
  picks their first token and concatenates their cache rows onto the batch, padding whichever side is
  shorter on the left.
- `step` decodes one token for every active row in one forward pass.
- `retire` drops finished or abandoned rows and trims the left columns no remaining row needs.

- Prompt starts that requests share (the system turn carrying the served instruction, above all) are
  prefilled once and kept (`PrefixCache`): a prompt that begins with a kept start prefills only the
  rest, on top of a copy of the start's keys and values. Such a row's cache reads [start][left
  padding][rest], so trimming keeps every column from the earliest real token of any row (read off
  the attention mask), not just the longest row's length.

Only models whose every cache layer is a plain full-attention `DynamicLayer` qualify (`supports`);
sliding-window or linear-attention layers keep a different shape, and those models use static batches.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from llmft.generation import Completion, Sampling, left_padded, pad_id
from llmft.serve.sampling import sample_token

PREFILL_TOKENS = 2048  # padded prompt tokens per prefill forward: bounds the activation memory of one group
PREFIX_MIN_TOKENS = 16  # a shared start shorter than this is not worth its own forward pass
PREFIX_MAX_TOKENS = 1024  # ~46 MB of keys and values for SmolLM2-135M: a start is kept only up to here
PREFIX_ENTRIES = 4  # starts kept, least recently used dropped first
RECENT_PROMPTS = 8  # prompts remembered to spot a start that new ones share


def stop_ids(model: Any, tokenizer: Any) -> set[int]:
    """The tokens that end a turn, as `complete_batch` reads them."""
    eos = model.generation_config.eos_token_id
    return {tokenizer.eos_token_id, *(eos if isinstance(eos, list) else [] if eos is None else [eos])}


def supports(model: Any) -> bool:
    """Can this model's cache be merged and trimmed row by row (plain full-attention layers only)?"""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    try:
        cache = DynamicCache(config=model.config)
    except Exception:  # a config transformers cannot build a cache for: keep the static path
        return False
    return bool(cache.layers) and all(type(layer) is DynamicLayer for layer in cache.layers)


@dataclass
class Sequence:
    """One request in the running batch."""

    prompt_ids: list[int]
    max_tokens: int
    sampling: Sampling
    handle: Any = None  # the caller's job, returned with the sequence when it retires
    tokens: list[int] = field(default_factory=list)  # generated so far (a stop token is never kept)
    length: int = 0  # tokens of this row held in the cache (its next position)
    reused: int = 0  # leading prompt tokens taken from a kept shared start instead of prefilled
    finish: str | None = None  # "stop", "length" or "error" once finished
    error: BaseException | None = None  # why this row failed (finish "error"); the other rows go on

    def completion(self, tokenizer: Any) -> Completion:
        return Completion(text=tokenizer.decode(self.tokens, skip_special_tokens=True).strip(),
                          prompt_tokens=len(self.prompt_ids),
                          completion_tokens=len(self.tokens) + (self.finish == "stop"),
                          finish_reason=self.finish or "length")


def common_start(a: list[int], b: list[int]) -> int:
    """How many leading tokens `a` and `b` share."""
    n = min(len(a), len(b))
    return next((i for i in range(n) if a[i] != b[i]), n)


Layers = list[tuple[torch.Tensor, torch.Tensor]]


def start_layers(model: Any, ids: list[int] | tuple[int, ...]) -> Layers:
    """Keys and values of a prompt start `ids`, per layer (one forward, nothing kept but the cache)."""
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    with torch.inference_mode():
        model(input_ids=torch.tensor([list(ids)], device=model.device), past_key_values=cache, use_cache=True,
              logits_to_keep=1)
    return [(layer.keys, layer.values) for layer in cache.layers]


def expanded_cache(model: Any, layers: Layers | None, rows: int) -> Any:
    """A `DynamicCache` for `rows` rows, holding the kept start `layers` when given (expanded views: the
    forward's update copies them per row, so the kept start is never written to); empty otherwise."""
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    for layer, (keys, values) in zip(cache.layers, layers or [], strict=bool(layers)):
        layer.lazy_initialization(keys, values)
        layer.keys = keys.expand(rows, -1, -1, -1)
        layer.values = values.expand(rows, -1, -1, -1)
    return cache


class PrefixCache:
    """Keys and values of prompt starts that requests share, computed once. A start is kept when a
    prompt shares at least PREFIX_MIN_TOKENS leading tokens with recent prompts: the part all of those
    share, so one start serves every prompt with the same system turn."""

    def __init__(self, model: Any, max_tokens: int = PREFIX_MAX_TOKENS) -> None:
        self.model, self.max_tokens = model, max_tokens
        self.entries: OrderedDict[tuple[int, ...], Layers] = OrderedDict()
        self.recent: deque[list[int]] = deque(maxlen=RECENT_PROMPTS)

    def match(self, ids: list[int]) -> tuple[int, ...] | None:
        """The longest kept start of `ids` that leaves at least one token to prefill (that token's logits
        pick the first answer token); else the start `ids` shares with recent prompts, kept now."""
        found = [key for key in self.entries if len(key) < len(ids) and tuple(ids[:len(key)]) == key]
        key = max(found, key=len) if found else None
        if key is None:
            shared = [n for n in (common_start(ids, other) for other in self.recent) if n >= PREFIX_MIN_TOKENS]
            length = min(min(shared, default=0), len(ids) - 1, self.max_tokens)
            if length >= PREFIX_MIN_TOKENS:
                key = tuple(ids[:length])
                self._keep(key)
        self.recent.append(ids)
        if key is not None:
            self.entries.move_to_end(key)
        return key

    def _keep(self, key: tuple[int, ...]) -> None:
        self.entries[key] = start_layers(self.model, key)
        while len(self.entries) > PREFIX_ENTRIES:
            self.entries.popitem(last=False)


class DecodeBatch:
    """The active sequences and their shared, right-aligned KV cache."""

    def __init__(self, model: Any, tokenizer: Any, generator: torch.Generator | None = None,
                 share_prefixes: bool = True, prefix_max_tokens: int = PREFIX_MAX_TOKENS) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.prefixes = PrefixCache(model, prefix_max_tokens) if share_prefixes else None
        self.stops = stop_ids(model, tokenizer)
        self.pad_id = pad_id(tokenizer)
        self.top_k = model.generation_config.top_k  # None in transformers 5 unless the model sets it
        self.generator = generator
        self.rows: list[Sequence] = []
        self.cache: Any = None  # DynamicCache, row i = self.rows[i]
        self.mask: torch.Tensor | None = None  # [rows, cache length], 1 where a row has a real token
        self.steps = 0

    def __len__(self) -> int:
        return len(self.rows)

    def reset(self) -> list[Sequence]:
        """Drop every row and the cache (after a failed prefill or step may have half-updated it);
        returns the rows that were dropped. Kept shared starts stay: they are never written to."""
        dropped, self.rows, self.cache, self.mask = self.rows, [], None, None
        return dropped

    # -- joining --

    def admit(self, seqs: list[Sequence]) -> None:
        """Prefill `seqs`, pick each one's first token and add them to the batch: grouped by the kept
        start they share, shortest rest first, at most PREFILL_TOKENS padded tokens per forward
        (similar lengths waste little on padding)."""
        by_start: dict[tuple[int, ...], list[Sequence]] = {}
        for s in seqs:
            by_start.setdefault((self.prefixes.match(s.prompt_ids) if self.prefixes else None) or (), []).append(s)
        for start, members in by_start.items():
            pending = sorted(members, key=lambda s: len(s.prompt_ids))
            while pending:
                longest, take = 0, 0
                for s in pending:
                    longest = max(longest, len(s.prompt_ids) - len(start))
                    if take and longest * (take + 1) > PREFILL_TOKENS:
                        break
                    take += 1
                group, pending = pending[:take], pending[take:]
                self._prefill(group, start)

    def _prefill(self, group: list[Sequence], start: tuple[int, ...] = ()) -> None:
        """Left-padded prompts (after `start`, whose kept keys and values come first) in one forward."""
        ids, mask = left_padded([s.prompt_ids[len(start):] for s in group], self.pad_id)
        ids, mask = ids.to(self.model.device), mask.to(self.model.device)
        kept = self.prefixes.entries[start] if start and self.prefixes is not None else None
        cache = expanded_cache(self.model, kept, len(group))
        if start:
            mask = torch.cat([mask.new_ones(len(group), len(start)), mask], dim=1)
            for s in group:
                s.reused = len(start)
        positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)[:, len(start):]  # as generate computes them
        with torch.inference_mode():
            out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                             use_cache=True, logits_to_keep=1)
        for s in group:
            s.length = len(s.prompt_ids)
        self._pick(group, out.logits[:, -1, :])
        self._merge(group, out.past_key_values, mask)

    def _merge(self, group: list[Sequence], cache: Any, mask: torch.Tensor) -> None:
        if self.cache is None:
            self.rows, self.cache, self.mask = list(group), cache, mask
            return
        old, new = self.mask.shape[1], mask.shape[1]
        width = max(old, new)
        for mine, theirs in zip(self.cache.layers, cache.layers, strict=True):
            mine.keys = torch.cat([_pad_left(mine.keys, width - old), _pad_left(theirs.keys, width - new)])
            mine.values = torch.cat([_pad_left(mine.values, width - old), _pad_left(theirs.values, width - new)])
        self.mask = torch.cat([_pad_left(self.mask, width - old), _pad_left(mask, width - new)])
        self.rows += group

    # -- decoding --

    def step(self) -> None:
        """One token for every unfinished row, in one forward pass."""
        if not self.rows:
            return
        ids = torch.tensor([[s.tokens[-1]] for s in self.rows], device=self.model.device)
        positions = torch.tensor([[s.length] for s in self.rows], device=self.model.device)
        self.mask = torch.cat([self.mask, self.mask.new_ones(len(self.rows), 1)], dim=1)
        with torch.inference_mode():
            out = self.model(input_ids=ids, attention_mask=self.mask, position_ids=positions,
                             past_key_values=self.cache, use_cache=True, logits_to_keep=1)
        for s in self.rows:
            s.length += 1
        self.steps += 1
        self._pick(self.rows, out.logits[:, -1, :])

    def _pick(self, rows: list[Sequence], logits: torch.Tensor) -> None:
        """Choose each row's next token (its own sampling settings) and mark the rows that finished. A
        row whose token cannot be chosen finishes with its error; the other rows go on."""
        chosen = logits.argmax(dim=-1).tolist()
        for i, s in enumerate(rows):
            if s.finish is not None:
                continue
            if s.sampling.temperature > 0:
                try:
                    chosen[i] = self._sample(logits[i], s.sampling)
                except Exception as exc:  # this row's failure, not the batch's
                    s.finish, s.error, chosen[i] = "error", exc, None
        for s, token in zip(rows, chosen, strict=True):
            if s.finish is not None:
                continue
            if token in self.stops:
                s.finish = "stop"
            else:
                s.tokens.append(token)
                if len(s.tokens) >= s.max_tokens:
                    s.finish = "length"

    def _sample(self, logits: torch.Tensor, sampling: Sampling) -> int:
        """Temperature, then top-k (if the model's generation config sets one), then top-p, computed
        so that no setting overflows (serve/sampling.py)."""
        return sample_token(logits, sampling.temperature, sampling.top_p, self.top_k, self.generator)

    # -- leaving --

    def retire(self, keep: Callable[[Sequence], bool] = lambda s: True) -> list[Sequence]:
        """Remove the rows that finished or that `keep` rejects (cancelled, timed out); returns them."""
        leaving = [i for i, s in enumerate(self.rows) if s.finish is not None or not keep(s)]
        if not leaving:
            return []
        gone = [self.rows[i] for i in leaving]
        staying = [i for i in range(len(self.rows)) if i not in set(leaving)]
        if not staying:
            self.reset()
            return gone
        # rows are right-aligned: columns left of every remaining row's first real token can go (a row
        # on a kept start has padding inside, so its length alone would cut its start)
        index = torch.tensor(staying, device=self.mask.device)
        cut = int(self.mask[index].argmax(dim=1).min())  # argmax: a row's first 1
        for layer in self.cache.layers:
            layer.keys = layer.keys[index, :, cut:].contiguous()
            layer.values = layer.values[index, :, cut:].contiguous()
        self.mask = self.mask[index, cut:]
        self.rows = [self.rows[i] for i in staying]
        return gone


def _pad_left(tensor: torch.Tensor, columns: int) -> torch.Tensor:
    """Zeros before the sequence dimension's start (dim 1 of a mask, dim 2 of keys/values)."""
    if columns == 0:
        return tensor
    dim = 1 if tensor.dim() == 2 else 2
    shape = list(tensor.shape)
    shape[dim] = columns
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


def generate_continuous(model: Any, tokenizer: Any, requests: list[tuple[list[int], int, Sampling]],
                        join_after: list[int] | None = None) -> list[Completion]:
    """Run requests through one DecodeBatch; request i joins after `join_after[i]` decoding steps
    (default: all at once). For tests and benchmarks of the scheduler without a server."""
    join_after = join_after or [0] * len(requests)
    seqs = [Sequence(ids, budget, sampling, handle=i) for i, (ids, budget, sampling) in enumerate(requests)]
    batch, done = DecodeBatch(model, tokenizer), 0
    waiting = sorted(range(len(seqs)), key=lambda i: join_after[i])
    while done < len(seqs):
        joining = [seqs[i] for i in waiting if join_after[i] <= batch.steps]
        waiting = [i for i in waiting if join_after[i] > batch.steps]
        if joining:
            batch.admit(joining)
        done += len(batch.retire())
        if batch.rows:
            batch.step()
            done += len(batch.retire())
        elif waiting:
            batch.steps = join_after[waiting[0]]  # nothing to decode: the next request joins now
    return [s.completion(tokenizer) for s in seqs]


def complete_all(model: Any, tokenizer: Any, prompts: list[list[int]], max_tokens: int, sampling: Sampling,
                 max_active: int, prefix_max_tokens: int, done: Callable[[int], None] = lambda n: None,
                 ) -> list[Completion]:
    """Every prompt through one DecodeBatch, shortest first, at most `max_active` decoding at once; a
    finished row's place goes to the next prompt at once (no wait for the longest row of a batch),
    and a start the prompts share (the instruction, few-shot worked examples) is prefilled once.
    `done(n)` reports progress. The offline path of evaluation, probes, self-play and augmentation."""
    seqs = [Sequence(ids, max_tokens, sampling, handle=i) for i, ids in enumerate(prompts)]
    waiting = deque(sorted(seqs, key=lambda s: len(s.prompt_ids)))
    batch = DecodeBatch(model, tokenizer, prefix_max_tokens=prefix_max_tokens)
    while waiting or batch.rows:
        room = max_active - len(batch)
        if room > 0 and waiting:
            batch.admit([waiting.popleft() for _ in range(min(room, len(waiting)))])
            done(len(batch.retire()))  # a row can finish on its first token
        if batch.rows:
            batch.step()
            done(len(batch.retire()))
    return [s.completion(tokenizer) for s in seqs]
