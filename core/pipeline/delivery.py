"""Delivery of a reply: the send fence (only the message's current holder sends), retries of
transient send errors, and the record of what was sent."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from core import outbound, streaming
from core.models import Message, Reply
from core.platform import Platform
from core.services import Services
from core.store import DONE, FAILED

log = logging.getLogger(__name__)

DELIVERY_ATTEMPTS = 4


def fence_for(services: Services, message: Message) -> outbound.SendFence:
    """The send fence of `message` (one per answer: the stream and the final send share it)."""
    current = outbound.current_fence()
    if current is not None and current.key == message.event_key:
        return current
    store, worker_id = services.store, services.worker_id
    return outbound.SendFence(message.event_key, lambda: store.fence_send(message.event_key, worker_id))


class Delivery:
    def __init__(self, services: Services) -> None:
        self.services = services

    async def deliver(
        self, message: Message, doc: dict[str, Any], platform: Platform, reply: Reply, state: str = DONE
    ) -> bool:
        """Send `reply` and finish the message in `state` (FAILED when nothing could be sent).
        False when this worker did not finish it (another one adopted it)."""
        s = self.services
        live = streaming.take_live(message)
        fence = fence_for(s, message)
        outbound.use_fence(fence)
        sent: list[str] | None = None
        try:
            if not getattr(platform, "fences_sends", False):
                # A platform without the outbound kit: fence before handing it the reply.
                await fence.enter()
            sent = await self._send(message, platform, reply, live)
        except outbound.Fenced:
            # This worker stalled past its lease and another adopted the message.
            log.warning("message %s was adopted by another worker; not sending", doc["_id"])
            return False
        finally:
            outbound.use_fence(None)
        if live is not None and sent is not None:
            s.metrics.inc("mnemo_stream_replies_total", platform=message.platform)
            s.metrics.inc("mnemo_stream_edits_total", live.updates + 1, platform=message.platform)
            s.metrics.observe("mnemo_stream_edits_per_reply", live.updates + 1, platform=message.platform)
            if live.first_visible_s is not None:
                s.metrics.observe("mnemo_stream_first_text_seconds", live.first_visible_s, platform=message.platform)
        if sent is None:
            s.metrics.inc("mnemo_send_failures_total", platform=message.platform)
            return await s.store.finish(doc["_id"], FAILED, owner=s.worker_id, answered=False)
        s.metrics.inc("mnemo_replies_out_total", platform=message.platform)
        await s.store.insert_reply(
            {
                "message_key": message.event_key,
                "conversation_key": message.conversation_key,
                "author_key": message.user_key,
                "text": reply.text,
                "footnotes": [
                    {"number": f.number, "memory_id": f.memory_id, "author": f.author, "quote": f.quote}
                    for f in reply.footnotes
                ],
                "private": reply.private,
                "sent_ids": sent,
            }
        )
        return await s.store.finish(doc["_id"], state, owner=s.worker_id, answered=True)

    async def _send(
        self, message: Message, platform: Platform, reply: Reply, live: streaming.LiveAnswer | None
    ) -> list[str] | None:
        """Up to DELIVERY_ATTEMPTS sends, retrying only errors marked transient (the network,
        a timeout, a 5xx or 429); a definite error (a refusal, a programming error) is logged
        with its traceback and not retried. None when nothing was sent."""
        for attempt in range(1, DELIVERY_ATTEMPTS + 1):
            try:
                return await (live.finish(reply) if live is not None else platform.send_reply(message, reply))
            except outbound.Fenced:
                raise
            except Exception as exc:
                transient = outbound.is_transient(exc)
                last = attempt == DELIVERY_ATTEMPTS
                log.warning("sending reply failed (attempt %d%s): %s", attempt,
                            "" if transient and not last else ", not retried", type(exc).__name__,
                            exc_info=not transient)
                if not transient or last:
                    return None
                await asyncio.sleep(outbound.backoff(attempt, cap_s=10))
        return None
