"""Streamed answers on Slack: the first words are posted as the threaded reply (with the
reply's metadata), then the message is edited with `chat.update` as the answer grows; a
part that fills up is followed by the next. Every call takes the channel's turn from the
same pacer as final posts; the SDK's retry handlers wait out 429s."""

from __future__ import annotations

from adapters.slack import mrkdwn
from adapters.slack.delivery import ReplySender
from core.models import Message, Reply
from core.outbound import retried_here
from core.render import render_chunks
from core.streaming import EditedParts

# chat.update is a Tier 3 method (about 50 a minute per workspace); 1.5 s between previews
# keeps one streamed answer far inside it and leaves the channel room for other replies.
EDIT_INTERVAL_S = 1.5


class EditedAnswer:
    edit_interval_s = EDIT_INTERVAL_S

    def __init__(self, sender: ReplySender, message: Message) -> None:
        self.sender = sender
        self.message = message
        self.parts = EditedParts(self._post, self._edit, self._delete)

    @property
    def shown_anything(self) -> bool:
        return bool(self.parts.ids)

    def _render(self, reply: Reply) -> list[str]:
        return render_chunks(reply, self.sender.max_chars, mrkdwn.escape, mrkdwn.link)

    async def show(self, text: str) -> None:
        await self.parts.sync(self._render(Reply(text)))

    async def finish(self, reply: Reply) -> list[str]:
        async with retried_here():  # the SDK retried already: the core does not again
            if not self.parts.ids:
                return await self.sender.send(self.message, reply)  # nothing previewed: sent as usual
            return await self.parts.sync(self._render(reply), final=True)

    async def _post(self, index: int, text: str) -> str:
        return await self.sender.post(self.message, text, index)

    async def _edit(self, ts: str, text: str) -> None:
        index = self.parts.ids.index(ts)
        await self.sender.update(self.message, ts, text, index)

    async def _delete(self, ts: str) -> None:
        await self.sender.delete(self.message, ts)
