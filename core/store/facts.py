"""The `facts` collection and the learning markers (`learning`): named queries only.

Every read of facts that can reach a person other than the one asking carries the scope
filter (`scope_keys`); the per-person reads (`of_author_or_about`) serve that person's own
export and /forget all. The logic around them (recall order, Chroma) is in `core.facts`.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Any

from pymongo import ASCENDING, DESCENDING
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from core.models import utcnow

CURRENT = "current"
SUPERSEDED = "superseded"
RETIRED = "retired"


class FactDocs:
    def __init__(self, db: AsyncDatabase[dict[str, Any]]) -> None:
        self._facts = db["facts"]
        self._markers = db["learning"]  # per conversation: what has been learned from
        self._messages = db["messages"]

    async def ensure_indexes(self) -> None:
        await self._facts.create_index([("scope", ASCENDING), ("status", ASCENDING)], name="fact_scope_status")
        await self._facts.create_index([("about_key", ASCENDING), ("status", ASCENDING)], name="fact_about")
        await self._facts.create_index([("sources", ASCENDING)], name="fact_sources")
        # Learning reads a conversation's messages after its marker, in storing order.
        await self._messages.create_index(
            [("conversation_key", ASCENDING), ("created_at", ASCENDING), ("_id", ASCENDING)], name="conv_created"
        )

    # -- reads (scoped) -----------------------------------------------------------------

    async def current_in_scope(self, scope_key: str, limit: int) -> list[dict[str, Any]]:
        """The newest `limit` current facts of one scope, oldest first."""
        cursor = self._facts.find({"scope": scope_key, "status": CURRENT}).sort("valid_from", DESCENDING).limit(limit)
        docs = [doc async for doc in cursor]
        docs.reverse()
        return docs

    async def by_ids(self, ids: list[str], scope_keys: list[str]) -> dict[str, dict[str, Any]]:
        if not ids or not scope_keys:
            return {}
        cursor = self._facts.find({"_id": {"$in": ids}, "scope": {"$in": scope_keys}})
        return {doc["_id"]: doc async for doc in cursor}

    async def superseded_by_any(self, fact_ids: list[str], scope_keys: list[str]) -> list[dict[str, Any]]:
        """The facts that these facts replaced (one step back in their history)."""
        cursor = self._facts.find({"superseded_by": {"$in": fact_ids}, "scope": {"$in": scope_keys}})
        return [doc async for doc in cursor]

    async def learned_from(self, message_ids: list[str], scope_keys: list[str]) -> list[dict[str, Any]]:
        """Facts with any of these messages among their sources."""
        if not message_ids or not scope_keys:
            return []
        cursor = self._facts.find({"sources": {"$in": message_ids}, "scope": {"$in": scope_keys}})
        return [doc async for doc in cursor]

    async def about(self, user_key: str, scope_keys: list[str], search: str | None = None,
                    limit: int = 0) -> list[dict[str, Any]]:
        """Facts about a person in these scopes (newest first), optionally matching `search`."""
        query: dict[str, Any] = {"about_key": user_key, "scope": {"$in": scope_keys}}
        if search:
            query = {"$and": [query, {"text": {"$regex": re.escape(search), "$options": "i"}}]}
        cursor = self._facts.find(query).sort("valid_from", DESCENDING)
        return [doc async for doc in (cursor.limit(limit) if limit else cursor)]

    async def in_scopes(self, fact_id: str, scope_keys: list[str]) -> dict[str, Any] | None:
        return await self._facts.find_one({"_id": fact_id, "scope": {"$in": scope_keys}})

    # -- reads (one person's own) ---------------------------------------------------------

    async def of_author_or_about(self, user_key: str) -> list[dict[str, Any]]:
        """Facts about a person or learned from their messages (their export, /forget all)."""
        own = [d["_id"] async for d in self._messages.find({"author_key": user_key}, {"_id": 1})]
        query: dict[str, Any] = {"$or": [{"about_key": user_key}, {"sources": {"$in": own}}]}
        return [doc async for doc in self._facts.find(query).sort("valid_from", ASCENDING)]

    async def exportable_of(self, user_key: str, dm_scope_key: str) -> list[dict[str, Any]]:
        """Facts a person's export holds, oldest first: those learned from what they said, and
        those about them in their own DM and in the groups they speak in. A fact about them
        that someone told Mnemo in that someone's DM stays in that DM."""
        own = [d async for d in self._messages.find({"author_key": user_key}, {"_id": 1, "scope": 1})]
        scopes = sorted({d["scope"] for d in own} | {dm_scope_key})
        query: dict[str, Any] = {"$or": [{"sources": {"$in": [d["_id"] for d in own]}},
                                         {"about_key": user_key, "scope": {"$in": scopes}}]}
        return [doc async for doc in self._facts.find(query).sort("valid_from", ASCENDING)]

    async def with_sources_among(self, message_ids: list[str]) -> list[dict[str, Any]]:
        """Facts learned from any of these messages, in every scope: the messages are being
        forgotten (their own scopes were checked when the deletion was recorded)."""
        return [doc async for doc in self._facts.find({"sources": {"$in": message_ids}})]

    async def in_scope(self, scope_key: str) -> list[dict[str, Any]]:
        """Every fact of one scope (a conversation moving to a new id takes them along)."""
        return [doc async for doc in self._facts.find({"scope": scope_key})]

    # -- writes -------------------------------------------------------------------------

    async def insert(self, doc: dict[str, Any]) -> None:
        await self._facts.insert_one(doc)

    async def supersede(self, old_id: str, new_id: str, when: datetime) -> None:
        await self._facts.update_one(
            {"_id": old_id, "status": CURRENT},
            {"$set": {"status": SUPERSEDED, "valid_until": when, "superseded_by": new_id}},
        )

    async def retire(self, fact_id: str, when: datetime) -> None:
        await self._facts.update_one({"_id": fact_id, "status": CURRENT}, {"$set": {"status": RETIRED, "valid_until": when}})

    async def set_sources(self, fact_id: str, sources: list[str]) -> None:
        await self._facts.update_one({"_id": fact_id}, {"$set": {"sources": sources}})

    async def delete(self, fact_ids: list[str]) -> None:
        """The MongoDB half of forgetting facts (after Chroma's): history that pointed at
        them no longer points anywhere."""
        await self._facts.delete_many({"_id": {"$in": fact_ids}})
        await self._facts.update_many({"superseded_by": {"$in": fact_ids}}, {"$set": {"superseded_by": None}})

    async def move_scope(self, old_scope: str, new_scope: str, new_conversation_key: str) -> None:
        await self._facts.update_many(
            {"scope": old_scope}, {"$set": {"scope": new_scope, "conversation_key": new_conversation_key}}
        )

    # -- learning markers ---------------------------------------------------------------

    async def marker(self, conversation_key: str) -> dict[str, Any] | None:
        return await self._markers.find_one({"_id": conversation_key})

    async def lease_learning(self, conversation_key: str, owner: str, seconds: float) -> bool:
        """Hold the conversation's learning for one pass; False while another worker holds it."""
        now = utcnow()
        lease = {"$set": {"lease_owner": owner, "lease_until": now + timedelta(seconds=seconds)}}
        # Two conditional updates rather than one `$or` (see "SecantusDB" in
        # core/store/__init__.py): take a free or expired lease (creating the marker), else renew ours.
        try:
            await self._markers.update_one(
                {"_id": conversation_key, "lease_until": {"$not": {"$gte": now}}}, lease, upsert=True
            )
            return True
        except DuplicateKeyError:
            pass  # the marker exists with a live lease: ours, or another worker's
        renewed = await self._markers.update_one({"_id": conversation_key, "lease_owner": owner}, lease)
        return renewed.matched_count == 1

    async def release_learning(self, conversation_key: str, owner: str) -> None:
        await self._markers.update_one(
            {"_id": conversation_key, "lease_owner": owner}, {"$set": {"lease_until": None, "lease_owner": None}}
        )

    async def set_marker(self, conversation_key: str, last: dict[str, Any]) -> None:
        await self._markers.update_one(
            {"_id": conversation_key},
            {"$set": {"created_at": last["created_at"], "message_id": last["_id"], "updated_at": utcnow()}},
            upsert=True,
        )

