"""Streamed chat answers (`"stream": true`): OpenAI-style server-sent events produced from the batch
worker as the tokens are generated.

    data: {"object": "chat.completion.chunk", "choices": [{"delta": {"role": "assistant", "content": ""}}], ...}
    data: {... "choices": [{"delta": {"content": "Hel"}, "finish_reason": null}]}
    data: {... "choices": [{"delta": {}, "finish_reason": "stop"}]}
    data: [DONE]

The worker hands each streamed job's new token ids to a `TokenFeed` (thread-safe, onto the request's
event loop); `IncrementalText` turns them into text as `tokenizer.decode` of the whole answer would,
piece by piece: a token that ends inside a multi-byte character waits for the rest of it, and
whitespace at either end is dropped as the non-streamed answer strips it, so the pieces joined are
exactly the answer `stream: false` gives. A failure after the first event can no longer change the
HTTP status: it is sent as an `{"error": {...}}` event (what OpenAI's clients raise on).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from llmft.generation import Completion
from llmft.serve.bodies import one_line
from llmft.serve.loading import Served
from llmft.serve.protocol import ChatCompletionChunk, ChunkChoice, ErrorBody, completion_id
from llmft.serve.state import ServerState

log = logging.getLogger(__name__)

REPLACEMENT = "\ufffd"  # what decode gives for a token that ends inside a multi-byte character
DONE = "data: [DONE]\n\n"


class ClientGone(Exception):
    """The client closed the connection."""


class IncrementalText:
    """Text of an answer decoded token by token: each new token is decoded with the few before it
    (a window: a token's leading space and the bytes of a character can depend on its neighbours), and
    only text that will not change is released."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.start = 0  # the window: tokens[start:done] were decoded, for context
        self.done = 0  # tokens up to here are in `raw`
        self.raw = ""  # what decode(tokens[:done]) gives
        self.sent = ""  # released: raw without leading whitespace, trailing whitespace held back

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def add(self, ids: list[int]) -> str:
        """New tokens in; the text they release (often "", e.g. half of a character)."""
        self.ids += ids
        before = self._decode(self.ids[self.start:self.done])
        after = self._decode(self.ids[self.start:])
        if len(after) > len(before) and not after.endswith(REPLACEMENT):
            self.raw += after[len(before):]
            self.start, self.done = self.done, len(self.ids)
        return self._release(self.raw.strip())

    def finish(self, text: str) -> str:
        """The rest of the answer, `text` being all of it (Completion.text, stripped)."""
        if not text.startswith(self.sent):  # cannot happen for a prefix-stable decoder; never resend
            log.warning("a streamed answer diverged from its full decode; its end is not sent")
            return ""
        return self._release(text)

    def _release(self, shown: str) -> str:
        piece = shown[len(self.sent):] if shown.startswith(self.sent) else ""
        self.sent += piece
        return piece


class TokenFeed:
    """A job's token ids, from the batch worker's thread to the request's event loop, then None once
    its future is settled (after the last of them: both are queued from the worker, in order)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.items: asyncio.Queue[tuple[Any, list[int]] | None] = asyncio.Queue()

    def on_tokens(self, tokenizer: Any, ids: list[int]) -> None:
        self._loop.call_soon_threadsafe(self.items.put_nowait, (tokenizer, ids))

    def on_settled(self, _future: Future) -> None:
        try:
            self._loop.call_soon_threadsafe(self.items.put_nowait, None)
        except RuntimeError:  # the loop is closed: the server is gone, and so is the reader
            pass

    async def next(self, gone: asyncio.Future, timeout_s: float) -> tuple[Any, list[int]] | None:
        """The next item; ClientGone if the client left first, TimeoutError past `timeout_s`."""
        getter = asyncio.ensure_future(self.items.get())
        try:
            done, _ = await asyncio.wait({getter, gone}, timeout=max(timeout_s, 0.0),
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not getter.done():
                getter.cancel()
        if getter in done:
            return getter.result()
        if gone in done:
            raise ClientGone
        raise TimeoutError


@dataclass
class StreamedChat:
    """One streamed answer: the job's future and feed, and what the server does at its end."""

    future: Future  # (Completion, Served) from the batcher
    feed: TokenFeed
    model: str  # the served model's name, in every chunk
    deadline: float  # the job's, time.monotonic(): past it the worker drops the job
    limit_s: float  # deploy.request_timeout_s, for the message
    state: ServerState
    answered: Callable[[Completion, Served], None]  # e.g. its trace

    def _chunk(self, stream_id: str, created: int, delta: dict[str, str], finish: str | None = None) -> str:
        chunk = ChatCompletionChunk(id=stream_id, created=created, model=self.model,
                                    choices=[ChunkChoice(delta=delta, finish_reason=finish)])
        return f"data: {chunk.model_dump_json()}\n\n"

    def _failed(self, status: int, message: str) -> str:
        self.state.refused(status)
        return f"data: {ErrorBody.of(status, message).model_dump_json()}\n\n"

    async def events(self, client_gone: Callable[[], Awaitable[None]]) -> AsyncIterator[str]:
        """The events, from the role to [DONE]; the job is cancelled whenever they stop early.
        `client_gone()` returns when the client disconnects."""
        stream_id, created = completion_id(), int(time.time())
        gone = asyncio.ensure_future(client_gone())
        self.state.streams_open += 1
        try:
            yield self._chunk(stream_id, created, {"role": "assistant", "content": ""})
            text: IncrementalText | None = None
            while (item := await self.feed.next(gone, self.deadline - time.monotonic())) is not None:
                text = text or IncrementalText(item[0])
                if piece := text.add(item[1]):
                    yield self._chunk(stream_id, created, {"content": piece})
            completion, used = self.future.result()
            if rest := (completion.text if text is None else text.finish(completion.text)):
                yield self._chunk(stream_id, created, {"content": rest})
            yield self._chunk(stream_id, created, {}, completion.finish_reason)
            self.answered(completion, used)
            yield DONE
        except (ClientGone, asyncio.CancelledError) as exc:  # ours noticed, or the server's own watcher
            self.state.disconnects += 1
            self.state.refused(499)
            if isinstance(exc, asyncio.CancelledError):
                raise
        except TimeoutError:  # our wait, or the worker dropped the job at its deadline
            self.state.timeouts += 1
            yield self._failed(504, f"no answer within {self.limit_s:g} s (deploy.request_timeout_s)")
        except Exception as exc:
            yield self._failed(500, f"generation failed: {one_line(exc)}")
        finally:
            gone.cancel()
            self.future.cancel()  # a no-op once answered; otherwise the worker drops the job at once
            self.state.streams_open -= 1
