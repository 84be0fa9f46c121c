"""The `llmft` command: one verb per pipeline or tool, each with only its own flags.

    llmft finetune [CONFIG] [--set k=v ...] [--print-config | --dry-run | --schedule CRON | --tick]
    llmft data | sweep [CONFIG]              llmft deploy | stop | status       llmft ui
    llmft promote VERSION | rollback         llmft export [VERSION]
    llmft chat [MODEL_URI]                   llmft preview [CONFIG]

A verb module registers its subparser and handler (`train`, `server`, `registry`, `chat`, `preview`);
pipelines run through `execute.execute`, as `python run.py --pipeline ...` (`legacy`) does.
"""

from __future__ import annotations

import argparse

from llmft.cli import chat, preview, registry, server, train


def build_parser() -> argparse.ArgumentParser:
    return _parsers()[0]


def _parsers() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    parser = argparse.ArgumentParser(
        prog="llmft", allow_abbrev=False,
        description="LLM fine-tuning on ZenML + MLflow: data gate, fine-tune, evaluate, register, promote, serve.",
        epilog="`llmft VERB --help` lists a verb's flags. A CONFIG is a YAML file or the name of a shipped config "
               "(finetune, classify, gpu). State lives in ./.llmft (or $LLMFT_HOME): run from the same folder to "
               "see the same runs and models.")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for module in (train, server, registry, chat, preview):
        module.register(verbs)
    return parser, verbs.choices


def _elsewhere(extra: list[str], verbs: dict[str, argparse.ArgumentParser]) -> str:
    """Where the flags a verb refused belong: `--stop` is the verb `llmft stop`, `--no-resume` a flag of
    finetune and sweep."""
    hints = []
    for flag in (a.split("=", 1)[0] for a in extra if a.startswith("--")):
        owners = [name for name, sub in verbs.items() if flag in sub._option_string_actions]
        if flag[2:] in verbs:
            hints.append(f"{flag}: did you mean `llmft {flag[2:]}`?")
        elif owners:
            hints.append(f"{flag} is a flag of: {', '.join(owners)}")
    return f" ({'; '.join(hints)})" if hints else ""


def main(argv: list[str] | None = None) -> int:
    """Exit code: 0 done, 1 failed (a pipeline, a data gate, an unhealthy server), 2 bad command line or config."""
    parser, verbs = _parsers()
    args, extra = parser.parse_known_args(argv)
    if extra:  # refused by the verb's own parser, which shows that verb's usage
        verbs[args.verb].error(f"unrecognized arguments: {' '.join(extra)}{_elsewhere(extra, verbs)}")
    return int(args.handler(args))
