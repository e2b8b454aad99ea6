"""The web dashboard's login state: one-time links, sessions and admin records (core.web_links).

Links and sessions are stored under the SHA-256 hash of their token; expired ones are refused
by the queries here (the TTL index only tidies up)."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from pymongo import ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase

from core.models import utcnow

log = logging.getLogger(__name__)


class WebDocs:
    def __init__(self, db: AsyncDatabase[dict[str, Any]]) -> None:
        self._links = db["web_links"]
        self._sessions = db["web_sessions"]
        self._admins = db["web_admins"]

    async def ensure_indexes(self) -> None:
        for collection in (self._links, self._sessions):
            try:
                await collection.create_index("expires_at", expireAfterSeconds=0, name="expires")
            except Exception as exc:  # noqa: BLE001 - a store without TTL indexes still works
                log.info("no TTL index on %s: %s", collection.name, type(exc).__name__)
        await self._admins.create_index("user_key", name="admin_user")

    # -- links and sessions ---------------------------------------------------------------

    async def insert_link(self, doc: dict[str, Any]) -> None:
        await self._links.insert_one(doc)

    async def redeem_link(self, link_hash: str) -> dict[str, Any] | None:
        """Mark an unused, unexpired link used (one atomic update: it works once) and return it."""
        now = utcnow()
        return await self._links.find_one_and_update(
            {"_id": link_hash, "used_at": None, "expires_at": {"$gt": now}},
            {"$set": {"used_at": now}},
            return_document=ReturnDocument.AFTER,
        )

    async def insert_session(self, doc: dict[str, Any]) -> None:
        await self._sessions.insert_one(doc)

    async def live_session(self, session_hash: str) -> dict[str, Any] | None:
        return await self._sessions.find_one({"_id": session_hash, "expires_at": {"$gt": utcnow()}})

    async def end_session(self, session_hash: str) -> None:
        await self._sessions.delete_one({"_id": session_hash})

    # -- who administers which channel ----------------------------------------------------

    async def record_admin(self, user_key: str, conversation_key: str, title: str | None) -> None:
        await self._admins.update_one({"_id": f"{user_key}|{conversation_key}"}, {"$set": {
            "user_key": user_key, "conversation_key": conversation_key, "title": title,
            "recorded_at": utcnow()}}, upsert=True)

    async def drop_admin(self, user_key: str, conversation_key: str) -> None:
        await self._admins.delete_one({"_id": f"{user_key}|{conversation_key}"})

    async def administered_since(self, user_key: str, since: datetime) -> list[str]:
        """Conversation keys this person was recorded administering after `since`."""
        cursor = self._admins.find({"user_key": user_key, "recorded_at": {"$gt": since}})
        return [doc["conversation_key"] async for doc in cursor]

    async def channel_titles(self, conversation_keys: list[str]) -> dict[str, str]:
        cursor = self._admins.find({"conversation_key": {"$in": conversation_keys}}, {"conversation_key": 1, "title": 1})
        return {doc["conversation_key"]: doc["title"] async for doc in cursor if doc.get("title")}
