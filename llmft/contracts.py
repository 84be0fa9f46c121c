"""Typed contracts between pipeline steps: what each step hands to the next.

Pydantic models, so ZenML stores them as named, browsable artifacts and the report and model card
read attributes (a renamed field fails at import and in the type checker, not in the last step of a
run). Splits themselves travel as pandas DataFrames (one row per record, with token ids).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class GateCheck(BaseModel):
    check: str
    success: bool
    detail: str
    rows: list[str] = Field(default_factory=list)  # example locations ("file, line N")
    config_key: str | None = None  # the setting that changes the outcome
    passing_value: str | None = None  # a value of it that would pass


class GateReport(BaseModel):
    """The data gate's verdict on the whole input."""

    success: bool
    verdict: str
    rows_in: int
    kept: int
    duplicates_removed: int
    duplicate_examples: list[str] = Field(default_factory=list)  # "X duplicates Y" with line numbers
    warnings: list[str] = Field(default_factory=list)
    rejected: int
    rejected_by_reason: dict[str, int] = Field(default_factory=dict)
    truncated: int = 0
    labels_normalised: dict[str, str] = Field(default_factory=dict)  # raw label -> the label it was merged into
    pii: dict[str, int] = Field(default_factory=dict)
    checks: list[GateCheck] = Field(default_factory=list)
    ge_result: dict[str, Any] = Field(default_factory=dict)
    docs_dir: str | None = None


class SplitInfo(BaseModel):
    """Sizes and label set of the train/validation/test split."""

    rows: dict[str, int]
    unused: int  # kept by the gate but left out of training by data.max_train_rows
    labels: list[str] | None = None  # classification: the label set the head is built for
    label_counts: dict[str, dict[str, int]] = Field(default_factory=dict)  # split -> label -> rows


class ExtraRows(BaseModel):
    """Rows added to the training split only (never validation or test): a `data.mix` source or the
    augmentation step's paraphrases, with what happened to them on the way in."""

    origin: str  # "mix" or "synthetic"
    source: str  # the mix source, or the paraphrasing model
    weight: float | None = None  # mix: rows asked per training row of data.source
    read: int  # rows read (mix) or paraphrases generated (synthetic)
    kept: int  # passed the gate and are not a duplicate of any row of any split
    used: int  # added to the training split
    dropped_by_reason: dict[str, int] = Field(default_factory=dict)
    note: str = ""

    def line(self) -> str:
        """One line for the console summary and the model card."""
        what = f"replay/mix from {self.source} (weight {self.weight})" if self.origin == "mix" else \
            f"synthetic paraphrases by {self.source}"
        dropped = ", ".join(f"{n} {why}" for why, n in sorted(self.dropped_by_reason.items())) or "none"
        return (f"+{self.used} training rows: {what}; read {self.read}, kept {self.kept}, dropped {dropped}"
                + (f" ({self.note})" if self.note else ""))


class DatasetInfo(BaseModel):
    """What the run trained and evaluated on, with its lineage."""

    fingerprint: str
    source: str
    task: str
    task_reason: str
    rows_in: int
    duplicates_removed: int
    duplicate_examples: list[str] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)
    rejected: int
    rejected_by_reason: dict[str, int] = Field(default_factory=dict)
    truncated: int = 0
    pii: dict[str, int] = Field(default_factory=dict)
    rows: dict[str, int]
    unused: int
    labels: list[str] | None = None
    export_dir: str
    verdict: str
    mlflow_run_id: str | None = None
    extras: list[ExtraRows] = Field(default_factory=list)  # training-only rows beyond data.source


class TrainingResult(BaseModel):
    method: str
    steps: int
    train_loss: float
    first_loss: float
    last_loss: float
    validation_loss: float | None
    best_validation_loss: float | None
    stopped_early: bool
    resumed_from_step: int | None
    tokens: int
    padding_fraction: float
    tokens_per_second: float
    wall_seconds: float
    trainable_parameters: int
    total_parameters: int
    num_processes: int = 1
    labels: list[str] | None = None
    overfitting_step: int | None = None  # validation loss rose from here while training loss fell
    trained_in_run: str | None = None  # the MLflow run that trained it (an earlier run's when reused from the cache)
    planned_steps: int | None = None  # train.max_steps, or what `auto` resolved to (llmft.train.budget)
    plan: str | None = None  # the plan line printed before training (rows, epochs, steps, tokens, minutes)
    epochs_seen: float | None = None  # training examples trained on / training rows
    budget_note: str | None = None  # why the time budget (train.max_minutes) cut training, when it did
    kept_step: int | None = None  # the step whose weights were kept (train.keep_best)
    # why: "lowest validation loss 1.2030", "highest validation macro-F1 0.5410" (a classifier); None: the final step
    kept_by: str | None = None
    # loss weight per label (classification) or per group of rows (extraction: entity-free or not), from
    # train.class_weights
    class_weights: dict[str, float] | None = None
    # the share of the trained update kept by the forgetting guard (llmft/evaluate/forgetting_guard.py; None:
    # all of it) and what the guard did
    update_share: float | None = None
    guard_note: str | None = None


class EvalSample(BaseModel):
    """Which test rows every model is scored on (the same rows for all of them)."""

    n: int
    of: int  # rows in the test split
    seed: int | None
    how: str  # "whole test split", "seeded random sample", "seeded sample stratified by label"


class ModelEvaluation(BaseModel):
    """One model scored on the evaluation sample."""

    role: str  # base, finetuned, champion
    available: bool = True
    note: str = ""  # why a champion was not evaluated, or which version was
    identity: str = ""  # what was evaluated: base model id, registry version, or run
    version: str | None = None  # registry version (champion)
    metrics: dict[str, float] = Field(default_factory=dict)
    outputs: list[str] = Field(default_factory=list)
    row_scores: list[dict[str, float]] = Field(default_factory=list)
    extras: dict[str, Any] = Field(default_factory=dict)


MISSING_SLICE = "(missing)"  # the slice of rows without a value of `eval.slice_by`


class SliceScores(BaseModel):
    """One value of `eval.slice_by`: its rows in the evaluation sample and each model's primary metric
    recomputed on those rows alone."""

    name: str  # the value (MISSING_SLICE: rows without one)
    key: str  # the name as MLflow metric keys spell it (slice/<key>/<role>/<metric>)
    rows: int
    values: dict[str, float | None]  # role -> metric on these rows (None: not computable without the model)


class SliceReport(BaseModel):
    """The bias check: the primary metric per slice for every evaluated model, and the fine-tuned
    model's worst slice."""

    column: str  # eval.slice_by
    metric: str
    higher_is_better: bool
    overall: dict[str, float | None]  # role -> the metric on all evaluation rows
    slices: list[SliceScores]  # largest first, capped; the worst slice is always among them
    total: int  # slices in the sample
    left_out: int = 0  # the smallest slices beyond the cap
    left_out_rows: int = 0
    worst: str | None = None  # the fine-tuned model's worst slice
    worst_rows: int = 0
    worst_value: float | None = None
    worst_gap: float | None = None  # worst_value minus the fine-tuned model's overall metric
    note: str = ""


class Evaluation(BaseModel):
    """Base, fine-tuned candidate and champion on the same rows, and what the gate compares."""

    task: str
    primary_metric: str
    higher_is_better: bool
    sample: EvalSample
    # base / base_few_shot / simple_baseline / finetuned / champion (None: not evaluated)
    metrics: dict[str, dict[str, float] | None]
    champion_version: str | None
    champion_note: str
    mlflow_run_id: str | None = None
    # shots drawn (k), used per row (mean, min, max), the prompt's budget in tokens (budget_tokens)
    few_shot: dict[str, float] = Field(default_factory=dict)
    few_shot_used: list[int] = Field(default_factory=list)  # shots each evaluation row got, in row order
    few_shot_note: str = ""  # how the few-shot base was prompted, or why it was not measured
    slices: SliceReport | None = None  # eval.slice_by: the primary metric per slice (None: not asked for)
    simple_baseline_method: str | None = None  # the non-LLM baseline, e.g. "lead-3 sentences" (None: not applicable)
    simple_baseline_note: str = ""  # what it fitted and chose, or why there is none
    warnings: list[str] = Field(default_factory=list)  # about the candidate's answers (collapse to one answer)
    # about the record, not the model (a GenAI table that lost rows): in the summary, never in the gate
    table_warnings: list[str] = Field(default_factory=list)


class ProbeRun(BaseModel):
    """One model on the general-knowledge forgetting probe."""

    applicable: bool
    reason: str = ""
    accuracy: float | None = None
    outputs: list[str] = Field(default_factory=list)
    correct: list[bool] = Field(default_factory=list)


class Forgetting(BaseModel):
    applicable: bool
    reason: str = ""
    questions: int = 0
    base: float | None = None
    finetuned: float | None = None
    drop: float | None = None
    max_allowed: float


class Registration(BaseModel):
    name: str
    version: str
    model_uri: str
    run_id: str | None = None
    prompt_uri: str | None = None  # prompts:/NAME-prompt/N: the instruction and chat template it was trained with
    reused_from_run: str | None = None  # set when this run reused an earlier run's training and its version


class PromotionDecision(BaseModel):
    promoted: bool
    reasons: list[str]
    baseline_used: str | None = None  # zero_shot | few_shot | simple: the baseline the gate compared with
    previous_champion: str | None = None
    champion: str | None = None
    already_champion: bool = False  # the reused version already held @champion: nothing to move


class Deployment(BaseModel):
    deployed: bool
    reason: str = ""
    action: str = ""
    endpoint: str | None = None
    pid: int | None = None
    model_uri: str | None = None
    served_uri: str | None = None
    model_version: str | None = None
    log_file: str | None = None
    smoke_request: str | None = None
    smoke_response: str | None = None
    curl: str | None = None


class ChampionRef(BaseModel):
    """The registry's champion as it stood when the run started (what evaluation re-measures)."""

    name: str
    version: str
    run_id: str | None = None
    task: str | None = None
    labels: list[str] | None = None


class ChampionMove(BaseModel):
    """A promotion by hand or a rollback."""

    model: str
    champion: str
    previous_champion: str | None
    action: str  # promote | rollback


class GGUFCheck(BaseModel):
    """One GGUF file loaded back with transformers, its logits against the merged model's."""

    quant: str  # f16, q8_0
    file: str
    bytes: int
    tokens: int  # positions compared (teacher-forced over the check prompts)
    max_abs_diff: float
    mean_abs_diff: float
    logit_scale: float  # max |logit| of the merged model over the same positions
    top1_agreement: float  # share of positions whose argmax token is the same
    tokenizer_matches: bool | None = None  # GGUF tokenizer gives the same ids as the model's own
    passed: bool
    tolerance: str


class Export(BaseModel):
    """A registry version exported for llama.cpp / Ollama (merged weights, GGUF, Modelfile)."""

    name: str
    version: str
    architecture: str
    output_dir: str
    merged_dir: str
    gguf: dict[str, str]  # quant -> path
    sizes: dict[str, int] = Field(default_factory=dict)  # file name -> bytes
    modelfile: str
    system_prompt: str | None = None
    checks: list[GGUFCheck] = Field(default_factory=list)
    artifact_uri: str | None = None  # runs:/<run>/export, where MLflow holds the files
    wall_seconds: float = 0.0
