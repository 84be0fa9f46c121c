"""The Task contract: what a kind of data needs from training, evaluation, promotion and serving.

A task owns how a record becomes model input and target (`encode`), its instruction, its metrics,
the primary metric the promotion gate compares and which way it points, how a model is scored on
test rows (`evaluate`), the smoke request a deployed model must answer, and what the model card
says about it. Everything outside `llmft.tasks` asks the task object; nothing branches on the
task's name. A new task is one module with a `Task` subclass, added to `llmft.tasks.TASKS`.

`TaskSpec` is the resolved choice for one run (name, why, instruction); it crosses the pipeline
as a typed step parameter.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import BaseModel

from llmft.chat_format import encode_to_fit, with_system
from llmft.config_stages import EvalSettings
from llmft.data.shapes import Example
from llmft.evaluate import text_metrics
from llmft.evaluate.few_shot import fit_shots, prepare_shots, shot_budget, usage
from llmft.evaluate.scoring import ModelScores, score_generative


class TaskSpec(BaseModel):
    """The task of one run, resolved once before the pipeline starts."""

    name: str
    reason: str  # "inferred from columns document/summary" or "set by task=..."
    instruction: str | None = None  # the system message every row gets (None: the data's own, if any)

    def announce(self) -> str:
        return f"task: {self.name} ({self.reason}; set task=... to override)"


def no_shot_fits(used: list[int], k: int, budget: int) -> ModelScores | None:
    """Scores with no metrics (only the shot usage) when not one row got a worked example: the
    few-shot score would be the zero-shot one again, so it is not measured; None otherwise."""
    if any(used):
        return None
    return ModelScores(metrics={}, outputs=[], extras={"few_shot": usage(used, k, budget), "few_shot_used": used})


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]  # token labels (causal LM), or [] for a classifier (its label is the class)
    truncated: bool = False
    messages: list[dict[str, str]] | None = None  # what was encoded (system included, input shortened)


class Task(ABC):
    name: ClassVar[str]
    summary: ClassVar[str]  # one sentence for the model card
    primary_metric: ClassVar[str]
    metric_names: ClassVar[tuple[str, ...]]
    classifier: ClassVar[bool] = False  # a sequence-classification head instead of the LM head
    registry_flavor: ClassVar[str] = "llm/v1/chat"
    probe_applies: ClassVar[bool] = True  # the general-knowledge probe needs a generative head

    def higher_is_better(self, metric: str) -> bool:
        return metric not in text_metrics.LOWER_IS_BETTER

    def primary_for(self, rows: list[dict[str, Any]]) -> str:
        """The primary metric for these evaluation rows: the task's own, unless the shape of the
        data calls for another (extraction of entity lists)."""
        return self.primary_metric

    def instruction(self, examples: list[Example]) -> str | None:
        """The default system message for this data (`data.system_prompt` replaces it)."""
        return None

    def balance_groups(self, responses: list[str]) -> list[str] | None:
        """A group per training row whose total loss `train.class_weights: balanced` evens out across
        groups (generative tasks; a classifier weighs its labels), or None: nothing to balance."""
        return None

    @abstractmethod
    def encode(self, tokenizer: Any, example: Example, system: str | None, max_seq_length: int) -> Encoded | None:
        """Token ids and labels within `max_seq_length`, or None when the target alone cannot fit."""

    @abstractmethod
    def evaluate(self, model: Any, tokenizer: Any, rows: list[dict[str, Any]], system: str | None,
                 settings: EvalSettings, labels: list[str] | None, desc: str) -> ModelScores:
        """Score one model on evaluation rows (split rows: messages/response or text/label)."""

    @abstractmethod
    def smoke_request(self, system: str | None) -> dict[str, Any]:
        """A request body a served model of this task must answer."""

    def card_lines(self, labels: list[str] | None) -> list[str]:
        return [self.summary]

    def prompt_conversation(self, row: dict[str, Any], system: str | None,
                            labels: list[str] | None) -> list[dict[str, str]]:
        """A split row as the prompted base model sees it, ending with its reference answer (a
        training row shown as a worked example uses its user/assistant turns)."""
        return with_system(system, json.loads(row["messages"]))

    def evaluate_prompted(self, model: Any, tokenizer: Any, rows: list[dict[str, Any]], system: str | None,
                          settings: EvalSettings, labels: list[str] | None, shots: list[dict[str, Any]],
                          desc: str) -> ModelScores:
        """The pretrained model prompted for the task: zero-shot without `shots`, else with the shots'
        turns before each row, as many as fit the few-shot budget (`shot_budget`; extras["few_shot"]
        says how many, extras["few_shot_used"] per row); eval loss stays on the row's own answers.
        No metrics when not one shot fits (`no_shot_fits`)."""
        if not shots:
            return self.evaluate(model, tokenizer, rows, system, settings, labels, desc)
        budget = shot_budget(model, settings.max_seq_length, settings.few_shot_max_tokens, settings.max_new_tokens)
        examples = prepare_shots(tokenizer, [self.prompt_conversation(s, None, labels) for s in shots], len(shots),
                                 budget)
        fitted = [fit_shots(tokenizer, self.prompt_conversation(r, system, labels), examples, budget) for r in rows]
        used = [f.shots_used for f in fitted]
        empty = no_shot_fits(used, len(shots), budget)
        if empty is not None:
            return empty
        prompted = [{**r, "messages": json.dumps(f.conversation, ensure_ascii=False),
                     "context_messages": f.context_messages} for r, f in zip(rows, fitted, strict=True)]
        # the prompt may now be longer than the row's own length: eval loss must not cut the row's answer
        scores = self.evaluate(model, tokenizer, prompted, system,
                               settings.model_copy(update={"max_seq_length": budget}), labels, desc)
        scores.extras["few_shot"] = usage(used, len(shots), budget)
        scores.extras["few_shot_used"] = used
        return scores


class GenerativeTask(Task):
    """Tasks that answer in text through the chat template, scored on greedy generations."""

    overlap_metrics: ClassVar[tuple[str, ...]] = text_metrics.NAMES

    def encode(self, tokenizer: Any, example: Example, system: str | None, max_seq_length: int) -> Encoded | None:
        fitted = encode_to_fit(tokenizer, with_system(system, example.messages), max_seq_length)
        if fitted is None:
            return None
        encoded, messages, truncated = fitted
        return Encoded(encoded["input_ids"], encoded["labels"], truncated, messages)

    def score(self, predictions: list[str], references: list[str],
              sources: list[str]) -> tuple[dict[str, float], list[dict[str, float]]]:
        """Task metrics on top of the text overlap ones (none by default)."""
        return {}, [{} for _ in predictions]

    def evaluate(self, model: Any, tokenizer: Any, rows: list[dict[str, Any]], system: str | None,
                 settings: EvalSettings, labels: list[str] | None, desc: str) -> ModelScores:
        return score_generative(model, tokenizer, system, rows, self.score, self.overlap_metrics,
                                settings.max_new_tokens, settings.batch_size, settings.max_seq_length, desc)

    smoke_prompt: ClassVar[str] = "Say hello in one short sentence."
    smoke_max_tokens: ClassVar[int] = 32

    def smoke_request(self, system: str | None) -> dict[str, Any]:
        messages = with_system(system, [{"role": "user", "content": self.smoke_prompt}])
        return {"messages": messages, "max_tokens": self.smoke_max_tokens, "temperature": 0}

