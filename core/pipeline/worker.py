"""This worker among others: its heartbeat and leases, which workers are alive, and the
adoption of messages whose holder is gone. Workers share nothing but the stores."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

from core.models import Message, utcnow
from core.pipeline.documents import message_from_doc
from core.services import Services

log = logging.getLogger(__name__)

# Queues an adopted message in its conversation: (message, order_ts, created_at).
Enqueue = Callable[[Message, float, datetime], Any]


def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


class Worker:
    def __init__(self, services: Services, enqueue: Enqueue | None = None) -> None:
        self.services = services
        self.enqueue = enqueue  # set by core.build to Intake.enqueue (intake waits on this worker)
        self._heartbeat: asyncio.Task[None] | None = None
        self._live: tuple[float, set[str]] | None = None  # (when read, live workers): see live_workers

    @property
    def beat_every(self) -> float:
        config = self.services.config
        return min(config.heartbeat_seconds, config.lease_seconds / 3)

    async def start_beating(self) -> None:
        """The heartbeat says this worker is alive and renews the leases of every message it
        holds. A worker that dies stops beating: within `worker_stale_seconds` (or at once,
        when it was a process on this host) another worker adopts its messages."""
        s = self.services
        await s.store.beat(s.worker_id, list(s.platforms))
        self._heartbeat = asyncio.create_task(every(self.beat_every, self.renew_leases), name="heartbeat")

    async def hand_back(self) -> None:
        """End of a drain: release what is left, so another worker answers it at once."""
        s = self.services
        try:
            released = await s.store.release(s.worker_id)
            if released:
                log.info("handed back %d unfinished messages", released)
        except Exception as exc:  # noqa: BLE001 - their leases expire anyway; another worker adopts them
            log.warning("could not hand back unfinished messages: %s", type(exc).__name__)
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            await asyncio.gather(self._heartbeat, return_exceptions=True)
            self._heartbeat = None
            try:
                await s.store.stop_beating(s.worker_id)
            except Exception as exc:  # noqa: BLE001 - the heartbeat goes stale on its own
                log.warning("could not remove this worker's heartbeat: %s", type(exc).__name__)

    async def renew_leases(self) -> None:
        s = self.services
        await s.store.beat(s.worker_id, list(s.platforms))
        await s.store.renew_leases(s.worker_id, s.lease)

    async def live_workers(self) -> set[str]:
        """Workers with a recent heartbeat, less those on this host whose process is gone (a
        `mnemo chat` killed a moment ago is dead now, not in `worker_stale_seconds`)."""
        s = self.services
        now = time.monotonic()
        if self._live is not None and now - self._live[0] < 1.0:
            return self._live[1]
        since = utcnow() - timedelta(seconds=s.config.worker_stale_seconds)
        live = {w for w in await s.store.recent_beats(since) if w == s.worker_id or not _dead_here(w)}
        live.add(s.worker_id)
        self._live = (now, live)
        return live

    async def recover_stale(self, conversation_key: str | None = None) -> int:
        """Adopt and process messages whose holder is gone (a crashed or killed worker, this
        process's own predecessor included, or one that handed them back on shutdown), of one
        conversation or of every registered platform. Returns how many."""
        s = self.services
        if s.draining or not s.platforms:
            return 0
        adopted = await s.store.adopt_stale(
            s.worker_id, s.lease, list(s.platforms), await self.live_workers(), conversation_key
        )
        assert self.enqueue is not None, "Worker.enqueue is set by core.build"
        for found in adopted:
            message = message_from_doc(found)
            # Into the conversation's queue, in its place by timestamp (see Intake.await_turn).
            self.enqueue(message, found.get("order_ts", message.ts.timestamp()), found["created_at"])
        if adopted:
            s.metrics.inc("mnemo_recovered_total", len(adopted))
            log.info("adopted %d pending messages from stopped workers", len(adopted))
        return len(adopted)


async def every(seconds: float, job: Callable[[], Awaitable[Any]]) -> None:
    """Run `job` now and every `seconds` until cancelled; a failure is logged, not fatal."""
    while True:
        try:
            await job()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("periodic job %s failed", getattr(job, "__name__", job))
        await asyncio.sleep(seconds)


def _dead_here(worker_id: str) -> bool:
    """Whether `worker_id` (host:pid:token) names a process of this host that is gone."""
    host, _, rest = worker_id.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False  # exists, owned by someone else
    return False
