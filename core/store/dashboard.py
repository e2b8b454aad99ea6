"""The web dashboard's reads (adapters/web): one read-only object, so what a page can show is
decided here, with the scope filter in every query that can reach other people's messages.

Changes never go through here: the pages run the chat commands (/forget, /export, /optout)
and `core.settings`, so the web and chat share one path for each."""

from __future__ import annotations

from typing import Any

from pymongo import ASCENDING, DESCENDING
from pymongo.asynchronous.database import AsyncDatabase

from core.kinds import NOT_MEMORY
from core.store.facts import FactDocs
from core.store.settings import SettingsDocs
from core.store.web import WebDocs

# What /memory lists: what people told and Mnemo remembered.
MEMORIES: dict[str, Any] = {"kind": {"$nin": NOT_MEMORY}, "remembered": True}


def _matching(search: str, fields: tuple[str, ...]) -> dict[str, Any]:
    import re

    pattern = {"$regex": re.escape(search), "$options": "i"}
    return {"$or": [{f: pattern} for f in fields]}


class Dashboard:
    def __init__(self, db: AsyncDatabase[dict[str, Any]], facts: FactDocs, settings: SettingsDocs,
                 web: WebDocs) -> None:
        self._db = db
        self._messages = db["messages"]
        self._replies = db["replies"]
        self._users = db["users"]
        self._facts = facts
        self._settings = settings
        self._web = web

    async def ping(self) -> None:
        await self._db.command("ping")

    # -- a person's own page ----------------------------------------------------------------

    async def memories_of(self, user_key: str, search: str, page: int, page_size: int) -> tuple[int, list[dict[str, Any]]]:
        """(how many, one page newest first) of what this person told that Mnemo remembers."""
        mine: dict[str, Any] = {"author_key": user_key, **MEMORIES}
        if search:
            mine = {"$and": [mine, _matching(search, ("text", "media_text"))]}
        total = await self._messages.count_documents(mine)
        cursor = self._messages.find(mine).sort("ts", DESCENDING).skip((page - 1) * page_size).limit(page_size)
        return total, [doc async for doc in cursor]

    async def opted_out(self, user_key: str) -> bool:
        found = await self._users.find_one({"_id": user_key}, {"opted_out": 1})
        return bool((found or {}).get("opted_out"))

    async def group_scopes_spoken_in(self, user_key: str) -> list[str]:
        """The group scopes where this person has said something themselves."""
        return list(await self._messages.distinct("scope", {"author_key": user_key, "is_dm": False}))

    async def facts_about(self, user_key: str, scope_keys: list[str], search: str,
                          limit: int = 200) -> list[dict[str, Any]]:
        """Facts about this person from these scopes, newest first."""
        return await self._facts.about(user_key, scope_keys, search or None, limit)

    async def messages_in_scopes(self, ids: list[str], scope_keys: list[str]) -> dict[str, dict[str, Any]]:
        """These messages (author, text, time, link), where they are in one of these scopes."""
        cursor = self._messages.find({"_id": {"$in": ids}, "scope": {"$in": scope_keys}},
                                     {"text": 1, "ts": 1, "link": 1, "author_name": 1})
        return {doc["_id"]: doc async for doc in cursor}

    # -- the chat page and a message in context ---------------------------------------------

    async def chat_history(self, conversation_key: str, scope_key: str,
                           limit: int) -> tuple[list[dict[str, Any]], dict[str, list[dict[str, Any]]]]:
        """The last `limit` messages of a DM (oldest first) and the replies to each, in order."""
        cursor = self._messages.find({"conversation_key": conversation_key, "scope": scope_key})
        messages = [doc async for doc in cursor.sort("ts", DESCENDING).limit(limit)]
        messages.reverse()
        replies: dict[str, list[dict[str, Any]]] = {}
        found = self._replies.find({"message_key": {"$in": [m["key"] for m in messages]}}).sort("ts", ASCENDING)
        async for reply in found:
            replies.setdefault(reply["message_key"], []).append(reply)
        return messages, replies

    async def cited_in(self, memory_ids: list[str], scope_keys: list[str]) -> dict[str, dict[str, Any]]:
        """Link and date of cited messages, where they are in one of these scopes."""
        cursor = self._messages.find({"_id": {"$in": memory_ids}, "scope": {"$in": scope_keys}}, {"link": 1, "ts": 1})
        return {doc["_id"]: doc async for doc in cursor}

    async def fact_in_scopes(self, fact_id: str, scope_keys: list[str]) -> dict[str, Any] | None:
        return await self._facts.in_scopes(fact_id, scope_keys)

    async def message_in_scopes(self, memory_id: str, scope_keys: list[str]) -> dict[str, Any] | None:
        return await self._messages.find_one({"_id": memory_id, "scope": {"$in": scope_keys}})

    async def neighbours(self, doc: dict[str, Any], count: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Up to `count` messages before (oldest first) and after a message, in its own
        conversation and scope."""
        same = {"conversation_key": doc["conversation_key"], "scope": doc["scope"]}
        before = self._messages.find({**same, "ts": {"$lt": doc["ts"]}}).sort("ts", DESCENDING).limit(count)
        after = self._messages.find({**same, "ts": {"$gt": doc["ts"]}}).sort("ts", ASCENDING).limit(count)
        earlier = [d async for d in before]
        earlier.reverse()
        return earlier, [d async for d in after]

    # -- the admins' page -------------------------------------------------------------------

    async def web_conversations(self) -> list[str]:
        """Every conversation of the web platform (messages stored, or settings set)."""
        keys = set(await self._messages.distinct("conversation_key", {"platform": "web"}))
        keys.update(await self._settings.web_conversations())
        return sorted(keys)

    async def setting_changes(self, conversation_keys: list[str], limit: int) -> list[dict[str, Any]]:
        return await self._settings.changes_of(conversation_keys, limit)

    async def channel_titles(self, conversation_keys: list[str]) -> dict[str, str]:
        return await self._web.channel_titles(conversation_keys)
