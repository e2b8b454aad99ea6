"""The one small interface every platform adapter implements.

The core calls back through it to deliver replies (also for messages recovered after a
crash), to ask whether the author may change settings, and to show "typing".

Optional, for platforms that have them (the core checks with `getattr`, so the console and
test platforms work without): `StreamingPlatform.live_reply` (answers shown while written),
`fences_sends` (the adapter marks the message SENDING itself, right before each HTTP send,
through `core.outbound`) and `checks_posted` (after a crash mid-send, the adapter looks up
what it already posted — `message.reply_context["adopted"]` — instead of the core apologising).
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import Protocol, runtime_checkable

from core.models import Message, PlatformLimits, Reply
from core.streaming import LiveTarget


@runtime_checkable
class Platform(Protocol):
    name: str
    limits: PlatformLimits

    async def send_reply(self, message: Message, reply: Reply) -> list[str]:
        """Send `reply` as a threaded reply to `message` (or privately when `reply.private`).

        Returns the platform ids of the messages sent. Must retry on rate limits rather than
        drop; raises only when the platform is definitively unreachable."""
        ...

    async def is_admin(self, message: Message) -> bool:
        """Whether the author may change this channel's settings (the platform's own roles)."""
        ...

    def typing(self, message: Message) -> AbstractAsyncContextManager[None]:
        """Show a typing indicator while the body runs (may be a no-op)."""
        ...


@runtime_checkable
class StreamingPlatform(Platform, Protocol):
    fences_sends: bool
    checks_posted: bool

    def live_reply(self, message: Message) -> LiveTarget | None:
        """Where to stream the answer to `message`, or None to send it whole."""
        ...
