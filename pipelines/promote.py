"""Move `champion` by hand: promote a named version, or roll back to the previous champion."""

from __future__ import annotations

from typing import Annotated, Any

from zenml import pipeline, step
from zenml.enums import ExecutionMode

from llmft.promotion import promote_by_hand, rollback


@step(enable_cache=False)
def move_champion(model_name: str, version: str | None, rollback_to_previous: bool, by: str | None,
                  reason: str) -> Annotated[dict[str, Any], "promotion"]:
    if rollback_to_previous:
        return rollback(model_name, by, reason)
    if version is None:
        raise ValueError("promote needs a version (or rollback)")
    return promote_by_hand(model_name, version, by, reason)


@pipeline(name="promote", enable_cache=False, execution_mode=ExecutionMode.FAIL_FAST)
def promote_pipeline(model_name: str, version: str | None, rollback_to_previous: bool, by: str | None,
                     reason: str) -> None:
    move_champion(model_name, version, rollback_to_previous, by, reason)
