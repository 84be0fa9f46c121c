"""The verbs that train or prepare data: `llmft finetune`, `llmft data`, `llmft sweep`."""

from __future__ import annotations

import argparse
from typing import Any

import yaml

from llmft.cli.common import add_config_args, add_run_args, fail, load_run_config, overrides_of
from llmft.config import ConfigError
from llmft.config_files import resolve_config_path
from llmft.credentials import mask


def register(verbs: Any) -> None:
    finetune = verbs.add_parser(
        "finetune", allow_abbrev=False, help="fine-tune, evaluate, gate and register a model (the default run)",
        description="Data gate -> split -> fine-tune -> evaluate (base, few-shot, champion, forgetting probe) -> "
                    "register -> promotion gate, as one ZenML pipeline tracked in MLflow.")
    _common(finetune, resume=True)
    modes = finetune.add_mutually_exclusive_group()
    modes.add_argument("--dry-run", action="store_true",
                       help="validate the config and the data (the data gate, the split) and print the training "
                            "plan; trains, registers and tracks nothing")
    modes.add_argument("--schedule", metavar="CRON",
                       help="retrain at each cron tick (e.g. '0 3 * * *'); on the local orchestrator the command "
                            "stays in the foreground and runs each tick itself")
    modes.add_argument("--tick", action="store_true",
                       help="one scheduled tick now (lock, skip if no new data), for cron or a systemd timer")
    finetune.add_argument("--max-ticks", type=int, metavar="N", help="with --schedule (foreground): stop after N "
                                                                      "ticks")
    finetune.set_defaults(handler=run_finetune)

    data = verbs.add_parser("data", allow_abbrev=False, help="the data stages only: gate, split, export",
                            description="Ingest -> data gate and tokenize -> split -> export the dataset (files "
                                        "and MLflow lineage); no training.")
    _common(data, resume=False)
    data.set_defaults(handler=lambda args: _pipeline("data", args))

    sweep = verbs.add_parser("sweep", allow_abbrev=False, help="an Optuna search over train.* keys, then fine-tune "
                                                               "the best trial",
                             description="Optuna trials scored on the validation split (sweep.* keys), then the "
                                         "finetune pipeline with the best trial's settings.")
    _common(sweep, resume=True)
    sweep.set_defaults(handler=lambda args: _pipeline("sweep", args))


def _common(parser: argparse.ArgumentParser, resume: bool) -> None:
    add_config_args(parser)
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved, validated config as YAML and exit")
    if resume:
        parser.add_argument("--no-resume", action="store_true",
                            help="train from scratch even if a killed run with the same settings left a checkpoint")
    add_run_args(parser)


def print_config(args: argparse.Namespace) -> int:
    """The config a run would use (file or shipped config, then --set), validated, as YAML."""
    try:
        cfg = load_run_config(args.config, overrides_of(args))
        source = resolve_config_path(args.config)
    except ConfigError as exc:
        return fail(str(exc))
    sets = "".join(f" --set {o}" for o in overrides_of(args))
    print(f"# {source}{sets}")
    print(mask(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False, allow_unicode=True)), end="")
    return 0


def run_finetune(args: argparse.Namespace) -> int:
    if args.print_config:
        return print_config(args)
    if args.max_ticks is not None and not args.schedule:
        return fail("--max-ticks goes with --schedule")
    if args.dry_run:
        from llmft.cli.plan import dry_run  # start-up: llmft.resolve

        return dry_run(args)
    return _pipeline("finetune", args, schedule=args.schedule, max_ticks=args.max_ticks, tick=args.tick)


def _pipeline(name: str, args: argparse.Namespace, **extra: Any) -> int:
    if args.print_config:
        return print_config(args)
    from llmft.cli.execute import RunRequest, execute  # start-up: llmft.resolve

    return execute(RunRequest(pipeline=name, config=args.config, overrides=list(args.overrides),
                              summary=args.summary, no_resume=getattr(args, "no_resume", False), quiet=args.quiet,
                              verbose=args.verbose, stop_hint="llmft stop", **extra))
