"""What `llmft status`, `llmft stop` and `llmft ui` do (and run.py's --status, --stop, --ui): act on this
project folder's model server or tracking store; no pipeline runs. `cli/server.py` registers the verbs,
`cli/execute.py` calls these for the run.py flags."""

from __future__ import annotations

import json
import os
import sys


def show_status(summary_path: str | None) -> int:
    from llmft import report  # start-up: pandas
    from llmft.serve import deploy as serving  # start-up: llmft.serve.deploy

    state = serving.status()
    print(json.dumps(state, indent=2))
    report.write_summary({"pipeline": "deploy", **state}, summary_path)
    return 0 if state.get("healthy") else 1


def stop_server(summary_path: str | None) -> int:
    from llmft import report  # start-up: pandas
    from llmft.serve import deploy as serving  # start-up: llmft.serve.deploy

    stopped = serving.stop()
    print(f"stopped server pid {stopped.pid} ({stopped.endpoint})" if stopped else "no server running")
    report.write_summary({"pipeline": "deploy", "stopped": bool(stopped)}, summary_path)
    return 0


def open_ui(port: int) -> int:
    """`mlflow ui` on the project's store, in place of this process; a server's address is printed."""
    from llmft import locations  # start-up: llmft.locations

    uri = locations.tracking_uri()
    print(locations.ui_command(uri, port), flush=True)
    ui = locations.ui_args(uri, port)
    if ui:
        os.execvp(sys.executable, [sys.executable, "-m", *ui])
    return 0
