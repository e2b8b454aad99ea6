"""The adapter port: what the core calls on a platform (`Platform`), what `bot.app` drives on
a runnable adapter (`Adapter`: routes, run, stop intake, close), and the only things an
adapter may call on the core (`CorePort`).

Optional, for platforms that have them (the core checks with `getattr`, so the console and
test platforms work without): `StreamingPlatform.live_reply` (answers shown while written),
`fences_sends` (the adapter marks the message SENDING itself, right before each HTTP send,
through `core.outbound`) and `checks_posted` (after a crash mid-send, the adapter looks up
what it already posted — `message.reply_context["adopted"]` — instead of the core apologising).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from core.models import Message, PlatformLimits, Reply
from core.streaming import LiveTarget

if TYPE_CHECKING:
    from core.channel_settings import SettingsRepo
    from core.config import CoreConfig
    from core.metrics import Metrics
    from core.web_links import WebLogins

# (HTTP method, path, aiohttp handler) served on the one HTTP server.
Route = tuple[str, str, Any]


@runtime_checkable
class Platform(Protocol):
    name: str
    limits: PlatformLimits

    async def send_reply(self, message: Message, reply: Reply) -> list[str]:
        """Send `reply` as a threaded reply to `message` (or privately when `reply.private`).

        Returns the platform ids of the messages sent. Retries rate limits and transient
        failures itself (one retry layer: what it raises was retried already, see
        `core.outbound.retried_here`); raises only when the platform definitively refused."""
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


@runtime_checkable
class Adapter(Platform, Protocol):
    """A platform `mnemo run` serves. Shutdown is three steps, each on every adapter at once:
    `stop_intake()`, then the core drains (replies in flight still go out), then `close()`."""

    def routes(self) -> list[Route]:
        """Webhook endpoints for the shared HTTP server (empty for gateway/polling modes)."""
        ...

    async def run(self) -> None:
        """Receive until `stop_intake()`. A platform down at start-up is retried with backoff
        (one log line per attempt); raises `FatalPlatformError` for what only a person can fix."""
        ...

    async def stop_intake(self) -> None:
        """Take no new events and make `run()` return, promptly; sending still works."""
        ...

    async def close(self) -> None:
        """Release connections and owned tasks (after the core has drained)."""
        ...


@runtime_checkable
class CorePort(Protocol):
    """Everything an adapter may use on the core (`core.engine.Core` is the implementation).
    Adapters touch nothing else: not its runner, store, index or private attributes."""

    config: CoreConfig
    settings: SettingsRepo  # channel settings (the web admin page)
    metrics: Metrics
    platforms: dict[str, Platform]

    @property
    def draining(self) -> bool: ...

    def register(self, platform: Platform) -> None: ...

    async def submit(self, message: Message) -> asyncio.Future[None] | None:
        """Store `message` (an edit when `message.edited`) and queue it; None when it was
        stored before (a redelivery). Returns once stored: acknowledge the platform then."""
        ...

    async def handle(self, message: Message) -> None:
        """Submit and wait until answered (the console)."""
        ...

    async def recover_stale(self, conversation_key: str | None = None) -> int: ...

    async def quarantine(self, platform: str, event_id: str, payload: str | None, error: BaseException) -> None:
        """Keep aside an event that can never be stored (logged, counted); then confirm it."""
        ...

    async def migrate_conversation(self, platform: str, old_id: str, new_id: str) -> None: ...

    def note_rate_limit(self, platform: str, seconds: float) -> None:
        """Count a 429 wait for /metrics."""
        ...

    @property
    def dashboard(self) -> Any:
        """The web pages' read-only, scoped queries."""
        ...

    @property
    def web_logins(self) -> WebLogins:
        """The dashboard's one-time links and sessions (core.web_links)."""
        ...

    async def run_command(self, message: Message, platform: Platform, name: str, args: str = "") -> Reply:
        """Run a command for `message` at once, without storing it (the web pages' buttons)."""
        ...

    async def health(self) -> dict[str, str]:
        """"ok" or "error: <kind>" for "mongodb" and "chroma" (write probes)."""
        ...

    @property
    def pending_jobs(self) -> int:
        """Jobs queued or running (replies in flight)."""
        ...

    def run_in_conversation(self, conversation_key: str, job: Callable[[], Awaitable[Any]]) -> None:
        """Run `job` after the conversation's queued work (owned, awaited at shutdown)."""
        ...

    async def amend_message(self, event_key: str, fields: dict[str, Any]) -> None:
        """Correct a stored message's metadata learned after storing it (name, DM, link)."""
        ...
