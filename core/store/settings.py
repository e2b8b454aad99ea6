"""Per-channel settings (in `conversations`) and the audit log of their changes."""

from __future__ import annotations

from typing import Any

from pymongo import DESCENDING
from pymongo.asynchronous.database import AsyncDatabase

from core.models import utcnow


class SettingsDocs:
    def __init__(self, db: AsyncDatabase[dict[str, Any]]) -> None:
        self._conversations = db["conversations"]
        self._audit = db["settings_audit"]

    async def stored_settings(self, conversation_key: str) -> dict[str, Any]:
        """The settings stored for one conversation (only those ever set)."""
        doc = await self._conversations.find_one({"_id": conversation_key}, {"settings": 1})
        return dict((doc or {}).get("settings") or {})

    async def save(self, conversation_key: str, key: str, old: str, new: str, who: str) -> None:
        """Store one setting and its audit entry."""
        now = utcnow()
        await self._conversations.update_one(
            {"_id": conversation_key},
            {"$set": {f"settings.{key}": new, "updated_at": now}, "$setOnInsert": {"created_at": now}},
            upsert=True,
        )
        await self._audit.insert_one(
            {"conversation_key": conversation_key, "who": who, "at": now, "key": key, "old": old, "new": new}
        )

    async def retention_days(self) -> list[tuple[str, str]]:
        """(conversation key, retention_days) of every conversation with a retention set."""
        cursor = self._conversations.find(
            {"settings.retention_days": {"$exists": True, "$ne": "forever"}}, {"settings.retention_days": 1}
        )
        return [(doc["_id"], str(doc["settings"]["retention_days"])) async for doc in cursor]

    async def copy_conversation(self, old_key: str, new_key: str) -> None:
        """A conversation changed identity (Telegram group -> supergroup): its document (settings,
        notices) is carried over to the new key."""
        doc = await self._conversations.find_one({"_id": old_key})
        if doc is None:
            return
        doc.pop("_id")
        await self._conversations.update_one({"_id": new_key}, {"$set": doc}, upsert=True)

    async def changes_of(self, conversation_keys: list[str], limit: int) -> list[dict[str, Any]]:
        """The latest audit entries of these conversations, newest first."""
        cursor = self._audit.find({"conversation_key": {"$in": conversation_keys}}).sort("at", DESCENDING)
        return [doc async for doc in cursor.limit(limit)]

    async def web_conversations(self) -> list[str]:
        """Keys of the web platform's conversations that have a stored document."""
        return [doc["_id"] async for doc in self._conversations.find({"_id": {"$regex": "^web:"}}, {"_id": 1})]
