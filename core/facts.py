"""The fact store: what Mnemo has learned about people, with provenance and history.

A fact lives in MongoDB (`facts`) and in its scope's Chroma collection (memory id = fact id),
so it is recalled like a message and never crosses a privacy scope. Its scope is that of its
source messages. An update keeps the earlier fact (status `superseded`, `valid_until`,
`superseded_by`); a retired fact is history too. Facts are only ever read with a scope filter.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from core.memory.index import MemoryIndex, MemoryItem
from core.models import Scope, utcnow
from core.store import Store, new_id
from core.store.facts import CURRENT

# Questions about how things were: only these see superseded facts (after the current one).
_PAST = re.compile(
    r"\b(before|used to|previous(ly)?|earlier|formerly|originally|last year|in the past|ago|"
    r"former|at first|anymore|no longer|old|history)\b",
    re.IGNORECASE,
)
RRF_C = 10.0
CARRIED_WEIGHT = 1.0  # tuned on LoCoMo dev (bench/locomo.py --facts observations)
_FACT_ID = re.compile(r"^F[a-z0-9]{9}$")


def is_fact_id(memory_id: str) -> bool:
    return bool(_FACT_ID.match(memory_id))


def asks_about_past(question: str) -> bool:
    return _PAST.search(question) is not None


def facts_timeline(conversation_key: str) -> str:
    """The Chroma `conversation_key` of facts: their own timeline, so a fact never becomes the
    'previous message' context of a chat message (core.memory.scope_view)."""
    return f"{conversation_key}#facts"


def _keys(scopes: list[Scope]) -> list[str]:
    return [s.key for s in scopes]


class FactStore:
    """Facts in MongoDB (through `store.facts`) and in their scope's Chroma collection."""

    def __init__(self, store: Store, index: MemoryIndex) -> None:
        self.store = store
        self.docs = store.facts
        self.index = index

    async def ensure_indexes(self) -> None:
        await self.docs.ensure_indexes()

    # -- reads --------------------------------------------------------------------------

    async def current_in_scope(self, scope: str, limit: int = 300) -> list[dict[str, Any]]:
        return await self.docs.current_in_scope(scope, limit)

    async def by_ids(self, ids: list[str], scopes: list[Scope]) -> dict[str, dict[str, Any]]:
        return await self.docs.by_ids(ids, _keys(scopes))

    async def current_of(self, fact: dict[str, Any], scopes: list[Scope]) -> dict[str, Any] | None:
        """The current fact a superseded one led to (None for a retired one)."""
        for _ in range(50):  # a chain of updates; bounded against a cycle in bad data
            if fact["status"] == CURRENT:
                return fact
            if not fact.get("superseded_by"):
                return None
            found = await self.by_ids([fact["superseded_by"]], scopes)
            if fact["superseded_by"] not in found:
                return None
            fact = found[fact["superseded_by"]]
        return None

    async def history_of(self, fact: dict[str, Any], scopes: list[Scope], depth: int = 3) -> list[dict[str, Any]]:
        """The facts this one superseded, newest first."""
        out: list[dict[str, Any]] = []
        wanted = [fact["_id"]]
        for _ in range(depth):
            found = await self.docs.superseded_by_any(wanted, _keys(scopes))
            if not found:
                break
            found.sort(key=lambda d: -_epoch(d["valid_from"]))
            out.extend(found)
            wanted = [d["_id"] for d in found]
        return out

    async def learned_from(self, message_ids: list[str], scopes: list[Scope]) -> dict[str, list[dict[str, Any]]]:
        """The facts learned from each of these messages."""
        out: dict[str, list[dict[str, Any]]] = {}
        wanted = set(message_ids)
        for fact in await self.docs.learned_from(message_ids, _keys(scopes)):
            for source in fact["sources"]:
                if source in wanted:
                    out.setdefault(source, []).append(fact)
        return out

    async def about(self, user_key: str, scopes: list[Scope]) -> list[dict[str, Any]]:
        """Facts about a person in the given scopes: current first, then history, newest first."""
        docs = await self.docs.about(user_key, _keys(scopes))
        docs.sort(key=lambda d: (d["status"] != CURRENT, -_epoch(d["valid_from"])))
        return docs

    async def of_user(self, user_key: str) -> list[dict[str, Any]]:
        """Facts about a person or learned from their messages (export, forget all)."""
        return await self.docs.of_author_or_about(user_key)

    async def exportable_of(self, user_key: str, dm_scope: Scope) -> list[dict[str, Any]]:
        """Facts for a person's /export (none from other people's DMs)."""
        return await self.docs.exportable_of(user_key, dm_scope.key)

    async def source_messages(self, facts: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """The source messages of `facts`, each restricted to its fact's own scope."""
        wanted: dict[str, set[str]] = {}
        for fact in facts:
            wanted.setdefault(fact["scope"], set()).update(fact["sources"])
        found: dict[str, dict[str, Any]] = {}
        for scope, ids in wanted.items():
            found.update(await self.store.messages_by_id_in_scope(sorted(ids), scope))
        return found

    # -- writes -------------------------------------------------------------------------

    async def add(
        self, *, text: str, about: str, about_key: str | None, scope: str, conversation_key: str,
        sources: list[str], valid_from: datetime,
    ) -> dict[str, Any]:
        doc = {
            "_id": new_id("F"),
            "text": text,
            "about": about,
            "about_key": about_key,
            "scope": scope,
            "conversation_key": conversation_key,
            "sources": sources,
            "valid_from": valid_from,
            "valid_until": None,
            "superseded_by": None,
            "status": CURRENT,
            "created_at": utcnow(),
        }
        await self.docs.insert(doc)
        await self.index.add([self._item(doc)])
        return doc

    async def supersede(self, old: dict[str, Any], new: dict[str, Any]) -> None:
        await self.docs.supersede(old["_id"], new["_id"], new["valid_from"])

    async def retire(self, fact: dict[str, Any], when: datetime) -> None:
        await self.docs.retire(fact["_id"], when)

    async def forget(self, facts: list[dict[str, Any]]) -> int:
        """Forget facts entirely, and the replies that cited them: recorded first (a crash or a
        Chroma outage leaves the record, finished at start-up like a forget of messages), then
        Chroma, then MongoDB. A Chroma error is raised (MemoryUnavailable)."""
        if not facts:
            return 0
        deletion = await self.store.record_fact_deletion(facts)
        for part in deletion["scopes"]:
            await self.index.delete(Scope.parse(part["scope"]), part["ids"])
        await self.store.delete_recorded(deletion)
        return len(deletion["facts"])

    async def forget_sources(self, message_ids: list[str]) -> int:
        """Messages are being forgotten: facts whose only sources they were go with them; other
        facts just lose those sources."""
        if not message_ids:
            return 0
        gone = set(message_ids)
        orphaned = []
        for fact in await self.docs.with_sources_among(message_ids):
            if set(fact["sources"]) <= gone:
                orphaned.append(fact)
            else:
                await self.docs.set_sources(fact["_id"], [s for s in fact["sources"] if s not in gone])
        return await self.forget(orphaned)

    async def move_scope(self, old_scope: str, new_scope: str, new_conversation_key: str) -> None:
        """A conversation changed id (Telegram group -> supergroup): its facts follow."""
        docs = await self.docs.in_scope(old_scope)
        if not docs:
            return
        await self.docs.move_scope(old_scope, new_scope, new_conversation_key)
        for doc in docs:
            doc.update(scope=new_scope, conversation_key=new_conversation_key)
        await self.index.add([self._item(doc) for doc in docs])
        await self.index.delete(Scope.parse(old_scope), [d["_id"] for d in docs])

    @staticmethod
    def _item(doc: dict[str, Any]) -> MemoryItem:
        return MemoryItem(
            memory_id=doc["_id"],
            scope=Scope.parse(doc["scope"]),
            text=doc["text"],
            author=doc["about"],
            ts=_epoch(doc["valid_from"]),
            source_kind="fact",
            conversation_key=facts_timeline(doc["conversation_key"]),
            author_key=doc.get("about_key") or "",
        )

    # -- learning markers ---------------------------------------------------------------

    async def marker(self, conversation_key: str) -> dict[str, Any] | None:
        return await self.docs.marker(conversation_key)

    async def lease_learning(self, conversation_key: str, owner: str, seconds: float) -> bool:
        """Hold the conversation's learning for one pass; False while another worker holds it."""
        return await self.docs.lease_learning(conversation_key, owner, seconds)

    async def release_learning(self, conversation_key: str, owner: str) -> None:
        await self.docs.release_learning(conversation_key, owner)

    async def set_marker(self, conversation_key: str, last: dict[str, Any]) -> None:
        await self.docs.set_marker(conversation_key, last)


def _epoch(moment: datetime | float) -> float:
    if isinstance(moment, datetime):
        from core.answer import to_datetime

        return to_datetime(moment).timestamp()
    return float(moment)


async def arrange(
    facts: FactStore, ranked: list[str], messages: dict[str, dict[str, Any]], found: dict[str, dict[str, Any]],
    question: str, scopes: list[Scope], scores: dict[str, float] | None = None,
) -> list[tuple[str, dict[str, Any]]]:
    """Merge ranked messages and facts into recall order: ("message"|"fact", doc).

    A superseded or retired fact stands for its topic: outside questions about the past it is
    replaced by the current fact it led to; in them, it follows the current one (and a current
    fact with history brings its predecessor along, right after it)."""
    past = asks_about_past(question)
    out: list[tuple[str, dict[str, Any]]] = []
    seen: set[str] = set()

    def put(kind: str, doc: dict[str, Any]) -> None:
        if doc["_id"] not in seen:
            seen.add(doc["_id"])
            out.append((kind, doc))

    learned_from = await facts.learned_from(list(messages), scopes)
    for memory_id in ranked:
        if memory_id in messages:
            derived = learned_from.get(memory_id, [])
            if not derived or any(f["status"] == CURRENT for f in derived):
                put("message", messages[memory_id])
                continue
            # Everything learned from this message is history: it is outdated, like its facts.
            fact: dict[str, Any] | None = derived[0]
        else:
            fact = found.get(memory_id)
        if fact is None:
            continue  # forgotten or out of scope: never shown
        current = fact if fact["status"] == CURRENT else await facts.current_of(fact, scopes)
        if current is not None and current["_id"] not in seen:
            put("fact", current)
            if past:
                for earlier in await facts.history_of(current, scopes):
                    put("fact", earlier)
        if past:
            put("fact", fact)
            if memory_id in messages:
                put("message", messages[memory_id])
    return _fuse(out, scores or {})


def _fuse(
    out: list[tuple[str, dict[str, Any]]], scores: dict[str, float]
) -> list[tuple[str, dict[str, Any]]]:
    """A message a recalled fact was learned from is carried by that fact (its prompt line and
    footnote quote it), so it is not listed again; the fact ranks by its own score plus
    CARRIED_WEIGHT times the best of its messages' (two signals agreeing on one thing said).
    History stays right after the fact it led to."""
    carrier: dict[str, str] = {}
    for kind, doc in out:
        if kind == "fact" and doc["status"] == CURRENT:
            for source in doc["sources"]:
                carrier.setdefault(source, doc["_id"])
    # Reciprocal-rank fusion of two rankings over the same things said: the facts ranked among
    # themselves and the messages among themselves (both in `out`'s order, i.e. by score).
    rank: dict[str, int] = {}
    counters = {"fact": 0, "message": 0}
    for kind, doc in out:
        if kind == "fact" and doc["status"] != CURRENT:
            continue
        counters[kind] += 1
        rank[doc["_id"]] = counters[kind]

    def rrf(memory_id: str) -> float:
        return 1.0 / (RRF_C + rank[memory_id]) if memory_id in rank else 0.0

    units: list[tuple[float, int, list[tuple[str, dict[str, Any]]]]] = []
    for kind, doc in out:
        if kind == "message" and doc["_id"] in carrier:
            continue
        if kind == "fact" and doc["status"] != CURRENT and units and units[-1][2][0][0] == "fact":
            units[-1][2].append((kind, doc))  # history, after its current fact (see arrange)
            continue
        own = rrf(doc["_id"])
        if kind == "fact":
            carried = [rrf(s) for s in doc["sources"] if carrier.get(s) == doc["_id"]]
            own += CARRIED_WEIGHT * max(carried, default=0.0)
        units.append((own, len(units), [(kind, doc)]))
    units.sort(key=lambda u: (-u[0], u[1]))
    return [entry for _, _, entries in units for entry in entries]


def fact_source(number: int, fact: dict[str, Any], said: dict[str, dict[str, Any]]) -> Any:
    """A fact as a numbered source: the fact's text, cited down to the message it came from."""
    from core.answer import Source, to_datetime

    origin = next((said[s] for s in fact["sources"] if s in said), None)
    until = fact.get("valid_until")
    return Source(
        number, fact["_id"],
        author=origin["author_name"] if origin else fact["about"],
        date=to_datetime(origin["ts"] if origin else fact["valid_from"]),
        text=fact["text"],
        link=origin.get("link") if origin else None,
        source_kind="fact",
        fact_about=fact["about"],
        quote=(origin.get("text") or origin.get("media_text") or "") if origin else None,
        until=to_datetime(until) if fact["status"] != CURRENT and until else None,
    )
