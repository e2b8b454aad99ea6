"""Wake-ups for a message waiting its turn (Intake.await_turn) instead of polling MongoDB: an
earlier message of its conversation finished on any worker (a change stream, where the store
offers one) or joined this worker's queue. Polling stays as the backstop, much slower when
the wake-ups work (adoptions and hand-backs have no wake-up of their own)."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from core.services import Services

log = logging.getLogger(__name__)

RETRY_WATCH_S = 5.0


class TurnSignals:
    def __init__(self, services: Services) -> None:
        self.services = services
        self.watching = False  # whether finished messages arrive as wake-ups
        self._events: dict[str, asyncio.Event] = {}  # conversation -> its waiter's wake-up
        self._task: asyncio.Task[None] | None = None

    @property
    def max_pause(self) -> float:
        """The longest wait between two looks at MongoDB."""
        return 2.0 if self.watching else 0.5

    def arm(self, conversation_key: str) -> asyncio.Event:
        """Before looking at MongoDB: a wake-up from now on is not missed."""
        event = self._events.setdefault(conversation_key, asyncio.Event())
        event.clear()
        return event

    def disarm(self, conversation_key: str) -> None:
        self._events.pop(conversation_key, None)

    def notify(self, conversation_key: str) -> None:
        event = self._events.get(conversation_key)
        if event is not None:
            event.set()

    async def wait(self, conversation_key: str, timeout: float) -> None:
        """Until a wake-up since the last `arm`, or `timeout` seconds."""
        event = self._events.setdefault(conversation_key, asyncio.Event())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)

    def start(self) -> None:
        self._task = asyncio.create_task(self._watch(), name="turn-wake-ups")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        self.watching = False

    async def _watch(self) -> None:
        told = False
        while True:
            try:
                keys = await self.services.store.finished_conversations()
                if keys is None:
                    log.info("MongoDB has no change streams here (standalone): waiting turns are polled")
                    return
                self.watching = True
                async for key in keys:
                    self.notify(key)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - polling is the fallback
                if not told:
                    log.info("no change stream from MongoDB (%s): waiting turns are polled", type(exc).__name__)
                    told = True
            self.watching = False
            await asyncio.sleep(RETRY_WATCH_S)
