"""Issue 24, item 8 (the rest): the deploy state and hot swaps. `server.json` and `admin.token` are
written whole (a temporary file renamed over them; the token 0600, an empty one replaced); two
/admin/load calls never load two models at once (the second gets 409); a swap that would land after
the deploy gave up does not happen, and an answer lost on the way back leaves `server.json` saying
what is served. On the tiny random model, through a real uvicorn server in this process (its /health
reports this pid, so `deploy` takes it for the managed server); waits are on events and polls."""

from __future__ import annotations

import json
import os
import stat
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from test_reliability_serving import Server, _wait_for

from llmft.config_serving import ServerLimits
from llmft.serve import app as server_app
from llmft.serve import deploy
from llmft.serve.app import Served, create_app

LIMITS = ServerLimits(max_tokens=8, default_max_tokens=4, max_input_tokens=300, max_batch_size=4, batch_wait_ms=5,
                      max_body_bytes=64_000, max_queue=8, request_timeout_s=120)


@pytest.fixture(scope="module")
def tiny(tiny_lm: tuple[Any, Any]) -> tuple[Any, Any]:
    return tiny_lm


class GatedLoader:
    """`load_served` that returns the tiny model under the asked URI once released."""

    def __init__(self, tiny: tuple[Any, Any]):
        self.tiny, self.entered, self.release, self.returned = tiny, threading.Event(), threading.Event(), 0

    def __call__(self, uri: str, trust_remote_code: bool = False, precision: str = "auto") -> Served:
        self.entered.set()
        assert self.release.wait(120)
        self.returned += 1
        return Served(uri, uri.rsplit("/", 1)[-1], False, *self.tiny)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LLMFT_HOME", str(tmp_path))
    return tmp_path


@pytest.fixture
def managed(home: Path, tiny: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Server, Any]]:
    """An in-process server of models:/demo/1 recorded in server.json as the managed one; /admin/load
    loads through a GatedLoader (app.state.loader)."""
    loader = GatedLoader(tiny)
    monkeypatch.setattr(server_app, "load_served", loader)
    monkeypatch.setattr(server_app, "smoke", lambda served, limits: "ok")
    token = deploy._admin_token().read_text().strip()
    app = create_app(Served("models:/demo/1", "1", False, *tiny), LIMITS, admin_token=token, registry_name="demo")
    app.state.loader = loader
    server = Server(app)
    running = deploy.ServerProcess(pid=os.getpid(), host="127.0.0.1", port=server.port, model_uri="models:/demo/1",
                                   log_file=str(home / "server.log"), version="1",
                                   process_started=deploy.process_start_time(os.getpid()) or 0.0)
    deploy._save(running)
    try:
        yield server, app
    finally:
        loader.release.set()
        server.close()


def _load(server: Server, uri: str, **extra: Any) -> tuple[int, Any]:
    token = deploy._admin_token().read_text().strip()
    return deploy.post_json(f"http://127.0.0.1:{server.port}/admin/load", {"model_uri": uri, **extra},
                            headers={"Authorization": f"Bearer {token}"})


def test_a_second_admin_load_while_one_runs_gets_409(managed: tuple[Server, Any]):
    server, app = managed
    loader = app.state.loader
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(_load, server, "models:/demo/2")
        assert loader.entered.wait(60)
        status, body = _load(server, "models:/demo/3")
        assert status == 409 and "models:/demo/2 is being loaded" in body["error"]["message"], body
        assert loader.returned == 0  # the second never started loading
        loader.release.set()
        status, body = first.result(timeout=120)
    assert status == 200 and body["swapped"] and body["serving_version"] == "2"
    assert loader.returned == 1
    assert _load(server, "models:/demo/3")[0] == 200  # the guard is free again
    assert server.health()["model_uri"] == "models:/demo/3"


def test_a_candidate_ready_after_the_callers_deadline_is_not_swapped_in(managed: tuple[Server, Any]):
    server, app = managed
    now = [1000.0]
    app.state.loads.clock = lambda: now[0]
    with ThreadPoolExecutor(1) as pool:
        asked = pool.submit(_load, server, "models:/demo/2", deadline_s=30)
        assert app.state.loader.entered.wait(60)
        now[0] += 31  # the deploy that asked has given up
        app.state.loader.release.set()
        status, body = asked.result(timeout=120)
    assert status == 504 and body["swapped"] is False and "deadline_s=30" in body["reason"], body
    assert server.health()["model_uri"] == "models:/demo/1"
    assert _load(server, "models:/demo/2", deadline_s="soon")[0] == 400


def test_a_hot_swap_that_outlives_the_deploy_timeout_never_lands(managed: tuple[Server, Any]):
    server, app = managed
    loader = app.state.loader
    with ThreadPoolExecutor(1) as pool:
        attempt = pool.submit(deploy.deploy, "models:/demo/2", "2", "127.0.0.1", server.port, LIMITS, 2.0, "unused")
        assert loader.entered.wait(60)
        with pytest.raises(deploy.ServingError):
            attempt.result(timeout=120)  # the client gave up (its 2 s timeout) while the model still loads
    loader.release.set()
    # the late load finishes: either the guard is free again (no swap) or, on the old server, it swapped
    guard = getattr(app.state, "loads", None)
    _wait_for(lambda: loader.returned == 1 and ((guard is not None and guard.loading is None)
                                                or server.batcher.served.model_uri == "models:/demo/2"))
    assert server.health()["model_uri"] == "models:/demo/1"
    saved = json.loads((deploy._state_dir() / "server.json").read_text())
    assert (saved["model_uri"], saved["version"]) == ("models:/demo/1", "1")


def test_a_swap_whose_answer_was_lost_is_recorded_in_server_json(managed: tuple[Server, Any],
                                                                 monkeypatch: pytest.MonkeyPatch):
    server, app = managed
    app.state.loader.release.set()
    real = deploy.post_json

    def answer_lost(url: str, payload: Any, **kwargs: Any) -> tuple[int, Any]:
        real(url, payload, **kwargs)  # the server swaps...
        raise deploy.ServingError(f"POST {url}: timed out")  # ...and the answer never arrives

    monkeypatch.setattr(deploy, "post_json", answer_lost)
    dep, action, _ = deploy.deploy("models:/demo/2", "2", "127.0.0.1", server.port, LIMITS, 60.0, "unused")
    assert server.health()["model_uri"] == "models:/demo/2"
    saved = json.loads((deploy._state_dir() / "server.json").read_text())
    assert (saved["model_uri"], saved["version"]) == ("models:/demo/2", "2")
    assert dep.version == "2" and "v2" in action


def test_server_json_is_replaced_whole_or_not_at_all(home: Path, monkeypatch: pytest.MonkeyPatch):
    first = deploy.ServerProcess(pid=1, host="127.0.0.1", port=5055, model_uri="models:/m/1", log_file="x",
                                 version="1")
    deploy._save(first)
    state = deploy._state_dir() / "server.json"
    before = state.read_text()

    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)  # the write fails before it is complete
    with pytest.raises(OSError):
        deploy._save(deploy.ServerProcess(**{**json.loads(before), "model_uri": "models:/m/2", "version": "2"}))
    assert state.read_text() == before
    assert sorted(p.name for p in deploy._state_dir().iterdir()) == ["server.json"]  # no temporary left


def test_the_admin_token_is_private_and_never_empty(home: Path):
    path = deploy._admin_token()
    token = path.read_text()
    assert len(token.strip()) >= 32 and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert deploy._admin_token().read_text() == token  # created once
    path.write_text("")  # left empty by an interrupted write of the old code
    assert deploy._admin_token().read_text().strip() not in ("", token)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    path.chmod(0o644)
    kept = path.read_text()
    assert deploy._admin_token().read_text() == kept and stat.S_IMODE(path.stat().st_mode) == 0o600


def test_deploys_creating_the_token_at_once_all_use_the_same_one(home: Path):
    start = threading.Barrier(6)

    def create() -> str:
        start.wait(30)
        return deploy._admin_token().read_text()

    with ThreadPoolExecutor(6) as pool:
        tokens = {f.result(timeout=60) for f in [pool.submit(create) for _ in range(6)]}
    assert len(tokens) == 1 and len(tokens.pop().strip()) >= 32
    assert [p.name for p in deploy._state_dir().iterdir()] == ["admin.token"]
