"""Named queries of the pipeline over the messages and replies (core.pipeline, core.commands,
core.memory.ingest, core.learning, core.memory.rebuild): part of `Store`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, ClassVar

from pymongo import ASCENDING, DESCENDING
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError, OperationFailure

from core.kinds import NOT_MEMORY
from core.store.states import DONE, FAILED


class MemoryQueries:
    """Part of `Store` (its collections, set in `Store.__init__`)."""

    db: AsyncDatabase[dict[str, Any]]
    messages: AsyncCollection[dict[str, Any]]
    replies: AsyncCollection[dict[str, Any]]

    # What /memory lists: what people told (not questions to Mnemo, commands, failed attachments).
    MEMORIES: ClassVar[dict[str, Any]] = {"kind": {"$nin": NOT_MEMORY}, "remembered": True}

    async def messages_in_scope(self, scope_key: str) -> list[dict[str, Any]]:
        return [doc async for doc in self.messages.find({"scope": scope_key})]

    async def move_scope_messages(
        self, old_scope_key: str, new_scope_key: str, conversation_key: str, conversation_id: str
    ) -> None:
        """A conversation changed id: its messages move to the new scope and conversation."""
        await self.messages.update_many(
            {"scope": old_scope_key},
            {"$set": {"scope": new_scope_key, "conversation_key": conversation_key,
                      "conversation_id": conversation_id}},
        )

    async def count_messages(self, query: dict[str, Any]) -> int:
        return await self.messages.count_documents(query)

    def messages_oldest_first(self, query: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Matching messages by their time, streamed (a reindex of every memory)."""
        return aiter(self.messages.find(query).sort("ts", ASCENDING))

    async def mark_indexed(self, remembered_ids: list[str], ids: list[str]) -> None:
        """After indexing: `remembered_ids` are in the index; none of `ids` waits for it any more."""
        await self.messages.update_many({"_id": {"$in": remembered_ids}}, {"$set": {"remembered": True}})
        await self.messages.update_many({"_id": {"$in": ids}}, {"$unset": {"index_pending": ""}})

    async def count_memories(self, author_key: str) -> int:
        """How many memories (what /memory lists) a person has."""
        return await self.messages.count_documents({"author_key": author_key, **self.MEMORIES})

    async def memories_page(self, author_key: str, page: int, size: int) -> tuple[int, list[dict[str, Any]]]:
        """(how many in all, one page newest first) of a person's memories."""
        query = {"author_key": author_key, **self.MEMORIES}
        total = await self.messages.count_documents(query)
        cursor = self.messages.find(query).sort("ts", DESCENDING).skip((page - 1) * size).limit(size)
        return total, [doc async for doc in cursor]

    async def exportable_messages(self, author_key: str) -> list[dict[str, Any]]:
        """Everything a person sent that is kept (withheld speech is not), oldest first."""
        query = {"author_key": author_key, "withheld": {"$ne": True}}
        return [doc async for doc in self.messages.find(query).sort("ts", ASCENDING)]

    async def replies_to_author(self, author_key: str) -> list[dict[str, Any]]:
        return [doc async for doc in self.replies.find({"author_key": author_key}).sort("ts", ASCENDING)]

    async def insert_new_messages(self, docs: list[dict[str, Any]]) -> set[str]:
        """insert_many, unordered; returns the ids stored (already-stored event keys are left out)."""
        if not docs:
            return set()
        try:
            await self.messages.insert_many(docs, ordered=False)
            return {doc["_id"] for doc in docs}
        except BulkWriteError as exc:
            failed = {docs[err["index"]]["_id"] for err in exc.details.get("writeErrors", [])}
            return {doc["_id"] for doc in docs if doc["_id"] not in failed}

    async def messages_after(
        self, conversation_key: str, marker: dict[str, Any] | None, limit: int
    ) -> list[dict[str, Any]]:
        """A conversation's messages stored after `marker` (created_at, message_id), in the
        order they were stored: what learning has not read yet."""
        query: dict[str, Any] = {"conversation_key": conversation_key}
        after: tuple[Any, str] | None = None
        if marker is not None and marker.get("created_at") is not None:
            # A range, not an `$or` (see "SecantusDB" in core/store/__init__.py); the
            # messages stored in the marker's millisecond are sorted out here.
            after = (marker["created_at"], marker["message_id"])
            query["created_at"] = {"$gte": after[0]}
        cursor = self.messages.find(query).sort([("created_at", ASCENDING), ("_id", ASCENDING)])
        found: list[dict[str, Any]] = []
        async for doc in cursor:
            if after is not None and doc["created_at"] == after[0] and doc["_id"] <= after[1]:
                continue
            found.append(doc)
            if len(found) == limit:
                break
        await cursor.close()
        return found

    async def finished_conversations(self) -> AsyncIterator[str] | None:
        """The conversation key of every message that becomes done or failed, on any worker,
        as it happens (a change stream). None where the server has no change streams (a
        standalone MongoDB); other errors are raised."""
        finished = {"operationType": "update", "updateDescription.updatedFields.state": {"$in": [DONE, FAILED]}}
        pipeline: list[dict[str, Any]] = [{"$match": finished}, {"$project": {"fullDocument.conversation_key": 1}}]
        try:
            stream = await self.messages.watch(pipeline, full_document="updateLookup", max_await_time_ms=1000)
        except OperationFailure as exc:
            if exc.code == 40573:  # "only supported on replica sets"
                return None
            raise

        async def keys() -> AsyncIterator[str]:
            async with stream:
                async for change in stream:
                    key = (change.get("fullDocument") or {}).get("conversation_key")
                    if key:
                        yield key

        return keys()

    # -- memory index rebuild (core.memory.rebuild) ----------------------------------------

    async def memory_ids_by_scope(self) -> dict[str, list[str]]:
        """Per scope, the ids its Chroma collection should hold: remembered messages and facts
        (current and earlier: both are searched)."""
        found: dict[str, list[str]] = {}
        for collection, query in ((self.messages, {"remembered": True}), (self.db["facts"], {})):
            async for doc in collection.find(query, {"_id": 1, "scope": 1}):
                found.setdefault(doc["scope"], []).append(doc["_id"])
        return found

    async def memory_docs(self, ids: list[str]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The remembered messages and the facts among `ids`."""
        messages = [doc async for doc in self.messages.find({"_id": {"$in": ids}, "remembered": True})]
        facts = [doc async for doc in self.db["facts"].find({"_id": {"$in": ids}})]
        return messages, facts
