"""The outbound kit every adapter shares: one governor per chat (a keyed pacer), the send
fence, a bounded record of partly sent replies, typing keep-alive, one jittered backoff with
the one retry loop built on it, and the classifier of transient vs definite errors.

The pacer is the single place a platform's send limits live: final sends, stream edits and
typing indicators of one chat all take their turn from it, so a streamed answer can never
push the chat past the platform's limits, and a 429 on any call holds the whole chat.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import random
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")
V = TypeVar("V")

log = logging.getLogger(__name__)


# -- the send fence ----------------------------------------------------------------------


class Fenced(Exception):
    """Another worker adopted this message: this one must not send anything for it."""


class SendFence:
    """Marks the message SENDING (only the current owner may) right before its first HTTP send,
    not before the pacer's wait: a crash while a reply waits for its turn leaves the message
    PROCESSING, so the worker that adopts it answers it instead of apologising."""

    def __init__(self, key: str, mark: Callable[[], Awaitable[bool]]) -> None:
        self.key = key  # the event key of the message being answered
        self._mark = mark
        self._lock = asyncio.Lock()
        self.entered = False

    async def enter(self) -> None:
        if self.entered:
            return
        async with self._lock:
            if not self.entered:
                if not await self._mark():
                    raise Fenced(self.key)
                self.entered = True


_FENCE: contextvars.ContextVar[SendFence | None] = contextvars.ContextVar("mnemo_send_fence", default=None)


def use_fence(fence: SendFence | None) -> None:
    """The core sets the fence of the message it is answering (the task's context carries it
    into the adapter's send calls)."""
    _FENCE.set(fence)


def current_fence() -> SendFence | None:
    return _FENCE.get()


async def enter_fence() -> None:
    """Adapters call this right before an HTTP call that makes a message people see."""
    fence = _FENCE.get()
    if fence is not None:
        await fence.enter()


# -- pacing ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Limits:
    """One platform's send limits per chat (and overall)."""

    interval_s: float = 1.0  # between two calls in one chat
    per_minute: int | None = None  # calls in one chat per rolling minute (Telegram groups: 20)
    global_interval_s: float = 0.0  # between any two calls of the bot (Telegram: 1/30 s)


@dataclass
class _Chat:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    recent: deque[float] = field(default_factory=deque)
    held_until: float = 0.0
    last_used: float = field(default_factory=time.monotonic)


class KeyedPacer:
    """Per-chat turns within `Limits`; idle chats are pruned so the table never grows forever."""

    def __init__(self, limits: Callable[[Hashable], Limits] | Limits, max_idle_s: float = 120.0) -> None:
        self._limits = limits if callable(limits) else (lambda key: limits)
        self.max_idle_s = max_idle_s
        self._chats: dict[Hashable, _Chat] = {}
        self._global_lock = asyncio.Lock()
        self._global_last = 0.0
        self._last_prune = time.monotonic()

    def limits(self, key: Hashable) -> Limits:
        return self._limits(key)

    def __len__(self) -> int:
        return len(self._chats)

    @asynccontextmanager
    async def slot(self, key: Hashable, *, fence: bool = True, counted: bool = True) -> AsyncIterator[None]:
        """Hold the chat's turn for one call. A retry inside keeps the turn (the parts of a split
        reply keep their order). With `fence`, the message is marked SENDING after the wait and
        before the call; `counted=False` calls (typing) don't use the chat's per-minute budget."""
        chat = self._chat(key)
        async with chat.lock:
            await asyncio.sleep(self._wait(key, chat, counted))
            limits = self.limits(key)
            if limits.global_interval_s:
                async with self._global_lock:
                    await asyncio.sleep(max(0.0, self._global_last + limits.global_interval_s - time.monotonic()))
                    self._global_last = time.monotonic()
            if fence:
                await enter_fence()
            try:
                yield
            finally:
                now = time.monotonic()
                chat.last_used = now
                if counted:
                    chat.recent.append(now)

    def busy(self, key: Hashable) -> bool:
        """Whether a call to this chat is in progress or waiting (typing then stays quiet)."""
        chat = self._chats.get(key)
        return chat is not None and (chat.lock.locked() or chat.held_until > time.monotonic())

    def hold(self, key: Hashable, seconds: float) -> None:
        """The platform said 429 with retry_after: every call to this chat waits it out."""
        chat = self._chat(key)
        chat.held_until = max(chat.held_until, time.monotonic() + seconds)

    def _chat(self, key: Hashable) -> _Chat:
        self._prune()
        chat = self._chats.get(key)
        if chat is None:
            chat = self._chats[key] = _Chat()
        return chat

    def _wait(self, key: Hashable, chat: _Chat, counted: bool) -> float:
        now = time.monotonic()
        limits = self.limits(key)
        while chat.recent and now - chat.recent[0] > 60:
            chat.recent.popleft()
        wait = chat.held_until - now
        if chat.recent:
            wait = max(wait, chat.recent[-1] + limits.interval_s - now)
            if counted and limits.per_minute and len(chat.recent) >= limits.per_minute:
                wait = max(wait, chat.recent[-limits.per_minute] + 60 - now)
        return max(0.0, wait)

    def _prune(self) -> None:
        now = time.monotonic()
        if now - self._last_prune < self.max_idle_s / 4:
            return
        self._last_prune = now
        for key, chat in list(self._chats.items()):
            idle = now - chat.last_used > self.max_idle_s and now > chat.held_until
            # Recent sends still count against a per-minute budget for a minute.
            window = 60.0 if self.limits(key).per_minute else self.limits(key).interval_s
            if idle and not chat.lock.locked() and not (chat.recent and now - chat.recent[-1] < window):
                del self._chats[key]


# -- partly sent replies -----------------------------------------------------------------


class PartialSends(Generic[V]):
    """What was already sent of each reply (platform ids of its parts), so a retried reply
    resumes instead of repeating. Bounded: the oldest records go first (a reply still
    unfinished after `size` newer ones has long been given up on)."""

    def __init__(self, new: Callable[[], V] = list, size: int = 1000) -> None:  # type: ignore[assignment]
        self.new = new
        self.size = size
        self._sent: OrderedDict[str, V] = OrderedDict()

    def __len__(self) -> int:
        return len(self._sent)

    def parts(self, key: str) -> V:
        """The (mutable) record for `key` (by default a list: append each part's id as it goes)."""
        sent = self._sent.get(key)
        if sent is None:
            sent = self._sent[key] = self.new()
            while len(self._sent) > self.size:
                self._sent.popitem(last=False)
        self._sent.move_to_end(key)
        return sent

    def done(self, key: str) -> None:
        """The reply is complete: nothing to resume."""
        self._sent.pop(key, None)


# -- typing ------------------------------------------------------------------------------


@asynccontextmanager
async def keep_typing(send: Callable[[], Awaitable[object]], every_s: float, name: str) -> AsyncIterator[None]:
    """Call `send` now and every `every_s` seconds while the body runs; failures are cosmetic."""

    async def loop() -> None:
        while True:
            try:
                await send()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - an indicator never fails an answer
                log.debug("%s: typing indicator failed: %s", name, type(exc).__name__)
            await asyncio.sleep(every_s)

    task = asyncio.create_task(loop(), name=f"{name}-typing")
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


# -- retries -----------------------------------------------------------------------------


def backoff(attempt: int, base_s: float = 1.0, cap_s: float = 30.0) -> float:
    """Seconds before retry number `attempt` (1-based): doubling, capped, with full jitter
    in the upper half so many workers don't retry in step."""
    ceiling = min(cap_s, base_s * 2 ** max(0, attempt - 1))
    return ceiling / 2 + random.random() * ceiling / 2


TRANSIENT_NAMES = ("Timeout", "Network", "Connection", "ServerError", "ServiceUnavailable", "TryAgain")
_RETRIED = "mnemo_retried"  # set on an error whose retries are used up (see retried_here)


def is_transient(exc: BaseException) -> bool:
    """Worth retrying: the network, a timeout, a 5xx or a 429. Definite failures (a refusal, a
    bad request, a programming error) are not retried, nor is an error already retried by
    the layer that met it (one retry layer per hop)."""
    if getattr(exc, _RETRIED, False):
        return False
    if isinstance(exc, (TimeoutError, ConnectionError)):
        return True
    status = getattr(exc, "status", None) or getattr(getattr(exc, "response", None), "status_code", None)
    if isinstance(status, int):
        return status == 429 or status >= 500
    return any(part in type(exc).__name__ for part in TRANSIENT_NAMES)


def mark_retried(exc: BaseException) -> None:
    """This error's hop has been retried as long as it should: no caller retries it again."""
    try:
        setattr(exc, _RETRIED, True)
    except AttributeError:  # an exception type with __slots__: left as it is
        pass


@asynccontextmanager
async def retried_here() -> AsyncIterator[None]:
    """Around an adapter's delivery: platform errors leaving it were retried by the adapter
    (or its SDK) already, so the core reports them instead of retrying them again. Errors of
    the core's own hop (the send fence's store write) pass unmarked."""
    try:
        yield
    except Fenced:
        raise
    except Exception as exc:
        from core.store.errors import is_store_error

        if not is_store_error(exc):
            mark_retried(exc)
        raise


class Stopped(Exception):
    """The adapter was told to stop while it waited to retry."""


async def pause(seconds: float, stopping: asyncio.Event | None) -> None:
    """Sleep `seconds`, waking at once (with `Stopped`) when `stopping` is set."""
    if stopping is None:
        await asyncio.sleep(seconds)
        return
    try:
        await asyncio.wait_for(stopping.wait(), seconds)
    except TimeoutError:
        return
    raise Stopped


async def retry(
    call: Callable[[], Awaitable[T]],
    *,
    what: str,
    logger: logging.Logger = log,
    stopping: asyncio.Event | None = None,
    transient: Callable[[BaseException], bool] = is_transient,
    attempts: int | None = None,
    base_s: float = 1.0,
    cap_s: float = 30.0,
    explain: Callable[[BaseException], str] = lambda exc: type(exc).__name__,
    on_retry: Callable[[BaseException], None] | None = None,
) -> T:
    """`call()` until it succeeds, retrying transient errors with `backoff`, one log line per
    attempt ("<what> (<explain(error)>); retrying in Ns"). Definite errors, and the error of
    the last of `attempts` (None: until stopped), are raised at once (no pause after the last
    attempt) and marked retried. Checks `stopping` itself before every attempt, so a loop of
    instant failures can never spin, even if a cancellation was swallowed."""
    attempt = 0
    while True:
        if stopping is not None and stopping.is_set():
            raise Stopped
        try:
            return await call()
        except (Stopped, Fenced, asyncio.CancelledError):
            raise
        except Exception as exc:
            attempt += 1
            if not transient(exc) or (attempts is not None and attempt >= attempts):
                if transient(exc):
                    mark_retried(exc)
                raise
            delay = backoff(attempt, base_s, cap_s)
            logger.warning("%s (%s); retrying in %.1fs", what, explain(exc), delay)
            if on_retry is not None:
                on_retry(exc)
            await pause(delay, stopping)


async def until_stopped(work: Awaitable[T], stopping: asyncio.Event) -> T:
    """Await `work` unless `stopping` is set first (then `Stopped`): a long poll or a slow
    connect must not delay shutdown."""
    task = asyncio.ensure_future(work)
    stopper = asyncio.ensure_future(stopping.wait())
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
    if not task.done():
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        raise Stopped
    return task.result()
