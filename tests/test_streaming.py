"""Streamed chat answers (issue 26): `"stream": true` on /v1/chat/completions is answered with OpenAI-style
server-sent events made from the continuous batcher as the tokens are generated. Joined, the pieces are the
answer `stream: false` gives (greedy); the events end with `data: [DONE]`; a client that leaves mid-stream
frees its batch slot at once; a streamed request meets the same queue limit as any. On the tiny random model
(default tier), through a real uvicorn server on a free port; waits are on events and polls."""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from conftest import StepGate
from test_reliability_serving import Server, _wait_for

from llmft.config_serving import ServerLimits
from llmft.generation import Sampling
from llmft.serve.app import Served, create_app
from llmft.serve.scheduler import DecodeBatch, Sequence
from llmft.serve.streaming import IncrementalText

LIMITS = ServerLimits(max_tokens=64, default_max_tokens=8, max_input_tokens=300, max_batch_size=4, batch_wait_ms=5,
                      max_body_bytes=64_000, max_queue=4, request_timeout_s=120)
QUESTIONS = ["What is the capital of France?", "Name a prime number.", "Écris un mot sur la mer, s'il te plaît ☃"]


def _chat(question: str, **extra: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": question}], "max_tokens": 12, **extra}


def _stream(server: Server, body: dict[str, Any]) -> tuple[int, str, list[str]]:
    """Status, content type and the `data:` payloads of a streamed request, read to the end."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
    conn.request("POST", "/v1/chat/completions", body=json.dumps({**body, "stream": True}),
                 headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    text = resp.read().decode()
    conn.close()
    events = [block for block in text.split("\n\n") if block]
    assert all(e.startswith("data: ") and "\n" not in e for e in events), text[:500]
    return resp.status, resp.getheader("content-type", ""), [e.removeprefix("data: ") for e in events]


def _content(events: list[str]) -> str:
    return "".join(json.loads(e)["choices"][0]["delta"].get("content", "") for e in events[:-1])


@pytest.fixture(scope="module")
def served(tiny_lm: tuple[Any, Any]) -> Served:
    return Served("tiny", None, False, *tiny_lm)


@pytest.fixture(scope="module", params=["continuous", "static"])
def server(request: pytest.FixtureRequest, served: Served) -> Iterator[Server]:
    running = Server(create_app(served, LIMITS.model_copy(update={"engine": request.param})))
    yield running
    running.close()


# ---- the events ----

def test_the_openai_client_streams_the_greedy_answer(server: Server):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{server.port}/v1", api_key="unused", max_retries=0,
                           timeout=120)
    for question in QUESTIONS:
        messages = [{"role": "user", "content": question}]
        whole = client.chat.completions.create(model="served", messages=messages, max_tokens=12, temperature=0)
        chunks = list(client.chat.completions.create(model="served", messages=messages, max_tokens=12,
                                                     temperature=0, stream=True))
        assert chunks[0].choices[0].delta.role == "assistant"
        assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
        assert "".join(c.choices[0].delta.content or "" for c in chunks) == whole.choices[0].message.content
        assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason
        assert all(c.choices[0].finish_reason is None for c in chunks[:-1])


def test_raw_events_join_to_the_unstreamed_answer_and_end_with_done(server: Server):
    before = server.health()
    for question in QUESTIONS:
        status, _, whole = server.post(_chat(question))
        assert status == 200, whole
        status, kind, events = _stream(server, _chat(question))
        assert status == 200 and kind.startswith("text/event-stream")
        assert events[-1] == "[DONE]"
        chunks = [json.loads(e) for e in events[:-1]]
        assert {c["object"] for c in chunks} == {"chat.completion.chunk"} and len({c["id"] for c in chunks}) == 1
        assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
        assert [c["choices"][0]["finish_reason"] for c in chunks] == [None] * (len(chunks) - 1) + ["length"]
        assert chunks[-1]["choices"][0]["delta"] == {}
        assert _content(events) == whole["choices"][0]["message"]["content"]
    after = server.health()
    assert after["streams"] - before["streams"] == len(QUESTIONS) and after["streams_open"] == 0
    assert after["requests"] - before["requests"] == 2 * len(QUESTIONS)  # streamed ones are requests too


def test_a_streamed_request_is_refused_like_any_other(server: Server):
    status, kind, body = server.post({**_chat("hi", max_tokens=65), "stream": True})
    assert status == 400 and kind.startswith("application/json"), body
    assert "over this server's limit of 64" in body["error"]["message"]


def test_the_continuous_engine_streams_more_than_one_piece(served: Served):
    running = Server(create_app(served, LIMITS))
    try:
        _, _, events = _stream(running, _chat(QUESTIONS[0], max_tokens=24))
        assert len(events) - 3 > 1  # besides the role, the end and [DONE]: pieces as tokens came
    finally:
        running.close()


# ---- limits, timeouts, clients that leave ----

def test_a_full_queue_answers_a_streamed_request_429(served: Served):
    running = Server(create_app(served, LIMITS.model_copy(update={"max_queue": 1, "max_batch_size": 1})))
    release = running.hold_model()
    try:
        with ThreadPoolExecutor(2) as pool:
            waiting = []
            for count in (1, 2):  # one taken by the worker (which waits for the model), one in the queue
                waiting.append(pool.submit(_stream, running, _chat("Hi")))
                _wait_for(lambda count=count: running.waiting() == count)
            status, kind, body = running.post({**_chat("Hi"), "stream": True})
            assert status == 429 and kind.startswith("application/json") and "retry later" in body["error"]["message"]
            release.set()
            assert [f.result(timeout=120)[2][-1] for f in waiting] == ["[DONE]", "[DONE]"]
    finally:
        release.set()
        running.close()


def test_a_stream_past_the_request_timeout_ends_with_an_error_event(served: Served):
    running = Server(create_app(served, LIMITS.model_copy(update={"request_timeout_s": 1.0})))
    release = running.hold_model()
    try:
        status, _, events = _stream(running, _chat("Hi"))
    finally:
        release.set()
    try:
        assert status == 200 and json.loads(events[0])["choices"][0]["delta"]["role"] == "assistant"
        error = json.loads(events[-1])["error"]
        assert error["type"] == "server_error" and "request_timeout_s" in error["message"]
        info = running.health()
        assert info["status"] == "ok" and info["timeouts"] == 1 and info["streams_open"] == 0
    finally:
        running.close()


def test_a_client_that_leaves_mid_stream_frees_its_slot(served: Served, monkeypatch: pytest.MonkeyPatch):
    gate = StepGate()
    monkeypatch.setattr(DecodeBatch, "step", gate.wrap(DecodeBatch.step))
    running = Server(create_app(served, LIMITS.model_copy(update={"max_batch_size": 1})))  # one slot
    try:
        before = running.health()
        body = json.dumps({**_chat("Tell me a long story.", max_tokens=64), "stream": True}).encode()
        with socket.create_connection(("127.0.0.1", running.port), timeout=30) as sock:
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
            seen = b""
            for _ in range(20):  # a step at a time until a piece of the answer has arrived
                seen += sock.recv(65536)
                if seen.count(b'"content":"') >= 2:
                    break
                gate.let(1)
            assert seen.startswith(b"HTTP/1.1 200") and seen.count(b'"content":"') >= 2, seen[:300]
            assert running.health()["streams_open"] == 1
        _wait_for(lambda: running.health()["streams_open"] == 0)  # the server saw the client leave
        gate.open()
        _wait_for(lambda: running.batcher.stats["cancelled"] > before["cancelled"] and running.batcher.taken() == 0)
        info = running.health()
        assert info["requests"] == before["requests"] and info["disconnects"] == before["disconnects"] + 1
        assert running.batcher.stats["steps"] < 63  # it left the batch long before its 64 tokens
        status, _, answer = running.post(_chat("Hi", max_tokens=4))  # the one slot serves the next request
        assert status == 200 and answer["usage"]["completion_tokens"] == 4
        _wait_for(lambda: running.batcher.taken() == 0)  # the worker lets go of a job just after answering it
        info = running.health()
        assert info["queued"] == 0 and info["streams_open"] == 0 and info["requests"] == before["requests"] + 1
    finally:
        gate.open()
        running.close()


# ---- the pieces ----

@pytest.mark.parametrize("text", ["plain words and spaces", "  leading and trailing  ", "Ünïcödé — 雪だるま ☃ 🎉 done",
                                  "tabs\tand\nnewlines\n\n", "🎉🎉🎉"])
def test_incremental_text_joins_to_the_whole_decode(served: Served, text: str):
    tokenizer = served.tokenizer
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    whole = tokenizer.decode(ids, skip_special_tokens=True).strip()
    for size in (1, 2, 3):
        stream = IncrementalText(tokenizer)
        pieces = [stream.add(ids[i:i + size]) for i in range(0, len(ids), size)]
        assert all("\ufffd" not in p for p in pieces)  # never half of a character
        assert "".join(pieces) + stream.finish(whole) == whole
        assert "".join(pieces) == whole.rstrip() or size > 1  # one token at a time: all of it before the end


def test_scheduler_reset_drops_rows_and_cache(served: Served):
    tokenizer = served.tokenizer
    ids = [tokenizer(q, add_special_tokens=False)["input_ids"] for q in QUESTIONS[:2]]
    batch = DecodeBatch(served.model, tokenizer, share_prefixes=False)
    seqs = [Sequence(i, 8, Sampling()) for i in ids]
    batch.admit(seqs)
    batch.step()
    assert len(batch) == 2 and batch.cache is not None and batch.mask is not None
    assert sorted(map(id, batch.reset())) == sorted(map(id, seqs))  # every row, in the batch's order
    assert len(batch) == 0 and batch.rows == [] and batch.cache is None and batch.mask is None
    batch.step()  # nothing to decode: a no-op
    fresh = Sequence(ids[0], 3, Sampling())
    batch.admit([fresh])  # and it takes new rows as a new batch does
    while batch.rows:
        batch.step()
        batch.retire()
    alone = DecodeBatch(served.model, tokenizer, share_prefixes=False)
    again = Sequence(ids[0], 3, Sampling())
    alone.admit([again])
    while alone.rows:
        alone.step()
        alone.retire()
    assert fresh.tokens == again.tokens and fresh.finish == again.finish == "length"
