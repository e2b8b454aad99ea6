"""Who holds which message: leases on pending messages, worker heartbeats, adoption of the
messages of workers that are gone (core.pipeline's worker stage)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from pymongo.asynchronous.collection import AsyncCollection

from core.models import utcnow
from core.store.states import PENDING, PROCESSING, RECEIVED, SENDING


class Leases:
    """Part of `Store` (its collections, set in `Store.__init__`)."""

    messages: AsyncCollection[dict[str, Any]]
    workers: AsyncCollection[dict[str, Any]]

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
        query: dict[str, Any] = {"state": {"$in": PENDING}, "platform": {"$in": platforms}}
        if conversation_key is not None:
            query["conversation_key"] = conversation_key
        # The pending messages are few; which are stale is decided here, not by an `$or`
        # (see "SecantusDB" in core/store/__init__.py).
        held = live | {owner}
        cursor = self.messages.find(query, {"_id": 1, "state": 1, "owner": 1, "lease_until": 1, "created_at": 1})
        stale = [doc async for doc in cursor
                 if doc.get("owner") not in held or (doc.get("lease_until") is not None and doc["lease_until"] < now)]
        stale.sort(key=lambda doc: doc["created_at"])
        adopted = []
        for found in stale[:limit]:
            fields: dict[str, Any] = {"owner": owner, "state": RECEIVED, "lease_until": now + lease}
            if found["state"] == SENDING:
                fields["interrupted_send"] = True
            # An update of the version read, then a read: not findAndModify (same note).
            taken = await self.messages.update_one(
                {"_id": found["_id"], "state": found["state"], "owner": found.get("owner"),
                 "lease_until": found.get("lease_until")},
                {"$set": fields},
            )
            doc = await self.messages.find_one({"_id": found["_id"]}) if taken.modified_count == 1 else None
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
