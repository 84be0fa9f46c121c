"""MLflow traces of the chat requests the server answers (deploy.tracing): prompt and completion
tokens, latency and the model version, in the experiment of the served version's run."""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass

import mlflow
from mlflow.tracing.constant import SpanAttributeKey

from llmft.generation import Completion
from llmft.serve.bodies import one_line
from llmft.serve.loading import Served
from llmft.serve.parsing import ChatRequest

log = logging.getLogger(__name__)


@dataclass
class Answered:
    """One answered chat request, as a trace records it."""

    served: Served
    request: ChatRequest
    completion: Completion
    started_ns: int  # time.time_ns() when the request arrived
    ended_ns: int  # ... and when its answer was ready


class Tracer:
    """Logs each answered chat request as an MLflow trace. A background thread does the logging, so a
    request never waits for the tracking store; a full backlog drops traces (counted) rather than
    holding memory or slowing the server."""

    BACKLOG = 1000

    def __init__(self) -> None:
        self._items: queue.Queue[Answered] = queue.Queue(maxsize=self.BACKLOG)
        self.stats = {"traces_logged": 0, "traces_dropped": 0, "trace_errors": 0}
        threading.Thread(target=self._run, name="tracer", daemon=True).start()

    def record(self, served: Served, request: ChatRequest, completion: Completion, started_ns: int,
               ended_ns: int) -> None:
        try:
            self._items.put_nowait(Answered(served, request, completion, started_ns, ended_ns))
        except queue.Full:
            self.stats["traces_dropped"] += 1

    def flush(self, timeout_s: float = 30.0) -> None:
        """Wait until the backlog is logged (tests, shutdown)."""
        deadline = time.monotonic() + timeout_s
        while self._items.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)

    def _run(self) -> None:
        while True:
            item = self._items.get()
            try:
                log_trace(item)
                self.stats["traces_logged"] += 1
            except Exception as exc:  # the tracking store being down never affects serving
                self.stats["trace_errors"] += 1
                log.warning("could not log a trace: %s", one_line(exc))
            finally:
                self._items.task_done()


def log_trace(item: Answered) -> None:
    served, request, completion = item.served, item.request, item.completion
    usage = {"input_tokens": completion.prompt_tokens, "output_tokens": completion.completion_tokens,
             "total_tokens": completion.prompt_tokens + completion.completion_tokens}
    attributes = {"llmft.model_uri": served.model_uri, "llmft.model_version": served.version or "",
                  "llmft.prompt_tokens": completion.prompt_tokens,
                  "llmft.completion_tokens": completion.completion_tokens,
                  "llmft.latency_ms": round((item.ended_ns - item.started_ns) / 1e6, 1),
                  "llmft.finish_reason": completion.finish_reason, "llmft.stream": request.stream,
                  "llmft.max_tokens": request.max_tokens, "llmft.temperature": request.sampling.temperature,
                  SpanAttributeKey.CHAT_USAGE: usage}
    tags = {"llmft.model_uri": served.model_uri, "llmft.model_version": served.version or "",
            "llmft.task": served.task or ""}
    span = mlflow.start_span_no_context("chat", span_type="LLM", inputs={"prompt": request.prompt},
                                        attributes=attributes, tags=tags, experiment_id=served.experiment_id,
                                        start_time_ns=item.started_ns)
    span.end(outputs={"text": completion.text, "finish_reason": completion.finish_reason},
             end_time_ns=item.ended_ns)
