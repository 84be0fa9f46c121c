"""Continuous batching (llmft/serve/scheduler.py) on the tiny model of the real architecture: greedy
answers identical to generating each request alone while others join and leave mid-flight, per-request sampling, short
requests that finish while a long one keeps decoding, cancellation mid-decode, and opt-in MLflow
traces from the server."""

from __future__ import annotations

import copy
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from conftest import StepGate
from conftest import wait_for as _wait_for

from llmft.base_model import load_model
from llmft.config import DeployConfig
from llmft.config_serving import ServerLimits
from llmft.generation import Sampling, complete_batch
from llmft.precision import inference_dtype, native_bf16
from llmft.serve.app import Served, create_app, parse_chat
from llmft.serve.deploy import post_json
from llmft.serve.scheduler import PREFIX_MIN_TOKENS, DecodeBatch, Sequence, generate_continuous, supports

LIMITS = ServerLimits(max_tokens=24, default_max_tokens=4, max_input_tokens=200, max_batch_size=3, batch_wait_ms=5,
                      request_timeout_s=300)
QUESTIONS = ["Hi", "What is 2 plus 2?", "Name three colours of the rainbow, please.",
             "Explain in one sentence, for a beginner who writes Python, what a cache is and why it helps."]


@pytest.fixture(scope="module")
def served(tiny_model_path: str, tokenizer) -> Iterator[Served]:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # on a shared 2-core machine two torch threads run several times slower, not faster
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    yield Served("embedded-base", None, False, load_model(tiny_model_path).eval(), tokenizer)
    torch.set_num_threads(threads)


def _prompt(served: Served, question: str) -> str:
    from llmft.serve.app import serving_prompt

    return serving_prompt(served, [{"role": "user", "content": question}])




def test_greedy_is_identical_to_alone_with_requests_joining_mid_flight(served: Served):
    assert supports(served.model)
    prompts = [_prompt(served, q) for q in QUESTIONS]  # 4 prompt lengths
    budgets = [6, 10, 8, 12]
    alone = [complete_batch(served.model, served.tokenizer, [p], [b])[0] for p, b in zip(prompts, budgets,
                                                                                         strict=True)]
    ids = [served.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    # the longest prompt first, then shorter ones join after 2 and 5 steps (the cache is padded on the
    # left for the newcomers) and one after the first rows left (the cache is trimmed and regrown)
    requests = [(ids[3], budgets[3], Sampling()), (ids[0], budgets[0], Sampling()),
                (ids[2], budgets[2], Sampling()), (ids[1], budgets[1], Sampling())]
    together = generate_continuous(served.model, served.tokenizer, requests, join_after=[0, 2, 5, 9])
    assert together == [alone[3], alone[0], alone[2], alone[1]]
    assert {c.finish_reason for c in alone} <= {"stop", "length"}


def test_a_shared_system_turn_is_prefilled_once_and_answers_do_not_change(served: Served):
    from llmft.chat_format import render_generation_prompt

    tokenizer = served.tokenizer
    system = "You answer product questions for a shop. Be brief, plain and correct; never invent a price or a brand."
    prompts = [render_generation_prompt(tokenizer, [{"role": "system", "content": system},
                                                    {"role": "user", "content": q}]) for q in QUESTIONS]
    budgets = [4, 10, 6, 12]
    alone = [complete_batch(served.model, tokenizer, [p], [b])[0] for p, b in zip(prompts, budgets, strict=True)]
    ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    batch = DecodeBatch(served.model, tokenizer)
    seqs = [Sequence(i, b, Sampling()) for i, b in zip(ids, budgets, strict=True)]
    batch.admit(seqs[:1])  # nothing kept yet: prefilled whole
    batch.admit(seqs[1:3])  # they share the system turn with the first: it is kept, they prefill the rest
    for step in range(40):
        if step == 3:
            batch.admit(seqs[3:])  # joins mid-flight on the kept start; rows of other spans trim around it
        batch.retire()
        if not batch.rows:
            break
        batch.step()
    assert [s.completion(tokenizer) for s in seqs] == alone
    shared = min(len(i) for i in ids)
    shared = next(n for n in range(shared) if len({tuple(i[:n + 1]) for i in ids}) > 1)
    assert seqs[0].reused == 0 and {s.reused for s in seqs[1:]} == {shared} and shared >= PREFIX_MIN_TOKENS
    assert list(batch.prefixes.entries) == [tuple(ids[0][:shared])]


def test_sampling_is_per_request_and_greedy_rows_are_unaffected(served: Served):
    prompts = [_prompt(served, q) for q in QUESTIONS[:3]]
    ids = [served.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    greedy = complete_batch(served.model, served.tokenizer, [prompts[1]], [8])[0]
    mixed = generate_continuous(served.model, served.tokenizer,
                                [(ids[0], 8, Sampling(temperature=1.5, top_p=0.9)), (ids[1], 8, Sampling()),
                                 (ids[2], 8, Sampling(temperature=0.7, top_p=0.5))])
    assert mixed[1] == greedy
    assert all(1 <= c.completion_tokens <= 8 and c.prompt_tokens == len(i) for c, i in zip(mixed, ids, strict=True))


# ---- through the server's worker ----

@pytest.fixture(scope="module")
def app(served: Served) -> Any:
    return create_app(served, LIMITS)


def _submit(app: Any, question: str, max_tokens: int, **sampling: float) -> Any:
    batcher = app.state.batcher
    body = {"messages": [{"role": "user", "content": question}], "max_tokens": max_tokens, **sampling}
    return batcher.submit(parse_chat(body, batcher.served, batcher.limits))


@pytest.fixture
def gate(monkeypatch: pytest.MonkeyPatch) -> Iterator[StepGate]:
    held = StepGate()
    monkeypatch.setattr(DecodeBatch, "step", held.wrap(DecodeBatch.step))
    yield held
    held.open()


def test_a_short_request_finishes_while_a_long_one_keeps_decoding(app: Any, gate: StepGate):
    long = _submit(app, "Write a long story about a lighthouse keeper.", 24)
    gate.let(2)  # the long one is decoding, and now waits at the gate
    short = _submit(app, "Hi", 2)
    for _ in range(10):  # one step at a time until the short one is answered (2 tokens: a step or two)
        if short.future.done():
            break
        gate.let(1)
    completion, _ = short.future.result(timeout=300)
    assert completion.completion_tokens <= 2
    assert not long.future.done()  # it joined, finished and left while the long one went on
    gate.open()
    completion, _ = long.future.result(timeout=300)
    assert completion.finish_reason == "length" and completion.completion_tokens == 24


def test_max_batch_size_bounds_the_active_sequences_and_answers_match(app: Any, served: Served):
    batcher = app.state.batcher
    questions = [f"What is {i} times {i}?" for i in range(2, 7)]
    jobs = [_submit(app, q, 5) for q in questions]
    answers = [job.future.result(timeout=300)[0] for job in jobs]
    assert batcher.stats["largest_batch"] <= LIMITS.max_batch_size
    assert batcher.stats["prefix_tokens_reused"] > 0  # every request carries the same default system turn
    alone = complete_batch(served.model, served.tokenizer, [_prompt(served, questions[-1])], [5])[0]
    assert answers[-1] == alone  # admitted last, after others left: still the same tokens


def test_a_cancelled_request_leaves_the_batch_mid_decode(app: Any, gate: StepGate):
    batcher = app.state.batcher
    before = dict(batcher.stats)
    job = _submit(app, "Write a long story about a dragon.", 24)
    gate.let(1)
    job.future.cancel()  # what the server does for a client that left or timed out
    gate.open()
    _wait_for(lambda: batcher.stats["cancelled"] > before["cancelled"])
    steps = batcher.stats["steps"]
    assert steps - before["steps"] < 24 and batcher.stats["requests"] == before["requests"]
    completion, _ = _submit(app, "Hi", 2).future.result(timeout=300)  # the worker goes on
    assert completion.completion_tokens >= 1 and batcher.alive


def test_the_static_engine_is_still_selectable(served: Served):
    app = create_app(served, LIMITS.model_copy(update={"engine": "static"}))
    completion, _ = _submit(app, "What is 2 plus 2?", 4).future.result(timeout=300)
    assert completion == complete_batch(served.model, served.tokenizer, [_prompt(served, "What is 2 plus 2?")],
                                        [4])[0]
    assert app.state.batcher.stats["steps"] == 0 and app.state.batcher.stats["batches"] == 1


# ---- traces (deploy.tracing) ----

def test_in_bf16_the_batch_decodes_and_answers_match_alone(served: Served):
    """deploy.precision=bf16 (auto's choice on a CPU with AVX512-BF16 or AMX): the batched cache, its
    padding and the kept starts in bf16 give each request the greedy answer it gets alone in bf16."""
    assert inference_dtype("fp32") == torch.float32 and inference_dtype("bf16") == torch.bfloat16
    assert inference_dtype("auto") == (torch.bfloat16 if native_bf16() else torch.float32)
    model = copy.deepcopy(served.model).to(torch.bfloat16)
    prompts = [_prompt(served, q) for q in QUESTIONS]
    budgets = [6, 10, 8, 12]
    alone = [complete_batch(model, served.tokenizer, [p], [b])[0] for p, b in zip(prompts, budgets, strict=True)]
    ids = [served.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    requests = [(i, b, Sampling()) for i, b in zip(ids, budgets, strict=True)]
    together = generate_continuous(model, served.tokenizer, requests[::-1], join_after=[0, 2, 5, 9])
    assert together == alone[::-1]
    assert next(model.parameters()).dtype == torch.bfloat16


def test_deploy_keys_reach_the_server_limits():
    limits = DeployConfig(tracing=True, engine="static", share_prefixes=False).server_limits()
    assert limits.tracing is True and limits.engine == "static" and limits.share_prefixes is False
    assert '"tracing":true' in limits.model_dump_json()  # what deploy._spawn passes as --limits
    assert DeployConfig().server_limits().tracing is False and DeployConfig().engine == "continuous"


def test_with_tracing_on_each_request_is_a_trace_in_the_versions_experiment(served: Served, tmp_path, monkeypatch):
    import mlflow
    import uvicorn

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        experiment = mlflow.create_experiment("champion-experiment", artifact_location=(tmp_path / "art").as_uri())
        version = Served("models:/demo/3", "3", False, served.model, served.tokenizer, task="chat",
                         experiment_id=experiment)
        app = create_app(version, LIMITS.model_copy(update={"tracing": True}))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        _wait_for(lambda: server.started, timeout=60)
        try:
            for question, budget in [("Hi", 3), ("What is 2 plus 2?", 4)]:
                status, body = post_json(f"http://127.0.0.1:{port}/v1/chat/completions",
                                         {"messages": [{"role": "user", "content": question}], "max_tokens": budget})
                assert status == 200, body
        finally:
            server.should_exit = True
            thread.join(timeout=10)
        app.state.tracer.flush()
        assert app.state.tracer.stats == {"traces_logged": 2, "traces_dropped": 0, "trace_errors": 0}
        traces = mlflow.search_traces(locations=[experiment], return_type="list", flush=True)
        assert len(traces) == 2
        for trace in traces:
            assert trace.info.tags["llmft.model_version"] == "3"
            assert trace.info.tags["llmft.model_uri"] == "models:/demo/3"
            attributes = trace.data.spans[0].attributes
            assert attributes["llmft.prompt_tokens"] > 5 and 1 <= attributes["llmft.completion_tokens"] <= 4
            assert attributes["llmft.latency_ms"] > 0 and attributes["llmft.model_version"] == "3"
            assert trace.info.token_usage["output_tokens"] == attributes["llmft.completion_tokens"]
        assert create_app(version, LIMITS).state.tracer is None  # off: no tracer at all
    finally:
        mlflow.set_tracking_uri(previous)


def test_a_static_batch_survives_requests_tokenized_on_other_threads(served: Served):
    # the server tokenizes requests on worker threads while a batch is encoded; a padded tokenizer call
    # flips shared padding state, and once came back ragged ("Unable to create tensor")
    import threading

    prompts = [_prompt(served, q) for q in QUESTIONS]
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            served.tokenizer(prompts[0] * 3, add_special_tokens=False)

    threads = [threading.Thread(target=hammer) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        batches = [complete_batch(served.model, served.tokenizer, prompts, [1] * len(prompts)) for _ in range(15)]
    finally:
        stop.set()
        for t in threads:
            t.join()
    alone = [complete_batch(served.model, served.tokenizer, [p], [1])[0] for p in prompts]
    assert all(batch == alone for batch in batches)
