"""The model server: a registered model over HTTP, OpenAI-style, with concurrent requests batched.

    python -m llmft.serve.app --model-uri models:/NAME@champion --port 5055 [limits...]

Loads the model from the MLflow registry (the transformers artifacts that `register` logged) and
serves it with FastAPI under uvicorn, as MLflow's own scoring server does. Why not that server:
it runs each request's `predict` on its own in a small thread pool, so a hundred concurrent chats
are a hundred separate `generate` calls; here a batcher thread collects the requests that arrive
within `--batch-wait-ms` (up to `--max-batch-size`) and generates them in one left-padded call.

Endpoints:
- POST /v1/chat/completions and /invocations: `{"messages": [...], "max_tokens": N, "temperature": t,
  "top_p": p}` -> an OpenAI `chat.completion` object (temperature 0 or absent: greedy). A
  classifier takes `{"inputs": [text, ...]}` (or `{"text": ...}`) and returns label and scores.
- GET /health (and /ping): the model being served and request counters.
- POST /admin/load `{"model_uri": ...}` (bearer token from the state folder): load another model
  next to the running one, smoke-test it, and only then swap; on failure the old one keeps serving.

Malformed requests get 400, oversize ones 413, each with an OpenAI-style error message; the server
keeps serving.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import json
import logging
import os
import queue
import threading
import time
import uuid
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request  # module level: FastAPI resolves the handlers' string annotations here

from llmft.chat_format import render_generation_prompt, with_system
from llmft.config import ServerLimits
from llmft.generation import Completion, Sampling, complete_batch

log = logging.getLogger("llmft.serve.app")

SMOKE_MESSAGES = [{"role": "user", "content": "Say hello in one short sentence."}]
SMOKE_TEXT = "The product arrived on time and works as described."
ROLES = ("system", "user", "assistant")


class RequestError(ValueError):
    """A request the server refuses, with its HTTP status and the parameter at fault."""

    def __init__(self, message: str, status: int = 400, param: str | None = None):
        super().__init__(message)
        self.status, self.param = status, param


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


def load_served(model_uri: str) -> Served:
    import mlflow
    from mlflow import MlflowClient

    parts = mlflow.transformers.load_model(model_uri, return_type="components")
    model, tokenizer = parts["model"].float().eval(), parts["tokenizer"]
    version, instruction, task = None, None, None
    if model_uri.startswith("models:/"):
        name, _, ref = model_uri[len("models:/"):].partition("@")
        client = MlflowClient()
        if ref:  # an alias: record which version it pointed at when loaded
            found = client.get_model_version_by_alias(name, ref)
        else:
            name, _, number = name.rpartition("/")
            found = client.get_model_version(name, number)
        tags = dict(found.tags)
        version, instruction, task = str(found.version), tags.get("instruction") or None, tags.get("task")
    if type(model).__name__.endswith("ForSequenceClassification"):
        labels = [model.config.id2label[i] for i in range(len(model.config.id2label))]
        return Served(model_uri, version, True, model, tokenizer, labels, task=task)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.config.use_cache = True
    return Served(model_uri, version, False, model, tokenizer, instruction=instruction, task=task)


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
    sampling = Sampling(temperature=_number(body, "temperature", 0.0, 0.0, 2.0),
                        top_p=_number(body, "top_p", 1.0, 0.0, 1.0) or 1.0)
    prompt = serving_prompt(served, messages)
    n_tokens = len(served.tokenizer(prompt, add_special_tokens=False)["input_ids"])
    if n_tokens > limits.max_input_tokens:
        raise RequestError(f"the conversation is {n_tokens} tokens; this server accepts at most "
                           f"{limits.max_input_tokens}", status=413, param="messages")
    return ChatRequest(prompt, n_tokens, max_tokens, sampling)


def serving_prompt(served: Served, messages: list[dict[str, str]]) -> str:
    """The prompt exactly as training rendered it: the trained instruction (unless the request brings
    its own system turn) and the model's own chat template, through the training formatter."""
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
    if len(texts) > limits.max_inputs:
        raise RequestError(f"{len(texts)} inputs; the limit is {limits.max_inputs}", status=413, param="inputs")
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


class Batcher:
    """One thread owns the model: it takes whatever chat requests are waiting (up to a batch),
    groups them by sampling settings and generates each group in one call."""

    def __init__(self, served: Served, limits: ServerLimits):
        self.served, self.limits = served, limits
        self._jobs: queue.Queue[_Job] = queue.Queue()
        self._model_lock = threading.Lock()  # a swap never lands in the middle of a batch
        self.stats = {"requests": 0, "batches": 0, "largest_batch": 0, "completion_tokens": 0}
        threading.Thread(target=self._loop, name="batcher", daemon=True).start()

    def submit(self, request: ChatRequest) -> Future:
        future: Future = Future()
        self._jobs.put(_Job(request, future))
        return future

    def swap(self, served: Served) -> Served:
        with self._model_lock:
            old, self.served = self.served, served
        return old

    def run_exclusive(self, fn: Any, *args: Any) -> Any:
        """Run fn(served, *args) with the model to itself (classification, smoke tests)."""
        with self._model_lock:
            return fn(self.served, *args)

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

    def _loop(self) -> None:
        while True:
            jobs = self._take_batch()
            groups: dict[Sampling, list[_Job]] = {}
            for job in jobs:
                groups.setdefault(job.request.sampling, []).append(job)
            with self._model_lock:
                served = self.served
                for sampling, group in groups.items():
                    try:
                        done = complete_batch(served.model, served.tokenizer, [j.request.prompt for j in group],
                                              [j.request.max_tokens for j in group], sampling)
                    except Exception as exc:  # a failed batch fails its requests, never the server
                        log.exception("generation failed for a batch of %d", len(group))
                        for job in group:
                            job.future.set_exception(exc)
                        continue
                    self.stats["batches"] += 1
                    self.stats["largest_batch"] = max(self.stats["largest_batch"], len(group))
                    for job, completion in zip(group, done, strict=True):
                        self.stats["requests"] += 1
                        self.stats["completion_tokens"] += completion.completion_tokens
                        job.future.set_result((completion, served))


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


# ---- the app ----

def create_app(served: Served, limits: ServerLimits, admin_token: str | None = None) -> Any:
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    app = FastAPI(title="llmft model server")
    batcher = Batcher(served, limits)
    counters = {"errors_4xx": 0, "errors_5xx": 0}
    started = time.time()
    app.state.batcher = batcher

    def error(status: int, message: str, param: str | None = None) -> JSONResponse:
        counters["errors_4xx" if status < 500 else "errors_5xx"] += 1
        kind = "invalid_request_error" if status < 500 else "server_error"
        return JSONResponse({"error": {"message": message, "type": kind, "param": param}}, status_code=status)

    async def body_of(request: Request) -> Any:
        raw = await request.body()
        try:
            return json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise RequestError(f"request body is not valid JSON ({exc})") from None

    @app.get("/health")
    @app.get("/ping")
    async def health() -> dict[str, Any]:
        current = batcher.served
        return {"status": "ok", "pid": os.getpid(), "model_uri": current.model_uri, "version": current.version,
                "task": current.task, "classifier": current.classifier,
                "loaded_at": current.loaded_at, "uptime_s": round(time.time() - started, 1),
                "limits": limits.model_dump(), **batcher.stats, **counters}

    @app.post("/invocations")
    @app.post("/v1/chat/completions")
    async def invocations(request: Request) -> Any:
        try:
            body = await body_of(request)
            current = batcher.served
            if current.classifier:
                ids = parse_texts(body, current, limits)
                return await asyncio.to_thread(batcher.run_exclusive, classify, ids)
            parsed = parse_chat(body, current, limits)
        except RequestError as exc:
            return error(exc.status, str(exc), exc.param)
        try:
            completion, used = await asyncio.wrap_future(batcher.submit(parsed))
        except Exception as exc:
            return error(500, f"generation failed: {type(exc).__name__}: {exc}")
        return chat_response(completion, used)

    @app.post("/admin/load")
    async def load(request: Request) -> Any:
        given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if not admin_token or not hmac.compare_digest(given, admin_token):
            return error(401, "admin token required")
        try:
            body = await body_of(request)
        except RequestError as exc:
            return error(400, str(exc))
        uri = body.get("model_uri") if isinstance(body, dict) else None
        if not isinstance(uri, str) or not uri:
            return error(400, "send {'model_uri': 'models:/NAME/VERSION'}", "model_uri")
        try:
            candidate = await asyncio.to_thread(load_served, uri)
            answer = await asyncio.to_thread(smoke, candidate, limits)
        except Exception as exc:  # the old model keeps serving
            log.warning("refused %s: %s", uri, exc)
            return JSONResponse({"swapped": False, "serving": batcher.served.model_uri,
                                 "serving_version": batcher.served.version,
                                 "reason": f"{type(exc).__name__}: {exc}".splitlines()[0][:500]}, status_code=422)
        old = batcher.swap(candidate)
        log.info("now serving %s (v%s), was %s (v%s)", candidate.model_uri, candidate.version, old.model_uri,
                 old.version)
        return {"swapped": True, "serving": candidate.model_uri, "serving_version": candidate.version,
                "previous": old.model_uri, "previous_version": old.version, "smoke_response": answer}

    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="serve a registered model over HTTP")
    parser.add_argument("--model-uri", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5055)
    parser.add_argument("--admin-token-file", help="file holding the bearer token for /admin/load")
    parser.add_argument("--limits", default="{}", help="JSON of deploy.* limits (ServerLimits); defaults otherwise")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    limits = ServerLimits.model_validate_json(args.limits)
    token = None
    if args.admin_token_file:
        with open(args.admin_token_file, encoding="utf-8") as fh:
            token = fh.read().strip()
    served = load_served(args.model_uri)
    log.info("loaded %s (v%s, %s); smoke: %s", served.model_uri, served.version, served.task, smoke(served, limits))
    import uvicorn

    uvicorn.run(create_app(served, limits, token), host=args.host, port=args.port, log_level="warning",
                backlog=2048, timeout_keep_alive=30)


if __name__ == "__main__":
    main()
