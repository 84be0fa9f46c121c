"""One config schema for every pipeline, validated once (reading files and overrides, and the error
messages: `llmft/config_files.py`)."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import ConfigDict, Field, ValidationError, field_validator, model_validator

from llmft.config_base import ConfigError as ConfigError  # (re-exported: most callers import it from here)
from llmft.config_base import Precision, Section
from llmft.config_serving import (
    ComputeConfig,
    DeployConfig,
    ExportConfig,
    RetrainConfig,
)
from llmft.config_stages import EvalSettings, ProbeSettings, ReportSettings, RowDraw, ShotDraw
from llmft.train.methods import METHOD_NAMES, get_method

EMBEDDED_MODEL = "embedded:smollm2-135m-instruct"


class ModelConfig(Section):
    base: str = Field(EMBEDDED_MODEL, description="hub id, local directory, the embedded default, or a registered "
                                                 "model: models:/NAME@champion or models:/NAME/VERSION")
    revision: str | None = None
    trust_remote_code: bool = False


class ColumnsConfig(Section):
    """Rename the fields each shape reads, e.g. `data.columns.prompt=listing`."""

    prompt: str | None = None
    response: str | None = None
    completion: str | None = None
    question: str | None = None
    answer: str | None = None
    instruction: str | None = None
    input: str | None = None
    output: str | None = None
    messages: str | None = None
    conversations: str | None = None
    text: str | None = None
    label: str | None = None
    chosen: str | None = None
    rejected: str | None = None


class MixSource(Section):
    source: str = Field(description="a file or directory like data.source, or builtin:general (general "
                                    "instructions shipped with the project, disjoint from the forgetting probe)")
    weight: float = Field(gt=0.0, le=10.0, description="rows drawn from this source per training row of data.source "
                                                       "(0.2: one for every five); capped at what the source has")
    format: Literal["auto", "prompt_response", "alpaca", "chat", "sharegpt", "turns", "text_label"] = "auto"
    columns: ColumnsConfig = ColumnsConfig()


class DataConfig(Section):
    source: str = "data/products.jsonl"
    format: Literal["auto", "prompt_response", "alpaca", "chat", "sharegpt", "turns", "text_label",
                    "preference"] = "auto"
    columns: ColumnsConfig = ColumnsConfig()
    system_prompt: str | None = Field(None, description="system message for every row (chat: only when set; "
                                                        "other tasks: replaces the task's instruction)")
    labels: list[str] | None = Field(None, description="classification: the allowed label set; null = inferred "
                                                       "from the training split")
    label_names: list[str] | None = Field(None, description="classification: names for integer labels 0..N-1")
    max_rows: int | None = Field(None, ge=1, description="use only the first N rows (smoke runs)")
    split_seed: int = 0
    validation_fraction: float = Field(0.1, ge=0.0, lt=0.5)
    test_fraction: float = Field(0.2, gt=0.0, lt=0.5)
    min_test_rows: int = Field(1, ge=1)
    max_train_rows: int | None = Field(None, ge=1, description="cap on training rows (a stable subset of the "
                                                           "split); null = every kept training row")
    preference_pairs: Literal["data", "self_play"] = Field(
        "data", description="data: pairs come from the source (prompt/chosen/rejected); self_play: supervised rows "
                            "become pairs, chosen = the reference, rejected = the starting model's own answer")
    self_play_max_new_tokens: int = Field(64, ge=1, description="self_play: length of the generated rejected answers")
    empty_lists: Literal["drop", "keep"] = Field(
        "drop", description="targets that are JSON objects of lists (entity lists): drop leaves out the keys with "
                            "an empty list ({} when the text names nothing), so the answer is the entities, not ten "
                            "empty keys a greedy decoder learns to repeat; keep trains them as written")
    replay: float = Field(0.0, ge=0.0, le=10.0, description="against forgetting: rows of builtin:general (general "
                          "questions with the base model's own answers) added per training row of a generative "
                          "task (chat, summarization, extraction); 0 (default): none; on WNUT16, 0.1 kept the "
                          "forgetting probe within 0.02 and cost entity-F1 0.08; on the default demo it did not "
                          "keep the probe within 0.10 (benchmarks/README.md); a data.mix entry of builtin:general "
                          "sets the share instead")
    mix: list[MixSource] = Field([], description="extra sources sampled into the training split only (replay "
                                                 "against forgetting, weighted mixing); never into validation or "
                                                 "test")


PiiKind = Literal["secret", "email", "iban", "card", "ssn", "ip", "phone", "address", "name"]
PII_KINDS: tuple[str, ...] = PiiKind.__args__  # llmft.data.pii detects exactly these (a test holds them equal)


class ValidationConfig(Section):
    min_rows: int = Field(8, ge=1)
    max_duplicate_fraction: float | None = Field(
        None, ge=0.0, le=1.0, description="refuse data whose duplicate share (before removal) is higher; null: "
                                          "duplicates are removed and a high share is only a warning")
    duplicate_warning_fraction: float = Field(0.1, ge=0.0, le=1.0, description="warn above this duplicate share")
    max_rejected_fraction: float = Field(0.2, ge=0.0, le=1.0)
    length_policy: Literal["drop", "truncate", "fail"] = Field(
        "truncate", description="records over train.max_seq_length tokens: truncate the input (keeping the "
                                "target), drop them, or fail")
    pii_action: Literal["fail", "redact", "warn"] = "redact"
    pii_kinds: list[PiiKind] = Field(
        default_factory=lambda: list(PII_KINDS), min_length=1,
        description="what pii_action applies to; drop `name` to keep person names (general-knowledge text names "
                    "public figures, which are redacted like anyone else)")
    min_class_rows: int = Field(3, ge=1, description="classification: labels with fewer kept rows are dropped "
                                                     "(and reported)")
    min_class_fraction: float | None = Field(None, ge=0.0, le=1.0,
                                             description="classification: refuse if the rarest label's share is lower")
    min_prompt_chars: int = Field(1, ge=1)
    min_response_chars: int = Field(1, ge=1)


class LoraConfig(Section):
    r: int = Field(16, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: list[str] | Literal["all-linear"] = "all-linear"


class FreezeConfig(Section):
    trainable_layers: int = Field(2, ge=1, description="freeze: train only the last N blocks, final norm and head")


class PromptTuningConfig(Section):
    num_virtual_tokens: int = Field(16, ge=1, le=256)
    init: Literal["text", "random"] = Field("text", description="text: start from the task's instruction tokens")


class TrainConfig(Section):
    method: Literal[METHOD_NAMES] = "lora"  # type: ignore[valid-type]  (the registry's names, one source)
    max_steps: int | Literal["auto"] = Field(
        60, description="optimizer steps; auto: train.epochs over the training rows, cut to what fits in "
                        "train.max_minutes at the speed measured on this machine before training")
    epochs: float = Field(1.0, gt=0.0, description="max_steps: auto: passes over the training rows")
    max_minutes: float | None = Field(20.0, gt=0.0, description="max_steps: auto: time budget of the training "
                                                             "loop (steps and validation); null: none")
    class_weights: Literal["balanced", "none"] = Field(
        "balanced", description="classification: balanced weighs each class's loss by n / (k * its training "
                                "rows), so a rare class counts as much as a common one; none: plain loss")
    balance_empty_targets: bool = Field(
        True, description="extraction of entity lists: rows with no entity and the rest weigh the same in total "
                          "(n / (2 * rows of each)); with compact targets (data.empty_lists: drop) it took WNUT16 "
                          "tweets from answering {} everywhere to entity-F1 0.31 (benchmarks/README.md); false: "
                          "every row weighs the same")
    learning_rate: float | Literal["auto"] = Field(
        "auto", description="auto: the method's own (llmft/train/methods.py: adapters and orpo 1e-3, dpo 3e-5, "
                "full 5e-5, freeze 1e-4, prompt_tuning 3e-2)")
    batch_size: int = Field(4, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    gradient_checkpointing: bool = Field(False, description="recompute activations in backward: less memory")
    warmup_ratio: float = Field(0.05, ge=0.0, lt=1.0)
    lr_scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = "cosine"
    weight_decay: float = Field(0.0, ge=0.0)
    max_grad_norm: float = Field(1.0, gt=0.0)
    max_seq_length: int = Field(384, ge=16)
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="mixed precision for training: bf16 on a GPU, or on a CPU with AVX512-BF16/AMX (1.7x "
                            "fp32's tokens/s on 2 cores)")
    seed: int = 42
    logging_steps: int = Field(1, ge=1)
    eval_steps: int | None = Field(
        20, ge=1, description="validation loss (a classifier's macro-F1 too) every N steps; null: only at the end")
    early_stopping_patience: int | None = Field(
        None, ge=1, description="stop after N evaluations without improvement of the validation loss (a "
                                "classifier's: macro-F1); best weights kept")
    early_stopping_min_delta: float = Field(0.0, ge=0.0)
    keep_best: bool = Field(True, description="when training ends, put back the trainable weights of the best "
                                              "validation (every train.eval_steps), as early stopping does: the "
                                              "highest macro-F1 for a classifier, else the lowest loss; false: the "
                                              "final step's weights")
    save_steps: int = Field(20, ge=1, description="checkpoint every N steps, for resuming a killed run")
    resume: bool = Field(True, description="continue from this run's last checkpoint if one exists")
    reuse: bool = Field(True, description="an earlier run's training with the same data, settings, base model and "
                                          "code is taken from ZenML's cache, not trained again; false: always train")
    num_processes: int = Field(1, ge=1, description="data-parallel processes through accelerate")
    fast_lora_dropout: bool = Field(True, description="same dropout distribution, cheaper random masks")
    lora: LoraConfig = LoraConfig()
    freeze: FreezeConfig = FreezeConfig()
    prompt_tuning: PromptTuningConfig = PromptTuningConfig()
    beta: float = Field(0.1, gt=0.0, description="dpo: strength of the pull towards the reference (base) model")
    orpo_lambda: float = Field(0.1, gt=0.0, description="orpo: weight of the odds-ratio term next to the chosen NLL")
    preference_adapter: Literal["lora", "qlora"] = Field(
        "lora", description="dpo/orpo train this adapter; for dpo the adapter-disabled model is the reference")

    @field_validator("learning_rate", mode="plain", json_schema_input_type=float | Literal["auto"])
    @classmethod
    def _rate_or_auto(cls, value: Any) -> float | str:
        """A positive finite rate or `auto`; one error naming the field, not a union report."""
        if value == "auto":
            return "auto"
        try:
            number = None if isinstance(value, bool) else float(value)
        except (TypeError, ValueError):
            number = None
        if number is None or not 0 < number < float("inf"):
            raise ValueError("give a positive learning rate (e.g. 2e-4), or auto for the method's own")
        return number

    @property
    def rate(self) -> float:
        """The learning rate training uses: the configured one, or with `auto` the method's own."""
        return get_method(self.method).learning_rate if self.learning_rate == "auto" else float(self.learning_rate)

    @field_validator("max_steps", mode="plain", json_schema_input_type=int | Literal["auto"])
    @classmethod
    def _steps_or_auto(cls, value: Any) -> int | str:
        """A whole number of steps (at least 1) or `auto`; one error naming the field, not a union report."""
        if value == "auto":
            return "auto"
        number = None
        if isinstance(value, int) and not isinstance(value, bool):
            number = value
        elif isinstance(value, float) and value.is_integer():
            number = int(value)
        elif isinstance(value, str) and value.strip().isdigit():
            number = int(value)
        if number is None or number < 1:
            raise ValueError("give a whole number of steps (at least 1), or auto")
        return number


# training keys a sweep may not vary: the data was tokenized at max_seq_length, and the rest are
# plumbing (checkpoints, logging, processes); within trials validation runs every sweep.eval_steps
_UNSWEPT_TRAIN_KEYS = ("max_seq_length", "resume", "reuse", "save_steps", "logging_steps", "eval_steps",
                       "num_processes", "lora.target_modules")


def _flatten_space(space: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{train: {lora: {r: [8, 16]}}}` (how --set writes it) and `{train.lora.r: [8, 16]}` (how YAML
    is usually written) are the same space; a leaf is a list of choices or a {low, high} range."""
    out: dict[str, Any] = {}
    for key, value in space.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and not ({"low", "high"} & set(value)):
            out.update(_flatten_space(value, dotted + "."))
        else:
            out[dotted] = value
    return out


class SweepRange(Section):
    """A numeric range; ints for integer fields (train.max_steps, train.lora.r), floats otherwise."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    low: float
    high: float
    log: bool = False
    step: float | None = Field(None, gt=0)


class SweepConfig(Section):
    """`--pipeline sweep`: an Optuna search over `train.*` keys scored on the validation split; the best
    trial's settings then go through the normal finetune -> evaluate -> gate path."""

    space: dict[str, SweepRange | list[Any]] = Field(
        default_factory=lambda: {"train.learning_rate": SweepRange(low=1e-4, high=3e-3, log=True),
                                 "train.lora.r": [8, 16, 32]},
        description="train.* key -> {low, high, log, step} or a list of choices")
    trials: int = Field(8, ge=1, description="finished trials (complete or pruned) the study should reach; a "
                                             "resumed study runs only the missing ones")
    metric: Literal["validation_loss", "best_validation_loss"] = Field(
        "validation_loss", description="scored on the validation split (never test): the kept model's loss, or the "
                                       "lowest seen during the trial")
    direction: Literal["minimize", "maximize"] = "minimize"
    pruner: Literal["median", "none"] = Field("median", description="median: stop a trial whose validation loss "
                                                                   "is worse than the median of earlier trials")
    pruner_startup_trials: int = Field(2, ge=0, description="trials that always finish before pruning starts")
    pruner_warmup_steps: int = Field(0, ge=0, description="training steps before a trial can be pruned")
    eval_steps: int | None = Field(None, ge=1, description="validation loss every N steps within a trial (what the "
                                                           "pruner sees); null: a quarter of the trial's max_steps")
    seed: int = Field(0, description="seed of the TPE sampler")
    study_name: str | None = Field(None, description="null: <registry name>-<hash of data, settings and space>, "
                                                     "so the same command resumes the same study")
    storage: str | None = Field(None, description="Optuna storage URL; null: sqlite <project folder>/sweeps.db. "
                                                  "Parallel trials on a cluster need a shared database")
    timeout_s: float | None = Field(None, gt=0, description="stop starting new trials after this many seconds")
    parallel_steps: int = Field(1, ge=1, le=64, description="pipeline steps that run trials on the study at once "
                                                          "where the orchestrator runs steps in parallel (Kubernetes: "
                                                          "a pod each); locally they run one after another")

    @model_validator(mode="before")
    @classmethod
    def _dotted_space(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("space"), dict):
            data = {**data, "space": _flatten_space(data["space"])}
            for key, dim in data["space"].items():  # one line naming the key, not pydantic's union report
                if isinstance(dim, dict) and not {"low", "high"} <= set(dim) <= set(SweepRange.model_fields):
                    raise ValueError(f"sweep.space.{key}: a range has low and high (and optionally log, step); "
                                     f"got keys {sorted(dim)}")
        return data

    @model_validator(mode="after")
    def _space_is_valid(self) -> SweepConfig:
        if self.storage and re.search(r"://[^/@\s]*:[^/@\s]*@", self.storage):
            raise ValueError("sweep.storage: holds a password, and the config is logged to MLflow; leave it out of "
                             "the URL and set PGPASSWORD or ~/.pgpass (PostgreSQL) instead")
        if not self.space:
            raise ValueError("sweep.space: empty; give at least one train.* key, e.g. train.learning_rate: "
                             "{low: 1e-4, high: 3e-3, log: true}")
        if self.direction != "minimize":  # both metrics are losses
            raise ValueError(f"sweep.direction: {self.metric} is lower-is-better, so it must be minimize")
        base = _flatten_space(TrainConfig().model_dump(mode="json"))
        for key, dim in self.space.items():
            where = f"sweep.space.{key}"
            field = key.removeprefix("train.")
            if not key.startswith("train.") or field not in base:
                raise ValueError(f"{where}: not a training key; use one of "
                                 f"{', '.join('train.' + k for k in sorted(base) if k not in _UNSWEPT_TRAIN_KEYS)}")
            if field in _UNSWEPT_TRAIN_KEYS:
                raise ValueError(f"{where}: cannot be swept (fixed by the data or by the sweep itself)")
            values = dim if isinstance(dim, list) else [dim.low, dim.high]
            if isinstance(dim, list):
                if not dim or any(v is not None and not isinstance(v, (bool, int, float, str)) for v in dim):
                    raise ValueError(f"{where}: choices must be a non-empty list of numbers, strings or booleans "
                                     f"(got {dim!r})")
            else:
                kind = float if base[field] == "auto" else type(base[field])  # auto: the method's learning rate
                if kind not in (int, float):
                    raise ValueError(f"{where}: a range needs a numeric key; give a list of choices instead")
                if dim.low >= dim.high:
                    raise ValueError(f"{where}: low must be below high (got low={dim.low:g}, high={dim.high:g})")
                if dim.log and (dim.low <= 0 or dim.step is not None):
                    raise ValueError(f"{where}: log ranges need low > 0 and no step")
                if kind is int and (dim.low != int(dim.low) or dim.high != int(dim.high)):
                    raise ValueError(f"{where}: integer key, so low and high must be whole numbers")
            if field == "method":
                if len({get_method(str(v)).needs_pairs for v in values}) > 1:  # pairs vs supervised rows
                    raise ValueError(f"{where}: cannot mix preference (dpo, orpo) and supervised methods")
            for value in values:  # every endpoint and choice must itself be a valid setting
                tree: dict[str, Any] = TrainConfig().model_dump(mode="json")
                node = tree
                *parents, leaf = field.split(".")
                for part in parents:
                    node = node[part]
                node[leaf] = value
                try:
                    TrainConfig.model_validate(tree)
                except ValidationError as exc:
                    raise ValueError(f"{where}: {value!r} is not a valid train.{field} "
                                     f"({exc.errors()[0]['msg']})") from None
        return self


class EvalConfig(Section):
    max_samples: int | None = Field(100, ge=1, description="cap on test rows scored (a seeded sample, stratified by "
                                                          "label); null = the whole test split")
    max_new_tokens: int = Field(72, ge=1)
    batch_size: int = Field(32, ge=1, description="rows decoding together (continuous batching where the model "
                                                  "allows, else left-padded batches)")
    precision: Precision = Field("auto", description="the dtype every model is scored in (base, few-shot, "
                                                     "candidate, champion, probes); auto: bf16 where the CPU has it "
                                                     "natively, as deploy.precision: auto serves it (the gate reads "
                                                     "the model that will answer), fp32 elsewhere; fp32: the trained "
                                                     "weights exactly, about 2x slower where bf16 is native")
    sample_seed: int = Field(0, description="seed of the capped evaluation sample (eval.max_samples)")
    primary_metric: str | None = Field(None, description="metric the promotion gate compares; null = the task's")
    champion: bool = Field(True, description="re-evaluate the current champion on this run's test split")
    probe_max_new_tokens: int = Field(24, ge=1, description="answer length for the forgetting probe")
    genai_table_rows: int = Field(20, ge=0, description="rows per model in MLflow's GenAI evaluation view (a trace "
                                                       "per row, about 0.05 s each); 0 = off. Every row is in "
                                                       "evaluation/predictions.json either way")
    few_shot_k: int = Field(3, ge=0, le=32, description="worked examples (seeded, from the training split, stratified "
                                                        "by label) in the few-shot base's prompt; 0: no few-shot base")
    few_shot_max_tokens: int = Field(2048, ge=64, description="tokens the few-shot base's prompt (worked examples and "
                                                               "the row) may take, within the model's context; the "
                                                               "row itself is cut to train.max_seq_length as for "
                                                               "every model")
    slice_by: str | None = Field(None, description="a column of data.source: the primary metric per value of it "
                                                   "(bias check), and the worst slice, in the report and MLflow")

    # each evaluation stage's part, frozen, for the steps (llmft/config_stages.py)
    def scoring(self, max_seq_length: int) -> EvalSettings:
        return EvalSettings(max_new_tokens=self.max_new_tokens, batch_size=self.batch_size,
                            max_seq_length=max_seq_length, few_shot_max_tokens=self.few_shot_max_tokens,
                            precision=self.precision)

    def row_draw(self) -> RowDraw:
        return RowDraw(max_samples=self.max_samples, seed=self.sample_seed)

    def shot_draw(self) -> ShotDraw:
        return ShotDraw(k=self.few_shot_k, seed=self.sample_seed)

    def probing(self) -> ProbeSettings:
        return ProbeSettings(max_new_tokens=self.probe_max_new_tokens, batch_size=self.batch_size,
                             precision=self.precision)

    def reporting(self) -> ReportSettings:
        return ReportSettings(primary_metric=self.primary_metric, slice_by=self.slice_by,
                              genai_table_rows=self.genai_table_rows)


class AugmentConfig(Section):
    enabled: bool = Field(False, description="paraphrase training inputs into extra (synthetic) training rows")
    model: str | None = Field(None, description="the paraphrasing model (hub id, local directory); null: model.base")
    per_row: int = Field(1, ge=1, le=8, description="paraphrases asked for per training row")
    max_rows: int | None = Field(None, ge=1, description="training rows paraphrased (a seeded sample); null: all")
    temperature: float = Field(0.7, ge=0.0, le=2.0, description="sampling temperature; 0 = greedy (one paraphrase)")
    max_new_tokens: int = Field(160, ge=8)
    seed: int = 0


class RegistryConfig(Section):
    model_name: str | None = Field(None, pattern=r"^[A-Za-z0-9][\w.\-]*$",
                                   description="null: derived from data.source and the task, e.g. "
                                               "bbc-news-classification")


class PromotionConfig(Section):
    min_delta: float = Field(0.01, ge=0.0, description="candidate must beat the base by this much (primary metric)")
    beat_champion: bool = Field(True, description="candidate must also match or beat the re-measured champion")
    max_forgetting: float = Field(
        0.1, ge=0.0, le=1.0, description="largest allowed drop in general-knowledge probe accuracy vs the base")
    forgetting_guard: bool = Field(
        True, description="a candidate over max_forgetting has its trained update scaled back toward the base (to the "
                          "largest share, 0.9 down to 0.2, whose answers to a second set of general questions stay "
                          "within it), then probed again; false: the gate refuses it as trained")
    baseline: Literal["best", "prompted", "simple", "zero_shot", "few_shot"] = Field(
        "best", description="what the candidate must beat: best = the strongest of the base zero-shot, the base "
                            "few-shot and the simple non-LLM baseline (TF-IDF + logistic regression, Lead-k, ...); "
                            "prompted = the better of zero- and few-shot only; or one of simple, zero_shot, few_shot "
                            "(zero-shot when the one named was not measured)")


class TrackingConfig(Section):
    experiment_name: str = "llm-finetune"


class Config(Section):
    task: Literal["auto", "chat", "summarization", "classification", "extraction", "preference"] = Field(
        "auto", description="auto: inferred from the data's columns and content")
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    validation: ValidationConfig = ValidationConfig()
    augment: AugmentConfig = AugmentConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    registry: RegistryConfig = RegistryConfig()
    promotion: PromotionConfig = PromotionConfig()
    tracking: TrackingConfig = TrackingConfig()
    sweep: SweepConfig = SweepConfig()
    deploy: DeployConfig = DeployConfig()
    retrain: RetrainConfig = RetrainConfig()
    compute: ComputeConfig = ComputeConfig()
    export: ExportConfig = ExportConfig()

    @model_validator(mode="after")
    def _fractions_leave_training_rows(self) -> Config:
        if self.data.validation_fraction + self.data.test_fraction >= 0.9:
            raise ValueError("data.validation_fraction + data.test_fraction must be < 0.9")
        return self

    def finetune_step_options(self) -> dict[str, Any]:
        """ZenML options that send the training steps (fine-tune, sweep trials) to a GPU machine, if configured."""
        options: dict[str, Any] = {}
        if self.compute.finetune_step_operator:
            options["step_operator"] = self.compute.finetune_step_operator
        resources = self.compute.finetune_resources.model_dump(exclude_none=True)
        if resources:
            options["settings"] = {"resources": resources}
        return options

    def finetune_options(self) -> dict[str, Any]:
        """The fine-tune step's: the above, and cached unless train.reuse is off (never the sweep's
        steps: each trial worker must run, and a sweep resumes its study by itself)."""
        return {**self.finetune_step_options(), "enable_cache": self.train.reuse}

    def flat(self) -> dict[str, Any]:
        """Dotted-key view, used for MLflow params."""
        return _flatten(self.model_dump(mode="json"))


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def valid_keys() -> list[str]:
    return sorted(Config().flat())
