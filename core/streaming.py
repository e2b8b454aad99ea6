"""Streaming answers (DESIGN.md "Streaming"): the answer appears while the model writes it.

The core reads the model's stream and keeps a preview of it; the adapter's `LiveTarget`
shows that preview (a Telegram draft, or a posted message it edits) at its own pace, and at
the end replaces it with the final reply — the very `Reply` a non-streamed answer would have
sent, citations validated and footnotes added — or with the error reply if the model failed
midway. Previews are coalesced: while one update is in flight newer text only replaces the
pending one, so a fast model never means an edit per token.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

from core.answer import Source, cite
from core.models import Message, Reply
from core.outbound import Fenced

log = logging.getLogger(__name__)

# An answer the model finishes this soon after its first token is sent whole, never flashed
# as a preview first; later ones show their first words this soon (goal: within 1.5 s).
HOLD_BACK_S = 0.75
# A marker still being written at the end of the text ("[", "[1", "[12").
_OPEN_MARKER = re.compile(r"\[\d{0,3}$")


class LiveTarget(Protocol):
    """What an adapter gives the core to show one answer while it is written."""

    edit_interval_s: float  # the least time between two preview updates in this chat

    @property
    def shown_anything(self) -> bool:
        """False while nothing was previewed (`finish` then sends the reply as usual)."""
        ...

    async def show(self, text: str) -> None:
        """Show `text` (the answer so far, `[n]` markers kept, no footnotes). May raise: a
        failed preview is skipped, the next one carries the newer text."""
        ...

    async def finish(self, reply: Reply) -> list[str]:
        """Replace whatever was shown with `reply` (answer or error), exactly as `send_reply`
        would render it; returns the platform ids of the messages that now carry it."""
        ...


def preview_text(raw: str, sources: list[Source], keep_markers: bool) -> str:
    """The answer so far as people may see it: markers that match no source (yet) hidden."""
    return cite(_OPEN_MARKER.sub("", raw), sources, keep_markers)[0]


class LiveAnswer:
    """One streamed answer: reads the chunks, pushes coalesced previews to the target."""

    def __init__(self, target: LiveTarget, message: Message) -> None:
        self.target = target
        self.event_key = message.event_key
        self.updates = 0  # preview updates that reached the platform
        self.first_visible_s: float | None = None  # seconds from the first token to the first preview
        self._raw = ""
        self._first_token_at = 0.0
        self._fresh = asyncio.Event()
        self._stopping = asyncio.Event()

    async def run(self, chunks: AsyncIterator[str], preview: Callable[[str], str]) -> str:
        """Consume the model's chunks; returns the whole raw answer. A model error propagates
        after the preview in flight (if any) has landed, never cut off mid-call."""
        flusher = asyncio.create_task(self._flush(preview), name="stream-preview")
        try:
            async for piece in chunks:
                if not self._raw and piece:
                    self._first_token_at = time.monotonic()
                self._raw += piece
                self._fresh.set()
                if flusher.done():
                    flusher.result()  # Fenced: another worker owns this message now
            return self._raw
        finally:
            self._stopping.set()
            await asyncio.gather(flusher, return_exceptions=True)
            if flusher.done() and not flusher.cancelled() and isinstance(flusher.exception(), Fenced):
                raise flusher.exception()  # type: ignore[misc]

    async def _flush(self, preview: Callable[[str], str]) -> None:
        shown = ""
        await _first(self._fresh.wait(), self._stopping.wait())
        await _first(asyncio.sleep(HOLD_BACK_S), self._stopping.wait())
        while not self._stopping.is_set():
            await _first(self._fresh.wait(), self._stopping.wait())
            if self._stopping.is_set():
                return
            self._fresh.clear()
            text = preview(self._raw)
            if not text.strip() or text == shown:
                continue
            try:
                await self.target.show(text)
            except Fenced:
                raise
            except Exception as exc:  # noqa: BLE001 - a preview is cosmetic; the final text is not
                log.info("stream preview skipped: %s", type(exc).__name__)
            else:
                shown = text
                self.updates += 1
                if self.first_visible_s is None:
                    self.first_visible_s = time.monotonic() - self._first_token_at
            await _first(asyncio.sleep(self.target.edit_interval_s), self._stopping.wait())

    async def finish(self, reply: Reply) -> list[str]:
        return await self.target.finish(reply)


async def _first(*waits: Awaitable[Any]) -> None:
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class EditedParts:
    """A reply shown as platform messages kept equal to a list of rendered parts: changed
    parts are edited, new ones posted (the next part starts when one is full), and at the
    end parts the final text no longer needs are deleted. Ids only ever grow from what was
    really created, so a failed call is simply redone by the next sync."""

    def __init__(
        self,
        post: Callable[[int, str], Awaitable[str]],
        edit: Callable[[str, str], Awaitable[None]],
        delete: Callable[[str], Awaitable[None]],
        ids: list[str] | None = None,
    ) -> None:
        self._post, self._edit, self._delete = post, edit, delete
        self.ids: list[str] = list(ids or [])
        self.shown: list[str | None] = [None] * len(self.ids)  # None: what it shows is unknown
        self.calls = 0

    async def sync(self, parts: list[str], final: bool = False) -> list[str]:
        for index, part in enumerate(parts):
            if index < len(self.ids):
                if self.shown[index] != part:
                    await self._edit(self.ids[index], part)
                    self.shown[index] = part
                    self.calls += 1
            else:
                self.ids.append(await self._post(index, part))
                self.shown.append(part)
                self.calls += 1
        if final:
            while len(self.ids) > len(parts):
                await self._delete(self.ids[-1])
                self.ids.pop()
                self.shown.pop()
                self.calls += 1
        return list(self.ids)


# The live answer of the message this task is answering: opened by `Core.answer`, finished
# by `Core._deliver` (with the answer, or with whichever error reply replaced it).
_LIVE: contextvars.ContextVar[LiveAnswer | None] = contextvars.ContextVar("mnemo_live_answer", default=None)


def open_live(platform: Any, message: Message, enabled: bool) -> LiveAnswer | None:
    """A live answer when the platform can stream into this conversation, else None (the
    console, test platforms, private or adopted replies: sent whole)."""
    factory: Callable[[Message], LiveTarget | None] | None = getattr(platform, "live_reply", None)
    if not enabled or factory is None or message.reply_context.get("adopted"):
        return None
    target = factory(message)
    if target is None:
        return None
    live = LiveAnswer(target, message)
    _LIVE.set(live)
    return live


def take_live(message: Message) -> LiveAnswer | None:
    live = _LIVE.get()
    _LIVE.set(None)
    return live if live is not None and live.event_key == message.event_key else None
