"""The server's own request counters, reported by /health beside the batcher's statistics."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field


@dataclass
class ServerState:
    """Counted on the event loop (one thread): no lock needed."""

    started: float = field(default_factory=time.time)
    errors_4xx: int = 0
    errors_5xx: int = 0
    timeouts: int = 0  # answered 504 (request_timeout_s), streamed or not
    disconnects: int = 0  # clients that left before their answer, streamed or not
    streams: int = 0  # streamed chat requests accepted into the queue
    streams_open: int = 0  # ... of which are still being answered

    def refused(self, status: int) -> None:
        """An error answer was sent (or, streamed, an error event)."""
        if status < 500:
            self.errors_4xx += 1
        else:
            self.errors_5xx += 1

    def counters(self) -> dict[str, int]:
        return {k: v for k, v in asdict(self).items() if k != "started"}

    def uptime_s(self) -> float:
        return round(time.time() - self.started, 1)
