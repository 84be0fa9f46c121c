"""`python run.py --pipeline finetune|data|deploy|promote|export|sweep [flags]`: the original front door,
kept as it was (one flat set of flags); it runs through the same `execute` as the `llmft` verbs."""

from __future__ import annotations

import argparse

from llmft.cli.execute import RunRequest, execute

PIPELINES = ("finetune", "data", "deploy", "promote", "export", "sweep")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="LLM fine-tuning pipelines on ZenML + MLflow")
    parser.add_argument("--pipeline", choices=PIPELINES, default="finetune")
    parser.add_argument("--config", default="configs/finetune.yaml", help="YAML config (default: %(default)s)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set train.max_steps=10 (repeatable)")
    parser.add_argument("--summary", help="write a JSON run summary to this path")
    parser.add_argument("--no-resume", action="store_true",
                        help="train from scratch even if a killed run with the same settings left a checkpoint")
    parser.add_argument("--stop", action="store_true", help="with --pipeline deploy: stop the server")
    parser.add_argument("--version", help="with --pipeline promote: the registry version to make champion; with "
                                          "export: the version to export (default: the champion)")
    parser.add_argument("--rollback", action="store_true",
                        help="with --pipeline promote: move champion back to the previous champion")
    parser.add_argument("--reason", default="", help="with --pipeline promote: why (recorded on the version)")
    parser.add_argument("--by", help="with --pipeline promote: who (default: the current user)")
    parser.add_argument("--status", action="store_true", help="with --pipeline deploy: is the server up, what it "
                                                              "serves")
    parser.add_argument("--schedule", metavar="CRON",
                        help="with --pipeline finetune: retrain at each cron tick (e.g. '0 3 * * *'); on the local "
                             "orchestrator run.py stays in the foreground and runs each tick itself")
    parser.add_argument("--max-ticks", type=int, help="with --schedule (foreground): stop after this many ticks")
    parser.add_argument("--tick", action="store_true",
                        help="with --pipeline finetune: one scheduled tick now (lock, skip if no new data), for "
                             "cron or a systemd timer")
    parser.add_argument("--ui", action="store_true", help="open the MLflow UI on the project's store")
    parser.add_argument("--ui-port", type=int, default=5000, help="port for --ui (default: %(default)s)")
    noise = parser.add_mutually_exclusive_group()
    noise.add_argument("--quiet", action="store_true", help="only the task line, errors and the closing table")
    noise.add_argument("--verbose", action="store_true", help="everything the libraries log, warnings included")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return execute(RunRequest(**vars(args)))
