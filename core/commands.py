"""Commands every platform shares: help, settings, and each user's memory controls.

Adapters turn their native commands (Telegram `/memory@bot`, Slack `/mnemo memory`, Discord
application commands) into the text form parsed here. Memory controls answer privately.
"""

from __future__ import annotations

import asyncio
import glob
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from core.channel_settings import KEYS, SettingError, describe, valid_values
from core.kinds import NOT_MEMORY
from core.models import Message, Reply, ReplyFile, Scope, utcnow
from core.platform import Platform
from core.profile import exportable_facts, forget_all_facts, forget_fact, profile
from core.render import shorten

if TYPE_CHECKING:
    from core.engine import Core

# Commands that control the bot rather than say something: never remembered.
CONTROL = frozenset(
    {"help", "start", "memory", "profile", "forget", "export", "settings", "optout", "optin", "dashboard"}
)
QUESTION = frozenset({"ask", "deep"})
PAGE_SIZE = 10
# What /memory lists: what people told (not questions to Mnemo, commands, failed attachments).
MEMORIES: dict[str, Any] = {"kind": {"$nin": NOT_MEMORY}, "remembered": True}

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


@dataclass(frozen=True)
class Command:
    name: str
    args: str


def parse(text: str) -> Command | None:
    """Any `/name [args]`, known or not: an unknown command is refused, never taken as a question."""
    match = _COMMAND.match(text.strip())
    if match is None:
        return None
    return Command(match.group(1).lower(), (match.group(2) or "").strip())


def unknown(command: Command) -> Reply:
    return Reply(f"Unknown command /{command.name}, see /help", is_error=True)


async def run(core: Core, message: Message, platform: Platform, command: Command) -> Reply:
    handler = _HANDLERS[command.name]
    return await handler(core, message, platform, command.args)


async def _help(core: Core, message: Message, platform: Platform, args: str) -> Reply:
    return Reply(HELP.format(bot=core.config.bot_name), private=not message.is_dm and message.is_command)


async def _settings(core: Core, message: Message, platform: Platform, args: str) -> Reply:
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


async def _memory(core: Core, message: Message, platform: Platform, args: str) -> Reply:
    page = int(args) if args.strip().isdigit() and int(args) > 0 else 1
    query = {"author_key": message.user_key, **MEMORIES}
    total = await core.store.messages.count_documents(query)
    cursor = core.store.messages.find(query).sort("ts", -1).skip((page - 1) * PAGE_SIZE).limit(PAGE_SIZE)
    docs = [doc async for doc in cursor]
    if not docs:
        empty = "I don't remember anything from you." if page == 1 else f"No page {page}."
        return Reply(empty, private=True)
    pages = (total + PAGE_SIZE - 1) // PAGE_SIZE
    lines = [f"What I remember from you ({total} messages, page {page}/{pages}, newest first):"]
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


async def delete_where(core: Core, query: dict[str, Any]) -> int:
    """Delete matching messages from MongoDB and Chroma, and what was derived from them
    (replies quoting them, answers to them)."""
    docs = [doc async for doc in core.store.messages.find(query, {"_id": 1, "scope": 1, "key": 1})]
    if not docs:
        return 0
    by_scope: dict[str, list[str]] = {}
    for doc in docs:
        by_scope.setdefault(doc["scope"], []).append(doc["_id"])
    for scope_key, ids in by_scope.items():
        await core.index.delete(Scope.parse(scope_key), ids)
    ids = [doc["_id"] for doc in docs]
    keys = [doc["key"] for doc in docs]
    await core.store.replies.delete_many({"$or": [{"message_key": {"$in": keys}}, {"footnotes.memory_id": {"$in": ids}}]})
    await core.store.messages.delete_many({"_id": {"$in": ids}})
    await core.facts.forget_sources(ids)  # facts learned only from these messages go too
    return len(ids)


async def _forget(core: Core, message: Message, platform: Platform, args: str) -> Reply:
    target = args.strip()
    if not target:
        return Reply("Use /forget ID (ids are shown by /memory) or /forget all.", private=True, is_error=True)
    if target.lower() == "all":
        count = await delete_where(core, {"author_key": message.user_key, **MEMORIES})
        await delete_where(core, {"author_key": message.user_key, "key": {"$ne": message.event_key}})
        await core.store.replies.delete_many({"author_key": message.user_key})
        facts = await forget_all_facts(core, message.user_key)
        learned = f" and {facts} learned facts" if facts else ""
        exports = await asyncio.to_thread(_delete_earlier_exports, core, message)
        also = f" and deleted {exports} earlier export file{'s' if exports != 1 else ''}" if exports else ""
        return Reply(f"Done: I forgot everything from you ({count} messages{learned}){also}.", private=True)
    if await forget_fact(core, message, target):
        return Reply(f"Done: I forgot {target}.", private=True)
    count = await delete_where(core, {"author_key": message.user_key, "_id": target})
    if count == 0:
        return Reply(f"I have no memory {target} from you. /memory lists your ids.", private=True, is_error=True)
    return Reply(f"Done: I forgot {target}.", private=True)


async def _export(core: Core, message: Message, platform: Platform, args: str) -> Reply:
    """What a person sent (commands left out) and what Mnemo replied to it, and the facts learned,
    without the bookkeeping fields (keys, leases, owners, order), times in ISO 8601 UTC."""
    mine = {"author_key": message.user_key, "withheld": {"$ne": True}}
    everything = [doc async for doc in core.store.messages.find(mine).sort("ts", 1)]
    messages = [doc for doc in everything if not _is_command(doc)]
    commands = {doc["key"] for doc in everything if _is_command(doc)}
    ids_by_key = {doc["key"]: doc["_id"] for doc in messages}
    replies = [
        doc async for doc in core.store.replies.find({"author_key": message.user_key}).sort("ts", 1)
        if doc.get("message_key") not in commands
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
        "facts": await exportable_facts(core, message.user_key),
    }
    data = json.dumps(_iso_times(payload), ensure_ascii=False, indent=2, default=str).encode()
    name = f"{export_file_prefix(message)}{now:%Y%m%dT%H%M%SZ}.json"
    return Reply(
        f"Your data: {len(messages)} messages, {len(replies)} replies and {len(payload['facts'])} learned facts.",
        private=True,
        file=ReplyFile(name, data),
    )


# Bookkeeping, not anyone's data: event keys, scope keys, leases, ownership, ordering, flags.
_INTERNAL_FIELDS = frozenset({
    "key", "author_key", "conversation_key", "scope", "message_key", "sent_ids", "owner", "order_ts",
    "attempts", "state", "remember", "is_command", "interrupted_send", "created_at", "heartbeat_at",
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


def _delete_earlier_exports(core: Core, message: Message) -> int:
    """Exports written into the data dir (the console's) hold what was just forgotten."""
    folder = core.config.data_dir / "exports"
    removed = 0
    for path in folder.glob(f"{glob.escape(export_file_prefix(message))}*.json") if folder.is_dir() else []:
        path.unlink(missing_ok=True)
        removed += 1
    return removed


async def _profile(core: Core, message: Message, platform: Platform, args: str) -> Reply:
    return await profile(core, message)


async def _optout(core: Core, message: Message, platform: Platform, args: str) -> Reply:
    await core.store.set_opt_out(message.user_key, message.author_name, True)
    return Reply(
        "I'll stop remembering your messages everywhere. What I already remember stays until you "
        "/forget all. /optin resumes.",
        private=True,
    )


async def _optin(core: Core, message: Message, platform: Platform, args: str) -> Reply:
    await core.store.set_opt_out(message.user_key, message.author_name, False)
    return Reply("I'll remember your messages again. /optout stops it.", private=True)


async def _dashboard(core: Core, message: Message, platform: Platform, args: str) -> Reply:
    from core.web_links import dashboard_reply

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
