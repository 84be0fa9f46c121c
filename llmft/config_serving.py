"""The operations sections of the config: the model server's limits (`deploy.*`, `ServerLimits`), deploy,
scheduled retraining, compute (stack, resources) and export."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field, ValidationError, model_validator

from llmft.config_base import ConfigError, Precision, Section


class ServerLimits(Section):
    """What the model server accepts: the `deploy.*` limits (`DeployConfig` adds where and how to deploy)."""

    # inf/nan are never a limit: batch_wait_ms=inf would park the batcher forever
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

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
    precision: Precision = Field(
        "auto", description="the served model's weights and arithmetic; auto: bf16 where the CPU computes it natively "
                            "(AVX512-BF16 or AMX: about 2x the requests/s of fp32 on a 135M model), fp32 elsewhere")
    share_prefixes: bool = Field(True, description="continuous: a prompt start that requests share (the system "
                                                   "turn) is prefilled once and kept; false: every prompt whole")
    tracing: bool = Field(False, description="log each chat request as an MLflow trace (tokens, latency, model "
                                             "version) in the served version's experiment")

    @classmethod
    def checked(cls, values: dict[str, Any] | str) -> ServerLimits:
        """Validated limits (a dict or JSON), or a one-line ConfigError naming the `deploy.<key>` at fault."""
        try:
            return cls.model_validate_json(values) if isinstance(values, str) else cls.model_validate(values)
        except ValidationError as exc:
            err = exc.errors()[0]
            key = ".".join(str(p) for p in err["loc"]) or "(root)"
            raise ConfigError(f"deploy.{key}: {err['msg']} (got {err.get('input')!r})") from None


class DeployConfig(ServerLimits):
    """`deploy.*`: where the server runs and when it is redeployed, plus the limits it enforces."""

    host: str = "127.0.0.1"
    port: int = Field(5055, ge=1, le=65535)
    startup_timeout_s: int = Field(180, ge=5)
    smoke_max_tokens: int = Field(48, ge=1)
    on_promotion: bool = Field(False, description="redeploy at the end of a finetune run that promoted")

    def server_limits(self) -> ServerLimits:
        return ServerLimits.model_validate(self.model_dump(include=set(ServerLimits.model_fields)))


class RetrainConfig(Section):
    only_if_new_data: bool = Field(True, description="a scheduled tick whose data the champion was trained on "
                                                     "is skipped")


class ResourcesConfig(Section):
    cpu_count: float | None = Field(None, gt=0)
    gpu_count: int | None = Field(None, ge=0)
    memory: str | None = Field(None, pattern=r"^\d+(\.\d+)?\s*(KB|KiB|MB|MiB|GB|GiB|TB|TiB)$",
                               description='e.g. "32GB"')


class ComputeConfig(Section):
    """Where the fine-tune step runs: with the rest of the pipeline (default), or on its own GPU
    machine through a registered ZenML step operator, with resource requests for the orchestrator."""

    stack: str | None = Field(None, description="a registered ZenML stack to run on (infra/); null: llmft-local, "
                                                "created on first use")
    finetune_step_operator: str | None = Field(None, description="name of a registered ZenML step operator")
    finetune_resources: ResourcesConfig = ResourcesConfig()


class ExportConfig(Section):
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
