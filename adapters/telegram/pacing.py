"""Outbound pacing: Telegram asks bots for about one message per second in a chat, at most
20 per minute in a group, and about 30 per second overall. Waiting here is cheaper than a 429."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class ChatPacer:
    def __init__(
        self,
        per_chat_interval_s: float = 1.0,
        group_per_minute: int = 20,
        global_interval_s: float = 1 / 30,
    ) -> None:
        self.per_chat_interval_s = per_chat_interval_s
        self.group_per_minute = group_per_minute
        self.global_interval_s = global_interval_s
        self._locks: dict[int, asyncio.Lock] = {}
        self._recent: dict[int, deque[float]] = {}
        self._global_lock = asyncio.Lock()
        self._global_last = 0.0

    @asynccontextmanager
    async def slot(self, chat_id: int) -> AsyncIterator[None]:
        """Hold the chat's turn while one message is sent (a retry keeps the turn, so the
        order of a split reply never changes)."""
        lock = self._locks.setdefault(chat_id, asyncio.Lock())
        async with lock:
            await asyncio.sleep(self._chat_wait(chat_id))
            async with self._global_lock:
                await asyncio.sleep(max(0.0, self._global_last + self.global_interval_s - time.monotonic()))
                self._global_last = time.monotonic()
            try:
                yield
            finally:
                self._recent.setdefault(chat_id, deque()).append(time.monotonic())

    def _chat_wait(self, chat_id: int) -> float:
        recent = self._recent.get(chat_id)
        if not recent:
            return 0.0
        now = time.monotonic()
        while recent and now - recent[0] > 60:
            recent.popleft()
        if not recent:
            return 0.0
        wait = recent[-1] + self.per_chat_interval_s - now
        if chat_id < 0 and len(recent) >= self.group_per_minute:  # groups have negative ids
            wait = max(wait, recent[-self.group_per_minute] + 60 - now)
        return max(0.0, wait)
