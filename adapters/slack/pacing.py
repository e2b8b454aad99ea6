"""Per-channel pacing: Slack allows about one message per second per channel.

Sends to one channel wait their turn (a 429 retried inside the call keeps the turn, so later
messages queue behind it rather than adding to the rate limit); channels don't wait for each
other.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class ChannelPacer:
    def __init__(self, interval_s: float = 1.0) -> None:
        self.interval_s = interval_s
        self._locks: dict[str, asyncio.Lock] = {}
        self._last: dict[str, float] = {}

    @asynccontextmanager
    async def turn(self, channel: str) -> AsyncIterator[None]:
        lock = self._locks.setdefault(channel, asyncio.Lock())
        async with lock:
            wait = self._last.get(channel, float("-inf")) + self.interval_s - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            try:
                yield
            finally:
                self._last[channel] = time.monotonic()
                if len(self._last) > 10_000:  # forget channels idle for long
                    cutoff = time.monotonic() - 60
                    for key in [k for k, t in self._last.items() if t < cutoff and not self._locks[k].locked()]:
                        self._last.pop(key, None)
                        self._locks.pop(key, None)
