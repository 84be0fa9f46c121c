"""Loading a registered model for the server: the model and tokenizer, and what the registry says
about the version (its number, task, trained instruction and the experiment its traces go to)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from mlflow import MlflowClient

from llmft.precision import for_inference
from llmft.registry.prompts import trained_instruction
from llmft.registry.versions import load_registered

log = logging.getLogger(__name__)


@dataclass
class Served:
    """A loaded model: what it is and where it came from."""

    model_uri: str
    version: str | None
    classifier: bool  # a sequence-classification head (labels and scores) or a generative LM
    model: Any
    tokenizer: Any
    labels: list[str] = field(default_factory=list)
    instruction: str | None = None  # the system message the model was trained with, applied to every request
    task: str | None = None  # the registered version's task tag, for /health
    loaded_at: float = field(default_factory=time.time)
    experiment_id: str | None = None  # the experiment of the version's run: where its traces go

    @property
    def name(self) -> str:
        """The model as answers name it: its URI, and the version an alias pointed at."""
        return self.model_uri if self.version is None else f"{self.model_uri} (v{self.version})"


@dataclass
class RegistryInfo:
    """What the registry records about a `models:/` version."""

    version: str | None = None
    instruction: str | None = None
    task: str | None = None
    experiment_id: str | None = None


def registry_info(model_uri: str, chat_template: str) -> RegistryInfo:
    """The version a `models:/NAME@alias` or `models:/NAME/VERSION` URI names (as loaded now), its
    task and trained instruction, and its run's experiment; nothing for other URIs."""
    if not model_uri.startswith("models:/"):
        return RegistryInfo()
    name, _, ref = model_uri[len("models:/"):].partition("@")
    client = MlflowClient()
    if ref:  # an alias: record which version it pointed at when loaded
        found = client.get_model_version_by_alias(name, ref)
    else:
        name, _, number = name.rpartition("/")
        found = client.get_model_version(name, number)
    tags = dict(found.tags)
    info = RegistryInfo(str(found.version), trained_instruction(tags, chat_template, model_uri), tags.get("task"))
    if found.run_id:  # traces go to the experiment the version was trained in
        try:
            info.experiment_id = client.get_run(found.run_id).info.experiment_id
        except Exception:  # a deleted run: traces (if on) go to the default experiment
            log.warning("run %s of %s is gone; traces go to the default experiment", found.run_id, model_uri)
    return info


def load_served(model_uri: str, trust_remote_code: bool = False, precision: str = "auto") -> Served:
    """Load a registered model in `precision` (deploy.precision); one whose classes are not part of
    transformers (code that would run here) is refused unless the user set model.trust_remote_code
    (server --trust-remote-code)."""
    parts = load_registered(model_uri, trust_remote_code)
    model, tokenizer = for_inference(parts["model"], precision), parts["tokenizer"]
    info = registry_info(model_uri, tokenizer.chat_template or "")
    if type(model).__name__.endswith("ForSequenceClassification"):
        labels = [model.config.id2label[i] for i in range(len(model.config.id2label))]
        return Served(model_uri, info.version, True, model, tokenizer, labels, task=info.task,
                      experiment_id=info.experiment_id)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.config.use_cache = True
    return Served(model_uri, info.version, False, model, tokenizer, instruction=info.instruction, task=info.task,
                  experiment_id=info.experiment_id)
