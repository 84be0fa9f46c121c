"""Numerically safe token choice for the model server: one request's settings can never produce the
inf/NaN probabilities that make `torch.multinomial` raise.

- A temperature below MIN_TEMPERATURE is greedy (`effective_temperature`): dividing logits by 1e-300
  (or a float32-denormal 1e-45) overflows to inf, and inf - inf in the softmax is NaN. Sampling that
  cold is argmax anyway. The server applies it when it parses a request, so both engines see 0.
- Sampling runs in float64 on log-probabilities (`log_softmax` subtracts the row's maximum first), so
  no temperature in (MIN_TEMPERATURE, 2] overflows.
- A row whose logits are not finite (NaN from the model) keeps its finite entries; a row with none
  raises `SamplingError`, which fails that row only (scheduler.DecodeBatch._pick).
"""

from __future__ import annotations

import math

import torch

MIN_TEMPERATURE = 1e-5  # below this, sampling is greedy (vLLM uses the same threshold)


class SamplingError(ValueError):
    """No token can be drawn for a row (its logits hold no finite value)."""


def effective_temperature(temperature: float) -> float:
    """The temperature actually used: 0 (greedy) for anything below MIN_TEMPERATURE or not finite."""
    if not math.isfinite(temperature) or temperature < MIN_TEMPERATURE:
        return 0.0
    return float(temperature)


def sample_token(logits: torch.Tensor, temperature: float, top_p: float, top_k: int | None = None,
                 generator: torch.Generator | None = None) -> int:
    """One token from a row of logits: temperature, then top-k, then top-p (the order of generate's
    warpers); greedy for a temperature below MIN_TEMPERATURE."""
    scores = logits.detach().to(torch.float64).flatten()
    finite = torch.isfinite(scores)
    if not bool(finite.any()):
        raise SamplingError("the model produced no finite logit for this request")
    scores = scores.masked_fill(~finite, float("-inf"))
    temperature = effective_temperature(temperature)
    if temperature == 0.0:
        return int(scores.argmax())
    scores = torch.log_softmax(scores / temperature, dim=-1)  # stable: the row's maximum is subtracted
    if top_k:
        kth = torch.topk(scores, min(int(top_k), scores.numel())).values[-1]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if top_p < 1.0:
        ordered, index = torch.sort(scores)
        cumulative = ordered.softmax(-1).cumsum(-1)
        drop = cumulative <= 1 - top_p
        drop[-1] = False  # always keep the most likely token
        scores = scores.masked_fill(drop.scatter(0, index, drop), float("-inf"))
    probs = scores.softmax(-1)
    if not bool(torch.isfinite(probs).all()) or float(probs.sum()) <= 0:  # cannot happen; never raise inside torch
        return int(scores.argmax())
    return int(torch.multinomial(probs, 1, generator=generator))

