"""Promotion by hand: make a named version champion, or roll back to the previous champion."""

from __future__ import annotations

from typing import Annotated

import mlflow
from zenml import step

from llmft.contracts import ChampionMove
from llmft.locations import tracking_uri
from llmft.registry.promotion import promote_by_hand, rollback


@step(enable_cache=False)
def move_champion(model_name: str, version: str | None, rollback_to_previous: bool, by: str | None,
                  reason: str) -> Annotated[ChampionMove, "promotion"]:
    mlflow.set_tracking_uri(tracking_uri())  # no experiment tracker on this step
    if rollback_to_previous:
        return rollback(model_name, by, reason)
    if version is None:
        raise ValueError("promote needs a version (or rollback)")
    return promote_by_hand(model_name, version, by, reason)
