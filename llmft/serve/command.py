"""The model server's command line (`python -m llmft.serve`, `python -m llmft.serve.app`): parse it, refuse bad
limits in one line before any model loads, load and smoke-test the model, then serve it with uvicorn.

The loader, smoke test and app come in as arguments (`serve/app.py: main` passes its own), so this module
imports nothing of the app.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from typing import Any

from llmft.extras import missing

try:  # the serve extra
    import uvicorn
except ModuleNotFoundError as exc:
    raise missing(exc, "serve", "the model server (llmft deploy, python -m llmft.serve.app)") from None

from llmft.config import ConfigError
from llmft.config_serving import ServerLimits
from llmft.serve.admin import LOAD_URI
from llmft.serve.admission import connection_limit
from llmft.serve.loading import Served

log = logging.getLogger("llmft.serve.app")

Loader = Callable[[str, bool, str], Served]  # (model URI, trust_remote_code, deploy.precision) -> the loaded model
Smoke = Callable[[Served, ServerLimits], str]  # a loaded model's answer to the smoke request
AppFactory = Callable[..., Any]  # create_app(served, limits, admin_token, registry_name, trust_remote_code)


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m llmft.serve", description="serve a registered model over HTTP")
    parser.add_argument("--model-uri", required=True)
    parser.add_argument("--registry-name", help="registered model whose versions /admin/load may load "
                                                "(default: the one in --model-uri)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5055)
    parser.add_argument("--admin-token-file", help="file holding the bearer token for /admin/load")
    parser.add_argument("--limits", default="{}", help="JSON of deploy.* limits (ServerLimits); defaults otherwise")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="let a model run code from its artifacts (model.trust_remote_code: true)")
    return parser


def serve(argv: list[str] | None, load: Loader, smoke: Smoke, make_app: AppFactory) -> None:
    """Parse the command line, load and smoke-test the model, and serve it until stopped."""
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:  # refused at start, in one line, rather than a batcher that waits forever
        limits = ServerLimits.checked(args.limits)
    except ConfigError as exc:
        raise SystemExit(f"llmft.serve.app: {exc}") from None
    registry_name = args.registry_name
    if registry_name is None and (found := LOAD_URI.match(args.model_uri)):
        registry_name = found["name"]
    token = None
    if args.admin_token_file:
        with open(args.admin_token_file, encoding="utf-8") as fh:
            token = fh.read().strip()
    served = load(args.model_uri, args.trust_remote_code, limits.precision)
    log.info("loaded %s (v%s, %s); smoke: %s", served.model_uri, served.version, served.task, smoke(served, limits))
    uvicorn.run(make_app(served, limits, token, registry_name, args.trust_remote_code), host=args.host,
                port=args.port, log_level="warning", backlog=2048, timeout_keep_alive=30,
                limit_concurrency=connection_limit(limits))
