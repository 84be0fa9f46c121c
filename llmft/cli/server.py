"""The serving verbs: `llmft deploy`, `llmft stop`, `llmft status`, and `llmft ui` (the MLflow UI); what the
last three do is in `cli/server_actions.py`."""

from __future__ import annotations

import argparse
from typing import Any

from llmft.cli.common import add_config_args, add_run_args, setup_console
from llmft.cli.server_actions import open_ui, show_status, stop_server


def register(verbs: Any) -> None:
    deploy = verbs.add_parser("deploy", allow_abbrev=False, help="serve the champion (OpenAI-style HTTP server)",
                              description="Start (or hot-swap) the model server on the registered model's "
                                          "@champion, after a smoke request; deploy.* keys set host, port, limits.")
    add_config_args(deploy, positional=False)
    add_run_args(deploy)
    deploy.set_defaults(handler=_deploy)

    stop = verbs.add_parser("stop", allow_abbrev=False, help="stop the model server",
                            description="Stop the server `llmft deploy` started (this project folder's).")
    stop.add_argument("--summary", metavar="PATH", help="write a JSON summary to this path")
    stop.set_defaults(handler=lambda args: _local(stop_server, args.summary))

    status = verbs.add_parser("status", allow_abbrev=False, help="is the model server up, and what it serves",
                              description="The server's state as JSON; exit code 1 when it is not healthy.")
    status.add_argument("--summary", metavar="PATH", help="write a JSON summary to this path")
    status.set_defaults(handler=lambda args: _local(show_status, args.summary))

    ui = verbs.add_parser("ui", allow_abbrev=False, help="open the MLflow UI on the project's store",
                          description="Run `mlflow ui` on this project's tracking store (runs, registered "
                                      "models and their aliases); with a tracking server, print its address.")
    ui.add_argument("--port", type=int, default=5000, help="port (default: %(default)s)")
    ui.set_defaults(handler=lambda args: open_ui(args.port))


def _deploy(args: argparse.Namespace) -> int:
    from llmft.cli.execute import RunRequest, execute  # start-up: llmft.resolve

    return execute(RunRequest(pipeline="deploy", config=args.config, overrides=list(args.overrides),
                              summary=args.summary, quiet=args.quiet, verbose=args.verbose, stop_hint="llmft stop"))


def _local(action: Any, summary: str | None) -> int:
    setup_console()
    return action(summary)
