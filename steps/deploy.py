"""Deploy step: serve the registry's champion over HTTP and prove it answers."""

from __future__ import annotations

import json
from typing import Annotated, Any

from zenml import step

from llmft import serving
from llmft.chat_format import build_messages
from llmft.config import Config
from llmft.locations import tracking_uri
from llmft.registry import CHAMPION, current_alias_version
from llmft.tasks import is_classification, system_prompt


@step(enable_cache=False)
def serve_champion(config: dict[str, Any]) -> Annotated[dict[str, Any], "deployment"]:
    cfg = Config.model_validate(config)
    name = cfg.registry.model_name
    version = current_alias_version(name)
    if version is None:
        raise serving.ServingError(f"registered model {name!r} has no @{CHAMPION} version yet: "
                                   "run `python run.py --pipeline finetune` first")
    dep = serving.start(f"models:/{name}@{CHAMPION}", cfg.deploy.host, cfg.deploy.port,
                        cfg.deploy.startup_timeout_s, tracking_uri())
    classifier = is_classification(cfg)
    probe = ("Ordered the desk lamp: the build quality is excellent. Would buy again." if classifier
             else "Lumora rain jacket | navy blue | 100% nylon | Size M | $79.99")
    example = {"inputs": ["Great fit, would buy again."]} if classifier else {
        "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 32}
    try:
        answer = (serving.smoke_classify(dep, probe) if classifier else
                  serving.smoke_request(dep, build_messages(system_prompt(cfg), probe), cfg.deploy.smoke_max_tokens))
    except serving.ServingError:
        serving.stop()
        raise
    return {"endpoint": dep.endpoint, "pid": dep.pid, "model_uri": dep.model_uri, "model_version": version,
            "log_file": dep.log_file, "smoke_request": probe, "smoke_response": answer,
            "curl": "curl -s " + dep.endpoint + " -H 'Content-Type: application/json' -d '"
                    + json.dumps(example) + "'"}
