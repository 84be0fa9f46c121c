"""Chat: general instruction following and dialog, single- or multi-turn.

No instruction of its own: the data's own system messages are kept, and `data.system_prompt` adds
one only when set. Every assistant turn is trained on (loss on assistant tokens only). Scored on
greedy answers against the reference turn: ROUGE-L (primary), BLEU, chrF, exact match, the share of
answers stating numbers, names or quotes the conversation does not contain (`unsupported_output_rate`,
a hallucination signal; it also counts correct general knowledge), plus eval loss and perplexity on
the reference answers.
"""

from __future__ import annotations

from typing import ClassVar

from llmft.evaluate import text_metrics
from llmft.tasks.base import GenerativeTask


class ChatTask(GenerativeTask):
    name = "chat"
    summary = ("Chat / instruction following: the model answers the user's last turn; trained on every "
               "assistant turn of the conversations.")
    primary_metric = "rougeL"
    overlap_metrics: ClassVar[tuple[str, ...]] = ("rougeL", "bleu", "chrf", "exact_match")
    metric_names = (*overlap_metrics, text_metrics.UNSUPPORTED_RATE, "eval_loss", "perplexity")
