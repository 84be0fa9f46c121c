"""Move `champion` by hand: promote a named version, or roll back to the previous champion."""

from __future__ import annotations

from zenml import pipeline
from zenml.enums import ExecutionMode

from steps.promote import move_champion


@pipeline(name="promote", enable_cache=False, execution_mode=ExecutionMode.FAIL_FAST)
def promote_pipeline(model_name: str, version: str | None, rollback_to_previous: bool, by: str | None,
                     reason: str) -> None:
    move_champion(model_name, version, rollback_to_previous, by, reason)
