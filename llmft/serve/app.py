"""The model server: a registered model over HTTP, OpenAI-style, with concurrent requests batched.

    python -m llmft.serve.app --model-uri models:/NAME@champion --registry-name NAME --port 5055 [limits...]

Loads the model from the MLflow registry (the transformers artifacts that `register` logged) and
serves it with FastAPI under uvicorn, as MLflow's own scoring server does. Why not that server:
it runs each request's `predict` on its own in a small thread pool, so a hundred concurrent chats
are a hundred separate `generate` calls. Here one worker thread owns the model and batches:
- engine "continuous" (default, `llmft/serve/scheduler.py`): up to `max_batch_size` sequences decode
  together one token per step; new requests are prefilled and join between steps, finished ones
  (stop token, max_tokens, cancelled, timed out) leave at once, so a short answer never waits for a
  long one beside it. Models with sliding-window or linear-attention caches fall back to static.
- engine "static": the requests that arrive within `batch_wait_ms` (up to `max_batch_size`) are
  generated in one left-padded `generate` call that lasts as long as its longest answer.
With `tracing: true` each chat request is logged as an MLflow trace (prompt and completion tokens,
latency, model version) in the experiment of the served version's run, from a background thread.

Endpoints:
- POST /v1/chat/completions and /invocations: `{"messages": [...], "max_tokens": N, "temperature": t,
  "top_p": p}` -> an OpenAI `chat.completion` object (temperature 0 or absent: greedy; top_p must be
  in (0, 1]). A classifier takes `{"inputs": [text, ...]}` (or `{"text": ...}`) and returns label and scores.
- GET /health (and /ping): the model being served and request counters; 503 with the reason while
  the batch worker is down (a supervisor restarts it).
- POST /admin/load `{"model_uri": ..., "deadline_s": s}` (bearer token from the state folder): load another
  version of the configured registered model (`models:/NAME@alias` or `models:/NAME/VERSION`, nothing
  else) next to the running one, smoke-test it, and only then swap; on failure the old one keeps
  serving. One load at a time (another gets 409); past `deadline_s` it does not swap (504).

Hostile input is bounded before it costs anything (limits from `deploy.*`, see ServerLimits): a body
over `max_body_bytes` gets 413 before it is read (Content-Length, then counted while streaming); a
conversation longer than `max_input_tokens` x CHARS_PER_TOKEN_BOUND characters gets 413 before it is
tokenized, and parsing/tokenizing runs in a worker thread, never on the event loop; bodies being read
and parsed are capped in bytes (`max_bodies_in_flight`, serve/admission.py: beyond it 429 before the
body is read) and uvicorn runs with `limit_concurrency`; a full queue
(`max_queue`) gets 429 with Retry-After; a request not answered within `request_timeout_s` gets 504,
and the work of a timed-out or disconnected client is dropped before it reaches the model. Malformed
requests get 400, each with an OpenAI-style error message; the server keeps serving. Special-token
text in messages is escaped by the chat formatter, as in training. A model that needs custom code is
refused unless the server was started with --trust-remote-code.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import logging
import math
import os
import queue
import re
import threading
import time
import traceback
import uuid
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request  # module level: FastAPI resolves the handlers' string annotations here

from llmft.chat_format import CHARS_PER_TOKEN_BOUND, render_generation_prompt, with_system
from llmft.config import ConfigError, ServerLimits
from llmft.generation import Completion, Sampling, complete_batch
from llmft.serve.admin import LoadGuard, load_deadline_s
from llmft.serve.admission import BoundedPool, ByteBudget, body_reservation, connection_limit, parse_workers
from llmft.serve.bodies import RequestError, check_text, one_line, parse_json, render_checked
from llmft.serve.sampling import effective_temperature
from llmft.serve.scheduler import DecodeBatch, Sequence, supports

log = logging.getLogger("llmft.serve.app")

SMOKE_MESSAGES = [{"role": "user", "content": "Say hello in one short sentence."}]
SMOKE_TEXT = "The product arrived on time and works as described."
ROLES = ("system", "user", "assistant")
# what /admin/load accepts: a registered model by alias or version number, nothing else
LOAD_URI = re.compile(r"^models:/(?P<name>[A-Za-z0-9][\w.\-]*)"
                      r"(?:@(?P<alias>[A-Za-z0-9][\w\-]*)|/(?P<version>[1-9]\d*))$")


class QueueFull(RuntimeError):
    """More requests are waiting than `max_queue`."""


@dataclass
class Served:
    """A loaded model: what it is and where it came from."""

    model_uri: str
    version: str | None
    classifier: bool  # a sequence-classification head (labels and scores) or a generative LM
    model: Any
    tokenizer: Any
    labels: list[str] = field(default_factory=list)
    instruction: str | None = None  # the system message the model was trained with, applied to every request
    task: str | None = None  # the registered version's task tag, for /health
    loaded_at: float = field(default_factory=time.time)
    experiment_id: str | None = None  # the experiment of the version's run: where its traces go


def load_served(model_uri: str, trust_remote_code: bool = False) -> Served:
    """Load a registered model; one whose classes are not part of transformers (code that would run
    here) is refused unless the user set model.trust_remote_code (server --trust-remote-code)."""
    from mlflow import MlflowClient

    from llmft.registry.prompts import trained_instruction
    from llmft.registry.versions import load_registered

    parts = load_registered(model_uri, trust_remote_code)
    model, tokenizer = parts["model"].float().eval(), parts["tokenizer"]
    version, instruction, task, experiment_id = None, None, None, None
    if model_uri.startswith("models:/"):
        name, _, ref = model_uri[len("models:/"):].partition("@")
        client = MlflowClient()
        if ref:  # an alias: record which version it pointed at when loaded
            found = client.get_model_version_by_alias(name, ref)
        else:
            name, _, number = name.rpartition("/")
            found = client.get_model_version(name, number)
        tags = dict(found.tags)
        version, task = str(found.version), tags.get("task")
        instruction = trained_instruction(tags, tokenizer.chat_template or "", model_uri)
        if found.run_id:  # traces go to the experiment the version was trained in
            try:
                experiment_id = client.get_run(found.run_id).info.experiment_id
            except Exception:  # a deleted run: traces (if on) go to the default experiment
                log.warning("run %s of %s is gone; traces go to the default experiment", found.run_id, model_uri)
    if type(model).__name__.endswith("ForSequenceClassification"):
        labels = [model.config.id2label[i] for i in range(len(model.config.id2label))]
        return Served(model_uri, version, True, model, tokenizer, labels, task=task, experiment_id=experiment_id)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.config.use_cache = True
    return Served(model_uri, version, False, model, tokenizer, instruction=instruction, task=task,
                  experiment_id=experiment_id)


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


# ---- request parsing: every refusal names the field ----

@dataclass
class ChatRequest:
    prompt: str
    prompt_tokens: int
    max_tokens: int
    sampling: Sampling


def _number(body: dict[str, Any], key: str, default: float, low: float, high: float) -> float:
    value = body.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RequestError(f"'{key}' must be a number, got {type(value).__name__}", param=key)
    if not low <= value <= high:
        raise RequestError(f"'{key}' must be between {low} and {high}, got {value}", param=key)
    return float(value)


def char_limit(limits: ServerLimits) -> int:
    """No text longer than this can be max_input_tokens tokens: refused without tokenizing it."""
    return limits.max_input_tokens * CHARS_PER_TOKEN_BOUND


def parse_chat(body: Any, served: Served, limits: ServerLimits) -> ChatRequest:
    if not isinstance(body, dict):
        raise RequestError("request body must be a JSON object with 'messages'")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError("'messages' must be a non-empty list of {role, content} objects", param="messages")
    if len(messages) > limits.max_messages:
        raise RequestError(f"'messages' has {len(messages)} entries; the limit is {limits.max_messages}",
                           status=413, param="messages")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise RequestError(f"messages[{i}] must be {{role: system|user|assistant, content: string}}",
                               param=f"messages[{i}]")
        check_text(m["content"], f"messages[{i}].content")
    if messages[-1]["role"] == "assistant":
        raise RequestError("the last message must be from the user (or system), not the assistant",
                           param="messages")
    if body.get("stream"):
        raise RequestError("streaming is not supported; send stream: false", param="stream")
    if body.get("n", 1) != 1:
        raise RequestError("only n=1 is supported", param="n")
    raw_max = body.get("max_tokens", body.get("max_completion_tokens"))
    if raw_max is None:
        max_tokens = min(limits.default_max_tokens, limits.max_tokens)
    elif isinstance(raw_max, bool) or not isinstance(raw_max, int) or raw_max < 1:
        raise RequestError(f"'max_tokens' must be a positive integer, got {raw_max!r}", param="max_tokens")
    elif raw_max > limits.max_tokens:
        raise RequestError(f"'max_tokens' {raw_max} is over this server's limit of {limits.max_tokens}",
                           param="max_tokens")
    else:
        max_tokens = raw_max
    top_p = _number(body, "top_p", 1.0, 0.0, 1.0)
    if top_p <= 0:  # 0 keeps no token at all; refused rather than silently read as 1.0 (as vLLM does)
        raise RequestError("'top_p' must be greater than 0 and at most 1 (for deterministic answers send "
                           "temperature 0)", param="top_p")
    # below sampling.MIN_TEMPERATURE: greedy (1e-300 would overflow the logits and fail the batch)
    sampling = Sampling(temperature=effective_temperature(_number(body, "temperature", 0.0, 0.0, 2.0)), top_p=top_p)
    chars = sum(len(m["content"]) for m in messages)
    if chars > char_limit(limits):  # before tokenizing: 5 M characters would tokenize for seconds
        raise RequestError(f"the conversation is {chars} characters; this server accepts at most "
                           f"{limits.max_input_tokens} tokens (no more than {char_limit(limits)} characters)",
                           status=413, param="messages")
    prompt = render_checked(lambda: serving_prompt(served, messages))
    n_tokens = len(served.tokenizer(prompt, add_special_tokens=False)["input_ids"])
    if n_tokens > limits.max_input_tokens:
        raise RequestError(f"the conversation is {n_tokens} tokens; this server accepts at most "
                           f"{limits.max_input_tokens}", status=413, param="messages")
    return ChatRequest(prompt, n_tokens, max_tokens, sampling)


def serving_prompt(served: Served, messages: list[dict[str, str]]) -> str:
    """The prompt exactly as training rendered it: the trained instruction (unless the request brings
    its own system turn) and the model's own chat template, through the training formatter (which
    escapes special-token text in the content)."""
    return render_generation_prompt(served.tokenizer, with_system(served.instruction, messages))


def parse_texts(body: Any, served: Served, limits: ServerLimits) -> list[list[int]]:
    if isinstance(body, dict) and isinstance(body.get("text"), str):
        texts: Any = [body["text"]]
    else:
        texts = body.get("inputs") if isinstance(body, dict) else None
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) and t.strip() for t in texts):
        raise RequestError("send {'inputs': [text, ...]} with non-empty strings", param="inputs")
    for i, t in enumerate(texts):
        check_text(t, f"inputs[{i}]")
    if len(texts) > limits.max_inputs:
        raise RequestError(f"{len(texts)} inputs; the limit is {limits.max_inputs}", status=413, param="inputs")
    longest_chars = max(len(t) for t in texts)
    if longest_chars > char_limit(limits):
        raise RequestError(f"an input is {longest_chars} characters; this server accepts at most "
                           f"{limits.max_input_tokens} tokens (no more than {char_limit(limits)} characters)",
                           status=413, param="inputs")
    ids = [served.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    longest = max(len(i) for i in ids)
    if longest > limits.max_input_tokens:
        raise RequestError(f"an input is {longest} tokens; this server accepts at most {limits.max_input_tokens}",
                           status=413, param="inputs")
    return ids


# ---- batching ----

@dataclass
class _Job:
    request: ChatRequest
    future: Future
    deadline: float  # time.monotonic(); past it the client has had its 504 and nobody waits
    started: float = 0.0  # time.monotonic() when it joined the running batch


def _settle(future: Future, result: Any = None, exc: BaseException | None = None) -> None:
    """Set a job's outcome unless its client is gone: setting a cancelled future raises
    InvalidStateError, which once killed the worker thread."""
    if future.done():
        return
    try:
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(result)
    except InvalidStateError:  # cancelled between the check and the set
        pass


class Batcher:
    """One thread owns the model. Engine "continuous": it keeps up to max_batch_size sequences
    decoding together, admits waiting requests between steps and retires finished, cancelled and
    timed-out ones at once (scheduler.DecodeBatch). Engine "static": it takes whatever is waiting (up
    to a batch), drops requests whose client left or timed out, groups the rest by sampling settings
    and generates each group in one call. A supervisor thread restarts the worker if it ever dies;
    /health says so meanwhile."""

    RESTART_DELAYS_S = (0.5, 1.0, 2.0, 5.0, 10.0)  # a worker that keeps dying is restarted ever more slowly

    def __init__(self, served: Served, limits: ServerLimits):
        self.served, self.limits = served, limits
        self._jobs: queue.Queue[_Job] = queue.Queue(maxsize=limits.max_queue)
        self._model_lock = threading.Lock()  # a swap never lands in the middle of a batch
        self._current: list[_Job] = []
        # batches: generate calls (static) or prefill groups (continuous); steps: decoding steps (continuous)
        self.stats = {"requests": 0, "batches": 0, "largest_batch": 0, "completion_tokens": 0, "cancelled": 0,
                      "rejected_queue_full": 0, "worker_restarts": 0, "steps": 0,
                      "prefix_tokens_reused": 0}  # prompt tokens served from kept shared starts (continuous)
        self.worker_error: str | None = None  # why the worker last died
        self.worker_died_at: float | None = None
        self._batch_s = 1.0  # moving average of a batch's duration, for Retry-After
        self._worker = self._start_worker()
        threading.Thread(target=self._supervise, name="batcher-supervisor", daemon=True).start()

    # -- what the handlers call --

    def submit(self, request: ChatRequest) -> _Job:
        job = _Job(request, Future(), time.monotonic() + self.limits.request_timeout_s)
        try:
            self._jobs.put_nowait(job)
        except queue.Full:
            self.stats["rejected_queue_full"] += 1
            raise QueueFull(f"{self.limits.max_queue} requests are already waiting") from None
        return job

    def retry_after_s(self) -> int:
        """Seconds until the queue has likely drained by a batch or more."""
        batches = math.ceil(self._jobs.qsize() / self.limits.max_batch_size)
        return max(1, min(60, math.ceil(batches * self._batch_s)))

    @property
    def alive(self) -> bool:
        return self._worker.is_alive()

    def swap(self, served: Served) -> Served:
        with self._model_lock:
            old, self.served = self.served, served
        return old

    def run_exclusive(self, fn: Any, *args: Any) -> Any:
        """Run fn(served, *args) with the model to itself (classification, smoke tests)."""
        with self._model_lock:
            return fn(self.served, *args)

    def run_exclusive_by(self, deadline: float, fn: Any, *args: Any) -> Any:
        """run_exclusive, unless `deadline` (time.monotonic()) passes while waiting for the model:
        then TimeoutError, and nothing runs (its client has had its 504)."""
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not self._model_lock.acquire(timeout=remaining):
            raise TimeoutError("request timed out waiting for the model")
        try:
            return fn(self.served, *args)
        finally:
            self._model_lock.release()

    # -- the worker and its supervisor --

    def _start_worker(self) -> threading.Thread:
        worker = threading.Thread(target=self._run, name="batcher", daemon=True)
        worker.start()
        return worker

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # recorded for /health; the supervisor restarts the worker
            self.worker_error = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
            self.worker_died_at = time.time()
            log.error("batch worker died: %s", "".join(traceback.format_exception(exc)))
            for job in self._current:  # its clients get a 500 now, not a 504 later
                _settle(job.future, exc=RuntimeError(f"batch worker died: {self.worker_error}"))
            self._current = []

    def _supervise(self) -> None:
        deaths = 0
        while True:
            self._worker.join()
            delay = self.RESTART_DELAYS_S[min(deaths, len(self.RESTART_DELAYS_S) - 1)]
            deaths += 1
            time.sleep(delay)
            self.stats["worker_restarts"] += 1
            log.warning("restarting the batch worker (restart %d)", self.stats["worker_restarts"])
            started = time.monotonic()
            self._worker = self._start_worker()
            self._worker.join(timeout=60.0)
            if time.monotonic() - started >= 60.0:  # survived a minute: the next death starts the delays over
                deaths = 0

    def _take_batch(self) -> list[_Job]:
        jobs = [self._jobs.get()]
        deadline = time.monotonic() + self.limits.batch_wait_ms / 1000
        while len(jobs) < self.limits.max_batch_size:
            remaining = deadline - time.monotonic()
            try:
                jobs.append(self._jobs.get(timeout=max(remaining, 0)) if remaining > 0 else self._jobs.get_nowait())
            except queue.Empty:
                break
        return jobs

    def _take_more(self, room: int) -> list[_Job]:
        """Whatever is waiting, up to `room` jobs, without blocking: the running batch must go on."""
        jobs: list[_Job] = []
        while len(jobs) < room:
            try:
                jobs.append(self._jobs.get_nowait())
            except queue.Empty:
                break
        return jobs

    def _wanted(self, job: _Job) -> bool:
        """Does anyone still wait for this job? A disconnected or timed-out client cancelled it."""
        if job.future.cancelled() or time.monotonic() > job.deadline:
            _settle(job.future, exc=TimeoutError("request timed out"))
            self.stats["cancelled"] += 1
            return False
        return True

    def _done(self, job: _Job, completion: Completion, served: Served) -> None:
        self.stats["requests"] += 1
        self.stats["completion_tokens"] += completion.completion_tokens
        _settle(job.future, (completion, served))

    def _loop(self) -> None:
        if self.limits.engine == "continuous":
            self._loop_continuous()
        while True:
            self._current = jobs = self._take_batch()
            with self._model_lock:
                self._generate_static(self.served, jobs)
            self._current = []

    def _generate_static(self, served: Served, jobs: list[_Job]) -> None:
        """Each group of equal sampling settings in one `generate` call that runs to its longest answer."""
        groups: dict[Sampling, list[_Job]] = {}
        for job in jobs:
            groups.setdefault(job.request.sampling, []).append(job)
        for sampling, waiting in groups.items():
            group = [job for job in waiting if self._wanted(job)]  # checked again after each group
            if not group:
                continue
            started = time.monotonic()
            try:
                done = complete_batch(served.model, served.tokenizer, [j.request.prompt for j in group],
                                      [j.request.max_tokens for j in group], sampling)
            except Exception as exc:  # a failed batch fails its requests, never the server
                log.exception("generation failed for a batch of %d", len(group))
                for job in group:
                    _settle(job.future, exc=exc)
                continue
            self._batch_s = 0.8 * self._batch_s + 0.2 * (time.monotonic() - started)
            self.stats["batches"] += 1
            self.stats["largest_batch"] = max(self.stats["largest_batch"], len(group))
            for job, completion in zip(group, done, strict=True):
                self._done(job, completion, served)

    def _loop_continuous(self) -> None:
        """Iteration-level batching: between two decoding steps, admit what is waiting (up to
        max_batch_size active sequences), then decode one token for all, then retire the finished
        and the abandoned. Returns only if the served model cannot be batched this way."""
        batch: DecodeBatch | None = None
        batch_served: Served | None = None
        while True:
            active = batch is not None and len(batch) > 0
            if not active:
                jobs = self._take_batch()  # blocks; batch_wait_ms lets a burst share one prefill
            elif batch_served is self.served:
                jobs = self._take_more(self.limits.max_batch_size - len(batch))
            else:
                jobs = []  # a swap happened: the old model finishes its rows before new ones start
            self._current = [s.handle for s in batch.rows] + jobs if active else jobs
            with self._model_lock:
                if not active and (batch is None or batch_served is not self.served):
                    batch_served = self.served
                    if not supports(batch_served.model):  # e.g. sliding-window attention: static batches
                        log.warning("%s cannot be batched continuously; using static batches",
                                    batch_served.model_uri)
                        self._generate_static(batch_served, jobs)
                        self._current = []
                        return
                    batch = DecodeBatch(batch_served.model, batch_served.tokenizer,
                                        share_prefixes=self.limits.share_prefixes)
                self._advance(batch, batch_served, [job for job in jobs if self._wanted(job)])
            self._current = []

    def _advance(self, batch: DecodeBatch, served: Served, jobs: list[_Job]) -> None:
        """One iteration: prefill `jobs` into the batch, retire, decode a step, retire. A failure
        fails the requests it touched (all of the batch for a failed step), never the worker."""
        if jobs:
            tokenizer = served.tokenizer
            seqs = [Sequence(tokenizer(job.request.prompt, add_special_tokens=False)["input_ids"],
                             job.request.max_tokens, job.request.sampling, handle=job) for job in jobs]
            for s in seqs:
                s.handle.started = time.monotonic()
            try:
                batch.admit(seqs)
            except Exception as exc:
                log.exception("prefill failed for %d requests", len(seqs))
                self._fail_batch(batch, exc, seqs)
                return
            self.stats["batches"] += 1
            self.stats["prefix_tokens_reused"] += sum(s.reused for s in seqs)
        self._retire(batch, served)
        if not len(batch):
            return
        self.stats["largest_batch"] = max(self.stats["largest_batch"], len(batch))
        try:
            batch.step()
        except Exception as exc:
            log.exception("decoding step failed for a batch of %d", len(batch))
            self._fail_batch(batch, exc, [])
            return
        self.stats["steps"] += 1
        self._retire(batch, served)

    def _retire(self, batch: DecodeBatch, served: Served) -> None:
        for s in batch.retire(keep=lambda s: self._wanted(s.handle)):
            if s.finish is None:  # cancelled or timed out: _wanted settled it
                continue
            if s.error is not None:  # this row alone failed (scheduler._pick); the others go on
                log.warning("generation failed for one request: %s", one_line(s.error))
                _settle(s.handle.future, exc=s.error)
                continue
            self._batch_s = 0.8 * self._batch_s + 0.2 * (time.monotonic() - s.handle.started)
            self._done(s.handle, s.completion(served.tokenizer), served)

    def _fail_batch(self, batch: DecodeBatch, exc: Exception, joining: list[Sequence]) -> None:
        """A prefill or step failed: the cache may be half-updated, so every row in it goes."""
        for s in [*batch.rows, *joining]:
            _settle(s.handle.future, exc=exc)
        batch.rows, batch.cache, batch.mask = [], None, None


class Tracer:
    """Logs each answered chat request as an MLflow trace (deploy.tracing). A background thread does
    the logging, so a request never waits for the tracking store; a full backlog drops traces (counted)
    rather than holding memory or slowing the server."""

    BACKLOG = 1000

    def __init__(self) -> None:
        self._items: queue.Queue[tuple[Any, ...]] = queue.Queue(maxsize=self.BACKLOG)
        self.stats = {"traces_logged": 0, "traces_dropped": 0, "trace_errors": 0}
        threading.Thread(target=self._run, name="tracer", daemon=True).start()

    def record(self, served: Served, request: ChatRequest, completion: Completion, started_ns: int,
               ended_ns: int) -> None:
        try:
            self._items.put_nowait((served, request, completion, started_ns, ended_ns))
        except queue.Full:
            self.stats["traces_dropped"] += 1

    def _run(self) -> None:
        while True:
            item = self._items.get()
            try:
                self._log(*item)
                self.stats["traces_logged"] += 1
            except Exception as exc:  # the tracking store being down never affects serving
                self.stats["trace_errors"] += 1
                log.warning("could not log a trace: %s", f"{type(exc).__name__}: {exc}".splitlines()[0][:300])
            finally:
                self._items.task_done()

    def flush(self, timeout_s: float = 30.0) -> None:
        """Wait until the backlog is logged (tests, shutdown)."""
        deadline = time.monotonic() + timeout_s
        while self._items.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)

    @staticmethod
    def _log(served: Served, request: ChatRequest, completion: Completion, started_ns: int, ended_ns: int) -> None:
        import mlflow
        from mlflow.tracing.constant import SpanAttributeKey

        usage = {"input_tokens": completion.prompt_tokens, "output_tokens": completion.completion_tokens,
                 "total_tokens": completion.prompt_tokens + completion.completion_tokens}
        attributes = {"llmft.model_uri": served.model_uri, "llmft.model_version": served.version or "",
                      "llmft.prompt_tokens": completion.prompt_tokens,
                      "llmft.completion_tokens": completion.completion_tokens,
                      "llmft.latency_ms": round((ended_ns - started_ns) / 1e6, 1),
                      "llmft.finish_reason": completion.finish_reason,
                      "llmft.max_tokens": request.max_tokens, "llmft.temperature": request.sampling.temperature,
                      SpanAttributeKey.CHAT_USAGE: usage}
        tags = {"llmft.model_uri": served.model_uri, "llmft.model_version": served.version or "",
                "llmft.task": served.task or ""}
        span = mlflow.start_span_no_context("chat", span_type="LLM", inputs={"prompt": request.prompt},
                                            attributes=attributes, tags=tags, experiment_id=served.experiment_id,
                                            start_time_ns=started_ns)
        span.end(outputs={"text": completion.text, "finish_reason": completion.finish_reason}, end_time_ns=ended_ns)


def chat_response(completion: Completion, served: Served) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": served.model_uri if served.version is None else f"{served.model_uri} (v{served.version})",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": completion.text},
                     "finish_reason": completion.finish_reason}],
        "usage": {"prompt_tokens": completion.prompt_tokens, "completion_tokens": completion.completion_tokens,
                  "total_tokens": completion.prompt_tokens + completion.completion_tokens},
    }


def classify(served: Served, ids: list[list[int]]) -> dict[str, Any]:
    from llmft.tasks.classification import predict

    classes, probs = predict(served.model, ids, served.tokenizer.pad_token_id, batch_size=16, progress=False)
    return {"predictions": [{"label": served.labels[c], "score": p[c],
                             "scores": dict(zip(served.labels, p, strict=True))} for c, p in zip(classes, probs,
                                                                                                 strict=True)]}


def smoke(served: Served, limits: ServerLimits) -> str:
    """A candidate must answer before it takes traffic: a non-empty reply, or a known label."""
    if served.classifier:
        ids = parse_texts({"inputs": [SMOKE_TEXT]}, served, limits)
        label = classify(served, ids)["predictions"][0]["label"]
        if label not in served.labels:
            raise RuntimeError(f"smoke request returned unknown label {label!r}")
        return label
    request = parse_chat({"messages": SMOKE_MESSAGES, "max_tokens": 16}, served, limits)
    completion = complete_batch(served.model, served.tokenizer, [request.prompt], [16])[0]
    if not completion.text:
        raise RuntimeError("smoke request got an empty reply")
    return completion.text


def _prepare(raw: bytes, served: Served, limits: ServerLimits) -> tuple[str, Any]:
    """Parse and validate a request (JSON, lengths, tokenizing): CPU work, run in a worker thread."""
    body = parse_json(raw)
    if served.classifier:
        return "classify", parse_texts(body, served, limits)
    return "chat", parse_chat(body, served, limits)


async def _client_gone(request: Request) -> None:
    """Returns when the client disconnects (the body has been read, so only http.disconnect comes)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


# ---- the app ----

def create_app(served: Served, limits: ServerLimits, admin_token: str | None = None,
               registry_name: str | None = None, trust_remote_code: bool = False) -> Any:
    """The HTTP app. `registry_name`: the registered model /admin/load may load versions of (None:
    it loads nothing); `trust_remote_code`: whether a loaded model may run code from its artifacts."""
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse
    from starlette.requests import ClientDisconnect

    limits = ServerLimits.checked(limits.model_dump())  # also catches limits built without validation
    app = FastAPI(title="llmft model server")
    batcher = Batcher(served, limits)
    tracer = Tracer() if limits.tracing else None  # off: nothing is created and nothing runs per request
    counters = {"errors_4xx": 0, "errors_5xx": 0, "timeouts": 0, "disconnects": 0}
    started = time.time()
    # bodies being read or parsed, in bytes: a burst of large junk bodies gets 429 before it is read
    bodies = ByteBudget(limits.max_bodies_in_flight * limits.max_body_bytes)
    parsing = BoundedPool(parse_workers(), limits.max_queue + limits.max_bodies_in_flight, "parse")
    # one thread classifies (the model takes one at a time anyway); a waiting job whose client had its
    # 504 is dropped, so timed-out requests hold no thread; at most max_queue are held
    classifying = BoundedPool(1, limits.max_queue, "classify")
    app.state.batcher = batcher
    app.state.bodies, app.state.parsing, app.state.classifying = bodies, parsing, classifying
    loads = app.state.loads = LoadGuard()  # one /admin/load at a time, no swap past its caller's deadline
    app.state.tracer = tracer

    def error(status: int, message: str, param: str | None = None, headers: dict[str, str] | None = None
              ) -> JSONResponse:
        counters["errors_4xx" if status < 500 else "errors_5xx"] += 1
        kind = "invalid_request_error" if status < 500 else "server_error"
        return JSONResponse({"error": {"message": message, "type": kind, "param": param}}, status_code=status,
                            headers=headers)

    async def read_body(request: Request) -> bytes:
        """The body, refused with 413 as soon as it is known to be over max_body_bytes: from its
        Content-Length before reading anything, else by counting while it streams in."""
        cap = limits.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                raise RequestError("invalid Content-Length header")
            if int(declared) > cap:
                raise RequestError(f"request body is {declared} bytes; this server accepts at most {cap} "
                                   "(deploy.max_body_bytes)", status=413)
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > cap:
                raise RequestError(f"request body is over {cap} bytes, the most this server accepts "
                                   "(deploy.max_body_bytes)", status=413)
            chunks.append(chunk)
        return b"".join(chunks)

    def bearer_ok(request: Request) -> bool:
        given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        # bytes, not str: compare_digest raises TypeError on non-ASCII text (a 500 for a bad token)
        return bool(admin_token) and hmac.compare_digest(given.encode("utf-8", "surrogateescape"),
                                                         str(admin_token).encode("utf-8"))

    @app.get("/health")
    @app.get("/ping")
    async def health() -> Any:
        current = batcher.served
        info = {"status": "ok", "pid": os.getpid(), "model_uri": current.model_uri, "version": current.version,
                "task": current.task, "classifier": current.classifier,
                "loaded_at": current.loaded_at, "uptime_s": round(time.time() - started, 1),
                "limits": limits.model_dump(), "queued": batcher._jobs.qsize(),
                "bodies_in_flight_bytes": bodies.used, "rejected_bodies_in_flight": bodies.refused,
                "classify_held": classifying.held,
                "last_worker_error": batcher.worker_error, **batcher.stats, **counters,
                **(tracer.stats if tracer else {})}
        if not batcher.alive:  # no request would be answered: say so, and why
            return JSONResponse({**info, "status": "unavailable",
                                 "reason": f"batch worker died ({batcher.worker_error}); restarting"},
                                status_code=503)
        return info

    async def chat(parsed: ChatRequest, request: Request, arrived_ns: int) -> Any:
        try:
            job = batcher.submit(parsed)
        except QueueFull as exc:
            return error(429, f"server busy: {exc}; retry later", headers={"Retry-After": str(batcher.retry_after_s())})
        answer = asyncio.wrap_future(job.future)
        gone = asyncio.ensure_future(_client_gone(request))
        try:
            done, _ = await asyncio.wait({answer, gone}, timeout=limits.request_timeout_s,
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
        if answer not in done:
            job.future.cancel()  # the worker skips it (or drops its result): nobody waits for it any more
            answer.cancel()
            if gone in done:
                counters["disconnects"] += 1
                return error(499, "client closed the request")  # nobody reads it; logged as such
            counters["timeouts"] += 1
            return error(504, f"no answer within {limits.request_timeout_s:g} s (deploy.request_timeout_s)")
        try:
            completion, used = answer.result()
        except Exception as exc:
            return error(500, f"generation failed: {type(exc).__name__}: {exc}")
        if tracer is not None:
            tracer.record(used, parsed, completion, arrived_ns, time.time_ns())
        return chat_response(completion, used)

    async def classify_request(ids: list[list[int]]) -> Any:
        deadline = time.monotonic() + limits.request_timeout_s
        job = classifying.submit(batcher.run_exclusive_by, deadline, classify, ids)
        if job is None:
            return error(429, f"server busy: {limits.max_queue} requests are already waiting; retry later",
                         headers={"Retry-After": "1"})
        try:
            return await asyncio.wait_for(asyncio.wrap_future(job), timeout=limits.request_timeout_s)
        except TimeoutError:  # wait_for cancelled the job: a waiting one never runs, its slot is free
            counters["timeouts"] += 1
            return error(504, f"no answer within {limits.request_timeout_s:g} s (deploy.request_timeout_s)")

    @app.post("/invocations")
    @app.post("/v1/chat/completions")
    async def invocations(request: Request) -> Any:
        arrived_ns = time.time_ns()  # a trace's latency: from arrival to the answer
        held = bodies.reserve(body_reservation(request.headers.get("content-length"), limits.max_body_bytes))
        if held is None:  # before reading a byte: no queue of bodies to read and parse
            return error(429, f"server busy: {limits.max_bodies_in_flight} request bodies' worth is being read "
                         "and parsed (deploy.max_bodies_in_flight); retry later", headers={"Retry-After": "1"})
        job = None
        try:
            raw = await read_body(request)
            held.shrink(len(raw))
            # parsing and tokenizing off the event loop, in their own threads; the bytes stay held until
            # the parse ends, even if its client leaves first
            job = parsing.submit(_prepare, raw, batcher.served, limits)
            if job is None:
                return error(429, "server busy: too many requests are being parsed; retry later",
                             headers={"Retry-After": "1"})
            job.add_done_callback(held.release)
            del raw
            kind, parsed = await asyncio.wrap_future(job)
        except RequestError as exc:
            return error(exc.status, str(exc), exc.param)
        except ClientDisconnect:
            counters["disconnects"] += 1
            return error(499, "client closed the request")
        except Exception as exc:  # parsing touches only the body: whatever else fails there is the body's fault
            log.warning("refused a request body that failed to parse: %s", one_line(exc))
            return error(400, f"could not read the request: {one_line(exc, 200)}")
        finally:
            if job is None:
                held.release()
        if kind == "classify":
            return await classify_request(parsed)
        return await chat(parsed, request, arrived_ns)

    @app.post("/admin/load")
    async def load(request: Request) -> Any:
        if not bearer_ok(request):
            return error(401, "admin token required")
        try:
            body = parse_json(await read_body(request))
            uri = check_load_uri(body.get("model_uri") if isinstance(body, dict) else None, registry_name)
            within = load_deadline_s(body)
        except RequestError as exc:
            return error(exc.status, str(exc), exc.param)
        if not loads.begin(uri):  # two candidates in memory at once, and a race over which one serves
            return error(409, f"{loads.loading} is being loaded; retry when that load has ended", "model_uri")
        deadline = loads.deadline(within)

        def load_and_swap() -> tuple[Served | None, Served, str]:
            candidate = load_served(uri, trust_remote_code)
            answer = smoke(candidate, limits)
            if loads.expired(deadline):  # the deploy that asked has given up and kept the old version
                return None, candidate, answer
            return batcher.swap(candidate), candidate, answer

        try:
            old, candidate, answer = await asyncio.wrap_future(loads.run(load_and_swap))
        except Exception as exc:  # the old model keeps serving
            log.warning("refused %s: %s", uri, exc)
            return JSONResponse({"swapped": False, "serving": batcher.served.model_uri,
                                 "serving_version": batcher.served.version,
                                 "reason": f"{type(exc).__name__}: {exc}".splitlines()[0][:500]}, status_code=422)
        if old is None:
            log.warning("not swapping in %s: it loaded after the caller's deadline_s=%g", uri, within)
            return JSONResponse({"swapped": False, "serving": batcher.served.model_uri,
                                 "serving_version": batcher.served.version,
                                 "reason": f"loading and smoke-testing {uri} took longer than deadline_s={within:g}; "
                                           "not swapped"}, status_code=504)
        log.info("now serving %s (v%s), was %s (v%s)", candidate.model_uri, candidate.version, old.model_uri,
                 old.version)
        return {"swapped": True, "serving": candidate.model_uri, "serving_version": candidate.version,
                "previous": old.model_uri, "previous_version": old.version, "smoke_response": answer}

    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="serve a registered model over HTTP")
    parser.add_argument("--model-uri", required=True)
    parser.add_argument("--registry-name", help="registered model whose versions /admin/load may load "
                                                "(default: the one in --model-uri)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5055)
    parser.add_argument("--admin-token-file", help="file holding the bearer token for /admin/load")
    parser.add_argument("--limits", default="{}", help="JSON of deploy.* limits (ServerLimits); defaults otherwise")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="let a model run code from its artifacts (model.trust_remote_code: true)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:  # refused at start, in one line, rather than a batcher that waits forever
        limits = ServerLimits.checked(args.limits)
    except ConfigError as exc:
        raise SystemExit(f"llmft.serve.app: {exc}") from None
    registry_name = args.registry_name
    if registry_name is None and (found := LOAD_URI.match(args.model_uri)):
        registry_name = found["name"]
    token = None
    if args.admin_token_file:
        with open(args.admin_token_file, encoding="utf-8") as fh:
            token = fh.read().strip()
    served = load_served(args.model_uri, args.trust_remote_code)
    log.info("loaded %s (v%s, %s); smoke: %s", served.model_uri, served.version, served.task, smoke(served, limits))
    import uvicorn

    uvicorn.run(create_app(served, limits, token, registry_name, args.trust_remote_code), host=args.host,
                port=args.port, log_level="warning", backlog=2048, timeout_keep_alive=30,
                limit_concurrency=connection_limit(limits))


if __name__ == "__main__":
    main()
