"""`task: auto`: which task the data is for, inferred from its shape, columns and content.

- text and label columns (text/label, sentence/label, review/sentiment, ...) -> classification;
- a summary-like target column (document/summary, article/highlights, dialogue/summary, ...), or
  instructions that ask for a summary -> summarization;
- targets that are JSON objects -> extraction;
- chosen/rejected pairs (prompt/chosen/rejected, ...) -> preference;
- anything else with an input and a response (prompt/response, question/answer, alpaca,
  messages, conversations) -> chat.
The choice and its reason are announced in one line and recorded in the run summary and MLflow.
"""

from __future__ import annotations

from collections import Counter

from llmft.config import Config, ConfigError
from llmft.data.shapes import Example
from llmft.tasks import get_task
from llmft.tasks.base import TaskSpec
from llmft.tasks.extraction import objects
from llmft.train.methods import get_method

SUMMARY_TARGETS = frozenset({"summary", "highlights", "abstract", "tldr", "summary_text", "title"})
_JSON_SHARE = 0.8  # this share of targets being JSON objects makes the data extraction data
_SUMMARY_ASK = 0.5  # this share of prompts asking for a summary makes it summarization


def _common_fields(examples: list[Example]) -> str:
    counts = Counter(ex.fields for ex in examples if ex.fields)
    return counts.most_common(1)[0][0] if counts else "the data"


def infer_task(examples: list[Example]) -> tuple[str, str]:
    """(task name, reason) for these examples."""
    if not examples:
        raise ConfigError("task=auto: no usable rows to infer the task from; set task=...")
    fields = _common_fields(examples)
    if any(ex.shape == "preference" for ex in examples):
        return "preference", f"inferred from columns {fields}: chosen and rejected answers"
    if any(ex.shape == "text_label" for ex in examples):
        return "classification", f"inferred from columns {fields}"
    target_column = fields.rsplit("/", 1)[-1] if "/" in fields else ""
    if target_column in SUMMARY_TARGETS:
        return "summarization", f"inferred from columns {fields}"
    asks = sum("summar" in ex.prompt_key.lower()[:300] for ex in examples)
    if asks >= _SUMMARY_ASK * len(examples):
        return "summarization", f"inferred from prompts: {asks} of {len(examples)} ask for a summary"
    json_targets = len(objects(examples))
    if json_targets >= _JSON_SHARE * len(examples):
        return "extraction", f"inferred from responses: {json_targets} of {len(examples)} are JSON objects"
    if "/" not in fields:  # a column of whole conversations
        return "chat", f"inferred from conversations in column {fields}"
    return "chat", f"inferred from columns {fields}: free-text responses"


def resolve_task(cfg: Config, examples: list[Example]) -> TaskSpec:
    """The run's task: `task` when set (checked against the data), else inferred; with its instruction."""
    if cfg.task == "auto":
        name, reason = infer_task(examples)
    else:
        name, reason = cfg.task, f"set by task={cfg.task}"
        task = get_task(name)
        text_label = sum(ex.shape == "text_label" for ex in examples)
        if task.classifier and text_label < len(examples):
            raise ConfigError(f"task={name} needs text/label rows, but {cfg.data.source} has "
                              f"{len(examples) - text_label} conversation rows (e.g. "
                              f"{next(ex.where for ex in examples if ex.shape != 'text_label')}); set task=auto")
        if not task.classifier and text_label:
            raise ConfigError(f"task={name} trains on conversations, but {cfg.data.source} has text/label rows "
                              f"(e.g. {next(ex.where for ex in examples if ex.shape == 'text_label')}); set "
                              "task=classification or task=auto")
    task = get_task(name)
    pairs = sum(ex.shape == "preference" for ex in examples)
    if name != "preference" and pairs:
        raise ConfigError(f"task={name} trains on one answer per prompt, but {cfg.data.source} has chosen/rejected "
                          "pairs; set task=preference or task=auto")
    if name == "preference" and not pairs:
        raise ConfigError(f"task=preference needs chosen/rejected pairs, but {cfg.data.source} has none; give it "
                          "pairs (prompt/chosen/rejected), or set data.preference_pairs=self_play")
    method = get_method(cfg.train.method)
    if method.needs_pairs and name != "preference":
        raise ConfigError(f"train.method={cfg.train.method} trains on chosen/rejected pairs, but {cfg.data.source} "
                          f"has {name} rows; give it pairs (prompt/chosen/rejected), or set "
                          "data.preference_pairs=self_play to build them from the reference answers")
    refusal = method.refusal(task)
    if refusal:
        raise ConfigError(f"train.method={cfg.train.method} does not suit task {name}: {refusal}")
    instruction = cfg.data.system_prompt or (None if task.classifier else task.instruction(examples))
    return TaskSpec(name=name, reason=reason, instruction=instruction)
