"""Commands every platform shares: help, settings, and each user's memory controls.

Adapters turn their native commands (Telegram `/memory@bot`, Slack `/mnemo memory`, Discord
application commands) into the text form parsed here. Memory controls answer privately.
"""

from __future__ import annotations

import asyncio
import difflib
import glob
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from core.channel_settings import KEYS, SettingError, describe, valid_values
from core.errors import MemoryUnavailable
from core.models import Message, Reply, ReplyFile, Scope, utcnow
from core.platform import Platform
from core.profile import exportable_facts, forget_fact, profile
from core.render import shorten
from core.services import Services
from core.store import Store
from core.web_links import dashboard_reply

# Commands that control the bot rather than say something: never remembered.
CONTROL = frozenset(
    {"help", "start", "memory", "profile", "forget", "export", "settings", "optout", "optin", "dashboard"}
)
QUESTION = frozenset({"ask", "deep"})
PAGE_SIZE = 10
MAX_PAGE = 100_000  # far past any real listing, and a skip MongoDB can take
# What /memory lists (the web dashboard lists the same).
MEMORIES: dict[str, Any] = Store.MEMORIES

_COMMAND = re.compile(r"^/([A-Za-z_]+)(?:@\w+)?(?:\s+(.*))?$", re.DOTALL)

HELP = """I'm {bot}. I remember what's said where I am and answer with numbered sources.
• In groups, mention me or reply to me (or /ask QUESTION); in DMs just talk to me.
• /deep QUESTION — think harder on one question.
• /memory [page] — what I remember from you, with ids.
• /profile — what I've learned about you, with where I learned it.
• /forget ID or /forget all — delete memories or learned facts (and anything derived from them).
• /export — all your data as a JSON file.
• /optout, /optin — stop or resume remembering you anywhere.
• /dashboard — a one-time link to your web page: see, search, forget and export what I know.
• /settings — this channel's settings; admins: /settings KEY VALUE.
What you tell me in a DM stays in your DMs; what's said in a group stays in that group."""


# Commands about the sender's own memory: answered privately, so never for a sender who
# has no private channel and no identity of their own.
PERSONAL = frozenset({"memory", "forget", "export", "optout", "optin", "profile", "dashboard"})
ANONYMOUS = (
    "You are posting as the group itself (an anonymous admin), so I can't tell you apart from its "
    "other anonymous admins and have no private chat to answer you in. Nothing is shown here; "
    "post as yourself, or write to me in a private chat, to see or change your memory."
)
FORGET_LATER = (
    "I can't reach my memory index right now, so I couldn't finish forgetting. The deletion is "
    "recorded and will be completed as soon as the index is back; /memory shows what is left."
)


@dataclass(frozen=True)
class Command:
    name: str
    args: str


def speaks_as_conversation(message: Message) -> bool:
    """An anonymous group admin (Telegram: `sender_chat` is the group): every such admin shares
    the group's id, so none of them may read or change "their" memory."""
    return not message.is_dm and message.author_id == message.conversation_id


def parse(text: str) -> Command | None:
    """Any `/name [args]`, known or not: an unknown command is refused, never taken as a question."""
    match = _COMMAND.match(text.strip())
    if match is None:
        return None
    return Command(match.group(1).lower(), (match.group(2) or "").strip())


def unknown(command: Command) -> Reply:
    """Refused, with the command that was probably meant when the name is a near miss."""
    text = f"Unknown command /{command.name}, see /help"
    close = difflib.get_close_matches(command.name, sorted(CONTROL | QUESTION), n=1, cutoff=0.75)
    if close:
        text += f" (did you mean /{close[0]}?)"
    return Reply(text, is_error=True)


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """"1 message", "2 messages"."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"

async def run(core: Services, message: Message, platform: Platform, command: Command) -> Reply:
    if command.name in PERSONAL and speaks_as_conversation(message):
        return Reply(ANONYMOUS, is_error=True)
    handler = _HANDLERS[command.name]
    return await handler(core, message, platform, command.args)


async def _help(core: Services, message: Message, platform: Platform, args: str) -> Reply:
    return Reply(HELP.format(bot=core.config.bot_name), private=not message.is_dm and message.is_command)


async def _settings(core: Services, message: Message, platform: Platform, args: str) -> Reply:
    if not args:
        current = await core.settings.get(message.conversation_key)
        usage = f"Admins change them with /settings KEY VALUE. Keys: {', '.join(KEYS)}."
        return Reply(f"Settings for this channel:\n{describe(current)}\n{usage}")
    key, _, value = args.partition(" ")
    key = key.strip().lower()
    if key not in KEYS:
        return Reply(f"Unknown setting '{key}'. Valid settings: {', '.join(KEYS)}.", is_error=True)
    if not value.strip():
        return Reply(f"Give a value: /settings {key} VALUE (valid: {valid_values(key)}).", is_error=True)
    # In a DM the user is the only member, so they administer it.
    if not message.is_dm and not await platform.is_admin(message):
        return Reply(
            "Only this channel's admins can change settings; nothing was changed.", is_error=True
        )
    try:
        old, new = await core.settings.set(message.conversation_key, key, value, who=message.user_key)
    except SettingError as exc:
        return Reply(str(exc), is_error=True)
    return Reply(f"{key}: {old or '(none)'} -> {new or '(none)'}")


async def _memory(core: Services, message: Message, platform: Platform, args: str) -> Reply:
    arg = args.strip()
    if arg and not (arg.isascii() and arg.isdigit() and 0 < int(arg) <= MAX_PAGE):
        return Reply(f"Use /memory or /memory PAGE (a page number from 1 to {MAX_PAGE}).", private=True,
                     is_error=True)
    page = int(arg) if arg else 1
    total, docs = await core.store.memories_page(message.user_key, page, PAGE_SIZE)
    if not docs:
        empty = "I don't remember anything from you." if page == 1 else f"No page {page}."
        return Reply(empty, private=True)
    pages = (total + PAGE_SIZE - 1) // PAGE_SIZE
    lines = [f"What I remember from you ({counted(total, 'message')}, page {page}/{pages}, newest first):"]
    for doc in docs:
        content = doc["text"] or doc.get("media_text") or _attachment_label(doc)
        where = "DM" if doc["is_dm"] else f"group {doc['conversation_id']}"
        ts: datetime = doc["ts"]
        link = f" {doc['link']}" if doc.get("link") else ""
        lines.append(f"• {doc['_id']} · {where} · {ts:%Y-%m-%d} · {shorten(content, 80)}{link}")
    if page < pages:
        lines.append(f"More: /memory {page + 1}")
    lines.append("Delete one with /forget ID, or everything with /forget all.")
    return Reply("\n".join(lines), private=True)


def _attachment_label(doc: dict[str, Any]) -> str:
    names = ", ".join(a.get("filename") or a.get("kind", "file") for a in doc.get("attachments") or [])
    return f"(attachment I couldn't read: {names})" if names else "(empty)"


async def delete_where(core: Services, query: dict[str, Any], replies_of: str | None = None) -> int:
    """Delete matching messages from Chroma, then MongoDB, and what was derived from them
    (replies quoting them, answers to them; with `replies_of`, every reply to that person).
    Durable: the deletion is recorded first and finished at start-up if a crash interrupts
    it. A Chroma error is raised (MemoryUnavailable), never taken for "nothing to delete";
    the record stays, so the deletion is completed later."""
    deletion = await core.store.record_deletion(query, replies_of)
    if deletion is None:
        return 0
    await finish_deletion(core, deletion)
    return len(deletion["keys"])


async def finish_deletion(core: Services, deletion: dict[str, Any]) -> None:
    """Chroma, then the facts learned only from these messages, then MongoDB (the record last)."""
    for part in deletion["scopes"]:
        await core.index.delete(Scope.parse(part["scope"]), part["ids"])
    await core.facts.forget_sources([memory_id for part in deletion["scopes"] for memory_id in part["ids"]])
    await core.store.delete_recorded(deletion)


async def _forget(core: Services, message: Message, platform: Platform, args: str) -> Reply:
    target = args.strip()
    if not target:
        return Reply("Use /forget ID (ids are shown by /memory) or /forget all.", private=True, is_error=True)
    try:
        if target.lower() == "all":
            count = await core.store.count_memories(message.user_key)
            # Both deletions are recorded before either starts: a crash in between cannot
            # leave the facts about this person (learned from others' words) unrecorded.
            facts = await core.facts.of_user(message.user_key)
            facts_deletion = await core.store.record_fact_deletion(facts) if facts else None
            # Everything from this person (commands too, but not this /forget) and every reply to them.
            await delete_where(core, {"author_key": message.user_key, "key": {"$ne": message.event_key}},
                               replies_of=message.user_key)
            if facts_deletion is not None:
                await finish_deletion(core, facts_deletion)
            learned = f" and {counted(len(facts), 'learned fact')}" if facts else ""
            exports = await asyncio.to_thread(_delete_earlier_exports, core, message)
            also = f" and deleted {counted(exports, 'earlier export file')}" if exports else ""
            return Reply(f"Done: I forgot everything from you ({counted(count, 'message')}{learned}){also}.",
                         private=True)
        if await forget_fact(core, message, target):
            return Reply(f"Done: I forgot {target}.", private=True)
        count = await delete_where(core, {"author_key": message.user_key, "_id": target})
    except MemoryUnavailable:
        return Reply(FORGET_LATER, private=True, is_error=True)
    if count == 0:
        return Reply(f"I have no memory {target} from you. /memory lists your ids.", private=True, is_error=True)
    return Reply(f"Done: I forgot {target}.", private=True)


async def _export(core: Services, message: Message, platform: Platform, args: str) -> Reply:
    """What a person sent (commands left out) and what Mnemo replied to it, and the facts learned,
    without the bookkeeping fields (keys, leases, owners, order), times in ISO 8601 UTC."""
    everything = await core.store.exportable_messages(message.user_key)
    messages = [doc for doc in everything if not _is_command(doc)]
    commands = {doc["key"] for doc in everything if _is_command(doc)}
    ids_by_key = {doc["key"]: doc["_id"] for doc in messages}
    replies = [
        doc for doc in await core.store.replies_to_author(message.user_key) if doc.get("message_key") not in commands
    ]
    user = await core.store.get_user(message.user_key)
    now = utcnow()
    payload = {
        "exported_at": now,
        "user": {"platform": message.platform, "id": message.author_id, "name": message.author_name,
                 "opted_out": bool(user.get("opted_out"))},
        "messages": [_exportable(doc) for doc in messages],
        "replies_to_you": [
            {**_exportable(doc), "in_reply_to": ids_by_key.get(doc.get("message_key"))} for doc in replies
        ],
        "facts": (facts := await exportable_facts(core, message.user_key)),
    }
    data = json.dumps(_iso_times(payload), ensure_ascii=False, indent=2, default=str).encode()
    name = f"{export_file_prefix(message)}{now:%Y%m%dT%H%M%SZ}.json"
    return Reply(
        f"Your data: {counted(len(messages), 'message')}, {counted(len(replies), 'reply', 'replies')} and "
        f"{counted(len(facts), 'learned fact')}.",
        private=True,
        file=ReplyFile(name, data),
    )


# Bookkeeping, not anyone's data: event keys, scope keys, leases, ownership, ordering, flags.
_INTERNAL_FIELDS = frozenset({
    "key", "author_key", "conversation_key", "scope", "message_key", "sent_ids", "owner", "order_ts",
    "attempts", "state", "remember", "is_command", "interrupted_send", "created_at", "heartbeat_at",
    "index_pending",
})


def _is_command(doc: dict[str, Any]) -> bool:
    return doc.get("kind") == "command" or bool(doc.get("is_command"))


def _exportable(doc: dict[str, Any]) -> dict[str, Any]:
    return {
        ("id" if k == "_id" else k): v for k, v in doc.items()
        if k not in _INTERNAL_FIELDS and not k.startswith(("lease", "worker"))
    }


def _iso_times(value: Any) -> Any:
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).astimezone(UTC).isoformat()
    if isinstance(value, dict):
        return {k: _iso_times(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_iso_times(v) for v in value]
    return value


def export_file_prefix(message: Message) -> str:
    """Export files of one person start with this (file-name safe); `/forget all` removes them."""
    safe_id = re.sub(r"[^A-Za-z0-9_.-]", "_", message.author_id)
    return f"mnemo-export-{message.platform}-{safe_id}-"


def _delete_earlier_exports(core: Services, message: Message) -> int:
    """Exports written into the data dir (the console's) hold what was just forgotten."""
    folder = core.config.data_dir / "exports"
    removed = 0
    for path in folder.glob(f"{glob.escape(export_file_prefix(message))}*.json") if folder.is_dir() else []:
        path.unlink(missing_ok=True)
        removed += 1
    return removed


async def _profile(core: Services, message: Message, platform: Platform, args: str) -> Reply:
    return await profile(core, message)


async def _optout(core: Services, message: Message, platform: Platform, args: str) -> Reply:
    await core.store.set_opt_out(message.user_key, message.author_name, True)
    return Reply(
        "I'll stop remembering your messages everywhere. What I already remember stays until you "
        "/forget all. /optin resumes.",
        private=True,
    )


async def _optin(core: Services, message: Message, platform: Platform, args: str) -> Reply:
    await core.store.set_opt_out(message.user_key, message.author_name, False)
    return Reply("I'll remember your messages again. /optout stops it.", private=True)


async def _dashboard(core: Services, message: Message, platform: Platform, args: str) -> Reply:
    return await dashboard_reply(core, message, platform)


_HANDLERS = {
    "help": _help,
    "start": _help,
    "settings": _settings,
    "memory": _memory,
    "profile": _profile,
    "forget": _forget,
    "export": _export,
    "optout": _optout,
    "optin": _optin,
    "dashboard": _dashboard,
}
