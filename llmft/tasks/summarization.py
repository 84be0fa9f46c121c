"""Summarization: a document in, a short summary out.

Instruction: summarise the text (replaced by `data.system_prompt`). Over-long documents are cut
from their end, keeping the lead and the whole reference summary. Metrics: ROUGE-1/2/L/Lsum
(ROUGE-Lsum primary), the length ratio of generated to reference summaries, and a cheap
faithfulness signal, `unsupported_content`: the share of the summary's content words and numbers
that do not occur in the source (lower is better; made-up names and figures raise it); beside it,
as for every generative task, `unsupported_output_rate`: the share of summaries with at least one
number, name or quote the source does not contain.
"""

from __future__ import annotations

import re
from typing import ClassVar

from llmft.data.shapes import Example
from llmft.evaluate import text_metrics
from llmft.tasks.base import GenerativeTask

INSTRUCTION = "Summarize the following text in a few sentences. Answer with only the summary."

# function words never count as content: their absence from the source says nothing about faithfulness
_STOPWORDS = frozenset("""a about above after again against all am an and any are as at be because been before being
below between both but by can could did do does doing down during each few for from further had has have having he
her here hers herself him himself his how i if in into is it its itself just me more most my myself no nor not now of
off on once only or other our ours ourselves out over own same she should so some such than that the their theirs
them themselves then there these they this those through to too under until up very was we were what when where which
while who whom why will with would you your yours yourself yourselves also said says say one new""".split())
_TOKEN = re.compile(r"[a-z0-9]+(?:[.,][0-9]+)?")


def content_words(text: str) -> list[str]:
    return [w for w in _TOKEN.findall(text.lower()) if w not in _STOPWORDS and (len(w) > 2 or w.isdigit())]


def unsupported_share(summary: str, source: str) -> float:
    """Share of the summary's content words (and numbers) absent from the source; 0 for an empty one."""
    words = content_words(summary)
    if not words:
        return 0.0
    seen = set(_TOKEN.findall(source.lower()))
    return sum(w not in seen for w in words) / len(words)


class SummarizationTask(GenerativeTask):
    name = "summarization"
    summary = "Summarization: the model writes a short summary of the given text."
    primary_metric = "rougeLsum"
    overlap_metrics: ClassVar[tuple[str, ...]] = ("rouge1", "rouge2", "rougeL", "rougeLsum")
    metric_names = (*overlap_metrics, "length_ratio", "unsupported_content", text_metrics.UNSUPPORTED_RATE, "eval_loss",
                    "perplexity")
    smoke_prompt = ("The city council met on Tuesday and approved a new budget for public parks. The plan adds "
                    "three playgrounds and extends opening hours during the summer.")
    smoke_max_tokens = 48

    def instruction(self, examples: list[Example]) -> str | None:
        return INSTRUCTION

    def score(self, predictions: list[str], references: list[str],
              sources: list[str]) -> tuple[dict[str, float], list[dict[str, float]]]:
        rows = []
        for pred, ref, src in zip(predictions, references, sources, strict=True):
            ratio = len(pred.split()) / max(len(ref.split()), 1)
            rows.append({"length_ratio": ratio, "unsupported_content": unsupported_share(pred, src)})
        n = max(len(rows), 1)
        return ({"length_ratio": sum(r["length_ratio"] for r in rows) / n,
                 "unsupported_content": sum(r["unsupported_content"] for r in rows) / n}, rows)
