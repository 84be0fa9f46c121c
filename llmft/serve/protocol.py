"""What the server accepts and answers: Pydantic models of the OpenAI-style chat-completions body
(/v1/chat/completions and /invocations), of a classifier's `{"inputs": [...]}`, and of the answers
(`chat.completion`, its streamed `chat.completion.chunk`, predictions, errors). serve/parsing.py
validates bodies with them before rendering and tokenizing.

Every refusal is a RequestError (serve/bodies.py): an HTTP status, the field at fault and one line
that says what is wrong, worded as the server always worded it (clients and tests match on it).
`refusal` turns the first error of a Pydantic ValidationError into that line; a validator that
needs the server's limits reads them from the validation context and raises the RequestError itself.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails

from llmft.config_serving import ServerLimits
from llmft.generation import Completion, Sampling
from llmft.serve.bodies import InvalidText, RequestError, check_text, text_refusal, valid_text
from llmft.serve.loading import Served
from llmft.serve.sampling import effective_temperature

MESSAGES_SHAPE = "'messages' must be a non-empty list of {role, content} objects"
INPUTS_SHAPE = "send {'inputs': [text, ...]} with non-empty strings"
Number = StrictInt | StrictFloat  # JSON numbers; true/false and "0.5" are refused


def _limits(info: ValidationInfo) -> ServerLimits:
    return (info.context or {})["limits"]


def _in_range(key: str, value: float | None, low: float, high: float) -> float | None:
    if value is not None and not low <= value <= high:
        raise RequestError(f"'{key}' must be between {low} and {high}, got {value}", param=key)
    return value


# ---- requests ----

class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")  # other keys (a "name") reach the chat template as before

    role: Literal["system", "user", "assistant"]
    content: StrictStr

    @field_validator("content")
    @classmethod
    def _unicode(cls, content: str) -> str:
        return valid_text(content)


class ChatCompletionRequest(BaseModel):
    """The fields of an OpenAI chat-completions body this server reads; the others are ignored."""

    messages: list[ChatMessage]
    stream: Any = None  # true: server-sent events; any false value (null, 0, ""): one answer, as before
    n: Any = 1
    max_tokens: StrictInt | None = None  # or max_completion_tokens, its newer name
    top_p: Number | None = None
    temperature: Number | None = None

    @model_validator(mode="before")
    @classmethod
    def _newer_name(cls, body: Any) -> Any:
        if isinstance(body, dict) and "max_tokens" not in body and "max_completion_tokens" in body:
            return {**body, "max_tokens": body["max_completion_tokens"]}
        return body

    @field_validator("messages", mode="before")
    @classmethod
    def _a_list_within_the_limit(cls, messages: Any, info: ValidationInfo) -> Any:
        if not isinstance(messages, list) or not messages:
            raise RequestError(MESSAGES_SHAPE, param="messages")
        limit = _limits(info).max_messages
        if len(messages) > limit:
            raise RequestError(f"'messages' has {len(messages)} entries; the limit is {limit}", status=413,
                               param="messages")
        return messages

    @field_validator("messages")
    @classmethod
    def _ends_with_a_turn_to_answer(cls, messages: list[ChatMessage]) -> list[ChatMessage]:
        if messages[-1].role == "assistant":
            raise RequestError("the last message must be from the user (or system), not the assistant",
                               param="messages")
        return messages

    @field_validator("stream")
    @classmethod
    def _true_or_false(cls, stream: Any) -> bool:
        if stream and stream is not True:
            raise RequestError("'stream' must be true or false", param="stream")
        return bool(stream)

    @field_validator("n")
    @classmethod
    def _one_answer(cls, n: Any) -> Any:
        if n != 1:
            raise RequestError("only n=1 is supported", param="n")
        return n

    @field_validator("max_tokens")
    @classmethod
    def _within_the_limit(cls, max_tokens: int | None, info: ValidationInfo) -> int | None:
        limit = _limits(info).max_tokens
        if max_tokens is not None and max_tokens < 1:
            raise RequestError(f"'max_tokens' must be a positive integer, got {max_tokens!r}", param="max_tokens")
        if max_tokens is not None and max_tokens > limit:
            raise RequestError(f"'max_tokens' {max_tokens} is over this server's limit of {limit}",
                               param="max_tokens")
        return max_tokens

    @field_validator("top_p")
    @classmethod
    def _a_share_of_the_mass(cls, top_p: float | None) -> float | None:
        _in_range("top_p", top_p, 0.0, 1.0)
        if top_p is not None and top_p <= 0:  # keeps no token at all: refused rather than read as 1.0
            raise RequestError("'top_p' must be greater than 0 and at most 1 (for deterministic answers send "
                               "temperature 0)", param="top_p")
        return top_p

    @field_validator("temperature")
    @classmethod
    def _a_temperature(cls, temperature: float | None) -> float | None:
        return _in_range("temperature", temperature, 0.0, 2.0)

    def sampling(self) -> Sampling:
        # below sampling.MIN_TEMPERATURE: greedy (1e-300 would overflow the logits and fail the batch)
        top_p = 1.0 if self.top_p is None else float(self.top_p)
        return Sampling(temperature=effective_temperature(float(self.temperature or 0.0)), top_p=top_p)

    def turns(self) -> list[dict[str, Any]]:
        return [m.model_dump() for m in self.messages]


class ClassifyRequest(BaseModel):
    """`{"inputs": [text, ...]}`, `{"inputs": text}` or `{"text": text}`."""

    inputs: list[StrictStr]

    @model_validator(mode="before")
    @classmethod
    def _one_text(cls, body: Any) -> Any:
        if isinstance(body, dict) and isinstance(body.get("text"), str):
            return {"inputs": [body["text"]]}
        if isinstance(body, dict) and isinstance(body.get("inputs"), str):
            return {"inputs": [body["inputs"]]}
        return body

    @field_validator("inputs")
    @classmethod
    def _texts_within_the_limit(cls, inputs: list[str], info: ValidationInfo) -> list[str]:
        if not inputs or not all(t.strip() for t in inputs):
            raise RequestError(INPUTS_SHAPE, param="inputs")
        for i, text in enumerate(inputs):
            check_text(text, f"inputs[{i}]")
        limit = _limits(info).max_inputs
        if len(inputs) > limit:
            raise RequestError(f"{len(inputs)} inputs; the limit is {limit}", status=413, param="inputs")
        return inputs


def _param(loc: tuple[int | str, ...]) -> str:
    """('messages', 1, 'content') -> 'messages[1].content'."""
    return "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc).lstrip(".")


def chat_refusal(error: ErrorDetails) -> RequestError:
    loc, value = error["loc"], error.get("input")
    if not loc:
        return RequestError("request body must be a JSON object with 'messages'")
    if loc[0] == "messages" and len(loc) > 1:
        return RequestError(f"messages[{loc[1]}] must be {{role: system|user|assistant, content: string}}",
                            param=f"messages[{loc[1]}]")
    if loc[0] == "max_tokens":
        return RequestError(f"'max_tokens' must be a positive integer, got {value!r}", param="max_tokens")
    if loc[0] in ("temperature", "top_p"):
        return RequestError(f"'{loc[0]}' must be a number, got {type(value).__name__}", param=str(loc[0]))
    return RequestError(MESSAGES_SHAPE, param="messages")  # 'messages' missing or not a list


def refusal(exc: ValidationError, otherwise: Callable[[ErrorDetails], RequestError]) -> RequestError:
    """The RequestError for the first thing wrong with a body: the one a validator raised, else
    `otherwise(error)` for a type or shape error."""
    error = exc.errors()[0]
    found = (error.get("ctx") or {}).get("error")
    if isinstance(found, RequestError):
        return found
    if isinstance(found, InvalidText):
        return text_refusal(_param(error["loc"]), found)
    return otherwise(error)


# ---- responses ----

class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, completion: Completion) -> Usage:
        return cls(prompt_tokens=completion.prompt_tokens, completion_tokens=completion.completion_tokens,
                   total_tokens=completion.prompt_tokens + completion.completion_tokens)


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: str


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage


class ChunkChoice(BaseModel):
    index: int = 0
    delta: dict[str, str]  # {"role": "assistant", "content": ""} first, then {"content": piece}, {} last
    finish_reason: str | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]


class Prediction(BaseModel):
    label: str
    score: float
    scores: dict[str, float]


class Classification(BaseModel):
    predictions: list[Prediction]


class ErrorDetail(BaseModel):
    message: str
    type: Literal["invalid_request_error", "server_error"]
    param: str | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail

    @classmethod
    def of(cls, status: int, message: str, param: str | None = None) -> ErrorBody:
        kind = "invalid_request_error" if status < 500 else "server_error"
        return cls(error=ErrorDetail(message=message, type=kind, param=param))


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


def chat_completion(completion: Completion, served: Served) -> ChatCompletion:
    return ChatCompletion(id=completion_id(), created=int(time.time()), model=served.name,
                          choices=[Choice(message=AssistantMessage(content=completion.text),
                                          finish_reason=completion.finish_reason)],
                          usage=Usage.of(completion))
