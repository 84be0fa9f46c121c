"""The registry verbs: `llmft promote VERSION`, `llmft rollback`, `llmft export [VERSION]`."""

from __future__ import annotations

import argparse
from typing import Any

from llmft.cli.common import add_config_args, add_run_args


def register(verbs: Any) -> None:
    promote = verbs.add_parser("promote", allow_abbrev=False, help="make a registry version the champion",
                               description="Move @champion to VERSION of the config's registered model (under the "
                                           "promotion lock), recording who and why on the version.")
    promote.add_argument("version", metavar="VERSION", help="the registry version, e.g. 3")
    _who_and_why(promote)
    promote.set_defaults(handler=lambda args: _run("promote", args, version=args.version, reason=args.reason,
                                                   by=args.by))

    rollback = verbs.add_parser("rollback", allow_abbrev=False, help="move the champion back to the previous one",
                                description="Move @champion back to the version that held it before.")
    _who_and_why(rollback)
    rollback.set_defaults(handler=lambda args: _run("promote", args, rollback=True, reason=args.reason, by=args.by))

    export = verbs.add_parser("export", allow_abbrev=False, help="a version as GGUF files and an Ollama Modelfile",
                              description="Merged safetensors, GGUF (export.quants) and an Ollama Modelfile of a "
                                          "registry version, verified against the original (export.* keys).")
    export.add_argument("version", nargs="?", metavar="VERSION", help="the registry version (default: "
                                                                      "export.version, else the champion)")
    add_config_args(export, positional=False)
    add_run_args(export)
    export.set_defaults(handler=lambda args: _run("export", args, version=args.version))


def _who_and_why(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reason", default="", help="why (recorded on the version)")
    parser.add_argument("--by", help="who (default: the current user)")
    add_config_args(parser, positional=False)
    add_run_args(parser)


def _run(pipeline: str, args: argparse.Namespace, **request: Any) -> int:
    from llmft.cli.execute import RunRequest, execute  # start-up: llmft.resolve

    return execute(RunRequest(pipeline=pipeline, config=args.config, overrides=list(args.overrides),
                              summary=args.summary, quiet=args.quiet, verbose=args.verbose, stop_hint="llmft stop",
                              **request))
