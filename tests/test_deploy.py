"""The managed server's pid file: only our own process is ever signalled; a new server that fails
never replaces the running one; network errors are one-line messages."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from pathlib import Path

import pytest

from llmft.config_serving import ServerLimits
from llmft.serve import deploy as serving


@pytest.fixture()
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LLMFT_HOME", str(tmp_path))
    return tmp_path


@pytest.fixture()
def bystander():
    """Some other process of the same user: what a reused pid would point at."""
    proc = subprocess.Popen(["sleep", "300"], start_new_session=True)
    yield proc
    proc.kill()
    proc.wait()


def _write_state(home: Path, pid: int, process_started: float, port: int = 5999) -> None:
    state = serving.ServerProcess(pid=pid, host="127.0.0.1", port=port, model_uri="models:/m/1",
                                  log_file=str(home / "serve" / "server.log"), version="1",
                                  process_started=process_started)
    (home / "serve").mkdir(parents=True, exist_ok=True)
    (home / "serve" / "server.json").write_text(json.dumps(state.__dict__))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_reused_pid_is_never_signalled(home: Path, bystander: subprocess.Popen) -> None:
    # the pid file says "our server has this pid" but the process with that pid started at another time
    _write_state(home, bystander.pid, process_started=serving.process_start_time(bystander.pid) - 3600)
    assert serving.current() is None
    assert serving.stop() is None
    time.sleep(0.3)
    assert bystander.poll() is None  # still running
    assert not (home / "serve" / "server.json").exists()  # the stale pid file is gone


def test_our_own_process_is_stopped(home: Path, bystander: subprocess.Popen) -> None:
    _write_state(home, bystander.pid, process_started=serving.process_start_time(bystander.pid))
    assert serving.current() is not None
    assert serving.stop().pid == bystander.pid
    assert bystander.wait(timeout=15) is not None


def test_an_unreadable_pid_file_is_ignored(home: Path) -> None:
    (home / "serve").mkdir(parents=True)
    (home / "serve" / "server.json").write_text('{"pid": 1, "unknown_field": true}')
    assert serving.current() is None


def test_network_errors_are_one_line_serving_errors() -> None:
    port = _free_port()  # nothing listens there
    with pytest.raises(serving.ServingError) as err:
        serving.post_json(f"http://127.0.0.1:{port}/invocations", {"inputs": ["x"]}, timeout=5)
    assert "\n" not in str(err.value) and f"127.0.0.1:{port}/invocations" in str(err.value)


def test_a_new_server_that_fails_leaves_the_old_one_serving(home: Path, bystander: subprocess.Popen) -> None:
    """Port change with a model that cannot load: the new process exits, the old one (here a
    stand-in process recorded as ours) is neither stopped nor replaced in the pid file."""
    _write_state(home, bystander.pid, process_started=serving.process_start_time(bystander.pid))
    with pytest.raises(serving.ServingError, match="server exited with code"):
        serving.deploy(str(home / "no-such-model"), "2", "127.0.0.1", _free_port(), ServerLimits(), 120,
                       f"sqlite:///{home / 'mlflow.db'}", smoke_payload={"messages": []})
    assert bystander.poll() is None
    kept = serving.current()
    assert kept is not None and kept.pid == bystander.pid and kept.version == "1"
