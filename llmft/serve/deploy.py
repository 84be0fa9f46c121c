"""Run the model server (llmft.serve.app) as a managed background process.

State lives in `<project home>/serve/`: `server.json` (the pid file: pid, the process's start time,
host, port, model URI and version), `server.log`, and `admin.token` (mode 0600; the bearer token for
hot swaps, never logged). A pid is only acted on when the process with that pid started when ours
did: after a reboot or a crash the pid may belong to someone else's process, which is never stopped.

`deploy` keeps one server per project folder:
- none running: start one, wait for /health, send a smoke request; only then report it up;
- one running on the same host and port: ask it to load the new champion next to the old one; it
  swaps only after the new one loaded and answered a smoke request, so a bad model never takes
  traffic and the old one keeps serving;
- one running elsewhere (port changed): start the new one first, smoke-test it, then stop the old one;
  if the new one fails, it is stopped and the old one keeps serving.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from llmft.config import DeployConfig
from llmft.config_serving import ServerLimits
from llmft.contracts import Deployment
from llmft.errors import UserFacingError
from llmft.locations import project_home, tracking_uri, write_atomic
from llmft.registry.versions import CHAMPION, current_alias_version, version_tags
from llmft.serve.admin import client_deadline_s
from llmft.tasks import get_task

log = logging.getLogger(__name__)


class ServingError(UserFacingError, RuntimeError):
    """The server could not be started, or a model did not answer correctly."""


@dataclass
class ServerProcess:
    pid: int
    host: str
    port: int
    model_uri: str
    log_file: str
    version: str | None = None
    started_at: float = 0.0
    process_started: float = 0.0  # the OS's start time of `pid`: tells our server from a reused pid

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}/invocations"

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"


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


def process_start_time(pid: int) -> float | None:
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None


def is_ours(dep: ServerProcess) -> bool:
    """The pid is alive and is the process we started (same start time), not a reused pid."""
    started = process_start_time(dep.pid)
    return started is not None and abs(started - dep.process_started) < 0.05


def current() -> ServerProcess | None:
    state = _state_dir() / "server.json"
    if not state.is_file():
        return None
    try:
        dep = ServerProcess(**json.loads(state.read_text()))
    except (ValueError, TypeError):  # a pid file from an older version or a broken write: not trusted
        log.warning("ignoring unreadable %s", state)
        return None
    return dep if is_ours(dep) else None


def _save(dep: ServerProcess) -> None:
    """server.json, replaced whole: a reader (status, stop, the next deploy) never sees half of it."""
    write_atomic(_state_dir() / "server.json", json.dumps(asdict(dep)))


def _admin_token() -> Path:
    """The bearer token for /admin/load: created once (mode 0600, written whole before it appears; if
    two deploys create it at once, the first one's is kept and both use it). A token file left empty
    or unreadable is replaced; one readable by others is made private."""
    path = _state_dir() / "admin.token"
    try:
        if path.read_text(encoding="utf-8").strip():
            if path.stat().st_mode & 0o077:
                path.chmod(0o600)
            return path
        broken = True  # there, but empty
    except FileNotFoundError:
        # missing, or a dangling link; a token another deploy links in after this read is kept (below), never
        # replaced: checking `exists()` now could see it and overwrite it
        broken = path.is_symlink()
    except (OSError, UnicodeDecodeError):
        broken = True
    if broken:  # empty or unreadable: replaced whole
        write_atomic(path, secrets.token_urlsafe(32), mode=0o600)
        return path
    tmp = _state_dir() / f".admin.token.{os.getpid()}.{secrets.token_hex(4)}"
    write_atomic(tmp, secrets.token_urlsafe(32), mode=0o600)
    try:
        os.link(tmp, path)  # fails if another process created it first: then theirs is the token
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    return path


def post_json(url: str, payload: Any, timeout: float = 120.0, headers: dict[str, str] | None = None
              ) -> tuple[int, Any]:
    req = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST",
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        body = exc.read()
        try:
            return exc.code, json.loads(body)
        except json.JSONDecodeError:
            return exc.code, body.decode(errors="replace")
    except (urllib.error.URLError, OSError, json.JSONDecodeError) as exc:  # refused, reset, timeout, garbage
        reason = getattr(exc, "reason", None) or exc
        raise ServingError(f"POST {url}: {reason}") from None


def health(dep: ServerProcess, timeout: float = 3.0) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"{dep.base_url}/health", timeout=timeout) as resp:
            return json.loads(resp.read()) if resp.status == 200 else None
    except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError):
        return None


def _ours(dep: ServerProcess, info: dict[str, Any] | None) -> bool:
    """Is the server answering on dep's port the process we started (not some other one)?"""
    return info is not None and info.get("pid") == dep.pid


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def _wait_healthy(dep: ServerProcess, proc: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServingError(f"server exited with code {proc.returncode}; see {dep.log_file}")
        if _ours(dep, health(dep, timeout=2.0)):
            return
        time.sleep(0.5)
    raise ServingError(f"server not healthy after {timeout_s:.0f}s; see {dep.log_file}")


def smoke(dep: ServerProcess, payload: dict[str, Any]) -> str:
    """Send one request; the answer as text (a chat reply, or `label (score)` from a classifier)."""
    status, body = post_json(dep.endpoint, payload)
    if status != 200:
        raise ServingError(f"smoke request got HTTP {status}: {str(body)[:200]}")
    try:
        if "predictions" in body:
            first = body["predictions"][0]
            return f"{first['label']} ({float(first['score']):.3f})"
        return body["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError, ValueError):
        raise ServingError(f"smoke request got an unexpected response: {str(body)[:200]}") from None


def _spawn(model_uri: str, host: str, port: int, limits: ServerLimits, timeout_s: float, tracking_uri: str,
           version: str | None, trust_remote_code: bool = False) -> ServerProcess:
    if not _port_free(host, port):
        raise ServingError(f"{host}:{port} is in use by another process: stop it or set deploy.port")
    log_file = _state_dir() / "server.log"
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri}
    args = [sys.executable, "-m", "llmft.serve.app", "--model-uri", model_uri, "--host", host, "--port", str(port),
            "--admin-token-file", str(_admin_token())]
    args += ["--limits", limits.model_dump_json()]
    if model_uri.startswith("models:/"):  # /admin/load then loads versions of this registered model only
        args += ["--registry-name", model_uri[len("models:/"):].split("@")[0].split("/")[0]]
    if trust_remote_code:  # model.trust_remote_code: the user reviewed this model's own code
        args.append("--trust-remote-code")
    with log_file.open("ab") as log:
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True)  # own process group: outlives run.py, stopped as a group
    dep = ServerProcess(pid=proc.pid, host=host, port=port, model_uri=model_uri, log_file=str(log_file),
                        version=version, started_at=time.time(), process_started=process_start_time(proc.pid) or 0.0)
    try:
        _wait_healthy(dep, proc, timeout_s)
    except ServingError:
        _kill_group(proc.pid)
        raise
    return dep


def hot_swap(dep: ServerProcess, model_uri: str, timeout_s: float) -> dict[str, Any]:
    """Ask the running server to load `model_uri`, smoke-test it and swap; raise if it refused."""
    token = _admin_token().read_text().strip()
    # the server swaps only before this deadline: after it, this call has failed and server.json keeps dep
    status, body = post_json(f"{dep.base_url}/admin/load",
                             {"model_uri": model_uri, "deadline_s": client_deadline_s(timeout_s)},
                             timeout=timeout_s, headers={"Authorization": f"Bearer {token}"})
    if status != 200 or not isinstance(body, dict) or not body.get("swapped"):
        reason = str(body)[:300]
        if isinstance(body, dict):
            reason = body.get("reason") or (body.get("error") or {}).get("message") or reason
        still = body.get("serving_version") if isinstance(body, dict) else dep.version
        raise ServingError(f"new model {model_uri} was refused, v{still} keeps serving: {reason}")
    return body


def _reconcile(dep: ServerProcess) -> ServerProcess:
    """After a hot swap whose outcome is unknown: what the server reports serving, saved to server.json
    (unchanged when it does not answer as ours)."""
    info = health(dep)
    if not _ours(dep, info) or not isinstance(info.get("model_uri"), str) or info["model_uri"] == dep.model_uri:
        return dep
    now = ServerProcess(**{**asdict(dep), "model_uri": info["model_uri"], "version": info.get("version")})
    _save(now)
    log.warning("the server on port %s serves %s (v%s); server.json updated", dep.port, now.model_uri, now.version)
    return now


def deploy(model_uri: str, version: str | None, host: str, port: int, limits: ServerLimits, timeout_s: float,
           tracking_uri: str, smoke_payload: dict[str, Any] | None = None,
           trust_remote_code: bool = False) -> tuple[ServerProcess, str, str | None]:
    """Serve `model_uri` (a pinned `models:/NAME/VERSION`); returns the deployment, what happened and
    the smoke answer. A new server takes over only after it answered the smoke request."""
    running = current()
    if running is not None and _ours(running, health(running)) and (running.host, running.port) == (host, port):
        if running.model_uri == model_uri:
            return running, f"already serving v{version}", smoke(running, smoke_payload) if smoke_payload else None
        try:
            swapped = hot_swap(running, model_uri, timeout_s)  # the server smoke-tests before it swaps
        except ServingError:  # an answer lost on the way back: server.json says what is served now
            now = _reconcile(running)
            if now.model_uri != model_uri:
                raise
            swapped = {"previous_version": running.version}
        previous = swapped.get("previous_version")
        dep = ServerProcess(**{**asdict(running), "model_uri": model_uri, "version": version})
        _save(dep)
        answer = smoke(dep, smoke_payload) if smoke_payload else None
        return dep, f"swapped v{previous} -> v{version} with no restart", answer
    dep = _spawn(model_uri, host, port, limits, timeout_s, tracking_uri, version, trust_remote_code)
    try:
        answer = smoke(dep, smoke_payload) if smoke_payload else None
    except ServingError:
        _kill_group(dep.pid)  # a new server that cannot answer never takes over; the old one keeps serving
        raise
    _save(dep)
    if running is not None and running.pid != dep.pid:
        _kill_group(running.pid)  # the new one is up and answered: only now stop the old one
        return dep, f"started v{version} on port {port}; stopped the old server on port {running.port}", answer
    return dep, f"started v{version}", answer


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


def stop() -> ServerProcess | None:
    """Stop the managed server, if any; returns what was stopped. A pid file whose process is gone
    or is no longer ours is removed without signalling anything."""
    state = _state_dir() / "server.json"
    dep = current()
    if dep is not None:
        _kill_group(dep.pid)
    state.unlink(missing_ok=True)
    return dep


def status() -> dict[str, Any]:
    dep = current()
    if dep is None:
        return {"running": False}
    info = health(dep)
    return {"running": True, "healthy": info is not None, "endpoint": dep.endpoint, "pid": dep.pid,
            "log_file": dep.log_file, "model_uri": dep.model_uri, "version": dep.version,
            "uptime_s": round(time.time() - dep.started_at, 1) if dep.started_at else None, "server": info}


def deploy_champion(name: str, cfg: DeployConfig, trust_remote_code: bool = False) -> Deployment:
    """Serve the current champion (pinned to its version), health-checked and smoke-tested with a
    request its task must answer."""
    import mlflow

    # a step without the experiment tracker may run after one that reset MLflow's URI
    mlflow.set_tracking_uri(tracking_uri())
    version = current_alias_version(name)
    if version is None:
        raise ServingError(f"registered model {name!r} has no @{CHAMPION} version yet: "
                           "run `python run.py --pipeline finetune` first")
    task = get_task(version_tags(name, version).get("task", "chat"))
    payload = task.smoke_request(None)  # the server adds the instruction the model was trained with
    if "max_tokens" in payload:
        payload = {**payload, "max_tokens": min(int(payload["max_tokens"]), cfg.smoke_max_tokens)}
    dep, action, answer = deploy(f"models:/{name}/{version}", version, cfg.host, cfg.port, cfg.server_limits(),
                                 cfg.startup_timeout_s, tracking_uri(), smoke_payload=payload,
                                 trust_remote_code=trust_remote_code)
    log.info("%s: %s", action, dep.endpoint)
    return Deployment(
        deployed=True, action=action, endpoint=dep.endpoint, pid=dep.pid, model_uri=f"models:/{name}@{CHAMPION}",
        served_uri=dep.model_uri, model_version=version, log_file=dep.log_file,
        smoke_request=json.dumps(payload, ensure_ascii=False), smoke_response=answer or "",
        curl="curl -s " + dep.endpoint + " -H 'Content-Type: application/json' -d '" + json.dumps(payload) + "'")
