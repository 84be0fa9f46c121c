"""What each evaluation stage reads of the config, frozen. A step takes its stage's settings and nothing
else of the config, so ZenML keys its cache on exactly what it reads: turning off `eval.champion` or
changing `eval.slice_by` no longer re-runs the base model's evaluation. `EvalConfig` builds them
(`scoring`, `row_draw`, `shot_draw`, `probing`, `reporting`)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from llmft.config_base import Precision


class StageSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class EvalSettings(StageSettings):
    """Scoring one model on the evaluation rows: greedy generation, the task's metrics, eval loss."""

    max_new_tokens: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    max_seq_length: int = Field(ge=1, description="train.max_seq_length: rows are cut as for training")
    few_shot_max_tokens: int | None = Field(None, description="the few-shot prompt's budget (None: max_seq_length)")
    precision: Precision = Field("fp32", description="eval.precision: the dtype every scored model answers in")


class RowDraw(StageSettings):
    """Which test rows are scored: all, or a seeded sample (stratified by label) of `max_samples`."""

    max_samples: int | None
    seed: int


class ShotDraw(StageSettings):
    """The few-shot base's worked examples: `k` training rows, seeded."""

    k: int = Field(ge=0)
    seed: int


class ProbeSettings(StageSettings):
    """The forgetting probe's answers."""

    max_new_tokens: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    precision: Precision = "fp32"


class ReportSettings(StageSettings):
    """What the comparison shows: the metric the gate reads, the slices, the GenAI view's size."""

    primary_metric: str | None
    slice_by: str | None
    genai_table_rows: int = Field(ge=0)
