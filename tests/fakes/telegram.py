"""A loopback Telegram Bot API server (aiohttp) for the real aiogram `Bot` to talk to.

It speaks the documented HTTP interface at `/bot<token>/<method>` and `/file/bot<token>/<path>`:
getMe, getUpdates (queued updates, confirmed by `offset`, long-poll wait), sendMessage,
sendMessageDraft (private chats), editMessageText, deleteMessage, sendDocument, sendChatAction, getFile + download, getChatMember, setMyCommands,
setWebhook/deleteWebhook. Tests queue updates shaped as the Bot API documents them, read every
call the bot made, and can make the next call of a method answer 429 with `retry_after`.
"""

from __future__ import annotations

import asyncio
import html
import itertools
import json
import threading
import time
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any

from aiohttp import web

from tests.fakes.server import ServerThread

BOT_ID = 7_000_001
BOT_USERNAME = "mnemo_test_bot"
TOKEN = f"{BOT_ID}:AAHfakeTokenForLoopbackTests_0123456789"

_JSON_FIELDS = {"reply_parameters", "link_preview_options", "commands", "allowed_updates", "scope"}
_INT_FIELDS = {"chat_id", "message_thread_id", "user_id", "offset", "timeout", "limit", "message_id", "draft_id"}


@dataclass
class Call:
    method: str
    params: dict[str, Any]
    at: float  # time.monotonic() when received
    result: Any = None
    status: int = 200


@dataclass
class FakeFile:
    file_id: str
    data: bytes
    path: str
    declared_size: int | None = None  # what getFile/updates claim (lets a test declare 25 MB cheaply)

    @property
    def size(self) -> int:
        return self.declared_size if self.declared_size is not None else len(self.data)


def user(user_id: int, first_name: str, username: str | None = None) -> dict[str, Any]:
    found: dict[str, Any] = {"id": user_id, "is_bot": False, "first_name": first_name}
    if username:
        found["username"] = username
    return found


BOT_USER = {"id": BOT_ID, "is_bot": True, "first_name": "Mnemo", "username": BOT_USERNAME}


def private_chat(of: dict[str, Any]) -> dict[str, Any]:
    return {"id": of["id"], "type": "private", "first_name": of["first_name"]}


def supergroup(chat_id: int, title: str, forum: bool = False) -> dict[str, Any]:
    chat: dict[str, Any] = {"id": chat_id, "type": "supergroup", "title": title}
    if forum:
        chat["is_forum"] = True
    return chat


def basic_group(chat_id: int, title: str) -> dict[str, Any]:
    return {"id": chat_id, "type": "group", "title": title}


def utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def mention_entity(text: str, handle: str) -> dict[str, Any]:
    """The `mention` entity Telegram attaches to `@handle` inside `text` (UTF-16 offsets)."""
    start = text.index(handle)
    return {"type": "mention", "offset": utf16_len(text[:start]), "length": utf16_len(handle)}


class FakeTelegram:
    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.updates: list[dict[str, Any]] = []
        self.files: dict[str, FakeFile] = {}
        self.downloads: list[str] = []
        self.member_status: dict[tuple[int, int], str] = {}
        self.dm_blocked: set[int] = set()  # users who never pressed Start
        self.rate_limits: dict[str, list[int]] = {}  # method -> retry_after for its next calls
        self.outages: dict[str, int] = {}  # method -> how many of its next calls answer 502
        self.webhook: dict[str, Any] | None = None
        # What the chats show now: (chat_id, message_id) -> the bot's message (edits applied,
        # deleted ones removed); drafts: chat_id -> the draft's current text.
        self.shown: dict[tuple[int, int], dict[str, Any]] = {}
        self.drafts: dict[int, str] = {}
        self._ids = itertools.count(1)
        self._message_ids = itertools.count(5000)
        self._sent_ids = itertools.count(90_000)
        self._lock = threading.Lock()
        self._closing = False  # ends long polls at once so the server stops without waiting them out
        self._thread = ServerThread(self._app)

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> FakeTelegram:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._closing = True
        self._thread.stop()

    @property
    def api_base(self) -> str:
        return self._thread.url

    # -- what tests set up --------------------------------------------------------------

    def push(self, update: dict[str, Any]) -> dict[str, Any]:
        """Queue an update for getUpdates (assigns update_id if missing)."""
        with self._lock:
            update.setdefault("update_id", next(self._ids))
            self.updates.append(update)
        return update

    def message(
        self,
        chat: dict[str, Any],
        sender: dict[str, Any],
        text: str | None = None,
        *,
        entities: list[dict[str, Any]] | None = None,
        reply_to: dict[str, Any] | None = None,
        thread_id: int | None = None,
        edited_of: dict[str, Any] | None = None,
        **fields: Any,
    ) -> dict[str, Any]:
        """An update carrying a message (or an edit of `edited_of`, keeping its message_id)."""
        msg: dict[str, Any] = {
            "message_id": edited_of["message_id"] if edited_of else next(self._message_ids),
            "date": int(time.time()),
            "chat": chat,
            "from": sender,
            **fields,
        }
        if text is not None:
            msg["text" if "caption" not in fields and not _has_media(fields) else "caption"] = text
        if entities:
            msg["entities" if "text" in msg else "caption_entities"] = entities
        if reply_to is not None:
            msg["reply_to_message"] = reply_to
        if thread_id is not None:
            msg["message_thread_id"] = thread_id
            msg["is_topic_message"] = True
        if edited_of is not None:
            msg["edit_date"] = int(time.time())
            return {"update_id": next(self._ids), "edited_message": msg}
        return {"update_id": next(self._ids), "message": msg}

    def add_file(self, data: bytes, path: str, declared_size: int | None = None) -> FakeFile:
        with self._lock:
            file_id = f"FILE{next(self._ids)}"
            fake = FakeFile(file_id, data, path, declared_size)
            self.files[file_id] = fake
        return fake

    def rate_limit_next(self, method: str, retry_after: int) -> None:
        with self._lock:
            self.rate_limits.setdefault(method, []).append(retry_after)

    def fail_next(self, method: str, times: int) -> None:
        """The next `times` calls of `method` answer 502 Bad Gateway (Telegram's servers down)."""
        with self._lock:
            self.outages[method] = self.outages.get(method, 0) + times

    # -- what tests read ----------------------------------------------------------------

    def calls_to(self, method: str) -> list[Call]:
        with self._lock:
            return [c for c in self.calls if c.method == method and c.status == 200]

    def sent_messages(self, chat_id: int | None = None) -> list[Call]:
        return [c for c in self.calls_to("sendMessage") if chat_id is None or c.params["chat_id"] == chat_id]

    def visible_texts(self, chat_id: int) -> list[str]:
        """The text of every bot message in the chat as people see it now, in sending order."""
        with self._lock:
            return [m["text"] for (chat, _), m in sorted(self.shown.items()) if chat == chat_id and "text" in m]

    def bot_message(self, call: Call) -> dict[str, Any]:
        """The Message object the bot got back for `call` (to reply to it in a test)."""
        return dict(call.result)

    # -- HTTP ---------------------------------------------------------------------------

    def _app(self) -> web.Application:
        app = web.Application(client_max_size=60 * 1024 * 1024)
        app.router.add_route("*", "/bot{token}/{method}", self._api)
        app.router.add_get("/file/bot{token}/{path:.+}", self._download)
        return app

    async def _api(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != TOKEN:
            return _error(401, "Unauthorized")
        method = request.match_info["method"]
        params = await _params(request)
        call = Call(method, params, time.monotonic())
        with self._lock:
            self.calls.append(call)
            pending_429 = self.rate_limits.get(method)
            retry_after = pending_429.pop(0) if pending_429 else None
            down = self.outages.get(method, 0) > 0
            if down:
                self.outages[method] -= 1
        if down:
            call.status = 502
            return _error(502, "Bad Gateway")
        if retry_after is not None:
            call.status = 429
            return _error(429, f"Too Many Requests: retry after {retry_after}", {"retry_after": retry_after})
        handler = getattr(self, f"_m_{method.lower()}", None)
        if handler is None:
            call.status = 404
            return _error(404, "Not Found: method not found")
        outcome = await handler(params)
        if isinstance(outcome, web.Response):
            call.status = outcome.status
            return outcome
        call.result = outcome
        return web.json_response({"ok": True, "result": outcome})

    async def _download(self, request: web.Request) -> web.StreamResponse:
        if request.match_info["token"] != TOKEN:
            return web.Response(status=401)
        path = request.match_info["path"]
        with self._lock:
            found = next((f for f in self.files.values() if f.path == path), None)
            self.downloads.append(path)
        if found is None:
            return web.Response(status=404)
        return web.Response(body=found.data, content_type="application/octet-stream")

    # -- methods ------------------------------------------------------------------------

    async def _m_getme(self, params: dict[str, Any]) -> Any:
        return {**BOT_USER, "can_join_groups": True, "can_read_all_group_messages": False,
                "supports_inline_queries": False}

    async def _m_getupdates(self, params: dict[str, Any]) -> Any:
        if self.webhook is not None:
            return _error(409, "Conflict: can't use getUpdates method while webhook is active; "
                               "use deleteWebhook to delete the webhook first")
        offset = int(params.get("offset") or 0)
        deadline = time.monotonic() + min(float(params.get("timeout") or 0), 30)
        while True:
            with self._lock:
                if offset:
                    # Telegram forgets every update below the offset: it has been confirmed.
                    self.updates = [u for u in self.updates if u["update_id"] >= offset]
                ready = [u for u in self.updates if u["update_id"] >= offset]
            if ready or self._closing or time.monotonic() >= deadline:
                return ready[: int(params.get("limit") or 100)]
            await asyncio.sleep(0.05)

    async def _m_sendmessage(self, params: dict[str, Any]) -> Any:
        chat_id = params["chat_id"]
        if chat_id in self.dm_blocked:
            return _error(403, "Forbidden: bot can't initiate conversation with a user")
        text = params.get("text", "")
        visible = text
        if params.get("parse_mode") == "HTML":
            try:
                visible = parse_html(text)
            except ValueError as exc:
                return _error(400, f"Bad Request: can't parse entities: {exc}")
        if not visible.strip():
            return _error(400, "Bad Request: message text is empty")
        if utf16_len(visible) > 4096:
            return _error(400, "Bad Request: message is too long")
        self.drafts.pop(chat_id, None)  # the final message replaces the streamed draft
        return self._sent(chat_id, params, text=visible)

    def _visible(self, params: dict[str, Any]) -> str | web.Response:
        text = params.get("text", "")
        if params.get("parse_mode") == "HTML":
            try:
                text = parse_html(text)
            except ValueError as exc:
                return _error(400, f"Bad Request: can't parse entities: {exc}")
        if utf16_len(text) > 4096:
            return _error(400, "Bad Request: message is too long")
        return text

    async def _m_sendmessagedraft(self, params: dict[str, Any]) -> Any:
        chat_id = params["chat_id"]
        if chat_id < 0:
            return _error(400, "Bad Request: drafts can be sent only to private chats")
        if not int(params.get("draft_id") or 0):
            return _error(400, "Bad Request: draft_id must be non-zero")
        visible = self._visible(params)
        if isinstance(visible, web.Response):
            return visible
        with self._lock:
            self.drafts[chat_id] = visible
        return True

    async def _m_editmessagetext(self, params: dict[str, Any]) -> Any:
        key = (params["chat_id"], int(params["message_id"]))
        visible = self._visible(params)
        if isinstance(visible, web.Response):
            return visible
        with self._lock:
            found = self.shown.get(key)
            if found is None:
                return _error(400, "Bad Request: message to edit not found")
            if found.get("text") == visible:
                return _error(400, "Bad Request: message is not modified: specified new message content and "
                                   "reply markup are exactly the same as a current content and reply markup "
                                   "of the message")
            found.update(text=visible, edit_date=int(time.time()))
            return {k: v for k, v in found.items() if not k.startswith("_")}

    async def _m_deletemessage(self, params: dict[str, Any]) -> Any:
        with self._lock:
            if self.shown.pop((params["chat_id"], int(params["message_id"])), None) is None:
                return _error(400, "Bad Request: message to delete not found")
        return True

    async def _m_senddocument(self, params: dict[str, Any]) -> Any:
        chat_id = params["chat_id"]
        if chat_id in self.dm_blocked:
            return _error(403, "Forbidden: bot can't initiate conversation with a user")
        document = params.get("document")
        if not isinstance(document, _Upload):
            return _error(400, "Bad Request: there is no document in the request")
        return self._sent(chat_id, params, document={
            "file_id": f"DOC{next(self._ids)}", "file_unique_id": "u", "file_name": document.filename,
            "file_size": len(document.data),
        })

    def _sent(self, chat_id: int, params: dict[str, Any], **content: Any) -> dict[str, Any]:
        chat = {"id": chat_id, "type": "private", "first_name": "User"} if chat_id > 0 else \
            {"id": chat_id, "type": "supergroup", "title": "Group"}
        message: dict[str, Any] = {"message_id": next(self._sent_ids), "date": int(time.time()), "chat": chat,
                                   "from": BOT_USER, **content}
        if params.get("message_thread_id"):
            message["message_thread_id"] = params["message_thread_id"]
            message["is_topic_message"] = True
        with self._lock:
            self.shown[(chat_id, message["message_id"])] = {
                **message, "_reply_to": (params.get("reply_parameters") or {}).get("message_id")}
        return message

    async def _m_sendchataction(self, params: dict[str, Any]) -> Any:
        return True

    async def _m_getfile(self, params: dict[str, Any]) -> Any:
        found = self.files.get(params.get("file_id", ""))
        if found is None:
            return _error(400, "Bad Request: invalid file_id")
        if found.size > 20 * 1024 * 1024:
            return _error(400, "Bad Request: file is too big")
        return {"file_id": found.file_id, "file_unique_id": f"U{found.file_id}", "file_size": found.size,
                "file_path": found.path}

    async def _m_getchatmember(self, params: dict[str, Any]) -> Any:
        status = self.member_status.get((params["chat_id"], params["user_id"]), "member")
        member: dict[str, Any] = {"status": status, "user": user(params["user_id"], "Member")}
        if status == "creator":
            member["is_anonymous"] = False
        if status == "administrator":
            member.update({flag: False for flag in (
                "can_be_edited", "is_anonymous", "can_delete_messages", "can_manage_video_chats",
                "can_restrict_members", "can_promote_members", "can_change_info", "can_invite_users",
                "can_post_stories", "can_edit_stories", "can_delete_stories", "can_send_welcome_messages")})
            member["can_manage_chat"] = True
        return member

    async def _m_setmycommands(self, params: dict[str, Any]) -> Any:
        return True

    async def _m_setwebhook(self, params: dict[str, Any]) -> Any:
        if not str(params.get("url", "")).startswith("https://"):
            return _error(400, "Bad Request: bad webhook: An HTTPS URL must be provided for webhook")
        self.webhook = params
        return True

    async def _m_deletewebhook(self, params: dict[str, Any]) -> Any:
        self.webhook = None
        return True


@dataclass
class _Upload:
    filename: str
    data: bytes = field(repr=False)


_ALLOWED_TAGS = {"b", "strong", "i", "em", "u", "ins", "s", "strike", "del", "a", "code", "pre",
                 "tg-spoiler", "span", "blockquote", "tg-emoji"}


class _TelegramHTML(HTMLParser):
    """Telegram's HTML parse mode, strictly: known tags only, properly nested, and the only
    named entities are &lt; &gt; &amp; &quot;."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=False)
        self.text: list[str] = []
        self.open: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in _ALLOWED_TAGS:
            raise ValueError(f"Unsupported start tag \"{tag}\"")
        self.open.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.open or self.open.pop() != tag:
            raise ValueError(f"Unexpected end tag \"{tag}\"")

    def handle_data(self, data: str) -> None:
        if "<" in data or ">" in data:
            raise ValueError("Unescaped angle bracket")
        self.text.append(data)

    def handle_entityref(self, name: str) -> None:
        if name not in ("lt", "gt", "amp", "quot"):
            raise ValueError(f"Unsupported entity &{name};")
        self.text.append(html.unescape(f"&{name};"))

    def handle_charref(self, name: str) -> None:
        self.text.append(html.unescape(f"&#{name};"))


def parse_html(text: str) -> str:
    """The visible text of a parse_mode=HTML message (raises ValueError as Telegram would)."""
    parser = _TelegramHTML()
    parser.feed(text)
    parser.close()
    if parser.open:
        raise ValueError(f"Can't find end tag corresponding to start tag \"{parser.open[-1]}\"")
    return "".join(parser.text)


def _has_media(fields: dict[str, Any]) -> bool:
    return any(k in fields for k in ("voice", "audio", "photo", "document", "video_note"))


async def _params(request: web.Request) -> dict[str, Any]:
    """Form fields as the Bot API reads them: JSON-serialized objects decoded, ids as ints,
    `attach://name` resolved to the uploaded file."""
    if request.content_type == "application/json":
        return dict(await request.json())
    form = await request.post()
    params: dict[str, Any] = {}
    uploads: dict[str, _Upload] = {}
    for key, value in form.items():
        if isinstance(value, web.FileField):
            uploads[key] = _Upload(value.filename, value.file.read())
        elif key in _JSON_FIELDS:
            params[key] = json.loads(str(value))
        elif key in _INT_FIELDS:
            params[key] = int(str(value))
        else:
            params[key] = str(value)
    for key, value in list(params.items()):
        if isinstance(value, str) and value.startswith("attach://"):
            params[key] = uploads.get(value.removeprefix("attach://"))
    return params


def _error(code: int, description: str, parameters: dict[str, Any] | None = None) -> web.Response:
    body: dict[str, Any] = {"ok": False, "error_code": code, "description": description}
    if parameters:
        body["parameters"] = parameters
    return web.json_response(body, status=code)
