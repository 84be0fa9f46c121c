"""Turn raw rows of any supported shape into one canonical example.

Shapes (`data.format`, or `auto` to detect per row):
- prompt_response: an input column and a target column, by the names public datasets use
  (prompt/response, question/answer, document/summary, article/highlights, dialogue/summary,
  source/target, input/output, ...; see `PAIRS`);
- alpaca: instruction, optional input, output;
- chat: OpenAI-style `messages` [{role, content}], multi-turn, optional system turn;
- sharegpt: `conversations` [{from, value}] with from in human/gpt/system;
- turns: a list of plain strings (`conversation`, `dialog`, `turns`, ...), alternating user and
  assistant, starting with the user (a trailing user turn has no answer and is left out);
- text_label: a text column and a label column (text/label, sentence/label, review/sentiment, ...),
  for classification;
- preference: `chosen` and `rejected` answers to one prompt (prompt/chosen/rejected,
  question/chosen/rejected, instruction/chosen/rejected, ...), each a string or a message list; without
  a prompt column, chosen and rejected are whole conversations (message lists, or Anthropic HH's
  "\n\nHuman: ... \n\nAssistant: ..." text) whose shared leading turns are the prompt.
`data.columns.*` renames any of these fields. A row that does not fit becomes a rejection with a
reason, never a crash.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from llmft.config import DataConfig
from llmft.data.ingest import DataError, RawRow

SFT_SHAPES = ("prompt_response", "alpaca", "chat", "sharegpt", "turns")
TURN_COLUMNS = ("conversation", "dialog", "dialogue", "turns", "utterances")
SHAPES = (*SFT_SHAPES, "text_label", "preference")
# the prompt of a chosen/rejected pair, most common name first; `data.columns.prompt` overrides them
PREFERENCE_PROMPTS = ("prompt", "question", "instruction", "input", "query", "context", "history", "messages",
                      "conversations")
# a preference example stores its rejected answer as a last turn with this role (after the chosen
# assistant turn), so the gate scans, redacts and deduplicates it like every other turn
REJECTED_ROLE = "rejected"
_HH_TURN = re.compile(r"\n\n(Human|Assistant):[ ]?")
_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                   "model": "assistant", "system": "system"}
# (input column, target column), most specific first; `data.columns.prompt/response` override them
PAIRS = (("prompt", "response"), ("prompt", "completion"), ("question", "answer"), ("query", "response"),
         ("document", "summary"), ("article", "highlights"), ("article", "summary"), ("dialogue", "summary"),
         ("text", "summary"), ("content", "summary"), ("abstract", "title"), ("source", "target"),
         ("input", "output"), ("input", "target"), ("input_text", "output_text"), ("context", "response"),
         ("src", "tgt"), ("text", "target"), ("statement", "reply"), ("message", "reply"), ("context", "reply"),
         ("utterance", "response"), ("input", "response"), ("question", "response"), ("instruction", "response"),
         ("prompt", "output"), ("human", "assistant"), ("user", "assistant"), ("user", "bot"),
         ("text", "entities"), ("sentence", "entities"), ("tweet", "entities"))  # NER as JSON entity lists
TEXT_COLUMNS = ("text", "sentence", "review", "content", "document", "headline", "title", "comment", "tweet",
                "utterance", "query", "question")
LABEL_COLUMNS = ("label", "labels", "sentiment", "category", "class", "topic", "intent", "label_text", "target")


@dataclass
class Example:
    where: str
    shape: str
    messages: list[dict[str, str]] = field(default_factory=list)  # SFT: ends with the assistant turn
    text: str = ""  # classification input
    label: str | None = None
    fields: str = ""  # the source columns it came from, e.g. "document/summary" (task inference reads it)
    slice: str | None = None  # the row's value of eval.slice_by (metrics per slice)
    origin: str = "data"  # "data" (data.source), "mix" (a data.mix source) or "synthetic" (augmentation)

    @property
    def prompt_key(self) -> str:
        """Everything but the target: the split groups and deduplicates on it (for a preference
        pair the prompt alone, so both answers to one prompt land in the same split)."""
        if self.shape == "text_label":
            return self.text
        return "\n".join(m["content"] for m in pair_conversations(self.messages)[0][:-1])

    @property
    def target(self) -> str:
        if self.shape == "text_label":
            return self.label or ""
        return pair_conversations(self.messages)[0][-1]["content"]

    def as_row(self) -> dict[str, Any]:
        return {"where": self.where, "shape": self.shape, "messages": json.dumps(self.messages, ensure_ascii=False),
                "text": self.text, "label": self.label, "prompt": self.prompt_key, "response": self.target,
                "fields": self.fields, "slice": self.slice, "origin": self.origin}

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Example:
        return cls(row["where"], row["shape"], messages=json.loads(row["messages"]), text=row["text"] or "",
                   label=row["label"], fields=row.get("fields") or "", slice=row.get("slice"),
                   origin=row.get("origin") or "data")


@dataclass
class Rejection:
    where: str
    reason: str
    data: dict[str, Any]
    kind: str = "shape"  # shape, bad_label, empty, length, too_long, unknown_label, pii, duplicate


def pair_conversations(messages: list[dict[str, str]]) -> tuple[list[dict[str, str]], list[dict[str, str]] | None]:
    """(prompt + chosen, prompt + rejected) of a preference example's messages; (messages, None) for
    any other conversation."""
    if not messages or messages[-1]["role"] != REJECTED_ROLE:
        return list(messages), None
    chosen = list(messages[:-1])
    return chosen, [*chosen[:-1], {"role": "assistant", "content": messages[-1]["content"]}]


def _preference_prompt(data: dict[str, Any], cfg: DataConfig) -> str | None:
    if cfg.columns.prompt:
        return cfg.columns.prompt if cfg.columns.prompt in data else None
    return next((c for c in PREFERENCE_PROMPTS if c in data), None)


def _hh_turns(text: str) -> list[dict[str, str]]:
    """Anthropic HH text ("\n\nHuman: ...\n\nAssistant: ...") as messages."""
    parts = _HH_TURN.split(text)
    if len(parts) < 3:
        raise _RowProblem("text has no \\n\\nHuman: / \\n\\nAssistant: turns")
    return [{"role": "user" if who == "Human" else "assistant", "content": content.strip()}
            for who, content in zip(parts[1::2], parts[2::2], strict=True)]


def _as_turns(value: Any, what: str) -> list[dict[str, str]]:
    """A prompt or an answer as messages: text, one turn, or a list of turns; a turn is {role, content}
    (OpenAI style) or {from, value} (ShareGPT style, as LLaMA-Factory's preference files write them)."""
    if isinstance(value, dict):
        value = [value]
    if isinstance(value, list):
        turns = []
        for i, turn in enumerate(value, start=1):
            if isinstance(turn, dict) and "role" in turn and "content" in turn:
                role, content = turn["role"], turn["content"]
            elif isinstance(turn, dict) and "from" in turn and "value" in turn:
                role, content = _SHAREGPT_ROLES.get(str(turn["from"]), turn["from"]), turn["value"]
            else:
                raise _RowProblem(f"{what}: turn {i} needs 'role' and 'content' (or 'from' and 'value')")
            if role not in ("system", "user", "assistant"):
                raise _RowProblem(f"{what}: turn {i} has unknown role {role!r}")
            turns.append({"role": str(role), "content": _text(content) or ""})
        return turns
    text = _text(value)
    if text is None:
        raise _RowProblem(f"{what} is empty", kind="empty")
    return [{"role": "user" if what == "prompt" else "assistant", "content": text}]


def _preference_messages(data: dict[str, Any], cfg: DataConfig) -> tuple[list[dict[str, str]], str]:
    """Prompt turns + the chosen assistant turn + the rejected answer (role `rejected`), and the fields."""
    chosen_col, rejected_col = _col(cfg, "chosen"), _col(cfg, "rejected")
    chosen_raw, rejected_raw = _require_column(data, chosen_col), _require_column(data, rejected_col)
    prompt_col = _preference_prompt(data, cfg)
    if prompt_col is None and isinstance(chosen_raw, str) and isinstance(rejected_raw, str):
        chosen, rejected = _hh_turns(chosen_raw), _hh_turns(rejected_raw)
    else:
        chosen, rejected = _as_turns(chosen_raw, "chosen"), _as_turns(rejected_raw, "rejected")
    prompt = _as_turns(data[prompt_col], "prompt") if prompt_col is not None else []
    # answers that repeat the prompt turns lose them; turns both answers share extend the prompt
    if prompt and chosen[:len(prompt)] == prompt and rejected[:len(prompt)] == prompt:
        chosen, rejected = chosen[len(prompt):], rejected[len(prompt):]
    shared = 0
    while shared < min(len(chosen), len(rejected)) - 1 and chosen[shared] == rejected[shared]:
        shared += 1
    prompt, chosen, rejected = prompt + chosen[:shared], chosen[shared:], rejected[shared:]
    if len(chosen) != 1 or len(rejected) != 1 or chosen[0]["role"] != "assistant" or rejected[0]["role"] != "assistant":
        raise _RowProblem("chosen and rejected must each end in one assistant answer after the shared prompt turns")
    if not any(m["role"] == "user" for m in prompt):
        raise _RowProblem("preference pair has no user prompt")
    if prompt[-1]["role"] != "user":
        raise _RowProblem("the prompt must end with a user turn")
    if normalise_text(chosen[0]["content"]) == normalise_text(rejected[0]["content"]):
        raise _RowProblem("chosen and rejected are the same answer: nothing to prefer", kind="empty")
    fields = "/".join(c for c in (prompt_col, chosen_col, rejected_col) if c)
    return [*prompt, chosen[0], {"role": REJECTED_ROLE, "content": rejected[0]["content"]}], fields


def normalise_text(text: str) -> str:
    return " ".join(text.lower().split())


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


def _pair(data: dict[str, Any], cfg: DataConfig) -> tuple[str, str] | None:
    """The (input, target) columns of a prompt/response-like row."""
    if cfg.columns.prompt or cfg.columns.response:
        pair = (_col(cfg, "prompt"), _col(cfg, "response"))
        return pair if pair[0] in data and pair[1] in data else None
    for name in ("question", "answer", "completion"):  # a renamed column of the classic pairs
        if getattr(cfg.columns, name):
            pair = (_col(cfg, "question"), _col(cfg, "answer")) if name != "completion" else (
                _col(cfg, "prompt"), _col(cfg, "completion"))
            return pair if pair[0] in data and pair[1] in data else None
    return next(((p, r) for p, r in PAIRS if p in data and r in data), None)


def _text_label(data: dict[str, Any], cfg: DataConfig) -> tuple[str, str] | None:
    if cfg.columns.text or cfg.columns.label:
        pair = (_col(cfg, "text"), _col(cfg, "label"))
        return pair if pair[0] in data and pair[1] in data else None
    # a column named like a label is one; `target` only when its value looks like a label
    label = next((c for c in LABEL_COLUMNS if c in data and (c != "target" or _label_like(data[c]))), None)
    text = next((c for c in TEXT_COLUMNS if c in data and isinstance(data[c], str)), None)
    return (text, label) if text and label else None


def _label_like(value: Any) -> bool:
    """A class label: an integer, or a short string (a summary or an answer is not a label)."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    return isinstance(value, str) and 0 < len(value.strip()) <= 40 and len(value.split()) <= 4


def detect_shape(data: dict[str, Any], cfg: DataConfig) -> str | None:
    keys = set(data)
    if _col(cfg, "chosen") in keys and _col(cfg, "rejected") in keys:
        return "preference"
    if _col(cfg, "messages") in keys:
        return "chat"
    if _col(cfg, "conversations") in keys:
        return "sharegpt"
    if _col(cfg, "instruction") in keys and _col(cfg, "output") in keys:
        return "alpaca"
    if _turn_column(data) is not None:
        return "turns"
    pair = _pair(data, cfg)
    if pair is not None and pair[1] not in LABEL_COLUMNS:
        return "prompt_response"
    if _text_label(data, cfg) is not None:
        return "text_label"
    if pair is not None:
        return "prompt_response"
    return None


def _turn_column(data: dict[str, Any]) -> str | None:
    return next((c for c in TURN_COLUMNS if isinstance(data.get(c), list) and data[c]
                 and all(isinstance(t, str) for t in data[c])), None)


def _alternating(turns: list[str]) -> list[dict[str, str]]:
    if len(turns) % 2:  # the last user turn has no answer to learn
        turns = turns[:-1]
    if not turns:
        raise _RowProblem("conversation has no answered user turn")
    return [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(turns)]


def _require(data: dict[str, Any], cfg: DataConfig, name: str) -> Any:
    return _require_column(data, _col(cfg, name))


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
            pair = _pair(row.data, cfg) or (_col(cfg, "prompt"), _col(cfg, "response"))
            prompt, response = (_text(_require_column(row.data, column)) for column in pair)
            messages = [{"role": "user", "content": prompt or ""}, {"role": "assistant", "content": response or ""}]
            fields = "/".join(pair)
        elif shape == "alpaca":
            instruction = _text(_require(row.data, cfg, "instruction")) or ""
            extra = _text(row.data.get(_col(cfg, "input"))) or ""
            prompt = f"{instruction}\n\n{extra}" if extra.strip() else instruction
            messages = [{"role": "user", "content": prompt},
                        {"role": "assistant", "content": _text(_require(row.data, cfg, "output")) or ""}]
            fields = "instruction/input/output"
        elif shape == "chat":
            messages = _chat_messages(_require(row.data, cfg, "messages"), "role", "content", None)
            fields = _col(cfg, "messages")
        elif shape == "turns":
            column = _turn_column(row.data)
            if column is None:
                raise _RowProblem(f"no list of turns in any of the fields {', '.join(TURN_COLUMNS)}")
            messages, fields = _alternating(list(row.data[column])), column
        elif shape == "preference":
            messages, fields = _preference_messages(row.data, cfg)
        elif shape == "sharegpt":
            messages = _chat_messages(_require(row.data, cfg, "conversations"), "from", "value", _SHAREGPT_ROLES)
            fields = _col(cfg, "conversations")
        else:
            columns = _text_label(row.data, cfg) or (_col(cfg, "text"), _col(cfg, "label"))
            text, label = (_require_column(row.data, c) for c in columns)
            return Example(row.where, shape, text=_text(text) or "", label=_label(label, cfg),
                           fields="/".join(columns))
    except _RowProblem as problem:
        return Rejection(row.where, str(problem), row.data, kind=problem.kind)
    return Example(row.where, shape, messages=messages, fields=fields)


def _require_column(data: dict[str, Any], column: str) -> Any:
    if column not in data:
        raise _RowProblem(f"missing field {column!r}")
    return data[column]


def _label(value: Any, cfg: DataConfig) -> str:
    """A label as text: integers (or integer strings) map through `data.label_names` when set."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise _RowProblem(f"label must be a string or an integer, got {type(value).__name__} {value!r}",
                          kind="bad_label")
    text = str(value).strip()
    if cfg.label_names is not None and text.lstrip("-").isdigit():
        index = int(text)
        if not 0 <= index < len(cfg.label_names):
            raise _RowProblem(f"integer label {index} has no name in data.label_names "
                              f"({len(cfg.label_names)} names)", kind="bad_label")
        return cfg.label_names[index]
    return text


def infer_text_label_columns(rows: list[RawRow]) -> tuple[str, str] | None:
    """For rows no known shape fits: a free-text column and a label-like column (few distinct short
    values, e.g. `spam` with 0/1), judged over the first rows. None when there is no clear pair."""
    sample = [r.data for r in rows[:500]]
    if not sample:
        return None
    columns = [c for c in sample[0] if all(c in d for d in sample)]

    def strings(c: str) -> list[str]:
        return [d[c] for d in sample if isinstance(d[c], str)]

    text = max((c for c in columns if len(strings(c)) >= 0.9 * len(sample)),
               key=lambda c: sum(map(len, strings(c))) / max(len(strings(c)), 1), default=None)
    if text is None or sum(map(len, strings(text))) / max(len(strings(text)), 1) < 15:
        return None
    candidates = []
    for c in columns:
        values = [d[c] for d in sample]
        distinct = {str(v).strip() for v in values}
        if c == text or not str(c).strip() or not all(_label_like(v) or _label_like(str(v)) for v in values):
            continue
        if 2 <= len(distinct) <= min(50, max(2, len(sample) // 5)):
            candidates.append((len(distinct), c))
    return (text, min(candidates)[1]) if candidates else None


def _kind(example: Example) -> str:
    return {"text_label": "classification", "preference": "preference"}.get(example.shape, "generative")


def to_examples(rows: list[RawRow], cfg: DataConfig) -> tuple[list[Example], list[Rejection]]:
    if cfg.format == "auto" and not any(cfg.columns.model_dump().values()):
        head = rows[:200]
        if sum(detect_shape(r.data, cfg) is None for r in head) > len(head) / 2:
            found = infer_text_label_columns(rows)
            if found is not None:
                cfg = cfg.model_copy(update={"format": "text_label", "columns": cfg.columns.model_copy(
                    update={"text": found[0], "label": found[1]})})
    examples, rejections = [], []
    for row in rows:
        result = to_example(row, cfg)
        (examples if isinstance(result, Example) else rejections).append(result)
    if cfg.empty_lists == "drop":
        for example in examples:
            _drop_empty_lists(example)
    if cfg.format == "auto":
        _refuse_feedback_labels(rows, examples)
    kinds = {_kind(e) for e in examples}
    if len(kinds) > 1:
        first = {k: next(e.where for e in examples if _kind(e) == k) for k in sorted(kinds)}
        names = {"classification": "text/label rows", "generative": "conversation rows",
                 "preference": "chosen/rejected pairs"}
        listing = " and ".join(f"{names[k]} (e.g. {where})" for k, where in first.items())
        raise DataError(f"mixed shapes: {listing} cannot be trained together")
    if not examples and rejections:
        reasons = sorted({r.reason for r in rejections})
        raise DataError(f"{rejections[0].where}: no row has a usable shape ({len(rejections)} rows rejected: "
                        f"{'; '.join(reasons[:3])}); {_shape_hint(rejections[0].data, cfg)}")
    return examples, rejections


def compact_entity_lists(text: str) -> str | None:
    """The target without its empty lists when it is a JSON object whose every value is a list (entity
    lists: `{"person": [], "geo-loc": ["Paris"]}` -> `{"geo-loc": ["Paris"]}`, `{}` when all are empty);
    None for any other target, or one with no empty list."""
    if not text.lstrip().startswith("{"):
        return None
    try:
        obj = json.loads(text)
    except ValueError:
        return None
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, list) for v in obj.values()):
        return None
    if all(obj.values()):
        return None
    return json.dumps({k: v for k, v in obj.items() if v}, ensure_ascii=False)


def _drop_empty_lists(example: Example) -> None:
    """`data.empty_lists: drop` on a conversation's final answer (preference pairs and labels untouched)."""
    if example.shape in ("text_label", "preference") or not example.messages:
        return
    last = example.messages[-1]
    compact = compact_entity_lists(last["content"]) if last["role"] == "assistant" else None
    if compact is not None:
        example.messages[-1] = {**last, "content": compact}


def _refuse_feedback_labels(rows: list[RawRow], examples: list[Example]) -> None:
    """Conversations with a true/false column beside them are feedback data (KTO's format: was this
    answer good?). Trained as plain chat they would teach the answers marked false too, so they are
    refused unless the user names the format."""
    generative = [e for e in examples[:200] if e.shape in SFT_SHAPES]
    if not generative:
        return
    used = {c for e in generative for c in e.fields.split("/")}
    by_where = {r.where: r.data for r in rows[:400]}
    sample = [by_where[e.where] for e in generative if e.where in by_where]
    for column in sample[0] if sample else {}:
        values = [d.get(column) for d in sample]
        if column not in used and all(isinstance(v, bool) for v in values) and len(set(values)) == 2:
            where = next(e.where for e in generative if by_where.get(e.where, {}).get(column) is False)
            raise DataError(f"{where}: field {column!r} marks each conversation true or false (feedback labels, "
                            f"as KTO files have); trained as chat, the answers marked false would be learned too. "
                            f"Keep only the rows marked true, or set data.format={generative[0].shape} to train on "
                            "every conversation as it is")


def _shape_hint(data: dict[str, Any], cfg: DataConfig) -> str:
    """What to set when no row fits: for pairs the preference columns; a header that reads like a
    record (long or numeric names) most likely is one, so the file needs a header line."""
    names = [str(k) for k in data]
    if _col(cfg, "chosen") in data or _col(cfg, "rejected") in data:
        return ("name the pair's columns with data.columns.prompt/chosen/rejected (turns as {role, content} or "
                "{from, value})")
    if names and any(len(n) > 40 or n.strip().lstrip("-").replace(".", "", 1).isdigit() for n in names):
        return ("the first line is read as the header and looks like a record: add a header line naming the "
                "columns (e.g. text,label), then data.columns.text/label if the names are not recognised")
    return "name your columns with data.columns.prompt/response or data.columns.text/label (and data.format)"
