"""Serve a registered model with MLflow's scoring server as a managed background process.

State (pid, port, model URI, log) lives in `<project home>/serve/`. A server is reported up only
after its /ping answers and a smoke chat request returns an OpenAI-style completion.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmft.errors import UserFacingError
from llmft.locations import project_home


class ServingError(UserFacingError, RuntimeError):
    """The server could not be started or did not answer correctly."""


@dataclass
class Deployment:
    pid: int
    host: str
    port: int
    model_uri: str
    log_file: str

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}/invocations"


def _state_dir() -> Path:
    path = project_home() / "serve"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def current() -> Deployment | None:
    state = _state_dir() / "server.json"
    if not state.is_file():
        return None
    dep = Deployment(**json.loads(state.read_text()))
    return dep if _pid_alive(dep.pid) else None


def post_json(url: str, payload: Any, timeout: float = 120.0) -> tuple[int, Any]:
    req = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        body = exc.read()
        try:
            return exc.code, json.loads(body)
        except json.JSONDecodeError:
            return exc.code, body.decode(errors="replace")


def _wait_healthy(dep: Deployment, proc: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServingError(f"server exited with code {proc.returncode}; see {dep.log_file}")
        try:
            with urllib.request.urlopen(f"http://{dep.host}:{dep.port}/ping", timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    raise ServingError(f"server not healthy after {timeout_s:.0f}s; see {dep.log_file}")


def smoke_request(dep: Deployment, messages: list[dict[str, str]], max_tokens: int) -> str:
    # no temperature: the saved generation config is greedy, and MLflow rejects temperature=0
    status, body = post_json(dep.endpoint, {"messages": messages, "max_tokens": max_tokens})
    if status != 200:
        raise ServingError(f"smoke request got HTTP {status}: {str(body)[:200]}")
    completion = body[0] if isinstance(body, list) else body
    try:
        return completion["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise ServingError(f"smoke request got an unexpected response: {str(body)[:200]}") from None


def smoke_classify(dep: Deployment, text: str) -> str:
    """A classifier's answer to one text, as `label (score)`."""
    status, body = post_json(dep.endpoint, {"inputs": [text]})
    if status != 200:
        raise ServingError(f"smoke request got HTTP {status}: {str(body)[:200]}")
    try:
        first = body["predictions"][0]
        return f"{first['label']} ({float(first['score']):.3f})"
    except (KeyError, IndexError, TypeError, ValueError):
        raise ServingError(f"smoke request got an unexpected response: {str(body)[:200]}") from None


def start(model_uri: str, host: str, port: int, timeout_s: float, tracking_uri: str) -> Deployment:
    stop()  # one managed server per project folder
    log_file = _state_dir() / "server.log"
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri}
    with log_file.open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri, "--env-manager", "local",
             "-h", host, "-p", str(port), "-w", "1"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            start_new_session=True)  # own process group: outlives run.py, stopped as a group
    dep = Deployment(pid=proc.pid, host=host, port=port, model_uri=model_uri, log_file=str(log_file))
    try:
        _wait_healthy(dep, proc, timeout_s)
    except ServingError:
        _kill_group(proc.pid)
        raise
    (_state_dir() / "server.json").write_text(json.dumps(dep.__dict__))
    return dep


def _kill_group(pid: int, grace_s: float = 10.0) -> None:
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and _pid_alive(pid):
        try:
            os.waitpid(pid, os.WNOHANG)  # reap if it is our child
        except ChildProcessError:
            pass
        time.sleep(0.2)
    if _pid_alive(pid):
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def stop() -> Deployment | None:
    """Stop the managed server, if any; returns what was stopped."""
    state = _state_dir() / "server.json"
    dep = current()
    if dep is not None:
        _kill_group(dep.pid)
    state.unlink(missing_ok=True)
    return dep
