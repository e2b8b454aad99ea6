"""Start-up migrations' queries: a marker per migration (`migrations`), and the batches of
stored messages and replies a migration rewrites."""

from __future__ import annotations

from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from core.kinds import REPLY
from core.models import utcnow

# What classifying a message by kind reads of it.
_KIND_FIELDS = {"_id": 1, "scope": 1, "text": 1, "is_dm": 1, "is_command": 1, "mentions_bot": 1,
                "replies_to_bot": 1, "attachments": 1}


class MigrationDocs:
    def __init__(self, db: AsyncDatabase[dict[str, Any]]) -> None:
        self._marks = db["migrations"]
        self._messages = db["messages"]
        self._replies = db["replies"]

    async def is_done(self, name: str) -> bool:
        return await self._marks.find_one({"_id": name}, {"_id": 1}) is not None

    async def mark_done(self, name: str, **figures: Any) -> None:
        await self._marks.update_one({"_id": name}, {"$set": {"done_at": utcnow(), **figures}}, upsert=True)

    async def messages_without_kind(self, limit: int) -> list[dict[str, Any]]:
        """A batch of messages stored before message kinds (only what classifying reads)."""
        return [doc async for doc in self._messages.find({"kind": {"$exists": False}}, _KIND_FIELDS).limit(limit)]

    async def set_kind(self, message_ids: list[str], kind: str, memory: bool) -> None:
        """Give these messages their kind; what is not a memory is no longer remembered."""
        fields: dict[str, Any] = {"kind": kind}
        if not memory:
            fields.update(remember=False, remembered=False)
        await self._messages.update_many({"_id": {"$in": message_ids}}, {"$set": fields})

    async def give_replies_their_kind(self) -> None:
        await self._replies.update_many({"kind": {"$exists": False}}, {"$set": {"kind": REPLY}})
