"""Owned background work: one ordered queue per conversation, all awaited at shutdown."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

Job = Callable[[], Awaitable[None]]


class OrderedRunner:
    """Runs jobs in submission order per key (a conversation) and concurrently across keys.

    A failing job is logged and never stops its queue; `close()` waits for queued work."""

    def __init__(self) -> None:
        self._tails: dict[str, asyncio.Future[None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False

    @property
    def pending(self) -> int:
        return len(self._tasks)

    def submit(self, key: str, job: Job) -> asyncio.Future[None]:
        """Queue `job` after the previous job of `key`; returns a future done when it has run."""
        if self._closing:
            raise RuntimeError("shutting down")
        previous = self._tails.get(key)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        async def run() -> None:
            try:
                if previous is not None:
                    await asyncio.shield(previous)
            except Exception:  # noqa: BLE001, S110 - the previous job logged its own failure
                pass
            try:
                await job()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("background job failed (key=%s)", key)
            finally:
                if not done.done():
                    done.set_result(None)
                if self._tails.get(key) is done:
                    del self._tails[key]

        self._tails[key] = done
        task = asyncio.create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return done

    def spawn(self, coro: Awaitable[None], name: str | None = None) -> asyncio.Task[None]:
        """Own a one-off background task (no ordering)."""

        async def run() -> None:
            try:
                await coro
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("background task %s failed", name or "")

        task = asyncio.create_task(run(), name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def close(self, timeout: float = 30.0) -> None:
        """Stop taking work; wait up to `timeout` for queued jobs, then cancel the rest."""
        self._closing = True
        if not self._tasks:
            return
        _, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
