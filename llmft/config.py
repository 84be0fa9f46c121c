"""One config schema for every pipeline, validated on load.

YAML file plus repeatable `dotted.key=value` overrides. An unknown key is an error that names the
closest valid ones ("did you mean"); type errors name the file, the line and the field, all of them at
once. A config named on the command line is a file, else one shipped with the package (`configs/`).
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from llmft.errors import UserFacingError
from llmft.train.methods import METHOD_NAMES, get_method

EMBEDDED_MODEL = "embedded:smollm2-135m-instruct"


class ConfigError(UserFacingError, ValueError):
    """A config problem, with a one-line message meant for the user."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Section):
    base: str = Field(EMBEDDED_MODEL, description="hub id, local directory, the embedded default, or a registered "
                                                 "model: models:/NAME@champion or models:/NAME/VERSION")
    revision: str | None = None
    trust_remote_code: bool = False


class ColumnsConfig(_Section):
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


class MixSource(_Section):
    source: str = Field(description="a file or directory like data.source, or builtin:general (general "
                                    "instructions shipped with the project, disjoint from the forgetting probe)")
    weight: float = Field(gt=0.0, le=10.0, description="rows drawn from this source per training row of data.source "
                                                       "(0.2: one for every five); capped at what the source has")
    format: Literal["auto", "prompt_response", "alpaca", "chat", "sharegpt", "turns", "text_label"] = "auto"
    columns: ColumnsConfig = ColumnsConfig()


class DataConfig(_Section):
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
    replay: float = Field(0.1, ge=0.0, le=10.0, description="against forgetting: rows of builtin:general (general "
                          "questions with the base model's own answers) added per training row of a generative "
                          "task (chat, summarization, extraction); 0: none; a data.mix entry of builtin:general "
                          "sets the share instead")
    mix: list[MixSource] = Field([], description="extra sources sampled into the training split only (replay "
                                                 "against forgetting, weighted mixing); never into validation or "
                                                 "test")


PiiKind = Literal["secret", "email", "iban", "card", "ssn", "ip", "phone", "address", "name"]
PII_KINDS: tuple[str, ...] = PiiKind.__args__  # llmft.data.pii detects exactly these (a test holds them equal)


class ValidationConfig(_Section):
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


class LoraConfig(_Section):
    r: int = Field(16, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: list[str] | Literal["all-linear"] = "all-linear"


class FreezeConfig(_Section):
    trainable_layers: int = Field(2, ge=1, description="freeze: train only the last N blocks, final norm and head")


class PromptTuningConfig(_Section):
    num_virtual_tokens: int = Field(16, ge=1, le=256)
    init: Literal["text", "random"] = Field("text", description="text: start from the task's instruction tokens")


class TrainConfig(_Section):
    method: Literal[METHOD_NAMES] = "lora"  # type: ignore[valid-type]  (the registry's names, one source)
    max_steps: int | Literal["auto"] = Field(
        60, description="optimizer steps; auto: train.epochs over the training rows, cut to what fits in "
                        "train.max_minutes at the speed measured on this machine before training")
    epochs: float = Field(1.0, gt=0.0, description="max_steps: auto: passes over the training rows")
    max_minutes: float | None = Field(20.0, gt=0.0, description="max_steps: auto: time budget of the training "
                                                             "loop (steps and validation); null: none")
    class_weights: Literal["balanced", "none"] = Field(
        "balanced", description="classification: balanced weighs each class's loss by n / (k * its training "
                                "rows), so a rare class counts as much as a common one; extraction of entity lists: "
                                "the same between entity-free rows and the rest; none: plain loss")
    learning_rate: float = Field(1e-3, gt=0.0)
    batch_size: int = Field(4, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    gradient_checkpointing: bool = Field(False, description="recompute activations in backward: less memory")
    warmup_ratio: float = Field(0.05, ge=0.0, lt=1.0)
    lr_scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = "cosine"
    weight_decay: float = Field(0.0, ge=0.0)
    max_grad_norm: float = Field(1.0, gt=0.0)
    max_seq_length: int = Field(384, ge=16)
    precision: Literal["fp32", "bf16", "fp16"] = Field("fp32", description="mixed precision for training (GPU)")
    seed: int = 42
    logging_steps: int = Field(1, ge=1)
    eval_steps: int | None = Field(20, ge=1, description="validation loss every N steps; null: only at the end")
    early_stopping_patience: int | None = Field(
        None, ge=1, description="stop after N evaluations without validation-loss improvement; best weights kept")
    early_stopping_min_delta: float = Field(0.0, ge=0.0)
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


class SweepRange(_Section):
    """A numeric range; ints for integer fields (train.max_steps, train.lora.r), floats otherwise."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    low: float
    high: float
    log: bool = False
    step: float | None = Field(None, gt=0)


class SweepConfig(_Section):
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
                kind = type(base[field])
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


class EvalConfig(_Section):
    max_samples: int | None = Field(100, ge=1, description="cap on test rows scored (a seeded sample, stratified by "
                                                          "label); null = the whole test split")
    max_new_tokens: int = Field(72, ge=1)
    batch_size: int = Field(16, ge=1, description="prompts generated together (left padding)")
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


class AugmentConfig(_Section):
    enabled: bool = Field(False, description="paraphrase training inputs into extra (synthetic) training rows")
    model: str | None = Field(None, description="the paraphrasing model (hub id, local directory); null: model.base")
    per_row: int = Field(1, ge=1, le=8, description="paraphrases asked for per training row")
    max_rows: int | None = Field(None, ge=1, description="training rows paraphrased (a seeded sample); null: all")
    temperature: float = Field(0.7, ge=0.0, le=2.0, description="sampling temperature; 0 = greedy (one paraphrase)")
    max_new_tokens: int = Field(160, ge=8)
    seed: int = 0


class RegistryConfig(_Section):
    model_name: str | None = Field(None, pattern=r"^[A-Za-z0-9][\w.\-]*$",
                                   description="null: derived from data.source and the task, e.g. "
                                               "bbc-news-classification")


class PromotionConfig(_Section):
    min_delta: float = Field(0.01, ge=0.0, description="candidate must beat the base by this much (primary metric)")
    beat_champion: bool = Field(True, description="candidate must also match or beat the re-measured champion")
    max_forgetting: float = Field(
        0.1, ge=0.0, le=1.0, description="largest allowed drop in general-knowledge probe accuracy vs the base")
    baseline: Literal["best", "prompted", "simple", "zero_shot", "few_shot"] = Field(
        "best", description="what the candidate must beat: best = the strongest of the base zero-shot, the base "
                            "few-shot and the simple non-LLM baseline (TF-IDF + logistic regression, Lead-k, ...); "
                            "prompted = the better of zero- and few-shot only; or one of simple, zero_shot, few_shot "
                            "(zero-shot when the one named was not measured)")


class TrackingConfig(_Section):
    experiment_name: str = "llm-finetune"


class ServerLimits(_Section):
    """What the model server accepts; the values come from `deploy.*` (one set of defaults)."""

    # inf/nan are never a limit: batch_wait_ms=inf would park the batcher forever
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    max_tokens: int = Field(256, ge=1)
    default_max_tokens: int = Field(128, ge=1)
    max_input_tokens: int = Field(1024, ge=1)
    max_messages: int = Field(64, ge=1)
    max_inputs: int = Field(64, ge=1)
    max_batch_size: int = Field(32, ge=1)
    batch_wait_ms: float = Field(10.0, ge=0.0, le=10_000.0)
    max_body_bytes: int = Field(4_000_000, ge=1024, le=1_000_000_000)
    max_queue: int = Field(256, ge=1)
    max_bodies_in_flight: int = Field(4, ge=1, le=10_000)
    request_timeout_s: float = Field(120.0, gt=0.0, le=86_400.0)
    engine: Literal["continuous", "static"] = "continuous"
    share_prefixes: bool = True
    tracing: bool = False

    @classmethod
    def checked(cls, values: dict[str, Any] | str) -> ServerLimits:
        """Validated limits (a dict or JSON), or a one-line ConfigError naming the `deploy.<key>` at fault."""
        try:
            return cls.model_validate_json(values) if isinstance(values, str) else cls.model_validate(values)
        except ValidationError as exc:
            err = exc.errors()[0]
            key = ".".join(str(p) for p in err["loc"]) or "(root)"
            raise ConfigError(f"deploy.{key}: {err['msg']} (got {err.get('input')!r})") from None


class DeployConfig(_Section):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    host: str = "127.0.0.1"
    port: int = Field(5055, ge=1, le=65535)
    startup_timeout_s: int = Field(180, ge=5)
    smoke_max_tokens: int = Field(48, ge=1)
    on_promotion: bool = Field(False, description="redeploy at the end of a finetune run that promoted")
    max_tokens: int = Field(256, ge=1, description="largest max_tokens a request may ask for")
    default_max_tokens: int = Field(128, ge=1, description="when a request names none")
    max_input_tokens: int = Field(1024, ge=1, description="longest prompt (chat template applied) accepted")
    max_messages: int = Field(64, ge=1, description="turns in one chat request")
    max_inputs: int = Field(64, ge=1, description="texts in one classification request")
    max_batch_size: int = Field(32, ge=1, description="concurrent requests generated together")
    batch_wait_ms: float = Field(10.0, ge=0.0, le=10_000.0, description="how long the batcher waits for more requests")
    max_body_bytes: int = Field(4_000_000, ge=1024, le=1_000_000_000,
                                description="largest request body; larger ones get 413 before they are read")
    max_queue: int = Field(256, ge=1, description="requests waiting for the model; beyond it: 429 with Retry-After")
    max_bodies_in_flight: int = Field(4, ge=1, le=10_000,
                                      description="request bodies read and parsed at once, in max_body_bytes "
                                                  "units (small bodies count by their size); beyond it: 429 "
                                                  "with Retry-After before the body is read")
    request_timeout_s: float = Field(120.0, gt=0.0, le=86_400.0,
                                     description="a request not answered by then gets 504 and its work is dropped")
    engine: Literal["continuous", "static"] = Field(
        "continuous", description="continuous: requests join and leave the running batch between decoding steps; "
                                  "static: each batch runs until its longest request ends")
    share_prefixes: bool = Field(True, description="continuous: a prompt start that requests share (the system "
                                                   "turn) is prefilled once and kept; false: every prompt whole")
    tracing: bool = Field(False, description="log each chat request as an MLflow trace (tokens, latency, model "
                                             "version) in the served version's experiment")

    def server_limits(self) -> ServerLimits:
        return ServerLimits.model_validate(self.model_dump(include=set(ServerLimits.model_fields)))


class RetrainConfig(_Section):
    only_if_new_data: bool = Field(True, description="a scheduled tick whose data the champion was trained on "
                                                     "is skipped")


class ResourcesConfig(_Section):
    cpu_count: float | None = Field(None, gt=0)
    gpu_count: int | None = Field(None, ge=0)
    memory: str | None = Field(None, pattern=r"^\d+(\.\d+)?\s*(KB|KiB|MB|MiB|GB|GiB|TB|TiB)$",
                               description='e.g. "32GB"')


class ComputeConfig(_Section):
    """Where the fine-tune step runs: with the rest of the pipeline (default), or on its own GPU
    machine through a registered ZenML step operator, with resource requests for the orchestrator."""

    stack: str | None = Field(None, description="a registered ZenML stack to run on (infra/); null: llmft-local, "
                                                "created on first use")
    finetune_step_operator: str | None = Field(None, description="name of a registered ZenML step operator")
    finetune_resources: ResourcesConfig = ResourcesConfig()


class ExportConfig(_Section):
    """`--pipeline export`: a registry version as merged safetensors, GGUF (llama.cpp) and an Ollama Modelfile."""

    version: str | None = Field(None, description="registry version to export; null: the current @champion")
    output_dir: str | None = Field(None, description="null: <project folder>/exports/<name>-v<version>")
    quants: list[Literal["f16", "q8_0"]] = Field(["f16", "q8_0"], min_length=1, description="GGUF files to write")
    modelfile_quant: Literal["f16", "q8_0"] = Field("q8_0", description="the GGUF the Ollama Modelfile loads")
    merged_dtype: Literal["float32", "float16", "bfloat16"] = Field("float16", description="merged safetensors dtype")
    tokenizer_pre: str | None = Field(None, description="llama.cpp pre-tokenizer name; null: detected (smollm)")
    verify: bool = Field(True, description="load each GGUF back with transformers and compare logits; fail if off")
    log_to_mlflow: bool = Field(True, description="log the files to the version's run and tag the version")
    after_promotion: bool = Field(False, description="export at the end of a finetune run that promoted")

    @model_validator(mode="after")
    def _modelfile_quant_is_written(self) -> ExportConfig:
        if self.modelfile_quant not in self.quants:
            raise ValueError(f"export.modelfile_quant={self.modelfile_quant} is not in export.quants={self.quants}")
        return self


class Config(_Section):
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


def _sections(keys: list[str]) -> set[str]:
    """Every dotted prefix of a key: `train`, `train.lora`, ..."""
    return {".".join(k.split(".")[:i]) for k in keys for i in range(1, k.count(".") + 1)}


def _initials(name: str) -> str:
    return "".join(word[0] for word in name.split("_") if word)


def suggest_keys(key: str, limit: int = 3) -> list[str]:
    """The dotted keys (or sections) an unknown `key` most likely meant, best first. Each candidate scores
    its best of: 1.0 for a name whose word initials the key's last part is (`lr` -> `learning_rate`), the
    difflib similarity of the last part to a name in the same section, 0.8 for the same name in another
    section, the similarity of the whole dotted key; kept: 0.7 and up, within 0.08 of the best."""
    keys = valid_keys()
    section, _, leaf = key.rpartition(".")
    scores: dict[str, float] = {}
    for name in sorted({*keys, *_sections(keys)}):
        parent, _, last = name.rpartition(".")
        score = difflib.SequenceMatcher(None, key, name).ratio()
        if parent == section:
            score = max(score, 1.0 if len(leaf) > 1 and _initials(last) == leaf.lower() else
                        difflib.SequenceMatcher(None, leaf, last).ratio())
        elif last == leaf and name in keys:
            score = max(score, 0.8)
        if score >= 0.7 and name != key:
            scores[name] = score
    best = max(scores.values(), default=0.0)
    return sorted((n for n, s in scores.items() if s >= best - 0.08), key=lambda n: -scores[n])[:limit]


def unknown_key_message(key: str) -> str:
    """One line for an unknown key: what it probably meant, never the list of every key."""
    found = suggest_keys(key)
    if not found:
        return "unknown key (nothing similar; `llmft finetune --print-config` shows every key)"
    either = ", ".join(f"`{k}`" for k in found[:-1]) + (" or " if len(found) > 1 else "") + f"`{found[-1]}`"
    return f"unknown key; did you mean {either}?"


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected dotted.key=value")
    key, raw = item.split("=", 1)
    key = key.strip()
    keys = valid_keys()
    if key not in keys:
        if key in _sections(keys):
            example = next(k for k in keys if k.startswith(key + "."))
            raise ConfigError(f"--set {key}: a section, not a key; set one of its keys, e.g. {example}")
        raise ConfigError(f"--set {key}: {unknown_key_message(key)}")
    return key.split("."), _override_value(raw)


def _override_value(raw: str) -> Any:
    """YAML scalars and lists the way users write them in the file (ints, floats, bools, null,
    [a, b]); anything YAML reads as a mapping or cannot parse (a sentence with a colon) is the
    plain string."""
    if not raw.strip():
        return ""
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw
    return raw if isinstance(value, dict) else value


def _line_of(path: Path, dotted: list[str]) -> int | None:
    """Line of a (possibly nested) key in a YAML file, for error messages."""
    try:
        node = yaml.compose(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None
    line = None
    for part in dotted:
        if not isinstance(node, yaml.MappingNode):
            break
        for key_node, value_node in node.value:
            if key_node.value == part:
                line, node = key_node.start_mark.line + 1, value_node
                break
        else:
            break
    return line


# a union's branch in an error location (`list[str]`, `literal['all-linear']`, `SweepRange`), not a key
_BRANCH = re.compile(r"[\[\]'(]|^(int|float|str|bool|none|list|dict)$|^[A-Z]\w*$")
_KEY_IN_MESSAGE = re.compile(r"^([a-z_]+(?:\.[\w\[\]]+)+): ")


def _error_key_and_message(err: dict[str, Any]) -> tuple[list[str], str]:
    """The dotted key an error is about (union branches left out) and its message, the key named once: a
    section-level check that names its own key (`sweep.direction: ...`) is reported at that key."""
    loc = [str(p) for p in err["loc"] if not _BRANCH.search(str(p))]
    msg = str(err["msg"]).removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        return loc, unknown_key_message(".".join(loc))
    named = _KEY_IN_MESSAGE.match(msg)
    if named and named[1].startswith(".".join(loc)):
        return named[1].split("."), msg[named.end():]
    return loc, msg


def _got(err: dict[str, Any]) -> str:
    value = err.get("input")
    if isinstance(value, dict) or err["type"] == "extra_forbidden":  # a whole section says nothing more
        return ""
    shown = repr(value)
    return f" (got {shown if len(shown) <= 80 else shown[:77] + '...'})"


def validation_errors(exc: ValidationError, file_path: Path | None, from_override: set[str]) -> list[str]:
    """Every validation error as one line naming its key: `--set key: ...` for an override, else
    `<file>, line N: field key: ...`; the branches of one union failing at one key are one line."""
    grouped: dict[str, tuple[list[str], list[str], str]] = {}
    for err in exc.errors():
        loc, msg = _error_key_and_message(err)
        grouped.setdefault(".".join(loc), (loc, [], _got(err)))[1].append(msg)
    lines = []
    for field, (loc, msgs, got) in grouped.items():
        msg = "; or ".join(dict.fromkeys(msgs)) + got
        overridden = next((".".join(loc[:i]) for i in range(len(loc), 0, -1) if ".".join(loc[:i]) in from_override),
                          None)
        if overridden:
            lines.append(f"--set {overridden}: {msg}" if overridden == field else f"--set {overridden}: {field}: {msg}")
            continue
        line = _line_of(file_path, loc) if file_path else None
        where = str(file_path) if file_path else "defaults"
        lines.append(f"{where}, line {line}: field {field or '(root)'}: {msg}" if line
                     else f"{where}: field {field or '(root)'}: {msg}")
    return lines


def config_error(problems: list[str]) -> ConfigError:
    """One line for one problem; several: a count, then one indented line each."""
    if len(problems) == 1:
        return ConfigError(problems[0])
    return ConfigError(f"{len(problems)} config errors:\n" + "\n".join(f"  {p}" for p in problems))


def _read_file(file_path: Path) -> dict[str, Any]:
    if not file_path.is_file():
        raise ConfigError(f"{file_path}: config file not found")
    try:
        loaded = yaml.safe_load(file_path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f", line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{file_path}{line}: invalid YAML ({getattr(exc, 'problem', exc)})") from None
    if loaded is not None and not isinstance(loaded, dict):
        raise ConfigError(f"{file_path}: top level must be a mapping of sections")
    return loaded or {}


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Load YAML (or defaults when path is None), apply overrides, validate. Every problem with the
    overrides and the values is reported at once (one ConfigError, a line each)."""
    file_path = Path(path) if path is not None else None
    raw = _read_file(file_path) if file_path is not None else {}
    from_override: set[str] = set()
    problems: list[str] = []
    for item in overrides or []:
        try:
            parts, value = _parse_override(item)
        except ConfigError as exc:
            problems.append(str(exc))
            continue
        node = raw
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[parts[-1]] = value
        from_override.add(".".join(parts))
    try:
        cfg = Config.model_validate(raw)
    except ValidationError as exc:
        problems += validation_errors(exc, file_path, from_override)
    if problems:
        raise config_error(problems)
    return cfg


# ---- where a config named on the command line is: a file, else one shipped with the package ----

def shipped_configs_dir() -> Path | None:
    """The configs shipped with llmft: package data `llmft.configs` (a wheel, or an editable install,
    which maps it to the checkout's top-level configs/), else the checkout's configs/ beside the package."""
    import importlib.util

    try:
        spec = importlib.util.find_spec("llmft.configs")
    except ImportError:
        spec = None
    here = Path(__file__).resolve().parent
    found = list(spec.submodule_search_locations or []) if spec else []
    places = [*found, here / "configs", here.parent / "configs"]
    return next((Path(p) for p in places if (Path(p) / "finetune.yaml").is_file()), None)


def shipped_config_names() -> list[str]:
    folder = shipped_configs_dir()
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder else []


def resolve_config_path(name: str | Path) -> Path:
    """A config argument as a file: an existing file first, then the shipped config of that name (a
    bare name such as `classify`, or `configs/classify.yaml` run from outside the checkout)."""
    path = Path(name).expanduser()
    if path.is_file():
        return path
    bare = path.name.removesuffix(".yaml").removesuffix(".yml")
    folder = shipped_configs_dir()
    if not path.is_absolute() and str(path.parent) in (".", "configs") and folder is not None:
        shipped = folder / f"{bare}.yaml"
        if shipped.is_file():
            return shipped
    names = shipped_config_names()
    close = difflib.get_close_matches(bare, names, n=1, cutoff=0.6)
    hint = f"did you mean `{close[0]}`? " if close else ""
    raise ConfigError(f"{name}: config file not found; {hint}shipped configs: {', '.join(names) or 'none'}")
