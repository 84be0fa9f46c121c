"""Deploy steps: serve the registry's champion over HTTP and prove it answers."""

from __future__ import annotations

from typing import Annotated

from zenml import step

from llmft.config import DeployConfig
from llmft.contracts import Deployment, PromotionDecision
from llmft.serve.deploy import deploy_champion


@step(enable_cache=False)
def serve_champion(model_name: str, deploy: DeployConfig,
                   trust_remote_code: bool = False) -> Annotated[Deployment, "deployment"]:
    return deploy_champion(model_name, deploy, trust_remote_code)


@step(enable_cache=False)
def deploy_if_promoted(promotion: PromotionDecision, model_name: str,
                       deploy: DeployConfig, trust_remote_code: bool = False) -> Annotated[Deployment, "deployment"]:
    """`deploy.on_promotion`: a finetune run that promoted serves its model at once."""
    if not deploy.on_promotion:
        return Deployment(deployed=False, reason="deploy.on_promotion is off")
    if promotion.already_champion:
        return Deployment(deployed=False, reason=f"v{promotion.champion} already is champion (training reused): the "
                                                 "current deployment is left alone")
    if not promotion.promoted:
        return Deployment(deployed=False, reason="not promoted: the current deployment is left alone")
    return deploy_champion(model_name, deploy, trust_remote_code)
