"""Streamed answers on Telegram: a draft in private chats (Bot API `sendMessageDraft`, then
the final message sent as usual), a message edited in place in groups and forum topics
(`editMessageText`). Every call takes its turn from the chat's pacer, like final sends."""

from __future__ import annotations

import hashlib

from adapters.telegram.outbound import Sender, _reply_to, _thread, render_html
from core.models import Message, Reply
from core.outbound import retried_here
from core.streaming import EditedParts

# Telegram shows a draft change as an animation; once a second is plenty. In a group every
# edit counts against the 20 messages a minute, so previews are sparser there.
DRAFT_INTERVAL_S = 1.0
GROUP_EDIT_INTERVAL_S = 3.0


def draft_id_for(message: Message) -> int:
    """A non-zero id per answered message: changes of one draft animate into each other."""
    digest = hashlib.sha256(message.event_key.encode()).digest()
    return int.from_bytes(digest[:4], "big") % 2_000_000_000 + 1


class DraftAnswer:
    """Private chat: the answer so far as a draft; the final text is sent as a message."""

    edit_interval_s = DRAFT_INTERVAL_S

    def __init__(self, sender: Sender, message: Message, bot_username: str) -> None:
        self.sender = sender
        self.message = message
        self.bot_username = bot_username
        self.draft_id = draft_id_for(message)
        self.shown_anything = False  # a draft is ephemeral: the final message is always sent whole


    async def show(self, text: str) -> None:
        # A draft holds one message (4096 characters): show the part being written.
        part = render_html(Reply(text))[-1]
        await self.sender.draft(int(self.message.conversation_id), self.draft_id, part, _thread(self.message))

    async def finish(self, reply: Reply) -> list[str]:
        async with retried_here():  # the Sender retried already: the core does not again
            return await self.sender.send_reply(self.message, reply, self.bot_username)


class EditedAnswer:
    """Group or topic: the first words are sent as the threaded reply, then edited in place;
    a part that fills up is followed by the next one."""

    edit_interval_s = GROUP_EDIT_INTERVAL_S

    def __init__(self, sender: Sender, message: Message, bot_username: str) -> None:
        self.sender = sender
        self.message = message
        self.bot_username = bot_username
        self.chat = int(message.conversation_id)
        self.reply_to = _reply_to(message)
        self.thread = _thread(message)
        self.parts = EditedParts(self._post, self._edit, self._delete)
        self._preview = True

    async def show(self, text: str) -> None:
        self._preview = True
        await self.parts.sync(render_html(Reply(text)))

    @property
    def shown_anything(self) -> bool:
        return bool(self.parts.ids)

    async def finish(self, reply: Reply) -> list[str]:
        async with retried_here():  # the Sender retried already: the core does not again
            if not self.parts.ids:
                return await self.sender.send_reply(self.message, reply, self.bot_username)  # nothing previewed
            self._preview = False  # the final text waits out 429s instead of being skipped
            return await self.parts.sync(render_html(reply), final=True)

    async def _post(self, index: int, text: str) -> str:
        return await self.sender.send_text(self.chat, text, self.reply_to if index == 0 else None, self.thread)

    async def _edit(self, message_id: str, text: str) -> None:
        await self.sender.edit_text(self.chat, int(message_id), text, preview=self._preview)

    async def _delete(self, message_id: str) -> None:
        await self.sender.delete(self.chat, int(message_id))
