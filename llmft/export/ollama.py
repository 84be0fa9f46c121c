"""The Ollama `Modelfile`: which GGUF to load, the chat template in Go template form, stop tokens
and the system prompt the model was trained with.

Ollama does not run Jinja, so the model's Hugging Face template is translated. Only ChatML (what
SmolLM2 uses) is translated, and only after checking that the Jinja template really renders ChatML;
its default system message (the one the template adds when a conversation has none) and a constant
prefix (prompt tuning bakes its virtual tokens in as one) are carried over, so Ollama prompts exactly
as transformers does.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

_PROBE = [{"role": "user", "content": "PROBE-USER"}, {"role": "assistant", "content": "PROBE-ASSISTANT"},
          {"role": "user", "content": "PROBE-AGAIN"}]


@dataclass
class ChatTemplate:
    kind: str  # "chatml" or "unknown"
    default_system: str | None  # what the template inserts when a conversation has no system turn
    stops: list[str]
    prefix: str = ""  # rendered before everything (prompt tuning's virtual tokens)


def _chatml(messages: list[dict[str, str]]) -> str:
    return "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages) + "<|im_start|>assistant\n"


def inspect_template(tokenizer: Any) -> ChatTemplate:
    """Render probe conversations with the model's own template and see whether it is ChatML."""
    if not tokenizer.chat_template:
        return ChatTemplate("unknown", None, [])
    with_system = [{"role": "system", "content": "PROBE-SYSTEM"}, *_PROBE]
    rendered = tokenizer.apply_chat_template(with_system, tokenize=False, add_generation_prompt=True)
    if not rendered.endswith(_chatml(with_system)):
        return ChatTemplate("unknown", None, [])
    prefix = rendered[: len(rendered) - len(_chatml(with_system))]
    bare = tokenizer.apply_chat_template(_PROBE, tokenize=False, add_generation_prompt=True)
    tail = _chatml(_PROBE)
    if not (bare.startswith(prefix) and bare.endswith(tail)) or len(bare) < len(prefix) + len(tail):
        return ChatTemplate("unknown", None, [])
    head = bare[len(prefix): len(bare) - len(tail)]
    default_system = None
    if head:
        opening, closing = "<|im_start|>system\n", "<|im_end|>\n"
        if not (head.startswith(opening) and head.endswith(closing)):
            return ChatTemplate("unknown", None, [])
        default_system = head[len(opening): -len(closing)]
    vocab = tokenizer.get_vocab()
    stops = [t for t in ("<|im_end|>", "<|im_start|>", tokenizer.eos_token, "<|endoftext|>") if t and t in vocab]
    return ChatTemplate("chatml", default_system, list(dict.fromkeys(stops)), prefix)


def go_template(default_system: str | None, prefix: str = "") -> str:
    """ChatML as an Ollama Go template over `.Messages`. Ollama puts the Modelfile's SYSTEM (or the
    request's own system message) in `.System`; system turns are skipped in the loop because they are
    already rendered once at the top, as the Jinja template does."""
    fallback = (f"{{{{ else }}}}<|im_start|>system\n{default_system}<|im_end|>\n" if default_system else "")
    return (prefix + "{{- if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n"
            f"{fallback}{{{{ end }}}}\n"
            "{{- range .Messages }}{{ if ne .Role \"system\" }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n"
            "{{ end }}{{ end }}<|im_start|>assistant\n")


def _quote(text: str) -> str:
    if '"""' in text:
        raise ValueError('the system prompt contains """, which a Modelfile cannot quote')
    return f'"""{text}"""'


def modelfile(gguf_name: str, tokenizer: Any, system_prompt: str | None = None,
              header: str | None = None) -> tuple[str, ChatTemplate]:
    """The Modelfile text (FROM the GGUF next to it) and what was learned about the template."""
    template = inspect_template(tokenizer)
    lines = [f"# {header}"] if header else []
    lines.append(f"FROM ./{gguf_name}")
    if template.kind == "chatml":
        lines.append(f"TEMPLATE {_quote(go_template(template.default_system, template.prefix))}")
        lines += [f'PARAMETER stop "{stop}"' for stop in template.stops]
    else:
        # Ollama then falls back to the Jinja template inside the GGUF, which it may or may not know
        log.warning("chat template is not ChatML: the Modelfile has no TEMPLATE; Ollama will guess from the GGUF")
        lines.append("# chat template is not ChatML: no TEMPLATE written, Ollama reads the GGUF's own")
    if system_prompt:
        lines.append(f"SYSTEM {_quote(system_prompt)}")
    return "\n".join(lines) + "\n", template
