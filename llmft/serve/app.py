"""The model server: a registered model over HTTP, OpenAI-style, with concurrent requests batched.

    python -m llmft.serve.app --model-uri models:/NAME@champion --registry-name NAME --port 5055 [limits...]

Loads the model from the MLflow registry (serve/loading.py) and serves it with FastAPI under uvicorn,
as MLflow's own scoring server does. Why not that server: it runs each request's `predict` on its own
in a small thread pool, so a hundred concurrent chats are a hundred separate `generate` calls. Here
one worker thread owns the model and batches (serve/batcher.py: continuous batching by default, static
batches as a fallback). With `tracing: true` each chat request is logged as an MLflow trace
(serve/tracing.py) from a background thread.

Endpoints:
- POST /v1/chat/completions and /invocations: `{"messages": [...], "max_tokens": N, "temperature": t,
  "top_p": p, "stream": bool}` -> an OpenAI `chat.completion` object (temperature 0 or absent: greedy;
  top_p must be in (0, 1]); with `"stream": true`, `chat.completion.chunk` server-sent events as the
  tokens are generated, then `data: [DONE]` (serve/streaming.py). A classifier takes
  `{"inputs": [text, ...]}` (or `{"text": ...}`) and returns label and scores. Bodies: serve/protocol.py.
- GET /health (and /ping): the model being served and request counters; 503 with the reason while
  the batch worker is down (a supervisor restarts it).
- POST /admin/load `{"model_uri": ..., "deadline_s": s}` (bearer token from the state folder): load another
  version of the configured registered model next to the running one, smoke-test it, and only then
  swap; on failure the old one keeps serving. One load at a time (another gets 409); past `deadline_s`
  it does not swap (504). See serve/admin.py.

Hostile input is bounded before it costs anything (limits from `deploy.*`, see ServerLimits): a body
over `max_body_bytes` gets 413 before it is read (Content-Length, then counted while streaming); a
conversation longer than `max_input_tokens` x CHARS_PER_TOKEN_BOUND characters gets 413 before it is
tokenized, and parsing/tokenizing runs in a worker thread, never on the event loop; bodies being read
and parsed are capped in bytes (`max_bodies_in_flight`, serve/admission.py: beyond it 429 before the
body is read) and uvicorn runs with `limit_concurrency`; a full queue (`max_queue`) gets 429 with
Retry-After, streamed or not; a request not answered within `request_timeout_s` gets 504, and the work
of a timed-out or disconnected client (a streamed one included) is dropped before it reaches the
model, or leaves the running batch at the next step. Malformed requests get 400, each with an
OpenAI-style one-line error message (the RequestError handler); the server keeps serving. Special-token
text in messages is escaped by the chat formatter, as in training. A model that needs custom code is
refused unless the server was started with --trust-remote-code.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import time
from typing import Any

from llmft.extras import missing

try:  # the serve extra
    from fastapi import FastAPI, Request  # module level: FastAPI resolves the handlers' string annotations here
    from fastapi.responses import JSONResponse, Response, StreamingResponse
    from starlette.background import BackgroundTask
    from starlette.requests import ClientDisconnect
except ModuleNotFoundError as exc:
    raise missing(exc, "serve", "the model server (llmft deploy, python -m llmft.serve.app)") from None

from llmft.config_serving import ServerLimits
from llmft.generation import Completion
from llmft.serve.admin import LOAD_URI, LoadGuard, check_load_uri, load_deadline_s
from llmft.serve.admission import BoundedPool, ByteBudget, body_reservation, parse_workers, read_body
from llmft.serve.batcher import Batcher, QueueFull
from llmft.serve.bodies import RequestError, one_line, parse_json
from llmft.serve.command import serve
from llmft.serve.inference import classify, smoke
from llmft.serve.loading import Served, load_served
from llmft.serve.parsing import ChatRequest, parse_chat, parse_texts, serving_prompt
from llmft.serve.protocol import ErrorBody, chat_completion
from llmft.serve.state import ServerState
from llmft.serve.streaming import StreamedChat, TokenFeed
from llmft.serve.tracing import Tracer

# the names callers of the single-module server imported from here
__all__ = ["LOAD_URI", "Batcher", "ChatRequest", "QueueFull", "Served", "Tracer", "check_load_uri", "classify",
           "create_app", "load_served", "main", "parse_chat", "parse_texts", "serving_prompt", "smoke"]

log = logging.getLogger(__name__)


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


class ModelServer:
    """The handlers and what they share. `_prepare`, `classify`, `load_served` and `smoke` are looked
    up in this module when called, so a test (or an embedding program) can replace them."""

    def __init__(self, served: Served, limits: ServerLimits, admin_token: str | None, registry_name: str | None,
                 trust_remote_code: bool) -> None:
        self.limits, self.admin_token = limits, admin_token
        self.registry_name, self.trust_remote_code = registry_name, trust_remote_code
        self.batcher = Batcher(served, limits)
        self.tracer = Tracer() if limits.tracing else None  # off: nothing is created and nothing runs per request
        self.state = ServerState()
        # bodies being read or parsed, in bytes: a burst of large junk bodies gets 429 before it is read
        self.bodies = ByteBudget(limits.max_bodies_in_flight * limits.max_body_bytes)
        self.parsing = BoundedPool(parse_workers(), limits.max_queue + limits.max_bodies_in_flight, "parse")
        # one thread classifies (the model takes one at a time anyway); a waiting job whose client had its
        # 504 is dropped, so timed-out requests hold no thread; at most max_queue are held
        self.classifying = BoundedPool(1, limits.max_queue, "classify")
        self.loads = LoadGuard()  # one /admin/load at a time, no swap past its caller's deadline

    # -- answers shared by the handlers --

    def error(self, status: int, message: str, param: str | None = None, headers: dict[str, str] | None = None
              ) -> JSONResponse:
        self.state.refused(status)
        return JSONResponse(ErrorBody.of(status, message, param).model_dump(), status_code=status, headers=headers)

    async def refused(self, _request: Request, exc: Exception) -> JSONResponse:
        """The app's handler for RequestError: its status, message and field, as an OpenAI error."""
        status, param = (exc.status, exc.param) if isinstance(exc, RequestError) else (400, None)
        return self.error(status, str(exc), param)

    def _busy(self, exc: QueueFull) -> JSONResponse:
        return self.error(429, f"server busy: {exc}; retry later",
                          headers={"Retry-After": str(self.batcher.retry_after_s())})

    def _timed_out(self) -> JSONResponse:
        self.state.timeouts += 1
        return self.error(504, f"no answer within {self.limits.request_timeout_s:g} s (deploy.request_timeout_s)")

    def _traced(self, request: ChatRequest, arrived_ns: int, completion: Completion, used: Served) -> None:
        if self.tracer is not None:  # a trace's latency: from arrival to the answer
            self.tracer.record(used, request, completion, arrived_ns, time.time_ns())

    # -- GET /health --

    async def health(self) -> JSONResponse:
        current, batcher = self.batcher.served, self.batcher
        info = {"status": "ok", "pid": os.getpid(), "model_uri": current.model_uri, "version": current.version,
                "task": current.task, "classifier": current.classifier,
                "dtype": str(current.model.dtype).removeprefix("torch."),
                "loaded_at": current.loaded_at, "uptime_s": self.state.uptime_s(),
                "limits": self.limits.model_dump(), "queued": batcher.queue_depth(),
                "bodies_in_flight_bytes": self.bodies.used, "rejected_bodies_in_flight": self.bodies.refused,
                "classify_held": self.classifying.held,
                "last_worker_error": batcher.worker_error, **batcher.stats, **self.state.counters(),
                **(self.tracer.stats if self.tracer else {})}
        if not batcher.alive:  # no request would be answered: say so, and why
            return JSONResponse({**info, "status": "unavailable",
                                 "reason": f"batch worker died ({batcher.worker_error}); restarting"},
                                status_code=503)
        return JSONResponse(info)

    # -- POST /invocations, /v1/chat/completions --

    async def invocations(self, request: Request) -> Response:
        arrived_ns = time.time_ns()
        parsed = await self._parse(request)
        if isinstance(parsed, Response):
            return parsed
        kind, work = parsed
        if kind == "classify":
            return await self._classify(work)
        if work.stream:
            return self._stream(work, request, arrived_ns)
        return await self._chat(work, request, arrived_ns)

    async def _parse(self, request: Request) -> tuple[str, Any] | Response:
        """The body read (within the byte budget) and parsed in a worker thread; a refusal otherwise."""
        held = self.bodies.reserve(body_reservation(request.headers.get("content-length"), self.limits.max_body_bytes))
        if held is None:  # before reading a byte: no queue of bodies to read and parse
            return self.error(429, f"server busy: {self.limits.max_bodies_in_flight} request bodies' worth is being "
                              "read and parsed (deploy.max_bodies_in_flight); retry later",
                              headers={"Retry-After": "1"})
        job = None
        try:
            raw = await read_body(request, self.limits.max_body_bytes)
            held.shrink(len(raw))
            # the bytes stay held until the parse ends, even if its client leaves first
            job = self.parsing.submit(_prepare, raw, self.batcher.served, self.limits)
            if job is None:
                return self.error(429, "server busy: too many requests are being parsed; retry later",
                                  headers={"Retry-After": "1"})
            job.add_done_callback(held.release)
            del raw
            return await asyncio.wrap_future(job)
        except RequestError:
            raise  # answered by the app's RequestError handler
        except ClientDisconnect:
            self.state.disconnects += 1
            return self.error(499, "client closed the request")
        except Exception as exc:  # parsing touches only the body: whatever else fails there is the body's fault
            log.warning("refused a request body that failed to parse: %s", one_line(exc))
            return self.error(400, f"could not read the request: {one_line(exc, 200)}")
        finally:
            if job is None:
                held.release()

    async def _chat(self, parsed: ChatRequest, request: Request, arrived_ns: int) -> Response:
        try:
            job = self.batcher.submit(parsed)
        except QueueFull as exc:
            return self._busy(exc)
        answer = asyncio.wrap_future(job.future)
        gone = asyncio.ensure_future(_client_gone(request))
        try:
            done, _ = await asyncio.wait({answer, gone}, timeout=self.limits.request_timeout_s,
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
        if answer not in done:
            job.future.cancel()  # the worker skips it (or drops its result): nobody waits for it any more
            answer.cancel()
            if gone in done:
                self.state.disconnects += 1
                return self.error(499, "client closed the request")  # nobody reads it; logged as such
            return self._timed_out()
        try:
            completion, used = answer.result()
        except Exception as exc:
            return self.error(500, f"generation failed: {type(exc).__name__}: {exc}")
        self._traced(parsed, arrived_ns, completion, used)
        return JSONResponse(chat_completion(completion, used).model_dump())

    def _stream(self, parsed: ChatRequest, request: Request, arrived_ns: int) -> Response:
        """Queued like any chat request (a full queue is a plain 429), then answered as events."""
        feed = TokenFeed(asyncio.get_running_loop())
        try:
            job = self.batcher.submit(parsed, on_tokens=feed.on_tokens)
        except QueueFull as exc:
            return self._busy(exc)
        job.future.add_done_callback(feed.on_settled)
        self.state.streams += 1
        chat = StreamedChat(job.future, feed, self.batcher.served.name, job.deadline, self.limits.request_timeout_s,
                            self.state, lambda completion, used: self._traced(parsed, arrived_ns, completion, used))
        # the job is cancelled when the events end, and (background) when the response ends however it ends
        return StreamingResponse(chat.events(lambda: _client_gone(request)), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
                                 background=BackgroundTask(job.future.cancel))

    async def _classify(self, ids: list[list[int]]) -> Response:
        deadline = time.monotonic() + self.limits.request_timeout_s
        job = self.classifying.submit(self.batcher.run_exclusive_by, deadline, classify, ids)
        if job is None:
            return self.error(429, f"server busy: {self.limits.max_queue} requests are already waiting; retry later",
                              headers={"Retry-After": "1"})
        try:
            result = await asyncio.wait_for(asyncio.wrap_future(job), timeout=self.limits.request_timeout_s)
        except TimeoutError:  # wait_for cancelled the job: a waiting one never runs, its slot is free
            return self._timed_out()
        return JSONResponse(result.model_dump())

    # -- POST /admin/load --

    def _bearer_ok(self, request: Request) -> bool:
        given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        # bytes, not str: compare_digest raises TypeError on non-ASCII text (a 500 for a bad token)
        return bool(self.admin_token) and hmac.compare_digest(given.encode("utf-8", "surrogateescape"),
                                                              str(self.admin_token).encode("utf-8"))

    def _load_and_swap(self, uri: str, deadline: float | None) -> tuple[Served | None, Served, str]:
        candidate = load_served(uri, self.trust_remote_code, self.limits.precision)
        answer = smoke(candidate, self.limits)
        if self.loads.expired(deadline):  # the deploy that asked has given up and kept the old version
            return None, candidate, answer
        return self.batcher.swap(candidate), candidate, answer

    async def load(self, request: Request) -> Response:
        if not self._bearer_ok(request):
            return self.error(401, "admin token required")
        body = parse_json(await read_body(request, self.limits.max_body_bytes))
        uri = check_load_uri(body.get("model_uri") if isinstance(body, dict) else None, self.registry_name)
        within = load_deadline_s(body)
        if not self.loads.begin(uri):  # two candidates in memory at once, and a race over which one serves
            return self.error(409, f"{self.loads.loading} is being loaded; retry when that load has ended",
                              "model_uri")
        deadline = self.loads.deadline(within)
        try:
            swapped = self.loads.run(lambda: self._load_and_swap(uri, deadline))
            old, candidate, answer = await asyncio.wrap_future(swapped)
        except Exception as exc:  # the old model keeps serving
            log.warning("refused %s: %s", uri, exc)
            return self._not_swapped(422, f"{type(exc).__name__}: {exc}".splitlines()[0][:500])
        if old is None:
            log.warning("not swapping in %s: it loaded after the caller's deadline_s=%g", uri, within)
            return self._not_swapped(504, f"loading and smoke-testing {uri} took longer than deadline_s={within:g}; "
                                          "not swapped")
        log.info("now serving %s (v%s), was %s (v%s)", candidate.model_uri, candidate.version, old.model_uri,
                 old.version)
        return JSONResponse({"swapped": True, "serving": candidate.model_uri, "serving_version": candidate.version,
                             "previous": old.model_uri, "previous_version": old.version, "smoke_response": answer})

    def _not_swapped(self, status: int, reason: str) -> JSONResponse:
        return JSONResponse({"swapped": False, "serving": self.batcher.served.model_uri,
                             "serving_version": self.batcher.served.version, "reason": reason}, status_code=status)


def create_app(served: Served, limits: ServerLimits, admin_token: str | None = None,
               registry_name: str | None = None, trust_remote_code: bool = False) -> FastAPI:
    """The HTTP app. `registry_name`: the registered model /admin/load may load versions of (None:
    it loads nothing); `trust_remote_code`: whether a loaded model may run code from its artifacts."""
    limits = ServerLimits.checked(limits.model_dump())  # also catches limits built without validation
    server = ModelServer(served, limits, admin_token, registry_name, trust_remote_code)
    app = FastAPI(title="llmft model server")
    app.add_exception_handler(RequestError, server.refused)
    for path in ("/health", "/ping"):
        app.add_api_route(path, server.health, methods=["GET"], response_model=None)
    for path in ("/invocations", "/v1/chat/completions"):
        app.add_api_route(path, server.invocations, methods=["POST"], response_model=None)
    app.add_api_route("/admin/load", server.load, methods=["POST"], response_model=None)
    app.state.server, app.state.batcher, app.state.tracer = server, server.batcher, server.tracer
    app.state.bodies, app.state.parsing, app.state.classifying = server.bodies, server.parsing, server.classifying
    app.state.loads = server.loads
    return app


def main(argv: list[str] | None = None) -> None:
    """The command line (serve/command.py) with this module's loader, smoke test and app, looked up
    when called."""
    serve(argv, load_served, smoke, create_app)


if __name__ == "__main__":
    main()
