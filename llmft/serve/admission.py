"""What the server admits before a request reaches the model's queue (issue 24, item 4).

A body costs memory twice before any queue check: its bytes while it is read, and the Python objects
JSON parsing makes of them (a 4 MB body of `{},` becomes ~96 MB). So:
- `ByteBudget`: the bytes of bodies being read or parsed at once are capped at
  `max_bodies_in_flight` x `max_body_bytes`; a body is reserved from its Content-Length (the whole
  `max_body_bytes` when it declares none) before anything is read, and a request that does not fit
  gets 429 with Retry-After at once instead of queueing gigabytes. Small bodies fit by the thousand.
- `BoundedPool`: a thread pool with a cap on the work it holds (running and waiting); over it,
  `submit` refuses. Parsing runs in its own pool (never starved by, nor starving, other work), and
  classification in a one-thread pool whose waiting jobs are dropped when their client has its 504,
  so a timed-out classify request holds no thread.
- `read_body`: a body over `max_body_bytes` is refused (413) from its Content-Length before anything
  is read, else as soon as the bytes read pass the limit.
- `connection_limit`: uvicorn's `limit_concurrency` (503 beyond it): the queue, the running batch,
  the bodies in flight, and a few for /health and /admin.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from llmft.extras import missing

try:  # the serve extra
    from starlette.requests import Request
except ModuleNotFoundError as exc:
    raise missing(exc, "serve", "the model server (llmft deploy, python -m llmft.serve.app)") from None

from llmft.config_serving import ServerLimits
from llmft.serve.bodies import RequestError

ADMIN_HEADROOM = 8  # connections kept for /health, /ping and /admin/load beyond the request limits


def connection_limit(limits: ServerLimits) -> int:
    """Connections (and their tasks) uvicorn serves at once; beyond it, it answers 503 itself."""
    return limits.max_queue + limits.max_batch_size + limits.max_bodies_in_flight + ADMIN_HEADROOM


def body_reservation(content_length: str | None, max_body_bytes: int) -> int:
    """Bytes to hold for a body before reading it: its Content-Length, at most max_body_bytes (a larger
    one gets 413 when read); the whole max_body_bytes when it declares none or an unreadable one."""
    if content_length is not None and re.fullmatch(r"[0-9]{1,18}", content_length):
        return min(int(content_length), max_body_bytes)
    return max_body_bytes


class ByteBudget:
    """Bytes of request bodies held at once (being read, or parsed); thread-safe."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.used = 0
        self.refused = 0
        self._lock = threading.Lock()

    def reserve(self, size: int) -> Reservation | None:
        """A reservation of `size` bytes, or None (counted) when they do not fit now."""
        with self._lock:
            if self.used + size > self.capacity:
                self.refused += 1
                return None
            self.used += size
        return Reservation(self, size)

    def _give_back(self, size: int) -> None:
        with self._lock:
            self.used -= size


class Reservation:
    """Bytes held in a ByteBudget; `shrink` to what the body turned out to be, `release` once (idempotent)."""

    def __init__(self, budget: ByteBudget, size: int) -> None:
        self._budget, self.size = budget, size
        self._lock = threading.Lock()

    def shrink(self, size: int) -> None:
        with self._lock:
            if size < self.size:
                self._budget._give_back(self.size - size)
                self.size = size

    def release(self, *_: Any) -> None:  # *_: usable as a Future's done callback
        with self._lock:
            size, self.size = self.size, 0
        if size:
            self._budget._give_back(size)


class BoundedPool:
    """A thread pool that holds at most `capacity` jobs (running or waiting); `submit` returns None
    beyond it. A job's slot is freed when it ends, or when it is cancelled before it started."""

    def __init__(self, workers: int, capacity: int, name: str) -> None:
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)
        self._slots = threading.BoundedSemaphore(capacity)
        self.capacity = capacity
        self._held = 0
        self._lock = threading.Lock()

    @property
    def held(self) -> int:
        """Jobs running or waiting now."""
        return self._held

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future | None:
        if not self._slots.acquire(blocking=False):
            return None
        with self._lock:
            self._held += 1
        try:
            future = self._pool.submit(fn, *args)
        except BaseException:
            self._free()
            raise
        future.add_done_callback(self._free)
        return future

    def _free(self, *_: Any) -> None:
        with self._lock:
            self._held -= 1
        self._slots.release()

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def parse_workers() -> int:
    """Threads that parse bodies, as many as asyncio's default pool: memory is bounded by the ByteBudget,
    and a small body must not wait behind large ones being parsed."""
    return min(32, (os.cpu_count() or 1) + 4)


async def read_body(request: Request, cap: int) -> bytes:
    """The body, refused with 413 as soon as it is known to be over max_body_bytes: from its
    Content-Length before reading anything, else by counting while it streams in."""
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
