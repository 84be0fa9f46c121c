"""Preference: pairs of a chosen and a rejected answer to one prompt (DPO, ORPO; or SFT on the chosen).

Encoded through the one chat formatter: `input_ids`/`labels` are the prompt + chosen conversation
(what supervised methods train on); `pair_example` adds the prompt + rejected one for the preference
losses. An over-long prompt is shortened once, for the longer of the two answers, so both answers
follow the same prompt tokens.

Scored on held-out pairs. `preference_accuracy` (primary) is the share of pairs where the model
gives the chosen answer a higher log-likelihood (summed over the answer tokens) than the rejected
one; `reward_margin` is the mean of that log-likelihood difference. Both are properties of one
model, so the base, the candidate and the champion are compared on the same footing (a DPO model's
implicit reward margin against its reference is beta * (candidate margin - base margin); training
logs it as `train/rewards/*` and `validation/rewards/*`). The chat metrics (ROUGE-L, BLEU, chrF,
exact match, unsupported_output_rate, eval loss and perplexity) score greedy answers against the
chosen responses.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

from llmft.chat_format import encode_messages, encode_to_fit, truncate, with_system
from llmft.data.shapes import REJECTED_ROLE, Example, pair_conversations
from llmft.evaluate import text_metrics
from llmft.evaluate.scoring import ModelScores, score_generative
from llmft.tasks.base import Encoded, EvalSettings, GenerativeTask
from llmft.train.preference import pair_logps


def pair_example(tokenizer: Any, messages: list[dict[str, str]], max_seq_length: int) -> dict[str, list[int]]:
    """Token ids and labels of both conversations of an encoded pair (prompt already fitted)."""
    chosen, rejected = pair_conversations(messages)
    if rejected is None:
        raise ValueError("not a preference pair: the conversation has no rejected answer")
    c = truncate(encode_messages(tokenizer, chosen), max_seq_length)
    r = truncate(encode_messages(tokenizer, rejected), max_seq_length)
    return {"input_ids": c["input_ids"], "labels": c["labels"],
            "rejected_input_ids": r["input_ids"], "rejected_labels": r["labels"]}


class PreferenceTask(GenerativeTask):
    name = "preference"
    summary = ("Preference tuning: for a prompt, the model learns to favour the chosen answer over the "
               "rejected one (DPO / ORPO on chosen/rejected pairs).")
    primary_metric = "preference_accuracy"
    overlap_metrics: ClassVar[tuple[str, ...]] = ("rougeL", "bleu", "chrf", "exact_match")
    metric_names = ("preference_accuracy", "reward_margin", *overlap_metrics, text_metrics.UNSUPPORTED_RATE,
                    "eval_loss", "perplexity")

    def encode(self, tokenizer: Any, example: Example, system: str | None, max_seq_length: int) -> Encoded | None:
        chosen, rejected = pair_conversations(example.messages)
        if rejected is None:
            return super().encode(tokenizer, example, system, max_seq_length)
        # fit the prompt to the longer answer, so both answers follow the very same prompt
        longer = max((chosen, rejected), key=lambda conv: len(tokenizer(conv[-1]["content"],
                                                                        add_special_tokens=False)["input_ids"]))
        fitted = encode_to_fit(tokenizer, with_system(system, longer), max_seq_length)
        if fitted is not None:
            _, messages, truncated = fitted
        else:
            # an answer longer than the whole budget (long LLM-written pairs): as TRL's DPO does, the
            # prompt keeps at most half the budget and both answers are cut at their end, where
            # pair_example truncates the token sequences (no end of turn is invented after the cut)
            stub = [*with_system(system, longer)[:-1], {"role": "assistant", "content": "."}]
            fitted = encode_to_fit(tokenizer, stub, max_seq_length // 2)
            if fitted is None:
                return None
            messages, truncated = fitted[1], True
        prompt = messages[:-1]
        pair = [*prompt, chosen[-1], {"role": REJECTED_ROLE, "content": rejected[-1]["content"]}]
        encoded = pair_example(tokenizer, pair, max_seq_length)
        return Encoded(encoded["input_ids"], encoded["labels"], truncated, pair)

    def evaluate(self, model: Any, tokenizer: Any, rows: list[dict[str, Any]], system: str | None,
                 settings: EvalSettings, labels: list[str] | None, desc: str) -> ModelScores:
        conversations = [with_system(system, json.loads(r["messages"])) for r in rows]
        pairs = [pair_example(tokenizer, conv, settings.max_seq_length) for conv in conversations]
        chosen, rejected = pair_logps(model, tokenizer, pairs, settings.batch_size)
        margins = [c - r for c, r in zip(chosen, rejected, strict=True)]
        # generations and chat metrics against the chosen answer
        chat_rows = [{**r, "messages": json.dumps(pair_conversations(conv)[0], ensure_ascii=False)}
                     for r, conv in zip(rows, conversations, strict=True)]
        scores = score_generative(model, tokenizer, system, chat_rows, self.score, self.overlap_metrics,
                                  settings.max_new_tokens, settings.batch_size, settings.max_seq_length, desc)
        n = max(len(margins), 1)
        metrics = {"preference_accuracy": sum(m > 0 for m in margins) / n, "reward_margin": sum(margins) / n,
                   **scores.metrics}
        row_scores = [{"prefers_chosen": float(m > 0), "logp_margin": m, **s}
                      for m, s in zip(margins, scores.row_scores, strict=True)]
        return ModelScores(metrics=metrics, outputs=scores.outputs, row_scores=row_scores)
