"""What every verb shares: the config arguments and how a config is found, console set-up, errors."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from llmft.config import Config
from llmft.config_files import load_config, resolve_config_path, shipped_dir
from llmft.credentials import mask
from llmft.errors import hide_user_error_tracebacks

STARTED = time.perf_counter()  # wall_seconds in a summary covers imports and stack setup too
DEFAULT_CONFIG = "configs/finetune.yaml"  # a file of that path here, else the shipped finetune config
CONFIG_HELP = ("a YAML file, or the name of a shipped config (finetune, classify, gpu); default: "
               "configs/finetune.yaml when this folder has one, else the shipped finetune config")


def fail(message: str, code: int = 2) -> int:
    """Print `error: ...` (credentials masked) on stderr; returns the exit code."""
    print(f"error: {mask(message)}", file=sys.stderr)
    return code


def setup_console(quiet: bool = False, verbose: bool = False) -> None:
    """Environment and logging before zenml, transformers or mlflow are imported."""
    from llmft.stack import configure_environment  # start-up: llmft.stack

    configure_environment()
    from llmft import console  # start-up: llmft.console

    console.configure(console.QUIET if quiet else console.VERBOSE if verbose else console.NORMAL)
    hide_user_error_tracebacks()


def shipped_data_dir() -> Path | None:
    """The demo data the shipped configs name (`data/products.jsonl`): package data `llmft.demo_data`, or
    the checkout's data/ folder beside the package."""
    return shipped_dir("demo_data", "data", "products.jsonl")


def with_shipped_data(cfg: Config) -> Config:
    """`data.source: data/<file>` that is not in the current folder but is one of the shipped demo files:
    the shipped copy (so the default config runs from any folder). Anything else is left as it is."""
    path = Path(cfg.data.source)
    if path.is_absolute() or path.exists() or len(path.parts) < 2 or path.parts[0] != "data":
        return cfg
    folder = shipped_data_dir()
    shipped = folder.joinpath(*path.parts[1:]) if folder is not None else None
    if shipped is None or not shipped.is_file():
        return cfg
    return cfg.model_copy(update={"data": cfg.data.model_copy(update={"source": str(shipped)})})


def load_run_config(name: str, overrides: list[str]) -> Config:
    """The validated config a command line names: the file (or shipped config), then the overrides."""
    return with_shipped_data(load_config(resolve_config_path(name), overrides))


def overrides_of(args: argparse.Namespace) -> list[str]:
    return list(args.overrides) + (["train.resume=false"] if getattr(args, "no_resume", False) else [])


def add_config_args(parser: argparse.ArgumentParser, positional: bool = True) -> None:
    """CONFIG (positional, or --config for verbs with a positional of their own) and --set."""
    if positional:
        parser.add_argument("config", nargs="?", default=DEFAULT_CONFIG, metavar="CONFIG", help=CONFIG_HELP)
    else:
        parser.add_argument("--config", default=DEFAULT_CONFIG, metavar="CONFIG", help=CONFIG_HELP)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set train.max_steps=10 (repeatable)")


def add_run_args(parser: argparse.ArgumentParser) -> None:
    """--summary and the console level, for verbs that run a pipeline."""
    parser.add_argument("--summary", metavar="PATH", help="write a JSON run summary to this path")
    noise = parser.add_mutually_exclusive_group()
    noise.add_argument("--quiet", action="store_true", help="only the task line, errors and the closing table")
    noise.add_argument("--verbose", action="store_true", help="everything the libraries log, warnings included")
