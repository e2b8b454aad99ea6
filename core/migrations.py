"""Start-up migrations of stored data. Each is idempotent (safe to run twice, or on several
workers at once) and costs one read once done: a marker document in `migrations`."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from core import commands, kinds
from core.models import Scope, utcnow

if TYPE_CHECKING:
    from core.services import Services as Core  # stages get the services, never the facade

log = logging.getLogger(__name__)

MESSAGE_KINDS = "message_kinds"
_BATCH = 500
_FIELDS = {"_id": 1, "scope": 1, "text": 1, "is_dm": 1, "is_command": 1, "mentions_bot": 1, "replies_to_bot": 1,
           "attachments": 1}


async def run_migrations(core: Core) -> None:
    await classify_stored_messages(core)


async def classify_stored_messages(core: Core) -> int:
    """Data from before message kinds: give every stored message its kind, and take what is
    not a memory (questions put to Mnemo, commands) out of the index. Returns how many
    messages were classified."""
    marks = core.store.db["migrations"]
    if await marks.find_one({"_id": MESSAGE_KINDS}, {"_id": 1}) is not None:
        return 0
    classified = 0
    while True:
        cursor = core.store.messages.find({"kind": {"$exists": False}}, _FIELDS).limit(_BATCH)
        batch = [doc async for doc in cursor]
        if not batch:
            break
        by_kind: dict[str, list[str]] = {}
        not_memories: dict[str, list[str]] = {}
        for doc in batch:
            command = commands.parse(doc.get("text") or "")
            kind = kinds.kind_of_doc(doc, command.name if command is not None else None)
            by_kind.setdefault(kind, []).append(doc["_id"])
            if kind != kinds.TOLD:
                not_memories.setdefault(doc["scope"], []).append(doc["_id"])
        # Out of the index first: a crash after this leaves the messages unclassified, and the
        # next start-up does both again.
        for scope_key, ids in not_memories.items():
            await core.index.delete(Scope.parse(scope_key), ids)
        for kind, ids in by_kind.items():
            fields: dict[str, object] = {"kind": kind}
            if kind != kinds.TOLD:
                fields.update(remember=False, remembered=False)
            await core.store.messages.update_many({"_id": {"$in": ids}}, {"$set": fields})
        classified += len(batch)
    await core.store.replies.update_many({"kind": {"$exists": False}}, {"$set": {"kind": kinds.REPLY}})
    await marks.update_one(
        {"_id": MESSAGE_KINDS}, {"$set": {"done_at": utcnow(), "classified": classified}}, upsert=True
    )
    if classified:
        log.info("classified %d stored messages by kind", classified)
    return classified
