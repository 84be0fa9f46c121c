"""Turning a request body into work for the model: validated (serve/protocol.py), rendered with the
model's chat template as training rendered it, tokenized, and refused past the server's limits,
cheapest check first (characters before tokens). CPU work: the server runs it in a worker thread."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from llmft.chat_format import CHARS_PER_TOKEN_BOUND, render_generation_prompt, with_system
from llmft.config_serving import ServerLimits
from llmft.generation import Sampling
from llmft.serve.bodies import RequestError, render_checked
from llmft.serve.loading import Served
from llmft.serve.protocol import INPUTS_SHAPE, ChatCompletionRequest, ClassifyRequest, chat_refusal, refusal


def char_limit(limits: ServerLimits) -> int:
    """No text longer than this can be max_input_tokens tokens: refused without tokenizing it."""
    return limits.max_input_tokens * CHARS_PER_TOKEN_BOUND


@dataclass
class ChatRequest:
    """A chat request ready for the batcher."""

    prompt: str
    prompt_tokens: int
    max_tokens: int
    sampling: Sampling
    stream: bool = False


def serving_prompt(served: Served, messages: list[dict[str, Any]]) -> str:
    """The prompt exactly as training rendered it: the trained instruction (unless the request brings
    its own system turn) and the model's own chat template, through the training formatter (which
    escapes special-token text in the content)."""
    return render_generation_prompt(served.tokenizer, with_system(served.instruction, messages))


def parse_chat(body: Any, served: Served, limits: ServerLimits) -> ChatRequest:
    try:
        chat = ChatCompletionRequest.model_validate(body, context={"limits": limits})
    except ValidationError as exc:
        raise refusal(exc, chat_refusal) from None
    messages = chat.turns()
    chars = sum(len(m["content"]) for m in messages)
    if chars > char_limit(limits):  # before tokenizing: 5 M characters would tokenize for seconds
        raise RequestError(f"the conversation is {chars} characters; this server accepts at most "
                           f"{limits.max_input_tokens} tokens (no more than {char_limit(limits)} characters)",
                           status=413, param="messages")
    prompt = render_checked(lambda: serving_prompt(served, messages))
    n_tokens = len(served.tokenizer(prompt, add_special_tokens=False)["input_ids"])
    if n_tokens > limits.max_input_tokens:
        raise RequestError(f"the conversation is {n_tokens} tokens; this server accepts at most "
                           f"{limits.max_input_tokens}", status=413, param="messages")
    max_tokens = min(limits.default_max_tokens, limits.max_tokens) if chat.max_tokens is None else chat.max_tokens
    return ChatRequest(prompt, n_tokens, max_tokens, chat.sampling(), stream=bool(chat.stream))


def parse_texts(body: Any, served: Served, limits: ServerLimits) -> list[list[int]]:
    try:
        texts = ClassifyRequest.model_validate(body, context={"limits": limits}).inputs
    except ValidationError as exc:
        raise refusal(exc, lambda _: RequestError(INPUTS_SHAPE, param="inputs")) from None
    longest_chars = max(len(t) for t in texts)
    if longest_chars > char_limit(limits):
        raise RequestError(f"an input is {longest_chars} characters; this server accepts at most "
                           f"{limits.max_input_tokens} tokens (no more than {char_limit(limits)} characters)",
                           status=413, param="inputs")
    ids = [served.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    longest = max(len(i) for i in ids)
    if longest > limits.max_input_tokens:
        raise RequestError(f"an input is {longest} tokens; this server accepts at most {limits.max_input_tokens}",
                           status=413, param="inputs")
    return ids
