"""Turn raw rows of any supported shape into one canonical example.

Shapes (`data.format`, or `auto` to detect per row):
- prompt_response: prompt/response, prompt/completion or question/answer;
- alpaca: instruction, optional input, output;
- chat: OpenAI-style `messages` [{role, content}], multi-turn, optional system turn;
- sharegpt: `conversations` [{from, value}] with from in human/gpt/system;
- text_label: text and label, for classification.
`data.columns.*` renames any of these fields. A row that does not fit becomes a rejection with a
reason, never a crash.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from llmft.config import DataConfig
from llmft.ingest import DataError, RawRow

SFT_SHAPES = ("prompt_response", "alpaca", "chat", "sharegpt")
SHAPES = (*SFT_SHAPES, "text_label")
_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                   "model": "assistant", "system": "system"}
_PAIRS = (("prompt", "response"), ("prompt", "completion"), ("question", "answer"))


@dataclass
class Example:
    where: str
    shape: str
    messages: list[dict[str, str]] = field(default_factory=list)  # SFT: ends with the assistant turn
    text: str = ""  # classification input
    label: str | None = None

    @property
    def prompt_key(self) -> str:
        """Everything but the target: the split groups and deduplicates on it."""
        if self.shape == "text_label":
            return self.text
        return "\n".join(m["content"] for m in self.messages[:-1])

    @property
    def target(self) -> str:
        if self.shape == "text_label":
            return self.label or ""
        return self.messages[-1]["content"]

    def as_row(self) -> dict[str, Any]:
        return {"where": self.where, "shape": self.shape, "messages": json.dumps(self.messages, ensure_ascii=False),
                "text": self.text, "label": self.label, "prompt": self.prompt_key, "response": self.target}


@dataclass
class Rejection:
    where: str
    reason: str
    data: dict[str, Any]
    kind: str = "shape"  # shape, bad_label, empty, length, too_long, unknown_label, pii, duplicate


def _col(cfg: DataConfig, name: str) -> str:
    return getattr(cfg.columns, name) or name


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, (dict, list)):  # structured answers (e.g. gold JSON) are kept as JSON text
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, float) and value != value:  # NaN from CSV/Parquet gaps
        return None
    return str(value)


def detect_shape(data: dict[str, Any], cfg: DataConfig) -> str | None:
    keys = set(data)
    if _col(cfg, "messages") in keys:
        return "chat"
    if _col(cfg, "conversations") in keys:
        return "sharegpt"
    if _col(cfg, "instruction") in keys and _col(cfg, "output") in keys:
        return "alpaca"
    if _col(cfg, "text") in keys and _col(cfg, "label") in keys:
        return "text_label"
    if any(_col(cfg, p) in keys and _col(cfg, r) in keys for p, r in _PAIRS):
        return "prompt_response"
    return None


def _require(data: dict[str, Any], cfg: DataConfig, name: str) -> Any:
    column = _col(cfg, name)
    if column not in data:
        raise _RowProblem(f"missing field {column!r}")
    return data[column]


class _RowProblem(Exception):
    def __init__(self, reason: str, kind: str = "shape"):
        super().__init__(reason)
        self.kind = kind


def _chat_messages(turns: Any, role_key: str, content_key: str, roles: dict[str, str] | None) -> list[dict[str, str]]:
    if not isinstance(turns, list) or not turns:
        raise _RowProblem("conversation must be a non-empty list of turns")
    messages = []
    for i, turn in enumerate(turns, start=1):
        if not isinstance(turn, dict) or role_key not in turn or content_key not in turn:
            raise _RowProblem(f"turn {i} needs {role_key!r} and {content_key!r}")
        role = str(turn[role_key])
        role = roles.get(role, "") if roles is not None else role
        if role not in ("system", "user", "assistant"):
            raise _RowProblem(f"turn {i} has unknown role {turn[role_key]!r}")
        messages.append({"role": role, "content": _text(turn[content_key]) or ""})
    if messages[-1]["role"] != "assistant":
        raise _RowProblem("conversation must end with an assistant turn (the training target)")
    if not any(m["role"] == "user" for m in messages):
        raise _RowProblem("conversation has no user turn")
    return messages


def to_example(row: RawRow, cfg: DataConfig) -> Example | Rejection:
    shape = cfg.format if cfg.format != "auto" else detect_shape(row.data, cfg)
    if shape is None:
        return Rejection(row.where, f"unrecognised shape (fields: {', '.join(map(str, row.data)) or 'none'})",
                         row.data)
    try:
        if shape == "prompt_response":
            pair = next(((p, r) for p, r in _PAIRS if _col(cfg, p) in row.data and _col(cfg, r) in row.data), _PAIRS[0])
            prompt, response = _text(_require(row.data, cfg, pair[0])), _text(_require(row.data, cfg, pair[1]))
            messages = [{"role": "user", "content": prompt or ""}, {"role": "assistant", "content": response or ""}]
        elif shape == "alpaca":
            instruction = _text(_require(row.data, cfg, "instruction")) or ""
            extra = _text(row.data.get(_col(cfg, "input"))) or ""
            prompt = f"{instruction}\n\n{extra}" if extra.strip() else instruction
            messages = [{"role": "user", "content": prompt},
                        {"role": "assistant", "content": _text(_require(row.data, cfg, "output")) or ""}]
        elif shape == "chat":
            messages = _chat_messages(_require(row.data, cfg, "messages"), "role", "content", None)
        elif shape == "sharegpt":
            messages = _chat_messages(_require(row.data, cfg, "conversations"), "from", "value", _SHAREGPT_ROLES)
        else:
            text, label = _require(row.data, cfg, "text"), _require(row.data, cfg, "label")
            if isinstance(label, bool) or not isinstance(label, (str, int)):
                raise _RowProblem(f"label must be a string or an integer, got {type(label).__name__} {label!r}",
                                  kind="bad_label")
            return Example(row.where, shape, text=_text(text) or "", label=str(label).strip())
    except _RowProblem as problem:
        return Rejection(row.where, str(problem), row.data, kind=problem.kind)
    return Example(row.where, shape, messages=messages)


def to_examples(rows: list[RawRow], cfg: DataConfig) -> tuple[list[Example], list[Rejection]]:
    examples, rejections = [], []
    for row in rows:
        result = to_example(row, cfg)
        (examples if isinstance(result, Example) else rejections).append(result)
    kinds = {("classification" if e.shape == "text_label" else "generative") for e in examples}
    if len(kinds) > 1:
        first = {k: next(e.where for e in examples if ("classification" if e.shape == "text_label" else
                                                        "generative") == k) for k in kinds}
        raise DataError(f"mixed shapes: text/label rows (e.g. {first['classification']}) and conversation rows "
                        f"(e.g. {first['generative']}) cannot be trained together")
    if not examples and rejections:
        reasons = sorted({r.reason for r in rejections})
        raise DataError(f"{rejections[0].where}: no row has a usable shape ({len(rejections)} rows rejected: "
                        f"{'; '.join(reasons[:3])})")
    return examples, rejections
