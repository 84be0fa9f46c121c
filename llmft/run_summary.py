"""The finetune (and sweep) run summary as a typed model: what `--summary FILE` writes and the closing
table reads.

Its fields are, in order, the keys the summary has always had, so `model_dump()` writes the same JSON
that scripts and tests read by key (`s["metrics"]`, `s["train"]["steps"]`, ...). Fields added after the
first summaries default to what their absence meant, so an older summary still validates and renders.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from llmft.contracts import DatasetInfo, Deployment, EvalSample, Forgetting, SliceReport
from llmft.sweep import SweepResult


class SummaryDataset(DatasetInfo):
    """`DatasetInfo` as the summary shows it: without its MLflow run id (the summary's own `mlflow_run_id`
    is the evaluation's run, and the dataset's was never written)."""

    mlflow_run_id: str | None = Field(default=None, exclude=True)


class RegisteredModelRef(BaseModel):
    """The registry version this run registered (or reused)."""

    name: str
    version: str
    uri: str  # models:/NAME/VERSION
    reused_from_run: str | None = None  # the run that registered it, when this run reused its training


class TrainSummary(BaseModel):
    """What the summary keeps of `TrainingResult`. Every field defaults: a summary from before a field was
    recorded still validates, and `training_lines` takes a partial mapping."""

    method: str | None = None
    steps: int | None = None
    first_loss: float | None = None
    last_loss: float | None = None
    validation_loss: float | None = None
    best_validation_loss: float | None = None
    stopped_early: bool | None = None
    resumed_from_step: int | None = None
    tokens_per_second: float | None = None
    padding_fraction: float | None = None
    wall_seconds: float | None = None
    trainable_parameters: int | None = None
    num_processes: int | None = None
    overfitting_step: int | None = None
    planned_steps: int | None = None
    epochs_seen: float | None = None
    plan: str | None = None
    budget_note: str | None = None
    class_weights: dict[str, float] | None = None
    kept_step: int | None = None
    kept_by: str | None = None  # why those weights: "highest validation macro-F1 0.5410"
    update_share: float | None = None  # the forgetting guard's share of the trained update (None: all of it)
    guard_note: str | None = None


class RunSummary(BaseModel):
    """A finished finetune run: the evaluation, the gate's decision, the data, training and deployment.

    Required: the run's identity and what the closing table reads; the rest default (older summaries)."""

    pipeline: Literal["finetune", "sweep"] = "finetune"
    task: str
    task_reason: str
    zenml_run_id: str
    mlflow_run_id: str | None
    tracking_uri: str
    primary_metric: str
    higher_is_better: bool
    # role (base, base_few_shot, simple_baseline, finetuned, champion) -> metric -> value; a dict, not a model:
    # the table keys the simple column on the role being present, even with a None value
    metrics: dict[str, dict[str, float] | None]
    eval_sample: EvalSample
    eval_samples: int | None = None  # eval_sample.n (kept for scripts that read it)
    champion_evaluated: str | None  # the champion version evaluated beside the candidate
    champion_note: str
    champion_identity: str | None = None
    forgetting: Forgetting
    registered_model: RegisteredModelRef
    training_reused_from_run: str | None = None  # set when the finetune step came from the cache
    promoted: bool
    already_champion: bool = False
    promotion_reasons: list[str]
    baseline_used: str | None = None  # zero_shot | few_shot | simple (None: a summary from before, zero-shot)
    simple_baseline_method: str | None = None
    simple_baseline_note: str = ""
    warnings: list[str] = Field(default_factory=list)
    few_shot: dict[str, float] = Field(default_factory=dict)  # Evaluation.few_shot: k, used_mean/min/max, budget
    few_shot_used_per_row: list[int] = Field(default_factory=list)
    few_shot_note: str = ""
    slices: SliceReport | None = None
    champion_version: str | None = None  # @champion after the gate
    previous_champion: str | None = None
    dataset: SummaryDataset
    labels: list[str] | None = None
    deployment: Deployment
    cached_steps: list[str]
    step_seconds: dict[str, float] = Field(default_factory=dict)
    train: TrainSummary | None = None
    wall_seconds: float


class SweepRunSummary(RunSummary):
    """The sweep's summary: the best trial's candidate as a finetune summary, plus every trial."""

    pipeline: Literal["sweep"] = "sweep"
    sweep: SweepResult
