"""MLflow model registry: log the merged model, register a version with lineage tags, aliases.

The LoRA adapter is merged into the full-precision base before logging, so the registered model
is self-contained and loads offline with `mlflow.pyfunc.load_model`. If anything fails after the
version was created, the version is deleted: the registry never holds a half-registered model.
Aliases, not the deprecated stages: `challenger` is the newest candidate, `champion` is served.
"""

from __future__ import annotations

import importlib.metadata
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from llmft.contracts import ChampionRef
from llmft.errors import UserFacingError
from llmft.locations import ensure_tracking_uri
from llmft.model_loading import custom_code_reason

log = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"

# what the served model needs at inference; pinned to the versions that trained it
_SERVING_PACKAGES = ("mlflow", "torch", "transformers", "tokenizers", "safetensors", "accelerate")


@dataclass
class RegisteredVersion:
    name: str
    version: str
    model_uri: str
    run_id: str | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _client() -> Any:
    """A client on MLflow's current store, or on the configured one if a tracked step's clean-up reset
    it (ZenML's tracker ends each step with `mlflow.set_tracking_uri("")`)."""
    from mlflow import MlflowClient

    ensure_tracking_uri()
    return MlflowClient()


def serving_requirements() -> list[str]:
    reqs = []
    for pkg in _SERVING_PACKAGES:
        try:
            version = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            continue
        reqs.append(f"{pkg}=={version.split('+')[0]}")
    return reqs


def register_model(model: Any, tokenizer: Any, name: str, tags: dict[str, str],
                   flavor_task: str = "llm/v1/chat") -> RegisteredVersion:
    """Log model+tokenizer as a transformers model (`llm/v1/chat` for generative tasks,
    `text-classification` for classifiers), register a new version, tag it and make it the
    `challenger`."""
    import mlflow

    client = _client()
    info = mlflow.transformers.log_model(
        transformers_model={"model": model, "tokenizer": tokenizer},
        name="model",
        task=flavor_task,
        # mlflow's own requirement inference imports torchvision, which is not installed
        pip_requirements=serving_requirements(),
        registered_model_name=name,
        await_registration_for=60,
    )
    version = str(info.registered_model_version)
    try:
        set_version_tags(name, version, tags)
        client.set_registered_model_alias(name, CHALLENGER, version)
    except Exception:
        log.error("tagging %s v%s failed; deleting the version so nothing is half-registered", name, version)
        client.delete_model_version(name, version)
        raise
    run = mlflow.active_run()
    return RegisteredVersion(name=name, version=version, model_uri=f"models:/{name}/{version}",
                             run_id=run.info.run_id if run else None)


def version_of_run(name: str, run_id: str) -> tuple[RegisteredVersion, dict[str, str]] | None:
    """The READY version of `name` that MLflow run `run_id` registered (the newest, if several), with
    its tags; None when that run registered none or it was deleted."""
    found = [v for v in _client().search_model_versions(f"name='{name}' and run_id='{run_id}'")
             if v.status == "READY"]
    if not found:
        return None
    newest = max(found, key=lambda v: int(v.version))
    return (RegisteredVersion(name=name, version=str(newest.version), model_uri=f"models:/{name}/{newest.version}",
                              run_id=newest.run_id), dict(newest.tags))


def current_alias_version(name: str, alias: str = CHAMPION) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(_client().get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def champion_ref(name: str) -> ChampionRef | None:
    """The current champion with what makes it comparable (task, label set), or None."""
    import json

    from mlflow.exceptions import MlflowException

    try:
        found = _client().get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None
    tags = dict(found.tags)
    labels = json.loads(tags["labels"]) if tags.get("labels") else None
    return ChampionRef(name=name, version=str(found.version), run_id=found.run_id, task=tags.get("task"),
                       labels=labels)


def set_alias(name: str, version: str, alias: str = CHAMPION) -> None:
    _client().set_registered_model_alias(name, alias, version)


def version_tags(name: str, version: str) -> dict[str, str]:
    return dict(_client().get_model_version(name, version).tags)


def set_version_tags(name: str, version: str, tags: dict[str, Any]) -> None:
    client = _client()
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, str(value))


def delete_version_tags(name: str, version: str, keys: list[str]) -> None:
    client = _client()
    for key in keys:
        client.delete_model_version_tag(name, version, key)


class RegistryLoadError(UserFacingError, RuntimeError):
    """A registered model that cannot or must not be loaded."""


def load_registered(model_uri: str, trust_remote_code: bool = False) -> dict[str, Any]:
    """The components (`model`, `tokenizer`) of a registered transformers model. MLflow would pass
    `trust_remote_code=True` for classes transformers does not know, so anyone able to register a
    version could run code wherever it is loaded; such versions are refused unless the user set
    `model.trust_remote_code: true`."""
    import mlflow

    ensure_tracking_uri()
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri))
    except Exception as exc:  # unknown name/version/alias, unreachable store: one line
        raise RegistryLoadError(f"{model_uri}: cannot download: {str(exc).splitlines()[0]}") from None
    reason = remote_code_reason(local)
    if reason is not None and not trust_remote_code:
        raise RegistryLoadError(f"{model_uri}: {reason}; refusing to run code from the registry "
                                "(set model.trust_remote_code=true only for a version you reviewed)")
    return mlflow.transformers.load_model(str(local), return_type="components")


def remote_code_reason(local: Path) -> str | None:
    """Why loading this MLflow transformers model would import code shipped with it, or None."""
    import transformers

    try:
        flavors = yaml.safe_load((local / "MLmodel").read_text(encoding="utf-8"))["flavors"]
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        return "not an MLflow model (no readable MLmodel file)"
    conf = flavors.get("transformers")
    if not isinstance(conf, dict):
        return f"not a transformers model (flavors: {', '.join(sorted(flavors))})"
    if conf.get("code"):
        return "it ships code files"
    classes = [conf.get("pipeline_model_type"), conf.get("instance_type")]
    classes += [conf.get(f"{name}_type") for name in conf.get("components") or []]
    unknown = sorted({c for c in classes if c and not hasattr(transformers, c)})
    if unknown:
        return f"classes {', '.join(unknown)} are not part of transformers"
    config_json = local / "model" / "config.json"
    return custom_code_reason(config_json) if config_json.is_file() else None


def load_components(name: str, version: str, trust_remote_code: bool = False) -> tuple[Any, Any]:
    """(model, tokenizer) of a registered version, in full precision, for re-evaluation."""
    parts = load_registered(f"models:/{name}/{version}", trust_remote_code)
    model = parts["model"].float()
    model.config.use_cache = True
    return model, parts["tokenizer"]


def set_description(name: str, version: str, text: str) -> None:
    _client().update_model_version(name, version, description=text)
