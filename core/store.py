"""MongoDB documents: messages, replies, conversations (with settings), users, audit log.

Everything goes through PyMongo's native async API. Queries that read memories always carry
the scope filter; the scope list comes from `core.privacy`, never from the caller's text.
"""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta
from typing import Any

from pymongo import ASCENDING, DESCENDING, AsyncMongoClient, ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from core.kinds import NOT_MEMORY, QUESTION, REPLY, TOLD
from core.models import Message, Scope, utcnow

# Processing states of a stored message (see core.pipeline).
RECEIVED = "received"
PROCESSING = "processing"
SENDING = "sending"  # the reply is going out: a crash here may have delivered it already
DONE = "done"
FAILED = "failed"
PENDING = [RECEIVED, PROCESSING, SENDING]

_ID_ALPHABET = "abcdefghijkmnpqrstuvwxyz23456789"


def new_id(prefix: str = "m") -> str:
    """Short ids people can type (`/forget m7kq2x9ab`)."""
    return prefix + "".join(secrets.choice(_ID_ALPHABET) for _ in range(9))


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


class Store:
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
        return await self.messages.find_one_and_update(
            {"key": key, "owner": owner, "state": RECEIVED},
            {"$set": {"state": PROCESSING}, "$inc": {"attempts": 1}},
            return_document=ReturnDocument.AFTER,
        )

    async def mark_sending(self, message_id: str, owner: str) -> bool:
        """Fence before the reply goes out: only the current owner may send it."""
        result = await self.messages.update_one(
            {"_id": message_id, "owner": owner, "state": PROCESSING}, {"$set": {"state": SENDING}}
        )
        return result.modified_count == 1

    async def fence_send(self, key: str, owner: str) -> bool:
        """`mark_sending` by event key: called right before the first HTTP send of a reply."""
        result = await self.messages.update_one(
            {"key": key, "owner": owner, "state": PROCESSING}, {"$set": {"state": SENDING}}
        )
        return result.modified_count == 1

    async def amend_message(self, event_key: str, fields: dict[str, Any]) -> None:
        await self.messages.update_one({"key": event_key}, {"$set": fields})

    async def renew_leases(self, owner: str, lease: timedelta) -> int:
        """Heartbeat: extend the lease of every pending message this worker holds (queued,
        processing or sending), so a long queue or a slow model is never mistaken for a crash."""
        result = await self.messages.update_many(
            {"owner": owner, "state": {"$in": PENDING}}, {"$set": {"lease_until": utcnow() + lease}}
        )
        return result.modified_count

    async def beat(self, worker_id: str, platforms: list[str]) -> None:
        """A worker's heartbeat (a few seconds apart; separate from the message leases)."""
        await self.workers.update_one(
            {"_id": worker_id}, {"$set": {"beat_at": utcnow(), "platforms": platforms}}, upsert=True
        )

    async def recent_beats(self, since: datetime) -> list[str]:
        """Workers whose last heartbeat is after `since`."""
        return [doc["_id"] async for doc in self.workers.find({"beat_at": {"$gte": since}}, {"_id": 1})]

    async def stop_beating(self, worker_id: str) -> None:
        await self.workers.delete_one({"_id": worker_id})

    async def adopt_stale(
        self, owner: str, lease: timedelta, platforms: list[str], live: set[str],
        conversation_key: str | None = None, limit: int = 100,
    ) -> list[dict[str, Any]]:
        """Take over messages whose holder is gone: its lease expired (handed back, or a worker
        that stopped renewing) or its owner is not among the `live` workers (no recent
        heartbeat: crashed or killed). Each adoption is one atomic update of the version that
        was read, so two workers never adopt the same message. A message caught mid-send is
        flagged `interrupted_send`: it may have been delivered."""
        now = utcnow()
        query: dict[str, Any] = {
            "platform": {"$in": platforms},
            "state": {"$in": PENDING},
            "$or": [{"lease_until": {"$lt": now}}, {"owner": {"$nin": sorted(live | {owner})}}],
        }
        if conversation_key is not None:
            query["conversation_key"] = conversation_key
        cursor = self.messages.find(
            query,
            {"_id": 1, "state": 1, "owner": 1, "lease_until": 1},
        ).sort("created_at", ASCENDING).limit(limit)
        adopted = []
        for found in [doc async for doc in cursor]:
            fields: dict[str, Any] = {"owner": owner, "state": RECEIVED, "lease_until": now + lease}
            if found["state"] == SENDING:
                fields["interrupted_send"] = True
            doc = await self.messages.find_one_and_update(
                {"_id": found["_id"], "state": found["state"], "owner": found.get("owner"),
                 "lease_until": found.get("lease_until")},
                {"$set": fields},
                return_document=ReturnDocument.AFTER,
            )
            if doc is not None:
                adopted.append(doc)
        return adopted

    async def release(self, owner: str) -> int:
        """Graceful shutdown: hand back queued and unfinished messages with an expired lease,
        so another worker adopts them at once. Messages mid-send are left to expire."""
        result = await self.messages.update_many(
            {"owner": owner, "state": {"$in": [RECEIVED, PROCESSING]}},
            {"$set": {"state": RECEIVED, "owner": None, "lease_until": utcnow() - timedelta(seconds=1)}},
        )
        return result.modified_count

    async def earlier_pending(
        self, conversation_key: str, key: str, order_ts: float, created_at: datetime
    ) -> dict[str, Any] | None:
        """A message of the conversation that comes before this one (platform timestamp, then
        storing time) and is still pending on some worker, with its `owner` (None when there
        is none): replies keep the conversation's order across workers."""
        return await self.messages.find_one(
            {
                "conversation_key": conversation_key,
                "state": {"$in": PENDING},
                "key": {"$ne": key},
                "$or": [
                    {"order_ts": {"$lt": order_ts}},
                    {"order_ts": order_ts, "created_at": {"$lt": created_at}},
                ],
            },
            {"_id": 1, "owner": 1},
        )

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

    async def recent_turns(self, message: Message, limit: int) -> list[dict[str, Any]]:
        """The last `limit` turns of `message`'s conversation before it, oldest first: what
        people told and asked (commands left out) and Mnemo's public replies to them, each
        reply right after the message it answers. In a thread, that thread and its root."""
        query: dict[str, Any] = {
            "scope": message.scope.key, "conversation_key": message.conversation_key, "ts": {"$lte": message.ts},
            "key": {"$ne": message.event_key},
            # Said while memory was off or opted out: not kept beyond answering it.
            "$or": [{"kind": QUESTION}, {"kind": {"$nin": NOT_MEMORY}, "remembered": True}],
        }
        if message.thread_id:
            query["$and"] = [{"$or": [{"thread_id": message.thread_id}, {"message_id": message.thread_id}]}]
        else:
            query["thread_id"] = None
        cursor = self.messages.find(query).sort("ts", DESCENDING).limit(limit)
        said = [doc async for doc in cursor]
        said.reverse()
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

    # -- deletions ----------------------------------------------------------------------

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

    async def pending_deletions(self) -> list[dict[str, Any]]:
        return [doc async for doc in self.deletions.find({}).sort("at", ASCENDING)]

    async def delete_recorded(self, deletion: dict[str, Any]) -> None:
        """The MongoDB half of a recorded deletion (after Chroma's): the messages, the replies
        answering or quoting them, then the record itself. Safe to run twice."""
        ids = [memory_id for part in deletion["scopes"] for memory_id in part["ids"]]
        derived: list[dict[str, Any]] = [{"message_key": {"$in": deletion["keys"]}}, {"footnotes.memory_id": {"$in": ids}}]
        if deletion.get("replies_of"):
            derived.append({"author_key": deletion["replies_of"]})
        await self.replies.delete_many({"$or": derived})
        await self.messages.delete_many({"_id": {"$in": ids}})
        await self.deletions.delete_one({"_id": deletion["_id"]})

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
