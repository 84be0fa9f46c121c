"""Issue 24, items 2 and 3: one poisoned request never fails the requests batched beside it, and every
malformed body is a 400 JSON error counted in /health, never a 500 with a traceback. On the tiny
random model (default tier), through a real uvicorn server on a free port."""

from __future__ import annotations

import http.client
import json
import logging
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import torch
from conftest import wait_for as _wait_for

from llmft.base_model import load_model, load_tokenizer
from llmft.config_serving import ServerLimits
from llmft.generation import Sampling
from llmft.serve import scheduler
from llmft.serve.app import Served, create_app, parse_chat, serving_prompt
from llmft.serve.sampling import MIN_TEMPERATURE, SamplingError, sample_token
from llmft.serve.scheduler import generate_continuous

LIMITS = ServerLimits(max_tokens=8, default_max_tokens=6, max_input_tokens=300, max_batch_size=8, batch_wait_ms=5,
                      max_body_bytes=64_000, max_queue=16, request_timeout_s=120)
QUESTIONS = ["What is the capital of France?", "Name a prime number.", "Write one word about the sea."]
# a template that refuses roles out of order, as Llama-2 and Mistral templates do
STRICT_TEMPLATE = (
    "{% for m in messages %}{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


class Server:
    """The app under uvicorn on a free local port, in a thread."""

    def __init__(self, app: Any):
        import uvicorn

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.batcher = app.state.batcher
        self._server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="error"))
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        _wait_for(lambda: self._server.started, timeout=60)

    def close(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)

    def post(self, body: bytes | dict[str, Any], path: str = "/invocations") -> tuple[int, str, Any]:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        conn.request("POST", path, body=data, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        raw = resp.read()
        conn.close()
        kind = resp.getheader("content-type", "")
        return resp.status, kind, json.loads(raw) if kind.startswith("application/json") else raw.decode()

    def health(self) -> dict[str, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        conn.request("GET", "/health")
        body = json.loads(conn.getresponse().read())
        conn.close()
        return body

    def hold_model(self) -> threading.Event:
        """Keep the model busy (as a long batch would) until the returned event is set."""
        release, holding = threading.Event(), threading.Event()

        def hold(_served: Served) -> None:
            holding.set()
            release.wait(120)

        threading.Thread(target=self.batcher.run_exclusive, args=(hold,), daemon=True).start()
        assert holding.wait(60)
        return release

    def waiting(self) -> int:
        """Requests queued or taken by the worker but not yet admitted (it waits for the model)."""
        return self.batcher.queue_depth() + self.batcher.taken()


class Tracebacks(logging.Handler):
    """Every log record that carries a traceback, from any logger it is attached to."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info or "Traceback" in record.getMessage():
            self.records.append(record)




def _chat(question: str, **extra: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": question}], "max_tokens": 6, **extra}


@pytest.fixture(scope="module")
def served(tiny_model_path: str) -> Iterator[Served]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield Served("tiny", None, False, load_model(tiny_model_path).eval(), load_tokenizer(tiny_model_path))
    torch.set_num_threads(threads)


@pytest.fixture(scope="module", params=["continuous", "static"])
def server(request: pytest.FixtureRequest, served: Served) -> Iterator[Server]:
    running = Server(create_app(served, LIMITS.model_copy(update={"engine": request.param})))
    yield running
    running.close()


@pytest.fixture
def tracebacks() -> Iterator[Tracebacks]:
    handler = Tracebacks()
    loggers = [logging.getLogger(), logging.getLogger("uvicorn.error"), logging.getLogger("uvicorn")]
    for logger in loggers:
        logger.addHandler(handler)
    yield handler
    for logger in loggers:
        logger.removeHandler(handler)


# ---- item 2: sampling that cannot overflow, and a row's failure is its own ----

@pytest.mark.parametrize("temperature", [1e-300, 1e-45, MIN_TEMPERATURE / 2])
def test_a_vanishing_temperature_samples_greedily_without_inf_or_nan(temperature: float):
    logits = torch.tensor([3.0, 40.0, -5.0, 39.5])
    assert sample_token(logits, temperature, 1.0) == 1
    assert sample_token(logits, temperature, 0.5, top_k=2) == 1


def test_sampling_is_stable_for_large_logits_and_skips_nan_entries():
    generator = torch.Generator().manual_seed(0)
    huge = torch.tensor([1e30, 1e30 - 1, -1e30, 0.0])
    for _ in range(20):
        assert sample_token(huge, 2 * MIN_TEMPERATURE, 0.9, generator=generator) in (0, 1)
    partly_nan = torch.tensor([float("nan"), 1.0, float("inf"), 2.0])
    assert sample_token(partly_nan, 0.7, 1.0, generator=generator) in (1, 3)
    with pytest.raises(SamplingError):
        sample_token(torch.full((4,), float("nan")), 0.7, 1.0)


def test_a_raw_tiny_temperature_in_the_batch_does_not_fail_its_neighbours(served: Served):
    """Straight into the scheduler (as a Sampling built without the server's parsing): on the old code
    torch.multinomial raised out of the batch."""
    ids = [served.tokenizer(serving_prompt(served, [{"role": "user", "content": q}]), add_special_tokens=False)
           ["input_ids"] for q in QUESTIONS]
    alone = generate_continuous(served.model, served.tokenizer, [(i, 6, Sampling()) for i in ids])
    mixed = generate_continuous(served.model, served.tokenizer,
                                [(ids[0], 6, Sampling()), (ids[1], 6, Sampling(temperature=1e-300)),
                                 (ids[2], 6, Sampling(temperature=1e-45))])
    assert mixed == alone  # a vanishing temperature is greedy


def test_a_row_whose_sampling_raises_fails_alone(served: Served, monkeypatch: pytest.MonkeyPatch):
    real = scheduler.sample_token

    def poisoned(logits: torch.Tensor, temperature: float, *args: Any, **kwargs: Any) -> int:
        if temperature == 0.777:
            raise RuntimeError("probability tensor contains either `inf`, `nan` or element < 0")
        return real(logits, temperature, *args, **kwargs)

    monkeypatch.setattr(scheduler, "sample_token", poisoned)
    ids = [served.tokenizer(serving_prompt(served, [{"role": "user", "content": q}]), add_special_tokens=False)
           ["input_ids"] for q in QUESTIONS]
    alone = generate_continuous(served.model, served.tokenizer, [(i, 6, Sampling()) for i in ids])
    # the poisoned row joins at once, and again mid-flight (a decoding step)
    for join_after in ([0, 0, 0], [0, 2, 0]):
        mixed = generate_continuous(served.model, served.tokenizer,
                                    [(ids[0], 6, Sampling()), (ids[1], 6, Sampling(temperature=0.777)),
                                     (ids[2], 6, Sampling())], join_after)
        assert mixed[1].finish_reason == "error"
        assert [mixed[0], mixed[2]] == [alone[0], alone[2]]


def test_poisoned_requests_beside_normal_ones_leave_the_normal_answers_alone(server: Server, tracebacks: Tracebacks):
    alone = []
    for q in QUESTIONS:
        status, _, body = server.post(_chat(q))
        assert status == 200, body
        alone.append(body["choices"][0]["message"]["content"])
    errors_5xx = server.health()["errors_5xx"]
    release = server.hold_model()  # everyone lands in one running batch once it is released
    try:
        with ThreadPoolExecutor(len(QUESTIONS) + 2) as pool:
            normal = [pool.submit(server.post, _chat(q)) for q in QUESTIONS]
            _wait_for(lambda: server.waiting() == len(QUESTIONS))  # the normal ones arrive first
            poison = [pool.submit(server.post, _chat(QUESTIONS[0], temperature=t)) for t in (1e-300, 1e-45)]
            _wait_for(lambda: server.waiting() == len(QUESTIONS) + 2)
            release.set()
            answers = [f.result(timeout=120) for f in normal]
            poisoned = [f.result(timeout=120) for f in poison]
    finally:
        release.set()
    assert [a[0] for a in answers] == [200] * len(QUESTIONS), answers
    assert [a[2]["choices"][0]["message"]["content"] for a in answers] == alone
    assert [p[0] for p in poisoned] == [200, 200], poisoned  # served greedily
    assert all(p[2]["choices"][0]["message"]["content"] == alone[0] for p in poisoned)
    assert server.health()["errors_5xx"] == errors_5xx
    assert not tracebacks.records


# ---- item 3: malformed bodies are 400s ----

BAD_BODIES = {
    "huge integer": b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": ' + b"9" * 5000 + b"}",
    "huge integer in an unused field": (b'{"messages": [{"role": "user", "content": "hi"}], "seed": '
                                        + b"1" * 4301 + b"}"),
    "lone surrogate": b'{"messages": [{"role": "user", "content": "hi \\ud800 there"}]}',
    "lone low surrogate in a system turn": b'{"messages": [{"role": "system", "content": "\\udc00"}, '
                                           b'{"role": "user", "content": "hi"}]}',
}


@pytest.mark.parametrize("name", list(BAD_BODIES))
def test_a_malformed_body_is_a_counted_400_without_a_traceback(server: Server, tracebacks: Tracebacks, name: str):
    before = server.health()
    status, kind, body = server.post(BAD_BODIES[name])
    assert status == 400, (status, body)
    assert kind.startswith("application/json")
    error = body["error"]
    assert error["type"] == "invalid_request_error" and error["message"] and "\n" not in error["message"]
    after = server.health()
    assert after["errors_4xx"] == before["errors_4xx"] + 1 and after["errors_5xx"] == before["errors_5xx"]
    assert not tracebacks.records
    assert server.post(_chat(QUESTIONS[0]))[0] == 200  # and the server keeps serving


def test_a_role_order_the_chat_template_refuses_is_a_400(served: Served, tiny_model_path: str,
                                                         tracebacks: Tracebacks):
    strict = load_tokenizer(tiny_model_path)
    strict.chat_template = STRICT_TEMPLATE
    running = Server(create_app(Served("strict", None, False, served.model, strict), LIMITS))
    try:
        ok = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                           {"role": "user", "content": "bye"}], "max_tokens": 2}
        assert running.post(ok)[0] == 200
        bad = {"messages": [{"role": "user", "content": "hi"}, {"role": "user", "content": "again"}]}
        status, kind, body = running.post(bad)
        assert status == 400 and kind.startswith("application/json"), (status, body)
        assert "alternate" in body["error"]["message"] and body["error"]["param"] == "messages"
        assert running.health()["errors_4xx"] == 1 and running.health()["errors_5xx"] == 0
        assert not tracebacks.records
    finally:
        running.close()


def test_parse_chat_refuses_a_lone_surrogate_naming_the_field(served: Served):
    from llmft.serve.bodies import RequestError

    with pytest.raises(RequestError) as refused:
        parse_chat({"messages": [{"role": "user", "content": "ok"}, {"role": "assistant", "content": "\ud83d"},
                                 {"role": "user", "content": "x"}]}, served, LIMITS)
    assert refused.value.status == 400 and refused.value.param == "messages[1].content"
    assert parse_chat(_chat("hi", temperature=1e-300), served, LIMITS).sampling == Sampling()
