"""What every config section shares: strict fields (an unknown key is an error) and the one error type
for a bad config."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from llmft.errors import UserFacingError


class ConfigError(UserFacingError, ValueError):
    """A config problem, with a one-line message meant for the user."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# the dtype a model answers in (deploy.precision, eval.precision; llmft/precision.py resolves auto)
Precision = Literal["auto", "fp32", "bf16"]
