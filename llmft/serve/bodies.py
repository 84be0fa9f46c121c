"""Reading request bodies for the model server: every malformed body is a 400 with a one-line
message, never a 500 with a traceback.

What used to escape as a 500: a JSON integer of more than 4,300 digits (`json.loads` raises a plain
`ValueError`, not `JSONDecodeError`), a lone surrogate such as `"\\ud800"` (valid JSON, but not
encodable text: the tokenizer raises `TypeError`), and a role order the model's chat template refuses
(`raise_exception(...)` in the template: a jinja2 `TemplateError`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

from jinja2 import TemplateError

T = TypeVar("T")


class RequestError(ValueError):
    """A request the server refuses, with its HTTP status and the parameter at fault."""

    def __init__(self, message: str, status: int = 400, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.param = status, param


def one_line(exc: BaseException, limit: int = 300) -> str:
    """`Type: message`, first line only, bounded: what a response or a log line may carry."""
    text = f"{type(exc).__name__}: {exc}".strip()
    return (text.splitlines() or [type(exc).__name__])[0][:limit]


def parse_json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except RecursionError:
        raise RequestError("request body is nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError, and the 4,300-digit integer limit
        raise RequestError(f"request body is not valid JSON ({one_line(exc, 200)})") from None


class InvalidText(ValueError):
    """Text that is not valid Unicode; the message says where (the caller names the field)."""


def valid_text(value: str) -> str:
    """`value`, or InvalidText if it is not valid Unicode (a lone surrogate): it cannot be tokenized."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidText(f"it contains {value[exc.start:exc.end]!r} at position {exc.start} "
                          "(a lone UTF-16 surrogate)") from None
    return value


def text_refusal(param: str, problem: InvalidText) -> RequestError:
    return RequestError(f"'{param}' is not valid text: {problem}", param=param)


def check_text(value: str, param: str) -> str:
    """Refuse text that is not valid Unicode (a lone surrogate), naming the field."""
    try:
        return valid_text(value)
    except InvalidText as problem:
        raise text_refusal(param, problem) from None


def render_checked(render: Callable[[], T]) -> T:
    """Run the chat template; a conversation it refuses (e.g. roles that do not alternate) is a 400."""
    try:
        return render()
    except TemplateError as exc:
        raise RequestError(f"the model's chat template refused this conversation: {one_line(exc, 200)}",
                           param="messages") from None
