"""Preference tuning losses (DPO, ORPO) on the project's masking, batching and selective logits.

A preference example is the chosen conversation (`input_ids`/`labels`, exactly what supervised
training would see) plus the rejected one (`rejected_input_ids`/`rejected_labels`); both share the
prompt, only the last assistant turn differs. A batch of B pairs is one forward pass over 2B rows
(chosen first, then rejected), padded to the longest row.

- DPO (Rafailov et al. 2023): loss = -log sigmoid(beta * [(log pi(c) - log ref(c)) - (log pi(r) - log
  ref(r))]), log-probabilities summed over the answer tokens. The policy is an adapter; the reference is
  the same model with the adapter disabled, so no second copy of the weights is held. The implicit
  rewards are beta * (log pi - log ref).
- ORPO (Hong et al. 2024): no reference. loss = NLL(chosen) - lambda * log sigmoid(log odds(c) -
  log odds(r)), odds(y) = p / (1 - p) with p the per-token mean probability of the answer. The
  rewards reported are lambda * mean log p, as TRL reports them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from llmft.chat_format import PadToLongest
from llmft.loss import sequence_logps

# (model, batch, summed answer log-probs, answer token counts) -> (loss, chosen rewards, rejected rewards)
PairTerms = Callable[[Any, dict[str, Any], Any, Any], tuple[Any, Any, Any]]


class PreferenceBatches:
    """B pairs -> one padded batch of 2B rows: the B chosen conversations, then the B rejected ones."""

    def __init__(self, pad_token_id: int):
        self.pad = PadToLongest(pad_token_id)

    def __call__(self, batch: list[dict[str, list[int]]]) -> dict[str, Any]:
        rows = [{"input_ids": ex["input_ids"], "labels": ex["labels"]} for ex in batch]
        rows += [{"input_ids": ex["rejected_input_ids"], "labels": ex["rejected_labels"]} for ex in batch]
        return self.pad(rows)


def dpo_loss(policy_chosen: Any, policy_rejected: Any, reference_chosen: Any, reference_rejected: Any,
             beta: float) -> tuple[Any, Any, Any]:
    """(per-pair losses, chosen rewards, rejected rewards) from summed answer log-probs."""
    import torch

    chosen_rewards = beta * (policy_chosen - reference_chosen)
    rejected_rewards = beta * (policy_rejected - reference_rejected)
    losses = -torch.nn.functional.logsigmoid(chosen_rewards - rejected_rewards)
    return losses, chosen_rewards.detach(), rejected_rewards.detach()


def _log1m_exp(x: Any) -> Any:
    """log(1 - exp(x)) for x < 0, accurate near 0 (where log1p(-exp(x)) loses every digit)."""
    import torch

    return torch.log(-torch.expm1(x.clamp(max=-1e-7)))


def orpo_loss(chosen_mean_logp: Any, rejected_mean_logp: Any, chosen_nll: Any, lam: float,
              ) -> tuple[Any, Any, Any, Any]:
    """(loss, per-pair log odds ratio, chosen rewards, rejected rewards). `chosen_nll` is the mean
    token NLL of the chosen answers (the supervised term); the mean log-probs are per answer token."""
    import torch

    log_odds = ((chosen_mean_logp - rejected_mean_logp)
                - (_log1m_exp(chosen_mean_logp) - _log1m_exp(rejected_mean_logp)))
    ratio = torch.nn.functional.logsigmoid(log_odds)
    loss = chosen_nll - lam * ratio.mean()
    return loss, log_odds.detach(), (lam * chosen_mean_logp).detach(), (lam * rejected_mean_logp).detach()


def _reference_logps(model: Any, batch: dict[str, Any]) -> Any:
    """The frozen starting model's log-probs: the same weights with the adapter switched off."""
    import torch

    peft_model = getattr(model, "module", model)  # DDP wraps the PEFT model
    with torch.no_grad(), peft_model.disable_adapter():
        logps, _, _ = sequence_logps(peft_model, batch["input_ids"], batch["attention_mask"], batch["labels"])
    return logps


def dpo_terms(model: Any, batch: dict[str, Any], logps: Any, counts: Any, beta: float) -> tuple[Any, Any, Any]:
    """DPO's loss (mean over pairs) and rewards; the reference is the adapter switched off."""
    n = batch["input_ids"].shape[0] // 2
    reference = _reference_logps(model, batch)
    losses, chosen_rewards, rejected_rewards = dpo_loss(logps[:n], logps[n:], reference[:n], reference[n:], beta)
    return losses.mean(), chosen_rewards, rejected_rewards


def orpo_terms(model: Any, batch: dict[str, Any], logps: Any, counts: Any, orpo_lambda: float,
               ) -> tuple[Any, Any, Any]:
    """ORPO's loss (chosen NLL per token minus the weighted odds-ratio term) and rewards."""
    n = batch["input_ids"].shape[0] // 2
    counts = counts.clamp(min=1)
    nll = -logps[:n].sum() / counts[:n].sum()
    loss, _, chosen_rewards, rejected_rewards = orpo_loss(logps[:n] / counts[:n], logps[n:] / counts[n:], nll,
                                                          orpo_lambda)
    return loss, chosen_rewards, rejected_rewards


def preference_loss(model: Any, batch: dict[str, Any], terms: PairTerms) -> tuple[Any, dict[str, float], Any]:
    """(loss, batch statistics for logging, model outputs) for a `PreferenceBatches` batch; `terms` is
    the method's loss (`dpo_terms`, `orpo_terms` with their strength bound)."""
    n = batch["input_ids"].shape[0] // 2
    logps, counts, outputs = sequence_logps(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
    chosen, rejected = logps[:n], logps[n:]
    loss, chosen_rewards, rejected_rewards = terms(model, batch, logps, counts)
    margins = chosen_rewards - rejected_rewards
    stats = {"rewards/chosen": float(chosen_rewards.mean()), "rewards/rejected": float(rejected_rewards.mean()),
             "rewards/margin": float(margins.mean()), "rewards/accuracy": float((margins > 0).float().mean()),
             "logps/chosen": float(chosen.detach().mean()), "logps/rejected": float(rejected.detach().mean())}
    return loss, stats, outputs
