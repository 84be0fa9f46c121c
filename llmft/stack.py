"""Create (idempotently) and activate the ZenML stack the pipelines run on.

Stack `llmft-local`: the default local orchestrator and artifact store, an MLflow experiment
tracker and an MLflow model registry, both pointed at the project's tracking URI (the sqlite store
under the project folder, or `MLFLOW_TRACKING_URI`).
"""

from __future__ import annotations

import logging
import os

from llmft.credentials import tracker_auth_config
from llmft.errors import UserFacingError
from llmft.locations import local_artifact_root, project_home, tracking_uri

log = logging.getLogger(__name__)

STACK_NAME = "llmft-local"
LOCAL_TRACKER_NAME = "llmft-mlflow-tracker"  # the llmft-local stack's tracker component
# what steps pass as `experiment_tracker`: True is the active stack's tracker, whatever its name, so the
# pipelines also run on stacks registered by infra/ scripts (llmft-team's tracker is llmft-team-tracker)
TRACKER_NAME: bool | str = True
REGISTRY_NAME = "llmft-mlflow-registry"


def configure_environment() -> None:
    """Process-wide settings that must be in place before zenml is imported."""
    os.environ.setdefault("ZENML_ANALYTICS_OPT_IN", "false")
    os.environ.setdefault("ZENML_CONFIG_PATH", str(project_home() / "zenml"))
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("ZENML_ENABLE_RICH_TRACEBACK", "false")


def _tracker_config(uri: str, client) -> dict[str, str]:
    config = {"tracking_uri": uri}
    if uri.startswith(("http://", "https://")):
        # credentials live in a ZenML secret; the component config holds references only
        config.update(tracker_auth_config(client))
    return config


def ensure_experiment(name: str) -> None:
    """Create the experiment with a project-local artifact root (sqlite stores default to ./mlruns)."""
    import mlflow

    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    if mlflow.get_experiment_by_name(name) is None:
        artifact_location = local_artifact_root() if uri.startswith("sqlite:") else None
        mlflow.MlflowClient().create_experiment(name, artifact_location=artifact_location)


class StackError(UserFacingError, RuntimeError):
    """The configured ZenML stack does not exist."""


def ensure_stack(name: str | None = None) -> str:
    """Activate stack `name` (registered by infra/ scripts), or create, update and activate the
    local stack; returns the tracking URI."""
    from zenml.client import Client
    from zenml.enums import StackComponentType

    client = Client()
    uri = tracking_uri()
    if name and name != STACK_NAME:
        if client.list_stacks(name=name).total == 0:
            raise StackError(f"compute.stack {name!r} is not a registered ZenML stack (see infra/README.md)")
        if client.active_stack_model.name != name:
            client.activate_stack(name)
        # run.py reads champions and experiments at `uri`; the steps log where the stack's tracker points
        trackers = client.active_stack_model.components.get(StackComponentType.EXPERIMENT_TRACKER) or []
        stack_uri = trackers[0].configuration.get("tracking_uri") if trackers else None
        if stack_uri and stack_uri.rstrip("/") != uri.rstrip("/"):
            raise StackError(f"stack {name!r} tracks to {stack_uri}: export MLFLOW_TRACKING_URI={stack_uri} "
                             "(and its MLFLOW_TRACKING_USERNAME/PASSWORD) so this process reads the same server")
        return uri
    wanted = _tracker_config(uri, client)

    def component(name: str, kind: StackComponentType, config: dict[str, str]) -> None:
        existing = client.list_stack_components(name=name, type=kind)
        if existing.total == 0:
            client.create_stack_component(name=name, flavor="mlflow", component_type=kind, configuration=config)
        elif any(existing.items[0].configuration.get(k) != v for k, v in config.items()):
            client.update_stack_component(name_id_or_prefix=name, component_type=kind, configuration=config)

    component(LOCAL_TRACKER_NAME, StackComponentType.EXPERIMENT_TRACKER, wanted)
    component(REGISTRY_NAME, StackComponentType.MODEL_REGISTRY, {})
    if client.list_stacks(name=STACK_NAME).total == 0:
        default = client.get_stack("default")
        client.create_stack(name=STACK_NAME, components={
            StackComponentType.ORCHESTRATOR: default.components[StackComponentType.ORCHESTRATOR][0].name,
            StackComponentType.ARTIFACT_STORE: default.components[StackComponentType.ARTIFACT_STORE][0].name,
            StackComponentType.EXPERIMENT_TRACKER: LOCAL_TRACKER_NAME,
            StackComponentType.MODEL_REGISTRY: REGISTRY_NAME,
        })
        log.info("created ZenML stack %s", STACK_NAME)
    if client.active_stack_model.name != STACK_NAME:
        client.activate_stack(STACK_NAME)
    return uri
