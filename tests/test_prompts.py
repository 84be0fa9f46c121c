"""The training prompt in MLflow's Prompt Registry: one version per distinct instruction and chat template."""

from __future__ import annotations

import mlflow
import pytest

from llmft.registry.prompts import load_training_prompt, matches, prompt_name, register_training_prompt


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> None:
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path_factory.mktemp('prompts') / 'mlflow.db'}")


def test_a_new_version_only_when_the_prompt_changed(store: None) -> None:
    first = register_training_prompt("bbc/news classifier", "classification", "Name the topic.", "{{ a }}")
    again = register_training_prompt("bbc/news classifier", "classification", "Name the topic.", "{{ a }}")
    reworded = register_training_prompt("bbc/news classifier", "classification", "Name the section.", "{{ a }}")
    retemplated = register_training_prompt("bbc/news classifier", "classification", "Name the section.", "{{ b }}")
    assert prompt_name("bbc/news classifier") == "bbc-news-classifier-prompt"
    assert first.uri == again.uri == "prompts:/bbc-news-classifier-prompt/1"
    assert (reworded.uri, retemplated.uri) == ("prompts:/bbc-news-classifier-prompt/2",
                                               "prompts:/bbc-news-classifier-prompt/3")


def test_the_served_prompt_is_the_trained_one(store: None) -> None:
    registered = register_training_prompt("m", "chat", "Answer briefly.", "{% for m in messages %}{{ m }}{% endfor %}")
    loaded = load_training_prompt(registered.uri)
    assert loaded.instruction == "Answer briefly."
    assert matches(loaded, "{% for m in messages %}{{ m }}{% endfor %}")
    assert not matches(loaded, "{{ messages }}")
    none = load_training_prompt(register_training_prompt("m", "chat", None, "t").uri)
    assert none.instruction is None


def test_the_server_takes_the_instruction_from_the_prompt_version_and_refuses_another_template(store: None) -> None:
    from llmft.registry.prompts import trained_instruction

    uri = register_training_prompt("served", "extraction", "Extract the fields.", "{{ chatml }}").uri
    tags = {"prompt_uri": uri, "instruction": "stale tag"}
    assert trained_instruction(tags, "{{ chatml }}", "models:/served/1") == "Extract the fields."
    with pytest.raises(RuntimeError, match="not the one it was trained with"):
        trained_instruction(tags, "{{ llama3 }}", "models:/served/1")
    assert trained_instruction({"instruction": "older version"}, "{{ x }}", "models:/served/0") == "older version"


def test_the_prompt_version_is_linked_to_the_training_run(store: None) -> None:
    from llmft.registry.prompts import link_to_run

    registered = register_training_prompt("linked", "chat", "Be kind.", "{{ m }}")
    with mlflow.start_run() as run:
        link_to_run(registered.uri, run.info.run_id)
    linked = mlflow.get_run(run.info.run_id).data.tags.get("mlflow.linkedPrompts", "")
    assert '"name": "linked-prompt"' in linked and '"version": "1"' in linked
