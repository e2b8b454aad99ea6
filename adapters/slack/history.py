"""Slack's workspace export (the zip, or its folder) -> `core.Message`s, mapped by the same
rules as live events (adapters.slack.events). No SDK here.

Layout: `users.json`, `channels.json` (public), `groups.json` (private), `dms.json` and
`mpims.json` when present, and one folder per conversation (by name; DMs by id) holding
`<YYYY-MM-DD>.json` lists of messages. Event keys are `slack:<channel id>:<ts>` as live;
DMs are DMs of their author, as live; threads keep `thread_ts`.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

from adapters.slack.events import Said, classify, constructed_permalink, display_name, slack_time, to_message
from core.history import ExportError, History, parse_json
from core.models import Message

_LISTS = ("channels.json", "groups.json", "mpims.json", "dms.json")
_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}\.json$")
_TEAM_URL = re.compile(r"^(https://[^/]+\.slack\.com)/")


class _Tree:
    """The export's files, from a zip or a folder, relative to the folder holding channels.json."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.zip: zipfile.ZipFile | None = None
        if path.is_dir():
            names = [p.relative_to(path).as_posix() for p in path.rglob("*.json")]
        elif zipfile.is_zipfile(path):
            try:
                self.zip = zipfile.ZipFile(path)
                names = [n for n in self.zip.namelist() if n.endswith(".json")]
            except (zipfile.BadZipFile, OSError) as exc:
                raise ExportError(str(path), "", f"not a readable zip ({exc})") from None
        elif path.is_file():
            raise ExportError(str(path), "", "not a Slack export (expected the export's .zip or its folder)")
        else:
            raise ExportError(str(path), "", "no such file or folder")
        # Re-zipped exports put everything under one top folder: find channels.json's.
        roots = sorted((str(PurePosixPath(n).parent) for n in names if PurePosixPath(n).name in _LISTS),
                       key=lambda r: (r.count("/"), r))
        if not roots:
            raise ExportError(str(path), "", "not a Slack export (no channels.json, groups.json, dms.json "
                              "or mpims.json)")
        self.prefix = "" if roots[0] == "." else roots[0] + "/"
        self.names = {n[len(self.prefix):] for n in names if n.startswith(self.prefix)}

    def shown(self, name: str) -> str:
        return f"{self.path}:{self.prefix}{name}" if self.zip else str(self.path / self.prefix / name)

    def read(self, name: str) -> Any:
        shown = self.shown(name)
        try:
            if self.zip is not None:
                data = self.zip.read(self.prefix + name)
            else:
                data = (self.path / self.prefix / name).read_bytes()
        except (OSError, zipfile.BadZipFile, EOFError) as exc:
            raise ExportError(shown, "", f"cannot be read ({exc})") from None
        return parse_json(data, shown)

    def list_of_objects(self, name: str) -> list[dict[str, Any]]:
        if name not in self.names:
            return []
        found = self.read(name)
        if not isinstance(found, list) or not all(isinstance(item, dict) for item in found):
            raise ExportError(self.shown(name), "", "expected a list of objects")
        return found

    def close(self) -> None:
        if self.zip is not None:
            self.zip.close()


def parse_export(path: Path, workspace_url: str | None = None) -> History:
    tree = _Tree(path)
    try:
        return _parse(tree, workspace_url)
    finally:
        tree.close()


def _parse(tree: _Tree, workspace_url: str | None) -> History:
    users = {str(u.get("id")): u for u in tree.list_of_objects("users.json")}
    conversations: list[tuple[str, str, bool]] = []  # (folder, channel id, is a DM)
    for listing in _LISTS:
        for i, entry in enumerate(tree.list_of_objects(listing)):
            channel_id = entry.get("id")
            if not isinstance(channel_id, str) or not channel_id:
                raise ExportError(tree.shown(listing), f"[{i}]", "no 'id'")
            is_dm = listing == "dms.json"
            folder = channel_id if is_dm else entry.get("name") or channel_id
            conversations.append((str(folder), channel_id, is_dm))
    history = History(workspace_url=workspace_url)
    for folder, channel_id, is_dm in conversations:
        days = sorted(n for n in tree.names if n.startswith(folder + "/") and _DAY.match(n[len(folder) + 1:]))
        for day in days:
            messages = tree.read(day)
            if not isinstance(messages, list):
                raise ExportError(tree.shown(day), "", "expected a list of messages")
            for i, event in enumerate(messages):
                message = _message(event, channel_id, is_dm, users, tree.shown(day), f"[{i}]", history)
                if message is not None:
                    history.messages.append(message)
    if history.workspace_url:
        for message in history.messages:
            message.link = constructed_permalink(history.workspace_url, message.conversation_id,
                                                 message.message_id, message.thread_id)
    return history


def _message(event: Any, channel_id: str, is_dm: bool, users: dict[str, dict[str, Any]], file: str, where: str,
             history: History) -> Message | None:
    if not isinstance(event, dict):
        raise ExportError(file, where, f"expected a message object, found {type(event).__name__}")
    ts = event.get("ts")
    if not isinstance(ts, str):
        raise ExportError(file, f"{where}.ts", "missing, or not text like '1700000000.000100'")
    try:
        slack_time(ts)
    except (ValueError, OverflowError):
        raise ExportError(file, f"{where}.ts", f"not a Slack timestamp: {ts!r}") from None
    if event.get("type", "message") != "message":
        history.skipped[f"{event.get('type')} entry"] += 1
        return None
    said = classify({**event, "channel": channel_id})
    if said is None:
        history.skipped[_why_skipped(event)] += 1
        return None
    for file_obj in event.get("files") or []:
        if history.workspace_url is None and isinstance(file_obj, dict):
            found = _TEAM_URL.match(str(file_obj.get("permalink") or ""))
            history.workspace_url = found.group(1) if found else None
    user_id = str(event["user"])
    found_profile = event.get("user_profile")
    profile: dict[str, Any] = found_profile if isinstance(found_profile, dict) else {}
    user = users.get(user_id, {})
    name = display_name(user.get("profile") or {}, user) or display_name(profile, profile) or user_id
    # Files are referenced by the export, not included: the message records them, none is read.
    message = to_message(Said(event, channel_id), bot_user_id="", author_name=name, link=None,
                         fetcher=lambda _file: None)  # type: ignore[arg-type,return-value]
    message.is_dm = is_dm
    message.mentions_bot = message.replies_to_bot = False
    if not message.text.strip() and not message.attachments:
        history.skipped["no text or files"] += 1
        return None
    return message


def _why_skipped(event: dict[str, Any]) -> str:
    subtype = event.get("subtype")
    if subtype == "bot_message" or event.get("bot_id"):
        return "bot message"
    if subtype in ("channel_join", "group_join", "channel_leave", "group_leave"):
        return "join or leave"
    return f"{subtype} event" if subtype else "message without an author"

