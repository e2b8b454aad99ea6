"""Streamed answers on Discord: the first words are sent as the reply (a channel message with
its nonce, or the interaction's first followup, which replaces "thinking…"), then edited in
place as the answer grows; a part that fills up is followed by the next. Edits take the
channel's turn from the same pacer as final sends; discord.py waits out 429s per bucket."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import discord

from core.models import Message, Reply
from core.streaming import EditedParts

# Discord allows about 5 message writes per 5 s in a channel: one preview a second at most,
# leaving room for the final edit and other replies.
EDIT_INTERVAL_S = 1.2

Render = Callable[[Reply], list[str]]


class EditedAnswer:
    edit_interval_s = EDIT_INTERVAL_S

    def __init__(
        self,
        message: Message,
        render: Render,
        post: Callable[[int, str], Awaitable[discord.Message]],
        edit: Callable[[int, str], Awaitable[Any]],
        delete: Callable[[int], Awaitable[Any]],
        send_whole: Callable[[Reply], Awaitable[list[str]]],
        ready: asyncio.Event | None = None,
    ) -> None:
        self.message = message
        self._render = render
        self._post, self._edit, self._delete = post, edit, delete
        self._send_whole = send_whole
        self._ready = ready  # an interaction is acknowledged (deferred) before its followups
        self.parts = EditedParts(self._post_part, self._edit_part, self._delete_part)

    @property
    def shown_anything(self) -> bool:
        return bool(self.parts.ids)

    async def show(self, text: str) -> None:
        if self._ready is not None:
            await asyncio.wait_for(self._ready.wait(), 30)
        await self.parts.sync(self._render(Reply(text)))

    async def finish(self, reply: Reply) -> list[str]:
        if not self.parts.ids:
            return await self._send_whole(reply)  # nothing previewed: sent as usual
        return await self.parts.sync(self._render(reply), final=True)

    async def _post_part(self, index: int, text: str) -> str:
        return str((await self._post(index, text)).id)

    async def _edit_part(self, message_id: str, text: str) -> None:
        await self._edit(int(message_id), text)

    async def _delete_part(self, message_id: str) -> None:
        await self._delete(int(message_id))
