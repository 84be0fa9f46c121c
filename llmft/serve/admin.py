"""/admin/load's guard (issue 24, item 8): what may be loaded, one load at a time, and no swap after
the caller's deadline.

Only a version or alias of the registered model the server was started for (`models:/NAME@alias` or
`models:/NAME/VERSION`) is loaded: anything else is 403, so the token cannot point it at a file path,
a run or another model.

Two loads at once would hold two candidate models in memory beside the served one, and the later
swap would win whatever the deploys meant; the second gets 409 at once. A deploy waits
`deploy.startup_timeout_s` for its hot swap and then reports failure (its `server.json` keeps the old
version): the server must not swap after that, so the request carries `deadline_s` and a candidate
that loaded and answered too late is dropped, not swapped in.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from llmft.serve.bodies import RequestError

MAX_DEADLINE_S = 86_400.0
# what /admin/load accepts: a registered model by alias or version number, nothing else
LOAD_URI = re.compile(r"^models:/(?P<name>[A-Za-z0-9][\w.\-]*)"
                      r"(?:@(?P<alias>[A-Za-z0-9][\w\-]*)|/(?P<version>[1-9]\d*))$")


def check_load_uri(uri: Any, registry_name: str | None) -> str:
    """The URI /admin/load may load: a version or alias of the configured registered model."""
    if not isinstance(uri, str) or not uri:
        raise RequestError("send {'model_uri': 'models:/NAME/VERSION'}", param="model_uri")
    match = LOAD_URI.match(uri)
    if registry_name is None:
        raise RequestError("this server was started without --registry-name; it loads no other model",
                           status=403, param="model_uri")
    if match is None or match["name"] != registry_name:
        raise RequestError(f"only models:/{registry_name}@<alias> or models:/{registry_name}/<version> can be "
                           f"loaded here, not {uri[:200]!r}", status=403, param="model_uri")
    return uri


def load_deadline_s(body: Any) -> float | None:
    """The `deadline_s` of an /admin/load body: seconds the caller waits for the swap (None: no limit)."""
    value = body.get("deadline_s") if isinstance(body, dict) else None
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not 0 < value <= MAX_DEADLINE_S:
        raise RequestError(f"'deadline_s' must be a number of seconds in (0, {MAX_DEADLINE_S:g}]",
                           param="deadline_s")
    return float(value)


def client_deadline_s(timeout_s: float) -> float:
    """The deadline a client that waits `timeout_s` sends: a margin earlier, so the server's answer
    (swapped or not) arrives while the client still listens."""
    return max(1.0, timeout_s - min(10.0, timeout_s / 4))


class LoadGuard:
    """At most one /admin/load at a time; `clock` is time.monotonic (replaceable in tests)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.loading: str | None = None
        self._lock = threading.Lock()

    def begin(self, uri: str) -> bool:
        """Take the right to load `uri`; False when another load holds it."""
        if not self._lock.acquire(blocking=False):
            return False
        self.loading = uri
        return True

    def end(self) -> None:
        self.loading = None
        self._lock.release()

    def run(self, fn: Callable[[], Any]) -> Future:
        """Run fn in its own thread after `begin`, holding the guard until fn returns, even if the
        request that asked for it is gone: the guard is free again before its result is seen."""
        future: Future = Future()

        def work() -> None:
            try:
                result = fn()
            except BaseException as exc:
                self.end()
                future.set_exception(exc)
            else:
                self.end()
                future.set_result(result)

        try:
            threading.Thread(target=work, name="admin-load", daemon=True).start()
        except BaseException:
            self.end()
            raise
        return future

    def deadline(self, within_s: float | None) -> float | None:
        return None if within_s is None else self.clock() + within_s

    def expired(self, deadline: float | None) -> bool:
        return deadline is not None and self.clock() > deadline
