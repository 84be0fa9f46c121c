"""The model server on a real port with the tiny model of the real architecture: OpenAI-style answers, refusals that
name the field (and leave the server serving), batching of concurrent requests, guarded swaps."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from llmft.base_model import load_model
from llmft.config_serving import ServerLimits
from llmft.serve.app import Served, create_app
from llmft.serve.deploy import post_json

LIMITS = ServerLimits(max_tokens=32, default_max_tokens=8, max_input_tokens=200, max_batch_size=8, batch_wait_ms=50)
TOKEN = "test-admin-token"
REGISTRY_NAME = "embedded-base"  # what /admin/load may load versions of


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


APPS: dict[str, object] = {}  # url -> the app serving it, for tests that reach its batcher


def _serve(served: Served):
    import uvicorn

    port = _free_port()
    app = create_app(served, LIMITS, TOKEN, registry_name=REGISTRY_NAME)
    APPS[f"http://127.0.0.1:{port}"] = app
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 60
    while not server.started and time.time() < deadline:
        time.sleep(0.1)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # on a shared 2-core machine two torch threads run several times slower, not faster
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def url(tiny_model_path: str, tokenizer):
    yield from _serve(Served("embedded-base", None, False, load_model(tiny_model_path), tokenizer))


@pytest.fixture(scope="module")
def classifier_url(tiny_model_path: str, tokenizer):
    from transformers import set_seed

    labels = ["negative", "neutral", "positive"]
    set_seed(0)
    model = load_model(tiny_model_path, labels)
    yield from _serve(Served("embedded-classifier", None, True, model, tokenizer, labels))


def _health(url: str) -> dict:
    with urllib.request.urlopen(f"{url}/health", timeout=10) as resp:
        return json.loads(resp.read())


def _chat(content: str, **extra) -> dict:
    return {"messages": [{"role": "user", "content": content}], **extra}


def test_chat_completion_is_openai_shaped(url: str):
    status, body = post_json(f"{url}/v1/chat/completions", _chat("What is the capital of France?", max_tokens=12,
                                                                   temperature=0, model="ignored"))
    assert status == 200, body
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    choice = body["choices"][0]
    # the tiny model's answer is noise, never blank (tests/tiny_model.py): the shape is what is checked here
    assert choice["message"]["role"] == "assistant" and choice["message"]["content"].strip()
    assert choice["finish_reason"] in ("stop", "length")
    usage = body["usage"]
    assert usage["prompt_tokens"] > 5 and 1 <= usage["completion_tokens"] <= 12
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    # /invocations is the same endpoint; greedy is deterministic; sampling is accepted
    status, again = post_json(f"{url}/invocations", _chat("What is the capital of France?", max_tokens=12))
    assert status == 200 and again["choices"][0]["message"] == choice["message"]
    status, sampled = post_json(f"{url}/invocations", _chat("Name a colour.", max_tokens=6, temperature=0.8,
                                                            top_p=0.9))
    assert status == 200 and sampled["usage"]["completion_tokens"] <= 6


@pytest.mark.parametrize(("payload", "status", "needle"), [
    ("not json", 400, "not valid JSON"),
    ({"prompt": "hi"}, 400, "'messages' must be a non-empty list"),
    ({"messages": []}, 400, "'messages' must be a non-empty list"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, 400, "messages[0] must be"),
    ({"messages": [{"role": "user", "content": 3}]}, 400, "messages[0] must be"),
    (_chat("hi", max_tokens=33), 400, "over this server's limit of 32"),
    (_chat("hi", max_tokens=0), 400, "'max_tokens' must be a positive integer"),
    (_chat("hi", temperature=5), 400, "'temperature' must be between 0.0 and 2.0"),
    (_chat("hi", temperature="hot"), 400, "'temperature' must be a number"),
    (_chat("hi", stream="yes"), 400, "'stream' must be true or false"),  # stream: true is served (test_streaming)
    (_chat("word " * 400), 413, "accepts at most 200"),
])
def test_bad_requests_get_4xx_with_a_message_and_the_server_keeps_serving(url: str, payload, status: int,
                                                                          needle: str):
    if isinstance(payload, str):
        req = urllib.request.Request(f"{url}/invocations", data=payload.encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
        try:
            urllib.request.urlopen(req, timeout=30)
            pytest.fail("accepted a body that is not JSON")
        except urllib.error.HTTPError as exc:
            got, body = exc.code, json.loads(exc.read())
    else:
        got, body = post_json(f"{url}/invocations", payload)
    assert got == status, body
    assert needle in body["error"]["message"] and body["error"]["type"] == "invalid_request_error"
    ok, answer = post_json(f"{url}/invocations", _chat("Hello", max_tokens=4))
    assert ok == 200 and answer["object"] == "chat.completion"


def test_concurrent_requests_are_batched_with_the_same_answers(url: str):
    questions = [f"What is {i} plus {i}?" for i in range(1, 9)]
    alone = {q: post_json(f"{url}/invocations", _chat(q, max_tokens=10))[1]["choices"][0]["message"]["content"]
             for q in questions[:3]}
    before = _health(url)
    batcher = APPS[url].state.batcher
    release, holding = threading.Event(), threading.Event()

    def hold(_served: Served) -> None:  # the model is busy (as with a long batch) until all have arrived
        holding.set()
        release.wait(120)

    threading.Thread(target=batcher.run_exclusive, args=(hold,), daemon=True).start()
    assert holding.wait(60)
    with ThreadPoolExecutor(len(questions)) as pool:
        futures = [pool.submit(post_json, f"{url}/invocations", _chat(q, max_tokens=10)) for q in questions]
        deadline = time.monotonic() + 60
        # all of them wait: queued, or taken by the worker that waits for the model
        while _health(url)["queued"] + batcher.taken() < len(questions) and time.monotonic() < deadline:
            time.sleep(0.01)
        release.set()
        results = [f.result() for f in futures]
    assert all(status == 200 for status, _ in results)
    after = _health(url)
    assert after["requests"] - before["requests"] == len(questions)
    assert after["batches"] - before["batches"] < len(questions)  # some requests shared a generate call
    assert after["largest_batch"] > 1
    for q, (_, body) in zip(questions, results, strict=True):
        if q in alone:  # greedy in a batch answers exactly as alone
            assert body["choices"][0]["message"]["content"] == alone[q]


def test_a_busy_port_is_refused_before_any_model_loads(url: str, tmp_path, monkeypatch):
    from llmft.serve.deploy import ServingError, deploy

    monkeypatch.setenv("LLMFT_HOME", str(tmp_path))
    port = int(url.rsplit(":", 1)[1])  # the test server holds it
    with pytest.raises(ServingError, match=f"127.0.0.1:{port} is in use by another process"):
        deploy("models:/any/1", "1", "127.0.0.1", port, {}, 30, "sqlite:///unused.db")


def test_admin_load_needs_the_token_and_a_bad_model_never_takes_traffic(url: str, tmp_path, monkeypatch):
    status, body = post_json(f"{url}/admin/load", {"model_uri": "models:/nope/1"})
    assert status == 401
    # a version of the configured model that is not in the registry: loading fails, the old one serves on
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    status, body = post_json(f"{url}/admin/load", {"model_uri": f"models:/{REGISTRY_NAME}/999"},
                             headers={"Authorization": f"Bearer {TOKEN}"})
    assert status == 422 and body["swapped"] is False and body["serving"] == "embedded-base"
    assert _health(url)["model_uri"] == "embedded-base"
    assert post_json(f"{url}/invocations", _chat("Hi", max_tokens=4))[0] == 200


def test_classifier_returns_labels_and_scores(classifier_url: str):
    texts = ["Great lamp, works well.", "Broke in a day."]
    status, body = post_json(f"{classifier_url}/invocations", {"inputs": texts})
    assert status == 200, body
    assert len(body["predictions"]) == 2
    for prediction in body["predictions"]:
        assert prediction["label"] in ("negative", "neutral", "positive")
        assert set(prediction["scores"]) == {"negative", "neutral", "positive"}
        assert sum(prediction["scores"].values()) == pytest.approx(1.0, abs=1e-4)
        assert prediction["score"] == max(prediction["scores"].values())
    status, body = post_json(f"{classifier_url}/invocations", {"text": "Fine, I guess."})
    assert status == 200 and len(body["predictions"]) == 1
    status, body = post_json(f"{classifier_url}/invocations", {"inputs": ["", "ok"]})
    assert status == 400 and "non-empty strings" in body["error"]["message"]
    status, body = post_json(f"{classifier_url}/invocations", {"inputs": ["word " * 400]})
    assert status == 413
