"""The prompt a model was trained with, versioned in MLflow's Prompt Registry.

Each registered model `NAME` has a prompt `NAME-prompt`: its template is the system turn the task
adds (the instruction; empty when the task has none), and its tags carry the chat template the
tokenizer renders with (text and sha256). A run registers a new prompt version only when the
instruction or the chat template changed; the model version records `prompt_uri`
(`prompts:/NAME-prompt/N`), and the server serves with that same prompt version.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

_TAG_LIMIT = 4900  # MLflow tag values are capped; the sha identifies a longer template


@dataclass(frozen=True)
class TrainingPrompt:
    uri: str
    instruction: str | None
    chat_template_sha256: str


def prompt_name(model_name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "-", model_name) + "-prompt"


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _messages(instruction: str | None) -> list[dict[str, str]]:
    return [{"role": "system", "content": instruction or ""}]


def register_training_prompt(model_name: str, task: str, instruction: str | None,
                             chat_template: str) -> TrainingPrompt:
    """The prompt version for this instruction and chat template: the latest one when nothing changed,
    else a new version."""
    import mlflow

    name = prompt_name(model_name)
    digest = _sha(chat_template or "")
    latest = mlflow.genai.load_prompt(f"prompts:/{name}@latest", allow_missing=True, link_to_model=False)
    if (latest is not None and latest.template == _messages(instruction)
            and latest.tags.get("chat_template_sha256") == digest):
        return TrainingPrompt(latest.uri, instruction, digest)
    created = mlflow.genai.register_prompt(
        name=name, template=_messages(instruction),
        commit_message=f"{task} prompt of {model_name}",
        tags={"task": task, "chat_template_sha256": digest, "chat_template": (chat_template or "")[:_TAG_LIMIT],
              "registered_model": model_name})
    return TrainingPrompt(created.uri, instruction, digest)


def link_to_run(uri: str, run_id: str) -> None:
    """Show the prompt version on the run's page ("Registered prompts") and the run on the prompt's."""
    from mlflow import MlflowClient

    MlflowClient().link_prompt_version_to_run(run_id, uri)


def load_training_prompt(uri: str) -> TrainingPrompt:
    """The instruction and chat-template hash recorded under `prompt_uri`."""
    import mlflow

    found = mlflow.genai.load_prompt(uri, link_to_model=False)
    template = found.template
    instruction = template[0].get("content") if isinstance(template, list) and template else None
    return TrainingPrompt(found.uri, instruction or None, found.tags.get("chat_template_sha256", ""))


def matches(prompt: TrainingPrompt, chat_template: str) -> bool:
    """Does the tokenizer in hand render with the chat template the model was trained with?"""
    return prompt.chat_template_sha256 == _sha(chat_template or "")


def trained_instruction(tags: dict[str, str], chat_template: str, model_uri: str) -> str | None:
    """The system instruction a registered version was trained with: from its prompt version
    (`prompt_uri`), refusing a tokenizer whose chat template differs from the trained one; versions
    registered before prompts were versioned carry it as the `instruction` tag."""
    if not tags.get("prompt_uri"):
        return tags.get("instruction") or None
    prompt = load_training_prompt(tags["prompt_uri"])
    if not matches(prompt, chat_template):
        raise RuntimeError(f"{model_uri}: its tokenizer's chat template is not the one it was trained with "
                           f"({tags['prompt_uri']}); refusing to serve it with another template")
    return prompt.instruction
