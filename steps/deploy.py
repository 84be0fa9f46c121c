"""Deploy steps: serve the registry's champion over HTTP and prove it answers."""

from __future__ import annotations

import json
import logging
from typing import Annotated, Any

from zenml import step

from llmft import serving
from llmft.chat_format import build_messages
from llmft.config import Config
from llmft.locations import tracking_uri
from llmft.registry import CHAMPION, current_alias_version
from llmft.tasks import is_classification, system_prompt

log = logging.getLogger(__name__)


def deploy_champion(cfg: Config) -> dict[str, Any]:
    """Serve the current champion (pinned to its version), health-checked and smoke-tested."""
    import mlflow

    # a step without the experiment tracker may run after one that reset MLflow's URI
    mlflow.set_tracking_uri(tracking_uri())
    name = cfg.registry.model_name
    version = current_alias_version(name)
    if version is None:
        raise serving.ServingError(f"registered model {name!r} has no @{CHAMPION} version yet: "
                                   "run `python run.py --pipeline finetune` first")
    dep, action = serving.deploy(f"models:/{name}/{version}", version, cfg.deploy.host, cfg.deploy.port,
                                 cfg.deploy.server_limits(), cfg.deploy.startup_timeout_s, tracking_uri())
    classifier = is_classification(cfg)
    probe = ("Ordered the desk lamp: the build quality is excellent. Would buy again." if classifier
             else "Lumora rain jacket | navy blue | 100% nylon | Size M | $79.99")
    example = {"inputs": ["Great fit, would buy again."]} if classifier else {
        "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 32, "temperature": 0}
    try:
        answer = (serving.smoke_classify(dep, probe) if classifier else
                  serving.smoke_request(dep, build_messages(system_prompt(cfg), probe), cfg.deploy.smoke_max_tokens))
    except serving.ServingError:
        if action.startswith("started"):  # a fresh server that cannot answer is not left running
            serving.stop()
        raise
    log.info("%s: %s", action, dep.endpoint)
    return {"endpoint": dep.endpoint, "pid": dep.pid, "model_uri": f"models:/{name}@{CHAMPION}",
            "served_uri": dep.model_uri, "model_version": version, "action": action, "log_file": dep.log_file,
            "smoke_request": probe, "smoke_response": answer,
            "curl": "curl -s " + dep.endpoint + " -H 'Content-Type: application/json' -d '"
                    + json.dumps(example) + "'"}


@step(enable_cache=False)
def serve_champion(config: dict[str, Any]) -> Annotated[dict[str, Any], "deployment"]:
    return deploy_champion(Config.model_validate(config))


@step(enable_cache=False)
def deploy_if_promoted(promotion: dict[str, Any], config: dict[str, Any]) -> Annotated[dict[str, Any], "deployment"]:
    """`deploy.on_promotion`: a finetune run that promoted serves its model at once."""
    cfg = Config.model_validate(config)
    if not cfg.deploy.on_promotion:
        return {"deployed": False, "reason": "deploy.on_promotion is off"}
    if not promotion["promoted"]:
        return {"deployed": False, "reason": "not promoted: the current deployment is left alone"}
    return {"deployed": True, **deploy_champion(cfg)}
