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
logs it as `train/rewards/*` and `validation/rewards/*`). Only the final answers are scored: earlier
turns (and a few-shot prompt's worked examples) are the same on both sides, and as a start the pair
shares they are computed once. The chat metrics (ROUGE-L, BLEU, chrF, exact match,
unsupported_output_rate) score greedy answers against the chosen responses; eval loss and perplexity
are the chosen answers' mean token loss, from the same forwards.
"""

from __future__ import annotations

import json
import math
from typing import Any, ClassVar

from llmft.chat_format import IGNORE_INDEX, encode_messages, encode_to_fit, truncate, with_system
from llmft.data.shapes import REJECTED_ROLE, Example, pair_conversations
from llmft.evaluate import text_metrics
from llmft.evaluate.scoring import ModelScores, score_generative
from llmft.evaluate.shared_start import pair_logps
from llmft.tasks.base import Encoded, EvalSettings, GenerativeTask


def pair_example(tokenizer: Any, messages: list[dict[str, str]], max_seq_length: int) -> dict[str, list[int]]:
    """Token ids and labels of both conversations of an encoded pair (prompt already fitted)."""
    chosen, rejected = pair_conversations(messages)
    if rejected is None:
        raise ValueError("not a preference pair: the conversation has no rejected answer")
    c = truncate(encode_messages(tokenizer, chosen), max_seq_length)
    r = truncate(encode_messages(tokenizer, rejected), max_seq_length)
    return {"input_ids": c["input_ids"], "labels": c["labels"],
            "rejected_input_ids": r["input_ids"], "rejected_labels": r["labels"]}


def final_answers_only(pair: dict[str, list[int]]) -> dict[str, list[int]]:
    """A scored pair with only its final answers labelled (the last labelled run of each side): earlier
    assistant turns, a few-shot prompt's worked examples among them, are the same tokens on both sides
    and add the same log-probs to both, so the margin does not change; unlabelled, they become a start
    the pair's rows share and are computed once (`shared_start`)."""
    out = dict(pair)
    for key in ("labels", "rejected_labels"):
        labels = pair[key]
        end = next((i + 1 for i in range(len(labels) - 1, -1, -1) if labels[i] != IGNORE_INDEX), 0)
        begin = next((i + 1 for i in range(end - 1, -1, -1) if labels[i] == IGNORE_INDEX), 0)
        out[key] = [IGNORE_INDEX] * begin + labels[begin:]
    return out


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
        pairs = [final_answers_only(pair_example(tokenizer, conv, settings.max_seq_length)) for conv in conversations]
        logps = pair_logps(model, tokenizer.pad_token_id, pairs, settings.batch_size)
        margins = [c - r for c, r in zip(logps.chosen, logps.rejected, strict=True)]
        # generations and chat metrics against the chosen answer
        chat_rows = [{**r, "messages": json.dumps(pair_conversations(conv)[0], ensure_ascii=False)}
                     for r, conv in zip(rows, conversations, strict=True)]
        scores = score_generative(model, tokenizer, system, chat_rows, self.score, self.overlap_metrics,
                                  settings.max_new_tokens, settings.batch_size, settings.max_seq_length, desc,
                                  with_loss=False)
        n = max(len(margins), 1)
        tokens = sum(logps.chosen_tokens)
        loss = -sum(logps.chosen) / tokens if tokens else math.nan  # the chosen answers' forwards, already run
        metrics = {"preference_accuracy": sum(m > 0 for m in margins) / n, "reward_margin": sum(margins) / n,
                   **scores.metrics, "eval_loss": loss, "perplexity": text_metrics.perplexity(loss)}
        row_scores = [{"prefers_chosen": float(m > 0), "logp_margin": m, **s}
                      for m, s in zip(margins, scores.row_scores, strict=True)]
        return ModelScores(metrics=metrics, outputs=scores.outputs, row_scores=row_scores)
