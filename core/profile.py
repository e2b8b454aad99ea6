"""What Mnemo has learned about a person: `/profile`, and the facts side of /forget and /export."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from core.answer import to_datetime
from core.facts import CURRENT, is_fact_id
from core.models import Message, Reply, Scope
from core.privacy import readable_scopes
from core.render import shorten

if TYPE_CHECKING:
    from core.services import Services as Core  # stages get the services, never the facade

NEEDS_MODEL = (
    "Learning needs a model: set MNEMO_MODEL (or MNEMO_LEARNING_MODEL) and I'll learn facts about you "
    "from what you tell me. /memory lists what I remember meanwhile."
)


async def profile(core: Core, message: Message) -> Reply:
    if not core.learner.enabled:
        return Reply(NEEDS_MODEL, private=True)
    scopes = readable_scopes(message)
    await core.learner.flush([message.conversation_key])  # what was just said is learned first
    facts = await core.facts.about(message.user_key, scopes)
    if not facts:
        return Reply("I haven't learned anything about you here yet.", private=True)
    said = await core.facts.source_messages(facts)
    current = [f for f in facts if f["status"] == CURRENT]
    earlier = [f for f in facts if f["status"] != CURRENT]
    lines = [f"What I've learned about you ({len(current)} current facts):"]
    lines += [_line(f, said) for f in current] or ["(nothing current)"]
    if earlier:
        lines.append("Earlier (no longer current):")
        lines += [_line(f, said, earlier=True) for f in earlier]
    lines.append("Forget one with /forget F<id>, or everything with /forget all.")
    return Reply("\n".join(lines), private=True)


def _line(fact: dict[str, Any], said: dict[str, dict[str, Any]], earlier: bool = False) -> str:
    when = f"{to_datetime(fact['valid_from']):%Y-%m-%d}"
    if earlier:
        until = fact.get("valid_until")
        when = f"earlier: {when} to {to_datetime(until):%Y-%m-%d}" if until else f"earlier, from {when}"
    else:
        when = f"since {when}"
    line = f"• {fact['_id']} · {shorten(fact['text'], 120)} ({when})"
    for source_id in fact["sources"][:2]:
        origin = said.get(source_id)
        if origin is None:
            continue
        quote = shorten(origin.get("text") or origin.get("media_text") or "", 100)
        link = f" {origin['link']}" if origin.get("link") else ""
        line += f"\n    from {origin['author_name']}, {to_datetime(origin['ts']):%Y-%m-%d}: \u201c{quote}\u201d{link}"
    return line


async def forget_fact(core: Core, message: Message, fact_id: str) -> bool:
    """`/forget F<id>`: a fact about the asker or learned from what they said."""
    if not is_fact_id(fact_id):
        return False
    mine = [f for f in await core.facts.of_user(message.user_key) if f["_id"] == fact_id]
    return await core.facts.forget(mine) > 0


async def exportable_facts(core: Core, user_key: str) -> list[dict[str, Any]]:
    platform, _, author_id = user_key.partition(":")
    facts = await core.facts.exportable_of(user_key, Scope("dm", platform, author_id))
    said = await core.facts.source_messages(facts)
    out = []
    for fact in facts:
        entry = {("id" if k == "_id" else k): v for k, v in fact.items()}
        entry["sources"] = [
            {"id": s, "author": said[s]["author_name"], "ts": said[s]["ts"], "text": said[s]["text"],
             "link": said[s].get("link")}
            for s in fact["sources"] if s in said
        ]
        out.append(entry)
    return out
