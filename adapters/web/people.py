"""A person's own page: what Mnemo remembers from them and has learned about them, with
search, paging, forget (one, several, all), export and opt-out.

Every change goes through the same chat commands (/forget, /export, /optout, /optin) run as
this person, so the web and chat share one deletion path and one export format.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

from aiohttp import web

from adapters.web.auth import readable_scope_keys
from adapters.web.chat import source_href
from adapters.web.html import csrf_field, e, notice, page, when
from core import commands
from core.models import Message, Reply
from core.render import shorten
from core.web_links import WebSession

if TYPE_CHECKING:
    from core.platform import CorePort, Platform

PAGE_SIZE = 20
MAX_FORGET = 200  # ids in one request


def as_message(session: WebSession, text: str) -> Message:
    """The person, speaking a command from their page (never stored: it runs directly)."""
    return Message(
        platform=session.platform, conversation_id=f"web-dashboard-{session.author_id}",
        message_id=uuid.uuid4().hex, author_id=session.author_id, author_name=session.name, text=text,
        is_dm=True, is_command=True, reply_context={"operator": session.operator},
    )


async def run_command(core: CorePort, platform: Platform, session: WebSession, name: str, args: str = "") -> Reply:
    text = f"/{name} {args}".strip()
    return await core.run_command(as_message(session, text), platform, name, args)


async def people_page(core: CorePort, session: WebSession, query: dict[str, str], message: str | None = None,
                      error: bool = False, refresh_to: str | None = None) -> web.Response:
    q = query.get("q", "").strip()[:200]
    page_no = int(query["page"]) if query.get("page", "").isdigit() and int(query["page"]) > 0 else 1
    total, memories = await core.dashboard.memories_of(session.user_key, q, page_no, PAGE_SIZE)  # as /memory
    facts = await _facts(core, session, q)
    opted_out = await core.dashboard.opted_out(session.user_key)
    body = (
        f"<h1>What Mnemo knows about you</h1>{notice(message, error)}"
        f'<form method="get" action="/me" role="search" class="search"><label for="q">Search your memories and facts</label>'
        f'<div class="row"><input type="search" id="q" name="q" value="{e(q)}"><button type="submit">Search</button></div></form>'
        f'<form method="post" action="/me/forget" id="forget-form">{csrf_field(session)}'
        f"{_facts_section(facts)}{_memories_section(memories, total, page_no, q)}"
        '<div class="actions"><button type="submit" class="danger">Forget selected</button></div></form>'
        f"{_data_section(session, opted_out)}"
    )
    return page("My data", body, session, current="/me", script=True, refresh_to=refresh_to)


async def _facts(core: CorePort, session: WebSession, q: str) -> list[dict[str, Any]]:
    """Facts about this person (the learning issue's `facts` schema); none until it runs.
    Only from scopes they may read: what someone said about them in their own DM stays there."""
    dashboard = core.dashboard
    readable = sorted(await readable_scope_keys(core, session))
    facts = await dashboard.facts_about(session.user_key, readable, q)
    sources = await dashboard.messages_in_scopes(sorted({s for f in facts for s in f.get("sources") or []}), readable)
    for fact in facts:
        fact["_sources"] = [sources[s] for s in fact.get("sources") or [] if s in sources]
    facts.sort(key=lambda f: f.get("status") != "current")  # current first, then history
    return facts


def _facts_section(facts: list[dict[str, Any]]) -> str:
    if not facts:
        return ""
    rows = []
    for fact in facts:
        earlier = "" if fact.get("status", "current") == "current" else ' <span class="badge">earlier</span>'
        cites = "".join(
            f'<li><a href="{e(source_href(s["_id"]))}">{e(s["author_name"])}, {s["ts"]:%Y-%m-%d}: '
            f'\u201c{e(shorten(s.get("text") or "", 100))}\u201d</a></li>'
            for s in fact["_sources"]
        )
        rows.append(
            f'<li class="item"><input type="checkbox" name="id" value="{e(fact["_id"])}" id="pick-{e(fact["_id"])}">'
            f'<label for="pick-{e(fact["_id"])}"><span class="text">{e(fact["text"])}</span>{earlier}'
            f' <span class="id">{e(fact["_id"])}</span></label><ul class="sources" aria-label="Learned from">{cites}</ul></li>'
        )
    return f'<section aria-labelledby="facts-h"><h2 id="facts-h">What Mnemo has learned about you</h2><ul class="items">{"".join(rows)}</ul></section>'


def _memories_section(memories: list[dict[str, Any]], total: int, page_no: int, q: str) -> str:
    pages = max(1, (total + PAGE_SIZE - 1) // PAGE_SIZE)
    head = f'<h2 id="memories-h">What Mnemo remembers from you <span class="count">({total})</span></h2>'
    if not memories:
        empty = "Nothing matches your search." if q else "Mnemo doesn't remember anything from you."
        return f'<section aria-labelledby="memories-h">{head}<p>{e(empty)}</p></section>'
    rows = []
    for doc in memories:
        where = "DM" if doc["is_dm"] else f"group {doc['conversation_id']}"
        text = doc.get("text") or doc.get("media_text") or ""
        rows.append(
            f'<li class="item"><input type="checkbox" name="id" value="{e(doc["_id"])}" id="pick-{e(doc["_id"])}">'
            f'<label for="pick-{e(doc["_id"])}"><span class="text">{e(shorten(text, 300))}</span></label>'
            f'<p class="meta">{e(doc["_id"])} · {e(doc["platform"])} {e(where)} · {when(doc["ts"])} · '
            f'<a href="{e(source_href(doc["_id"]))}">in context</a></p></li>'
        )
    nav = []
    base = f"/me?q={e(q)}&amp;page=" if q else "/me?page="
    if page_no > 1:
        nav.append(f'<a href="{base}{page_no - 1}" rel="prev">Newer</a>')
    nav.append(f"<span>Page {page_no} of {pages}</span>")
    if page_no < pages:
        nav.append(f'<a href="{base}{page_no + 1}" rel="next">Older</a>')
    return (
        f'<section aria-labelledby="memories-h">{head}<ul class="items" id="memories">{"".join(rows)}</ul>'
        f'<nav class="pages" aria-label="Pages">{" ".join(nav)}</nav></section>'
    )


def _data_section(session: WebSession, opted_out: bool) -> str:
    if opted_out:
        opt = ('<p>Mnemo is <strong>not</strong> remembering your messages.</p>'
               '<button type="submit" name="choice" value="optin">Opt in: remember me again</button>')
    else:
        opt = ('<p>Mnemo remembers what you tell it.</p>'
               '<button type="submit" name="choice" value="optout">Opt out: stop remembering me</button>')
    return f"""<section aria-labelledby="data-h"><h2 id="data-h">Your data</h2>
<p><a class="button" href="/me/export" download>Export everything (JSON)</a></p>
<form method="post" action="/me/optout">{csrf_field(session)}{opt}</form>
<form method="post" action="/me/forget-all" class="forget-all">{csrf_field(session)}
<input type="checkbox" id="confirm-all" name="confirm" value="yes" required>
<label for="confirm-all">Yes, forget everything Mnemo remembers from me</label>
<button type="submit" class="danger">Forget all</button></form></section>"""


async def forget(core: CorePort, platform: Platform, session: WebSession, form: Any) -> tuple[str, bool]:
    ids = [i.strip() for i in form.getall("id", []) if isinstance(i, str) and i.strip()][:MAX_FORGET]
    if not ids:
        return "Select what to forget first.", True
    failed, unfinished = [], []
    for memory_id in ids:
        reply = await run_command(core, platform, session, "forget", memory_id)
        if reply.text == commands.FORGET_LATER:
            # The memory index is down: recorded and finished later, not "not found".
            unfinished.append(memory_id)
        elif reply.is_error:
            failed.append(memory_id)
    done = len(ids) - len(failed) - len(unfinished)
    text = f"Forgot {commands.counted(done, 'item')}."
    if unfinished:
        text += f" {commands.FORGET_LATER} Not finished yet: {', '.join(unfinished)}."
    if failed:
        text += f" Not found (already gone?): {', '.join(failed)}."
    return text, bool(failed or unfinished)
