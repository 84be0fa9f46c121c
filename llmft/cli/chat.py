"""`llmft chat [MODEL_URI]`: a conversation with a model on the command line, in the served chat format.

Each line read from stdin is a user turn; the model's answer is printed as `assistant> ...` and kept,
so the next turn sees the whole conversation. Requests go through the model server's own parsing and
prompt rendering (`llmft.serve.parsing.parse_chat`: the trained instruction, the chat template, the
deploy.* limits) and its generation function, so an answer here is the answer the server would give.
Works with stdin piped (one turn per line) as well as at a terminal. `/reset` clears the
conversation, `/exit` (or end of input) ends it. A classifier answers each line with its label.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from typing import Any

from llmft.cli.common import add_config_args, fail, load_run_config, setup_console
from llmft.config import ConfigError, ModelConfig
from llmft.errors import UserFacingError

PROMPT, ANSWER = "you> ", "assistant> "


def register(verbs: Any) -> None:
    chat = verbs.add_parser("chat", allow_abbrev=False, help="talk to a model in the served chat format",
                            description=__doc__.split("\n\n", 1)[1] if __doc__ else None)
    chat.add_argument("model_uri", nargs="?", metavar="MODEL_URI",
                      help="models:/NAME@ALIAS, models:/NAME/VERSION, a local model folder, a hub id or the "
                           "embedded base (default: the config's registered model @champion)")
    add_config_args(chat, positional=False)
    chat.add_argument("--system", help="a system message for the conversation (in place of the instruction the "
                                       "model was trained with)")
    chat.add_argument("--max-tokens", type=int, metavar="N", help="answer length (default: deploy.default_max_tokens)")
    chat.add_argument("--temperature", type=float, default=0.0, help="0 (default): greedy")
    chat.add_argument("--usage", action="store_true", help="token counts of each turn, on stderr")
    chat.set_defaults(handler=run_chat)


def run_chat(args: argparse.Namespace) -> int:
    setup_console()
    try:
        cfg = load_run_config(args.config, list(args.overrides))
        served = load_for_chat(args.model_uri or champion_uri(cfg), cfg.model.trust_remote_code)
    except (ConfigError, UserFacingError) as exc:
        return fail(str(exc))
    if sys.stdin.isatty():
        version = f" (v{served.version})" if served.version else ""
        print(f"chatting with {served.model_uri}{version}; /reset clears the conversation, /exit or Ctrl-D ends it",
              file=sys.stderr)
    converse(served, cfg.deploy.server_limits(), args, _lines())
    return 0


def champion_uri(cfg: Any) -> str:
    """models:/<the config's registered model>@champion (the name derived from the data when not set)."""
    name = cfg.registry.model_name
    if name is None:
        from llmft.resolve import resolve_run  # start-up: llmft.resolve

        name = resolve_run(cfg).cfg.registry.model_name
    return f"models:/{name}@champion"


def load_for_chat(uri: str, trust_remote_code: bool) -> Any:
    """A registered version as the server loads it (with its trained instruction), or a model folder,
    hub id or the embedded base as it is."""
    from llmft.serve.loading import Served, load_served  # start-up: mlflow

    if uri.startswith("models:/"):
        try:
            return load_served(uri, trust_remote_code)
        except UserFacingError:
            raise
        except Exception as exc:  # an unknown alias or version, an unreachable store: one line
            raise UserFacingError(f"{uri}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    from llmft.base_model import load_model, load_tokenizer, resolve_base_model  # start-up: llmft.base_model

    path = resolve_base_model(ModelConfig(base=uri, trust_remote_code=trust_remote_code))
    model, tokenizer = load_model(path).eval(), load_tokenizer(path)
    model.config.use_cache = True
    return Served(uri, None, False, model, tokenizer)


def _lines() -> Iterator[str]:
    """User turns: with a prompt (and line editing) at a terminal, else one per line of stdin."""
    if sys.stdin.isatty():
        while True:
            try:
                yield input(PROMPT)
            except EOFError:
                print(file=sys.stderr)
                return
    yield from sys.stdin


def converse(served: Any, limits: Any, args: argparse.Namespace, lines: Iterator[str]) -> None:
    """The conversation: each line a user turn, each answer printed and kept for the next turn."""
    from llmft.generation import complete_batch  # start-up: llmft.generation
    from llmft.serve.bodies import RequestError  # start-up: jinja2
    from llmft.serve.inference import classify  # start-up: torch
    from llmft.serve.parsing import parse_chat, parse_texts  # start-up: torch

    system = [{"role": "system", "content": args.system}] if args.system else []
    history: list[dict[str, str]] = []
    for line in lines:
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            break
        if text == "/reset":
            history.clear()
            print("(conversation cleared)", file=sys.stderr)
            continue
        try:
            if served.classifier:
                found = classify(served, parse_texts({"inputs": [text]}, served, limits)).predictions[0]
                print(f"{ANSWER}{found.label} ({found.score:.2f})", flush=True)
                continue
            body: dict[str, Any] = {"messages": [*system, *history, {"role": "user", "content": text}],
                                    "temperature": args.temperature}
            if args.max_tokens is not None:
                body["max_tokens"] = args.max_tokens
            request = parse_chat(body, served, limits)
        except RequestError as exc:
            print(f"error: {exc} (/reset clears the conversation)", file=sys.stderr)
            continue
        done = complete_batch(served.model, served.tokenizer, [request.prompt], [request.max_tokens],
                              request.sampling)[0]
        history += [{"role": "user", "content": text}, {"role": "assistant", "content": done.text}]
        print(f"{ANSWER}{done.text}", flush=True)
        if args.usage:
            print(f"[{done.prompt_tokens} prompt tokens, {done.completion_tokens} answer tokens, "
                  f"{done.finish_reason}]", file=sys.stderr, flush=True)
