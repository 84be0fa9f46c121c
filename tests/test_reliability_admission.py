"""Issue 24, item 4: what the server holds before the queue check is bounded. Bodies being read and
parsed are capped at deploy.max_bodies_in_flight x max_body_bytes (the next one gets 429 with
Retry-After before it is read, not a parse that takes ~24x its size in Python objects); uvicorn runs
with limit_concurrency; a classify request that timed out holds no thread and never runs. On the tiny
random model (default tier), through a real uvicorn server; every wait is on an event or a poll."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from test_reliability_serving import Server, _wait_for

from llmft.base_model import load_model
from llmft.config_serving import ServerLimits
from llmft.serve import admission
from llmft.serve import app as server_app
from llmft.serve.app import Served, create_app

LIMITS = ServerLimits(max_tokens=8, default_max_tokens=4, max_input_tokens=300, max_batch_size=4, batch_wait_ms=5,
                      max_body_bytes=64_000, max_queue=8, max_bodies_in_flight=2, request_timeout_s=120)
JUNK = b"[" + b"{}," * 19_000 + b"{}]"  # ~57 KB: two fit in 2 x 64 KB, a third does not
CHAT = {"messages": [{"role": "user", "content": "Name a prime number."}], "max_tokens": 4}


@pytest.fixture(scope="module")
def tiny(tiny_lm: tuple[Any, Any]) -> tuple[Any, Any]:
    return tiny_lm


class GatedParse:
    """`_prepare` that holds junk bodies (a JSON list) until released, counting the parses that started."""

    def __init__(self, real: Any):
        self.real, self.release = real, threading.Event()
        self.started = 0
        self._lock = threading.Lock()

    def __call__(self, raw: bytes, served: Served, limits: ServerLimits) -> Any:
        if raw.startswith(b"["):
            with self._lock:
                self.started += 1
            assert self.release.wait(120)
        return self.real(raw, served, limits)


def test_bodies_beyond_the_in_flight_budget_get_429_before_they_are_parsed(tiny: tuple[Any, Any],
                                                                          monkeypatch: pytest.MonkeyPatch):
    gate = GatedParse(server_app._prepare)
    monkeypatch.setattr(server_app, "_prepare", gate)
    server = Server(create_app(Served("tiny", None, False, *tiny), LIMITS))
    try:
        with ThreadPoolExecutor(4) as pool:
            held = [pool.submit(server.post, JUNK) for _ in range(2)]
            _wait_for(lambda: gate.started == 2)  # both bodies read, both parses running
            third = pool.submit(server.post, JUNK)
            # the old server starts a third parse (and holds its objects); this one answers at once
            _wait_for(lambda: third.done() or gate.started > 2)
            assert gate.started == 2, "a third body was taken for parsing beyond the budget"
            status, kind, body = third.result()
            assert status == 429 and kind.startswith("application/json"), (status, body)
            assert "max_bodies_in_flight" in body["error"]["message"]
            # a small request still fits beside the two large ones and is served
            assert server.post(CHAT)[0] == 200
            info = server.health()
            assert info["rejected_bodies_in_flight"] == 1 and info["bodies_in_flight_bytes"] >= 2 * len(JUNK)
            gate.release.set()
            assert [f.result(timeout=120)[0] for f in held] == [400, 400]  # junk is still a 400
        _wait_for(lambda: server.health()["bodies_in_flight_bytes"] == 0)  # every byte given back
        assert server.post(JUNK)[0] == 400 and server.post(CHAT)[0] == 200
    finally:
        gate.release.set()
        server.close()


def test_a_429_for_the_budget_carries_retry_after(tiny: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch):
    import http.client

    gate = GatedParse(server_app._prepare)
    monkeypatch.setattr(server_app, "_prepare", gate)
    one_body = LIMITS.model_copy(update={"max_bodies_in_flight": 1})
    server = Server(create_app(Served("tiny", None, False, *tiny), one_body))
    try:
        with ThreadPoolExecutor(1) as pool:
            held = pool.submit(server.post, JUNK)
            _wait_for(lambda: gate.started == 1)
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
            conn.request("POST", "/invocations", body=JUNK, headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            resp.read()
            conn.close()
            assert resp.status == 429 and int(resp.getheader("Retry-After")) >= 1
            gate.release.set()
            assert held.result(timeout=120)[0] == 400
    finally:
        gate.release.set()
        server.close()


def test_a_body_without_content_length_reserves_the_whole_limit():
    assert admission.body_reservation("1234", 64_000) == 1234
    assert admission.body_reservation("9" * 5000, 64_000) == 64_000  # no int() of 5,000 digits
    assert admission.body_reservation(None, 64_000) == 64_000
    assert admission.body_reservation("12a", 64_000) == 64_000
    budget = admission.ByteBudget(100)
    first = budget.reserve(60)
    assert first is not None and budget.reserve(60) is None and budget.refused == 1
    first.shrink(10)
    second = budget.reserve(90)
    assert second is not None and budget.used == 100
    first.release()
    first.release()  # idempotent
    second.release()
    assert budget.used == 0


def test_a_bounded_pool_frees_a_cancelled_waiting_job_and_refuses_beyond_its_capacity():
    pool = admission.BoundedPool(workers=1, capacity=2, name="t")
    go, ran = threading.Event(), []
    try:
        first = pool.submit(go.wait, 60)
        second = pool.submit(ran.append, "second")
        assert first is not None and second is not None and pool.held == 2
        assert pool.submit(ran.append, "third") is None
        assert second.cancel()  # still waiting: never runs, and its slot is free at once
        assert pool.held == 1
        go.set()
        first.result(timeout=60)
        _wait_for(lambda: pool.held == 0)
        assert ran == []
    finally:
        go.set()
        pool.shutdown()


def test_a_timed_out_classify_request_holds_no_thread_and_never_runs(tiny_model_path: str, tiny: tuple[Any, Any],
                                                                     monkeypatch: pytest.MonkeyPatch):
    from transformers import set_seed

    labels = ["negative", "positive"]
    set_seed(0)
    model = load_model(tiny_model_path, labels).eval()
    calls: list[int] = []
    real = server_app.classify

    def counted(served: Served, ids: list[list[int]]) -> Any:
        calls.append(len(ids))
        return real(served, ids)

    monkeypatch.setattr(server_app, "classify", counted)
    limits = LIMITS.model_copy(update={"request_timeout_s": 0.5})  # the model is held far longer: always a 504
    server = Server(create_app(Served("clf", None, True, model, tiny[1], labels), limits))
    try:
        release = server.hold_model()
        try:
            with ThreadPoolExecutor(3) as pool:
                answers = [f.result(timeout=120) for f in
                           [pool.submit(server.post, {"inputs": [f"text number {i}"]}) for i in range(3)]]
            assert [a[0] for a in answers] == [504] * 3, answers
            # while the model is still held: no thread waits for it on behalf of a client that left
            _wait_for(lambda: server.health()["classify_held"] == 0)
        finally:
            release.set()
        status, _, body = server.post({"inputs": ["a fresh request"]})
        assert status == 200 and body["predictions"][0]["label"] in labels
        assert calls == [1]  # the timed-out ones never ran (one thread: they would have run first)
    finally:
        server.close()


def test_main_starts_uvicorn_with_a_connection_limit(tiny: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch):
    import uvicorn

    seen: dict[str, Any] = {}
    monkeypatch.setattr(server_app, "load_served",
                        lambda uri, trust=False, precision="auto": Served(uri, None, False, *tiny))
    monkeypatch.setattr(server_app, "smoke", lambda served, limits: "hello")
    monkeypatch.setattr(server_app, "create_app", lambda *a, **k: object())
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: seen.update(kwargs))
    server_app.main(["--model-uri", "models:/demo/1", "--limits", json.dumps(LIMITS.model_dump())])
    assert seen["limit_concurrency"] == admission.connection_limit(LIMITS)
    assert seen["limit_concurrency"] >= LIMITS.max_queue + LIMITS.max_batch_size + LIMITS.max_bodies_in_flight
