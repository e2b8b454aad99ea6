"""Deletions (forget, retention, facts), recorded before anything is deleted: Chroma's half
is done by the caller (core.commands.finish_deletion, core.facts), then MongoDB's here. A
crash or a Chroma outage leaves the record, and start-up finishes it (Core.finish_deletions)."""

from __future__ import annotations

from typing import Any

from pymongo import ASCENDING
from pymongo.asynchronous.collection import AsyncCollection

from core.models import utcnow
from core.store.facts import FactDocs
from core.store.ids import new_id


class DeletionRecords:
    """Part of `Store` (its collections, set in `Store.__init__`)."""

    messages: AsyncCollection[dict[str, Any]]
    replies: AsyncCollection[dict[str, Any]]
    deletions: AsyncCollection[dict[str, Any]]
    facts: FactDocs

    async def record_deletion(self, query: dict[str, Any], replies_of: str | None = None) -> dict[str, Any] | None:
        """Record, durably and before anything is deleted, which messages a forget (or the
        retention sweep) removes: their ids per scope and event keys. A crash mid-way leaves
        this record, and `finish_deletion` (run again at start-up) completes it. None when
        nothing matches and nothing else is to be deleted."""
        docs = [doc async for doc in self.messages.find(query, {"_id": 1, "scope": 1, "key": 1})]
        if not docs and replies_of is None:
            return None
        by_scope: dict[str, list[str]] = {}
        for doc in docs:
            by_scope.setdefault(doc["scope"], []).append(doc["_id"])
        deletion = {
            "_id": new_id("d"),
            "scopes": [{"scope": scope, "ids": ids} for scope, ids in by_scope.items()],
            "keys": [doc["key"] for doc in docs],
            "replies_of": replies_of,
            "at": utcnow(),
        }
        await self.deletions.insert_one(deletion)
        return deletion

    async def record_fact_deletion(self, facts: list[dict[str, Any]]) -> dict[str, Any]:
        """`record_deletion` for facts: their ids per scope (Chroma's half, as for messages)
        and in `facts` (MongoDB's half, in `delete_recorded`)."""
        by_scope: dict[str, list[str]] = {}
        for fact in facts:
            by_scope.setdefault(fact["scope"], []).append(fact["_id"])
        deletion = {
            "_id": new_id("d"),
            "scopes": [{"scope": scope, "ids": ids} for scope, ids in by_scope.items()],
            "keys": [],
            "facts": [fact["_id"] for fact in facts],
            "replies_of": None,
            "at": utcnow(),
        }
        await self.deletions.insert_one(deletion)
        return deletion

    async def pending_deletions(self) -> list[dict[str, Any]]:
        return [doc async for doc in self.deletions.find({}).sort("at", ASCENDING)]

    async def delete_recorded(self, deletion: dict[str, Any]) -> None:
        """The MongoDB half of a recorded deletion (after Chroma's): the messages or facts, the
        replies answering or quoting them, then the record itself. Safe to run twice."""
        ids = [memory_id for part in deletion["scopes"] for memory_id in part["ids"]]
        derived: list[dict[str, Any]] = [{"message_key": {"$in": deletion["keys"]}}, {"footnotes.memory_id": {"$in": ids}}]
        if deletion.get("replies_of"):
            derived.append({"author_key": deletion["replies_of"]})
        await self.replies.delete_many({"$or": derived})
        await self.messages.delete_many({"_id": {"$in": ids}})
        if deletion.get("facts"):
            await self.facts.delete(deletion["facts"])
        await self.deletions.delete_one({"_id": deletion["_id"]})
