"""MongoDB documents: messages, replies, conversations (with settings), users, audit log.

Everything goes through PyMongo's native async API. Queries that read memories always carry
the scope filter; the scope list comes from `core.privacy`, never from the caller's text.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from pymongo import ASCENDING, DESCENDING, AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from core.kinds import NOT_MEMORY, QUESTION, REPLY, TOLD
from core.models import Message, Scope, utcnow
from core.store.dashboard import Dashboard
from core.store.deletions import DeletionRecords
from core.store.facts import FactDocs
from core.store.ids import new_id
from core.store.leases import Leases
from core.store.memories import MemoryQueries
from core.store.migrations import MigrationDocs
from core.store.settings import SettingsDocs
from core.store.states import PENDING, PROCESSING, RECEIVED, SENDING
from core.store.web import WebDocs

# Recent turns are looked for this far back: a follow-up answers what was said lately, and the
# bound keeps the read to the conversation's latest messages however long its history.
RECENT_TURNS_WINDOW = timedelta(days=3)


def message_doc(message: Message, *, remember: bool, kind: str = TOLD) -> dict[str, Any]:
    return {
        "_id": new_id(),
        "key": message.event_key,
        "platform": message.platform,
        "conversation_key": message.conversation_key,
        "conversation_id": message.conversation_id,
        "message_id": message.message_id,
        "scope": message.scope.key,
        "is_dm": message.is_dm,
        "author_key": message.user_key,
        "author_id": message.author_id,
        "author_name": message.author_name,
        "text": message.text,
        "ts": message.ts,
        "thread_id": message.thread_id,
        "link": message.link,
        "mentions_bot": message.mentions_bot,
        "replies_to_bot": message.replies_to_bot,
        "is_command": message.is_command,
        "kind": kind,
        "attachments": [
            {"kind": a.kind, "filename": a.filename, "mime_type": a.mime_type, "size": a.size}
            for a in message.attachments
        ],
        "media_text": None,
        "media_kind": None,
        "remember": remember,
        "remembered": False,
        "state": RECEIVED,
        "lease_until": None,  # set with `owner` when a worker queues it (Core.submit)
        "owner": None,
        "attempts": 0,
        "created_at": utcnow(),
    }


def _is_turn(doc: dict[str, Any], message: Message) -> bool:
    """Whether a stored message is one of `message`'s recent turns: same scope and thread (a
    thread's turns include its root), what people told and asked but not commands, and not
    what was said while memory was off or its author opted out (kept only to answer it)."""
    if doc.get("key") == message.event_key or doc.get("scope") != message.scope.key:
        return False
    if message.thread_id:
        if message.thread_id not in (doc.get("thread_id"), doc.get("message_id")):
            return False
    elif doc.get("thread_id") is not None:
        return False
    kind = doc.get("kind", TOLD)
    return kind == QUESTION or (kind not in NOT_MEMORY and bool(doc.get("remembered")))


class Store(Leases, DeletionRecords, MemoryQueries):
    def __init__(self, client: AsyncMongoClient[dict[str, Any]], db_name: str = "mnemo") -> None:
        self.client = client
        self.db: AsyncDatabase[dict[str, Any]] = client[db_name]
        self.messages = self.db["messages"]
        self.replies = self.db["replies"]
        self.conversations = self.db["conversations"]
        self.users = self.db["users"]
        self.audit = self.db["settings_audit"]
        self.workers = self.db["workers"]  # heartbeats: which workers are alive
        self.deletions = self.db["deletions"]  # forgets recorded before they are carried out
        # Named queries of the other collections (core/store/*.py), on the same database.
        self.facts = FactDocs(self.db)
        self.settings = SettingsDocs(self.db)
        self.migrations = MigrationDocs(self.db)
        self.web = WebDocs(self.db)
        self.dashboard = Dashboard(self.db, self.facts, self.settings, self.web)  # read-only, for adapters/web

    async def ensure_indexes(self) -> None:
        await self.messages.create_index([("key", ASCENDING)], unique=True, name="event_key_unique")
        await self.messages.create_index([("scope", ASCENDING), ("ts", DESCENDING)], name="scope_ts")
        await self.messages.create_index([("author_key", ASCENDING), ("ts", DESCENDING)], name="author_ts")
        await self.messages.create_index([("state", ASCENDING), ("lease_until", ASCENDING)], name="state_lease")
        await self.messages.create_index([("conversation_key", ASCENDING), ("ts", DESCENDING)], name="conv_ts")
        # The turn check of every message (earlier_pending) reads only the conversation's
        # pending messages, not its whole history.
        await self.messages.create_index(
            [("conversation_key", ASCENDING), ("state", ASCENDING), ("order_ts", ASCENDING)], name="conv_state_order"
        )
        # What waits to be indexed (stored while Chroma was down) is looked for at start-up and
        # every 30 s; usually nothing is, and without this index each look reads every message
        # (0.9 s at 20,000 messages on SecantusDB). Sparse: only flagged messages are in it.
        await self.messages.create_index([("index_pending", ASCENDING)], sparse=True, name="index_pending")
        await self.replies.create_index([("message_key", ASCENDING)], name="reply_message")
        await self.replies.create_index([("sent_ids", ASCENDING)], name="reply_sent_ids")
        await self.audit.create_index([("conversation_key", ASCENDING), ("at", DESCENDING)], name="audit_conv")

    async def ping(self) -> bool:
        await self.db.command("ping")
        return True

    async def probe_write(self, worker_id: str) -> None:
        """A real (journaled) write, for /healthz."""
        await self.db["health"].update_one({"_id": worker_id}, {"$set": {"at": utcnow()}}, upsert=True)

    # -- messages -----------------------------------------------------------------------

    async def insert_message(self, doc: dict[str, Any]) -> bool:
        """Store a new message. False when its event key is already stored (redelivery)."""
        for _ in range(3):
            try:
                await self.messages.insert_one(doc)
                return True
            except DuplicateKeyError as exc:
                details = exc.details or {}
                if "key" in (details.get("keyPattern") or {}) or "key" in str(exc):
                    return False
                doc["_id"] = new_id()  # an _id collision: try another id
        raise RuntimeError("could not allocate a message id")

    async def get_message(self, key: str) -> dict[str, Any] | None:
        return await self.messages.find_one({"key": key})

    async def claim(self, key: str, owner: str) -> dict[str, Any] | None:
        """Start processing a received message this worker owns. None when it is finished,
        already being processed, or another worker adopted it (see `adopt_stale`)."""
        # An update then a read, not findAndModify (see "SecantusDB" in core/store/__init__.py).
        claimed = await self.messages.update_one(
            {"key": key, "owner": owner, "state": RECEIVED}, {"$set": {"state": PROCESSING}, "$inc": {"attempts": 1}}
        )
        return await self.messages.find_one({"key": key}) if claimed.modified_count == 1 else None

    async def fence_send(self, key: str, owner: str) -> bool:
        """Fence before the reply goes out, right before its first HTTP send: only the current
        owner may send it (False when another worker adopted the message)."""
        result = await self.messages.update_one(
            {"key": key, "owner": owner, "state": PROCESSING}, {"$set": {"state": SENDING}}
        )
        return result.modified_count == 1

    async def amend_message(self, event_key: str, fields: dict[str, Any]) -> None:
        await self.messages.update_one({"key": event_key}, {"$set": fields})

    async def earlier_pending(
        self, conversation_key: str, key: str, order_ts: float, created_at: datetime
    ) -> dict[str, Any] | None:
        """A message of the conversation that comes before this one (platform timestamp, then
        storing time) and is still pending on some worker, with its `owner` (None when there
        is none): replies keep the conversation's order across workers."""
        # No `$or` (see "SecantusDB" in core/store/__init__.py): the conversation's pending
        # index finds its handful of pending messages, ordered here.
        cursor = self.messages.find(
            {"conversation_key": conversation_key, "state": {"$in": PENDING}},
            {"_id": 1, "owner": 1, "key": 1, "order_ts": 1, "created_at": 1},
        )
        async for doc in cursor:
            if doc.get("key") == key or doc.get("order_ts") is None:
                continue
            if doc["order_ts"] < order_ts or (doc["order_ts"] == order_ts and doc["created_at"] < created_at):
                return {"_id": doc["_id"], "owner": doc.get("owner")}
        return None

    async def update_message(self, message_id: str, fields: dict[str, Any]) -> None:
        await self.messages.update_one({"_id": message_id}, {"$set": fields})

    async def finish(self, message_id: str, state: str, owner: str | None = None, **fields: Any) -> bool:
        """Record the outcome. With `owner`, only if this worker still holds the message."""
        query: dict[str, Any] = {"_id": message_id}
        if owner is not None:
            query["owner"] = owner
        result = await self.messages.update_one(query, {"$set": {"state": state, "lease_until": None, **fields}})
        return result.matched_count == 1

    async def messages_by_ids(self, ids: list[str], scopes: list[Scope]) -> dict[str, dict[str, Any]]:
        """Load memories by id, restricted to the allowed scopes and to what people told
        (defence in depth: questions to Mnemo and commands are never indexed either)."""
        if not ids or not scopes:
            return {}
        cursor = self.messages.find(
            {"_id": {"$in": ids}, "scope": {"$in": [s.key for s in scopes]}, "kind": {"$nin": NOT_MEMORY}}
        )
        return {doc["_id"]: doc async for doc in cursor}

    async def messages_by_id_in_scope(self, ids: list[str], scope_key: str) -> dict[str, dict[str, Any]]:
        """These messages, where they are in this scope (a fact's sources, a scope's reindex)."""
        return {doc["_id"]: doc async for doc in self.messages.find({"_id": {"$in": ids}, "scope": scope_key})}

    async def stored_in_conversation(self, conversation_key: str) -> list[dict[str, Any]]:
        """Id, event key, scope and `remembered` of every message stored in a conversation
        (an import resuming: one query on the conversation's index)."""
        cursor = self.messages.find({"conversation_key": conversation_key}, {"_id": 1, "key": 1, "scope": 1, "remembered": 1})
        return [doc async for doc in cursor]

    async def recent_turns(self, message: Message, limit: int) -> list[dict[str, Any]]:
        """The last `limit` turns of `message`'s conversation before it, oldest first: what
        people told and asked (commands left out) and Mnemo's public replies to them, each
        reply right after the message it answers. In a thread, that thread and its root."""
        # Equality and a time range only (see "SecantusDB" in core/store/__init__.py); the
        # kind and thread conditions are applied here, newest first.
        query = {"conversation_key": message.conversation_key,
                 "ts": {"$gte": message.ts - RECENT_TURNS_WINDOW, "$lte": message.ts}}
        cursor = self.messages.find(query).sort("ts", DESCENDING).batch_size(4 * limit)
        said: list[dict[str, Any]] = []
        async for doc in cursor:
            if _is_turn(doc, message):
                said.append(doc)
                if len(said) == limit:
                    break
        await cursor.close()
        said.reverse()
        if not said:
            return []
        replies: dict[str, list[dict[str, Any]]] = {}
        found = self.replies.find({"message_key": {"$in": [d["key"] for d in said]}, "private": {"$ne": True}})
        async for reply in found:
            replies.setdefault(reply["message_key"], []).append({**reply, "kind": REPLY})
        turns: list[dict[str, Any]] = []
        for doc in said:
            turns.append(doc)
            turns.extend(sorted(replies.get(doc["key"], []), key=lambda r: r["ts"]))
        return turns[-limit:]

    async def first_time(self, conversation_key: str, notice: str) -> bool:
        """True once per conversation for `notice` (e.g. the retrieval-only explanation)."""
        field = f"notices.{notice}"
        result = await self.conversations.update_one(
            {"_id": conversation_key, field: {"$exists": False}}, {"$set": {field: utcnow()}}
        )
        if result.modified_count:
            return True
        created = await self.conversations.update_one(
            {"_id": conversation_key}, {"$setOnInsert": {field: utcnow(), "created_at": utcnow()}}, upsert=True
        )
        return created.upserted_id is not None

    # -- replies ------------------------------------------------------------------------

    async def insert_reply(self, doc: dict[str, Any]) -> None:
        await self.replies.insert_one({"_id": new_id("r"), "ts": utcnow(), "kind": REPLY, **doc})

    async def is_bot_message(self, conversation_key: str, platform_message_id: str) -> bool:
        found = await self.replies.find_one(
            {"conversation_key": conversation_key, "sent_ids": platform_message_id}, {"_id": 1}
        )
        return found is not None

    async def quarantine(self, platform: str, event_id: str, payload: str | None, error: str) -> None:
        # Capped: the event may be what was too large to store in the first place.
        await self.db["quarantine"].insert_one({
            "_id": new_id("q"), "platform": platform, "event_id": event_id,
            "payload": payload[:100_000] if payload else None, "error": error, "at": utcnow(),
        })

    # -- users --------------------------------------------------------------------------

    async def get_user(self, user_key: str) -> dict[str, Any]:
        return await self.users.find_one({"_id": user_key}) or {"_id": user_key, "opted_out": False}

    async def set_opt_out(self, user_key: str, name: str, opted_out: bool) -> None:
        await self.users.update_one(
            {"_id": user_key}, {"$set": {"opted_out": opted_out, "name": name, "updated_at": utcnow()}},
            upsert=True,
        )
