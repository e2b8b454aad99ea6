"""The chat page (a DM with Mnemo on platform `web`) and a cited message shown in context."""

from __future__ import annotations

import asyncio
import uuid
from typing import TYPE_CHECKING, Any

from aiohttp import web

from adapters.web.auth import readable_scope_keys
from adapters.web.html import cited_text, csrf_field, e, error_page, notice, page, when
from core.models import Message
from core.render import shorten
from core.web_links import WebSession

if TYPE_CHECKING:
    from core.platform import CorePort

HISTORY = 40  # messages shown on the chat page
CONTEXT = 5  # neighbours shown on each side of a cited message
REPLY_WAIT_S = 90.0  # after this the page shows the message; the answer appears on reload


def conversation_id(session: WebSession) -> str:
    return f"dm-{session.author_id}"


def source_href(memory_id: str) -> str:
    return f"/message/{memory_id}"


async def chat_page(core: CorePort, session: WebSession, error: str | None = None, draft: str = "",
                    refresh_to: str | None = None) -> web.Response:
    key = f"web:{conversation_id(session)}"
    dashboard = core.dashboard
    messages, replies = await dashboard.chat_history(key, session.dm_scope.key, HISTORY)
    cited = {f["memory_id"] for rs in replies.values() for r in rs for f in r.get("footnotes") or []}
    # A DM's answers cite only that DM (core.privacy), so only its scope is looked in.
    originals = await dashboard.cited_in(sorted(cited), [session.dm_scope.key])
    items = []
    for doc in messages:
        items.append(
            f'<li class="msg you"><p class="meta">You · {when(doc["ts"])}</p>'
            f'<div class="text">{e(doc["text"] or doc.get("media_text") or "")}</div></li>'
        )
        for reply in replies.get(doc["key"], []):
            items.append(_reply_item(reply, originals))
    log = "".join(items) or '<li class="empty">Nothing yet. Tell Mnemo something, or ask it a question.</li>'
    body = f"""<h1>Chat with Mnemo</h1>
<ol class="log" id="log" aria-label="Conversation">{log}</ol>
<form method="post" action="/chat" class="composer" id="composer">
{csrf_field(session)}
{notice(error, error=True)}
<label for="message">Message</label>
<textarea id="message" name="text" rows="3" required aria-describedby="composer-hint">{e(draft)}</textarea>
<p class="hint" id="composer-hint">Enter sends; Shift+Enter starts a new line. Commands work too: /memory, /settings, /help.</p>
<div class="actions"><button type="submit">Send</button><span id="status" role="status" aria-live="polite"></span></div>
</form>"""
    return page("Chat", body, session, current="/chat", script=True, refresh_to=refresh_to)


def _reply_item(reply: dict[str, Any], originals: dict[str, dict[str, Any]]) -> str:
    notes = reply.get("footnotes") or []
    links = {int(f["number"]): source_href(f["memory_id"]) for f in notes}
    lines = []
    for note in notes:
        original = originals.get(note["memory_id"]) or {}
        date = f", {original['ts']:%Y-%m-%d}" if original.get("ts") else ""
        external = (
            f' <a class="external" href="{e(original["link"])}" rel="noopener noreferrer">original</a>'
            if original.get("link") else ""
        )
        lines.append(
            f'<li><a href="{e(source_href(note["memory_id"]))}">[{e(note["number"])}] {e(note["author"])}{date}: '
            f'\u201c{e(shorten(note["quote"]))}\u201d</a>{external}</li>'
        )
    footnotes = f'<ol class="footnotes" aria-label="Sources">{"".join(lines)}</ol>' if lines else ""
    kind = " error" if reply.get("is_error") else ""
    return (
        f'<li class="msg bot{kind}"><p class="meta">Mnemo · {when(reply["ts"])}</p>'
        f'<div class="text">{cited_text(reply["text"], links)}</div>{footnotes}</li>'
    )


async def send_message(core: CorePort, session: WebSession, text: str) -> str | None:
    """Submit one chat message through the pipeline and wait (bounded) for its answer.
    Returns an error to show, or None."""
    if not text.strip():
        return "Your message was empty. Type something first."
    message = Message(
        platform="web", conversation_id=conversation_id(session), message_id=uuid.uuid4().hex,
        author_id=session.author_id, author_name=session.name, text=text.replace("\r\n", "\n"), is_dm=True,
        reply_context={"operator": session.operator},
    )
    done = await core.submit(message)
    if done is not None:
        await asyncio.wait([done], timeout=REPLY_WAIT_S)
    return None


async def message_page(core: CorePort, session: WebSession, memory_id: str) -> web.Response:
    """The cited message among its neighbours, if this session may read its scope."""
    dashboard = core.dashboard
    readable = sorted(await readable_scope_keys(core, session))
    fact = None
    if memory_id.startswith("F"):
        fact = await dashboard.fact_in_scopes(memory_id, readable)
        if fact and fact.get("sources"):
            memory_id = fact["sources"][0]
    doc = await dashboard.message_in_scopes(memory_id, readable)
    if doc is None:
        return error_page(404, "Not found", "There is no such message, or it isn't yours to see.", session)
    earlier, later = await dashboard.neighbours(doc, CONTEXT)
    rows = []
    for neighbour in [*earlier, doc, *later]:
        current = neighbour["_id"] == doc["_id"]
        mark = ' class="cited" id="cited" aria-current="true"' if current else ""
        label = '<span class="badge">cited</span> ' if current else ""
        rows.append(
            f'<li{mark}><p class="meta">{label}{e(neighbour["author_name"])} · {when(neighbour["ts"])}</p>'
            f'<div class="text">{e(neighbour["text"] or neighbour.get("media_text") or "")}</div></li>'
        )
    where = "a direct message" if doc["is_dm"] else f"group {doc['conversation_id']} on {doc['platform']}"
    original = (
        f'<p><a href="{e(doc["link"])}" rel="noopener noreferrer">Open the original on {e(doc["platform"])}</a></p>'
        if doc.get("link") else ""
    )
    fact_note = f'<p class="fact">Learned from this message: {e(fact["text"])}</p>' if fact else ""
    back = '<a href="/chat">Back to the chat</a>' if session.platform == "web" else ""
    back += (" · " if back else "") + '<a href="/me">Back to my data</a>'
    body = (
        f"<h1>Message {e(doc['_id'])} in context</h1>{fact_note}<p>In {e(where)}.</p>{original}<p>{back}</p>"
        f'<ol class="context" aria-label="Conversation around the message">{"".join(rows)}</ol>'
    )
    return page("Message in context", body, session)
