"""The batch worker: one thread owns the model and batches the chat requests, a supervisor thread
restarts it if it ever dies.

- engine "continuous" (default, serve/scheduler.py): up to `max_batch_size` sequences decode together
  one token per step; new requests are prefilled and join between steps, finished ones (stop token,
  max_tokens, cancelled, timed out) leave at once, so a short answer never waits for a long one.
  Models with sliding-window or linear-attention caches fall back to static.
- engine "static": the requests that arrive within `batch_wait_ms` (up to `max_batch_size`) are
  generated in one left-padded `generate` call that lasts as long as its longest answer.

A job may carry `on_tokens`: the continuous engine calls it with each row's new token ids after every
prefill and step (how a streamed answer is produced as it is generated); the static engine has no
tokens before the end, so a streamed answer comes in one piece there.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass
from typing import Any

from llmft.config_serving import ServerLimits
from llmft.generation import Completion, Sampling, complete_batch
from llmft.serve.bodies import one_line
from llmft.serve.loading import Served
from llmft.serve.parsing import ChatRequest
from llmft.serve.scheduler import DecodeBatch, Sequence, supports

log = logging.getLogger(__name__)

TokenListener = Callable[[Any, list[int]], None]  # (the tokenizer that decodes them, new token ids)


class QueueFull(RuntimeError):
    """More requests are waiting than `max_queue`."""


@dataclass
class Job:
    request: ChatRequest
    future: Future  # (Completion, Served) once answered
    deadline: float  # time.monotonic(); past it the client has had its 504 and nobody waits
    started: float = 0.0  # time.monotonic() when it joined the running batch
    on_tokens: TokenListener | None = None  # a streamed request: told of its tokens as they are generated
    emitted: int = 0  # tokens already passed to on_tokens


def settle(future: Future, result: Any = None, exc: BaseException | None = None) -> None:
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
    """Takes chat jobs (`submit`), answers them through their futures; `run_exclusive` gives the model
    to other work (classification, smoke tests) between batches. /health reads `alive`, `stats`,
    `worker_error` and `queue_depth()`."""

    RESTART_DELAYS_S = (0.5, 1.0, 2.0, 5.0, 10.0)  # a worker that keeps dying is restarted ever more slowly

    def __init__(self, served: Served, limits: ServerLimits) -> None:
        self.served, self.limits = served, limits
        self._jobs: queue.Queue[Job] = queue.Queue(maxsize=limits.max_queue)
        self._model_lock = threading.Lock()  # a swap never lands in the middle of a batch
        self._current: list[Job] = []  # taken by the worker: in the running batch or about to join it
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

    def submit(self, request: ChatRequest, on_tokens: TokenListener | None = None) -> Job:
        job = Job(request, Future(), time.monotonic() + self.limits.request_timeout_s, on_tokens=on_tokens)
        try:
            self._jobs.put_nowait(job)
        except queue.Full:
            self.stats["rejected_queue_full"] += 1
            raise QueueFull(f"{self.limits.max_queue} requests are already waiting") from None
        return job

    def queue_depth(self) -> int:
        """Jobs waiting for the worker to take them."""
        return self._jobs.qsize()

    def taken(self) -> int:
        """Jobs the worker holds: decoding, or about to join the running batch."""
        return len(self._current)

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

    def run_exclusive(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run fn(served, *args) with the model to itself (classification, smoke tests)."""
        with self._model_lock:
            return fn(self.served, *args)

    def run_exclusive_by(self, deadline: float, fn: Callable[..., Any], *args: Any) -> Any:
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
                settle(job.future, exc=RuntimeError(f"batch worker died: {self.worker_error}"))
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

    def _take_batch(self) -> list[Job]:
        jobs = [self._jobs.get()]
        deadline = time.monotonic() + self.limits.batch_wait_ms / 1000
        while len(jobs) < self.limits.max_batch_size:
            remaining = deadline - time.monotonic()
            try:
                jobs.append(self._jobs.get(timeout=max(remaining, 0)) if remaining > 0 else self._jobs.get_nowait())
            except queue.Empty:
                break
        return jobs

    def _take_more(self, room: int) -> list[Job]:
        """Whatever is waiting, up to `room` jobs, without blocking: the running batch must go on."""
        jobs: list[Job] = []
        while len(jobs) < room:
            try:
                jobs.append(self._jobs.get_nowait())
            except queue.Empty:
                break
        return jobs

    def _wanted(self, job: Job) -> bool:
        """Does anyone still wait for this job? A disconnected or timed-out client cancelled it."""
        if job.future.cancelled() or time.monotonic() > job.deadline:
            settle(job.future, exc=TimeoutError("request timed out"))
            self.stats["cancelled"] += 1
            return False
        return True

    def _done(self, job: Job, completion: Completion, served: Served) -> None:
        self.stats["requests"] += 1
        self.stats["completion_tokens"] += completion.completion_tokens
        settle(job.future, (completion, served))

    # -- static batches --

    def _loop(self) -> None:
        if self.limits.engine == "continuous":
            self._loop_continuous()
        while True:
            self._current = jobs = self._take_batch()
            with self._model_lock:
                self._generate_static(self.served, jobs)
            self._current = []

    def _generate_static(self, served: Served, jobs: list[Job]) -> None:
        """Each group of equal sampling settings in one `generate` call that runs to its longest answer."""
        groups: dict[Sampling, list[Job]] = {}
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
                    settle(job.future, exc=exc)
                continue
            self._batch_s = 0.8 * self._batch_s + 0.2 * (time.monotonic() - started)
            self.stats["batches"] += 1
            self.stats["largest_batch"] = max(self.stats["largest_batch"], len(group))
            for job, completion in zip(group, done, strict=True):
                self._done(job, completion, served)

    # -- continuous batching --

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

    def _advance(self, batch: DecodeBatch, served: Served, jobs: list[Job]) -> None:
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
            self._emit(batch.rows, served)
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
        self._emit(batch.rows, served)
        self._retire(batch, served)

    def _emit(self, rows: list[Sequence], served: Served) -> None:
        """Tell streamed jobs their new tokens. A listener that fails is dropped (its answer still
        arrives whole through the future), never the batch."""
        for s in rows:
            job: Job = s.handle
            if job.on_tokens is None or len(s.tokens) <= job.emitted:
                continue
            new, job.emitted = s.tokens[job.emitted:], len(s.tokens)
            try:
                job.on_tokens(served.tokenizer, new)
            except Exception as exc:
                log.warning("dropped a stream's token listener: %s", one_line(exc))
                job.on_tokens = None

    def _retire(self, batch: DecodeBatch, served: Served) -> None:
        for s in batch.retire(keep=lambda s: self._wanted(s.handle)):
            if s.finish is None:  # cancelled or timed out: _wanted settled it
                continue
            if s.error is not None:  # this row alone failed (scheduler._pick); the others go on
                log.warning("generation failed for one request: %s", one_line(s.error))
                settle(s.handle.future, exc=s.error)
                continue
            self._batch_s = 0.8 * self._batch_s + 0.2 * (time.monotonic() - s.handle.started)
            self._done(s.handle, s.completion(served.tokenizer), served)

    def _fail_batch(self, batch: DecodeBatch, exc: Exception, joining: list[Sequence]) -> None:
        """A prefill or step failed: the cache may be half-updated, so every row in it goes."""
        for s in [*batch.reset(), *joining]:
            settle(s.handle.future, exc=exc)
