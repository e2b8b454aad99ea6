"""A loopback Discord: the REST API (v10 paths under /api/v10) and a websocket gateway.

discord.py is pointed at it through DISCORD_API_BASE; `GET /gateway/bot` hands out this
server's own ws:// URL. The fake speaks enough of the protocol for a bot's life: HELLO,
IDENTIFY -> READY + GUILD_CREATE, heartbeat ACKs, RESUME (replaying events the test asks for),
op 7 RECONNECT, dispatching MESSAGE_CREATE / INTERACTION_CREATE, close codes (4014 when the
Message Content intent is "not enabled in the portal"). It records what the bot sends:
channel messages (with nonce dedupe like Discord's enforce_nonce), edits (PATCH) and deletes
of messages and followups, typing, interaction callbacks and webhook followups, and the
bulk-overwritten application commands. `shown` is what people see now (edits applied).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from aiohttp import BodyPartReader, web

from tests.fakes.server import ServerThread

TOKEN = "fake-discord-bot-token"
BOT_ID = 900000000000000001
GUILD_ID = 910000000000000001
CHANNEL_ID = 920000000000000001  # #general
THREAD_ID = 930000000000000001  # a thread under #general
PRIVATE_THREAD_ID = 930000000000000002  # a private thread under #general (type 12)
ALICE = 950000000000000001  # member without Manage Channels
BOB = 950000000000000002  # has the "mods" role: Manage Channels
ADMIN_ROLE = 960000000000000001
BOT_ROLE = 960000000000000002
MESSAGE_CONTENT_INTENT = 1 << 15
EPHEMERAL = 64
DISCORD_EPOCH_MS = 1420070400000

VIEW, SEND, SEND_IN_THREADS, HISTORY, ATTACH, EMBED = 1 << 10, 1 << 11, 1 << 38, 1 << 16, 1 << 15, 1 << 14
MANAGE_CHANNELS = 1 << 4
MEMBER_PERMS = VIEW | SEND | SEND_IN_THREADS | HISTORY | ATTACH | EMBED


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    # discord.py parses a body as JSON only when Content-Type is exactly application/json.
    return web.Response(body=json.dumps(data).encode(), status=status,
                        headers={**(headers or {}), "Content-Type": "application/json"})


def _now() -> str:
    return datetime.now(UTC).isoformat()


def user(user_id: int, name: str, bot: bool = False) -> dict[str, Any]:
    return {"id": str(user_id), "username": name, "global_name": name.title(), "discriminator": "0",
            "avatar": None, "bot": bot, "public_flags": 0}


USERS = {ALICE: user(ALICE, "alice"), BOB: user(BOB, "bob"), BOT_ID: user(BOT_ID, "mnemo", bot=True)}


def dm_channel_id(user_id: int) -> int:
    return user_id + 1000  # one DM channel per user, derived so tests can address it


def _member(user_id: int, with_user: bool = False) -> dict[str, Any]:
    roles = [str(ADMIN_ROLE)] if user_id == BOB else [str(BOT_ROLE)] if user_id == BOT_ID else []
    member: dict[str, Any] = {"roles": roles, "joined_at": _now(), "nick": None, "deaf": False, "mute": False,
                              "flags": 0, "pending": False, "avatar": None, "communication_disabled_until": None}
    if with_user:
        member["user"] = USERS[user_id]
    return member


def _role(role_id: int, name: str, permissions: int, bot_id: int | None = None) -> dict[str, Any]:
    role: dict[str, Any] = {"id": str(role_id), "name": name, "permissions": str(permissions), "position": 1,
                            "color": 0, "hoist": False, "managed": bot_id is not None, "mentionable": True,
                            "flags": 0}
    if bot_id is not None:
        role["tags"] = {"bot_id": str(bot_id)}
    return role


def _text_channel() -> dict[str, Any]:
    return {"id": str(CHANNEL_ID), "type": 0, "guild_id": str(GUILD_ID), "name": "general", "position": 0,
            "permission_overwrites": [], "nsfw": False, "parent_id": None, "topic": None,
            "last_message_id": None, "rate_limit_per_user": 0, "flags": 0}


def _thread(thread_id: int = THREAD_ID, private: bool = False) -> dict[str, Any]:
    return {"id": str(thread_id), "type": 12 if private else 11, "guild_id": str(GUILD_ID),
            "parent_id": str(CHANNEL_ID), "owner_id": str(ALICE), "name": "hr-only" if private else "trip-plans", "last_message_id": None, "message_count": 0,
            "member_count": 2, "rate_limit_per_user": 0, "flags": 0,
            "thread_metadata": {"archived": False, "auto_archive_duration": 1440, "archive_timestamp": _now(),
                                "locked": False}}


def guild_create() -> dict[str, Any]:
    return {
        "id": str(GUILD_ID), "name": "Test Guild", "owner_id": str(BOB), "icon": None, "splash": None,
        "discovery_splash": None, "afk_channel_id": None, "afk_timeout": 300, "verification_level": 0,
        "default_message_notifications": 0, "explicit_content_filter": 0, "mfa_level": 0, "system_channel_id": None,
        "system_channel_flags": 0, "rules_channel_id": None, "vanity_url_code": None, "description": None,
        "banner": None, "premium_tier": 0, "preferred_locale": "en-US", "public_updates_channel_id": None,
        "nsfw_level": 0, "premium_progress_bar_enabled": False, "features": [], "emojis": [], "stickers": [],
        "roles": [
            _role(GUILD_ID, "@everyone", MEMBER_PERMS),
            _role(ADMIN_ROLE, "mods", MEMBER_PERMS | MANAGE_CHANNELS),
            _role(BOT_ROLE, "Mnemo", MEMBER_PERMS, bot_id=BOT_ID),
        ],
        "channels": [_text_channel()], "threads": [_thread(), _thread(PRIVATE_THREAD_ID, private=True)],
        "members": [_member(BOT_ID, with_user=True)],
        "member_count": 3, "large": False, "unavailable": False, "joined_at": _now(), "voice_states": [],
        "presences": [], "stage_instances": [], "guild_scheduled_events": [], "soundboard_sounds": [],
    }


class FakeDiscord:
    def __init__(self, token: str = TOKEN, refuse_message_content: bool = False) -> None:
        self.token = token
        self.refuse_message_content = refuse_message_content
        self.lock = threading.Lock()
        # what the bot did
        self.identifies: list[dict[str, Any]] = []
        self.resumes: list[dict[str, Any]] = []
        self.commands: list[dict[str, Any]] | None = None
        self.sent: list[dict[str, Any]] = []  # channel messages created
        self.message_posts = 0  # POSTs, including 429-refused and nonce-deduped ones
        self.typing: list[int] = []
        self.callbacks: list[dict[str, Any]] = []  # interaction callback bodies
        self.followups: list[dict[str, Any]] = []  # webhook followup bodies (+ "files")
        self.cdn_hits: list[str] = []
        self.requests: list[tuple[str, str]] = []
        # knobs
        self.rate_limit_next = 0  # answer the next N channel-message POSTs with 429
        self.retry_after = 0.5
        # POST number (1-based, counting every channel-message POST) -> fault:
        # "unavailable": 503, nothing created; "lost": created, but the answer is a 502
        self.faults: dict[int, str] = {}
        self.replay_on_resume: list[dict[str, Any]] = []  # dispatches to (re)send after a RESUME
        self.cdn: dict[str, bytes] = {}
        # gateway state
        self._sockets: list[web.WebSocketResponse] = []
        self._seq = 0
        self._ids = itertools.count()
        self._nonces: dict[tuple[str, str], dict[str, Any]] = {}
        # What people see now: message id -> the bot's message (edits applied, deletes removed).
        self.shown: dict[str, dict[str, Any]] = {}
        self.edits: list[dict[str, Any]] = []  # PATCH bodies, with "id" and "at"
        self.rate_limit_edits = 0  # answer the next N PATCHes of a message with 429
        self._server = ServerThread(self._app)

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> FakeDiscord:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()

    @property
    def api_base(self) -> str:
        return f"{self._server.url}/api/v10"

    @property
    def gateway_url(self) -> str:
        return f"ws://{self._server.host}:{self._server.port}/gateway"

    def env(self) -> dict[str, str]:
        return {"DISCORD_BOT_TOKEN": self.token, "DISCORD_API_BASE": self.api_base}

    def next_id(self) -> int:
        """A snowflake for now (discord.py derives created_at from it), unique per fake."""
        return ((int(time.time() * 1000) - DISCORD_EPOCH_MS) << 22) | (next(self._ids) % (1 << 22))

    # -- what tests send --------------------------------------------------------------------

    def message(
        self,
        content: str,
        *,
        author: int = ALICE,
        channel_id: int = CHANNEL_ID,
        dm: bool = False,
        mention_bot: bool = False,
        reply_to: dict[str, Any] | None = None,
        attachments: list[dict[str, Any]] | None = None,
        flags: int = 0,
    ) -> dict[str, Any]:
        """A MESSAGE_CREATE payload (send it with `dispatch("MESSAGE_CREATE", ...)`)."""
        if dm:
            channel_id = dm_channel_id(author)
        if mention_bot:
            content = f"<@{BOT_ID}> {content}"
        data: dict[str, Any] = {
            "id": str(self.next_id()), "channel_id": str(channel_id), "author": USERS[author], "content": content,
            "timestamp": _now(), "edited_timestamp": None, "tts": False, "mention_everyone": False,
            "mentions": [{**USERS[BOT_ID], "member": _member(BOT_ID)}] if mention_bot else [],
            "mention_roles": [], "attachments": attachments or [], "embeds": [], "pinned": False,
            "type": 0, "flags": flags, "components": [],
        }
        if not dm:
            data["guild_id"] = str(GUILD_ID)
            data["member"] = _member(author)
        if reply_to is not None:
            data["type"] = 19
            data["message_reference"] = {"message_id": reply_to["id"], "channel_id": reply_to["channel_id"],
                                         "guild_id": reply_to.get("guild_id"), "type": 0}
            data["referenced_message"] = reply_to
        return data

    def attachment(self, filename: str, content_type: str, data: bytes | None = None, *, size: int | None = None,
                   voice: bool = False) -> dict[str, Any]:
        """An attachment whose bytes this fake's CDN serves (declared `size` may differ)."""
        attachment_id = self.next_id()
        path = f"/cdn/attachments/{attachment_id}/{filename}"
        if data is not None:
            self.cdn[path] = data
        item: dict[str, Any] = {"id": str(attachment_id), "filename": filename, "content_type": content_type,
                                "size": size if size is not None else len(data or b""),
                                "url": f"{self._server.url}{path}", "proxy_url": f"{self._server.url}{path}"}
        if voice:
            item.update(duration_secs=2.5, waveform="AAAA")
        return item

    def interaction(self, name: str, options: dict[str, Any] | None = None, *, author: int = ALICE,
                    channel_id: int = CHANNEL_ID, dm: bool = False) -> dict[str, Any]:
        """An INTERACTION_CREATE payload for an application (slash) command."""
        interaction_id = self.next_id()
        channel: dict[str, Any]
        if dm:
            channel_id = dm_channel_id(author)
            channel = {"id": str(channel_id), "type": 1, "recipients": [USERS[author]], "last_message_id": None}
        elif channel_id == THREAD_ID:
            channel = _thread()
        else:
            channel = _text_channel()
        perms = MEMBER_PERMS | (MANAGE_CHANNELS if author == BOB else 0)
        data: dict[str, Any] = {
            "id": str(interaction_id), "application_id": str(BOT_ID), "type": 2, "token": f"itoken-{interaction_id}",
            "version": 1, "channel_id": str(channel_id), "channel": channel, "locale": "en-US",
            "app_permissions": str(MEMBER_PERMS), "entitlements": [], "authorizing_integration_owners": {"0": str(GUILD_ID)},
            "context": 1 if dm else 0, "attachment_size_limit": 10 * 1024 * 1024,
            "data": {"id": str(self.command_id(name)), "name": name, "type": 1,
                     "options": [{"name": k, "type": 4 if isinstance(v, int) else 3, "value": v}
                                 for k, v in (options or {}).items()]},
        }
        if dm:
            data["user"] = USERS[author]
        else:
            data["guild_id"] = str(GUILD_ID)
            data["guild_locale"] = "en-US"
            data["member"] = {**_member(author, with_user=True), "permissions": str(perms)}
        return data

    def command_id(self, name: str) -> int:
        for command in self.commands or []:
            if command["name"] == name:
                return int(command["id"])
        return 0

    def dispatch(self, event: str, data: dict[str, Any]) -> None:
        """Send a gateway DISPATCH to every connected bot (thread-safe)."""
        self._server.call(lambda: self._server.loop.create_task(self._dispatch(event, data)))

    def reconnect(self) -> None:
        """op 7: ask the bot to reconnect and RESUME."""
        self._server.call(lambda: self._server.loop.create_task(self._send_all({"op": 7, "d": None})))

    def close_gateway(self, code: int) -> None:
        self._server.call(lambda: self._server.loop.create_task(self._close_all(code)))

    # -- waiting (sync for subprocess tests, async when the bot shares the test's loop) ---

    def wait(self, predicate: Callable[[], bool], timeout: float = 60, what: str = "condition") -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"fake Discord: timed out waiting for {what}")
            time.sleep(0.05)

    async def until(self, predicate: Callable[[], bool], timeout: float = 60, what: str = "condition") -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"fake Discord: timed out waiting for {what}")
            await asyncio.sleep(0.05)

    @property
    def ready(self) -> bool:
        """The bot identified and registered its commands: events may be dispatched."""
        return bool(self.identifies) and self.commands is not None and bool(self._sockets)

    def sent_to(self, channel_id: int) -> list[dict[str, Any]]:
        return [m for m in self.sent if m["channel_id"] == str(channel_id)]

    def visible_in(self, channel_id: int | str) -> list[str]:
        """The content of the bot's messages in a channel (or "0": followups) as shown now."""
        with self.lock:
            found = [m for m in self.shown.values() if m["channel_id"] == str(channel_id)]
        return [m["content"] for m in sorted(found, key=lambda m: int(m["id"]))]

    def replies_to(self, message_id: str) -> list[dict[str, Any]]:
        return [m for m in self.sent if str((m.get("message_reference") or {}).get("message_id")) == str(message_id)]

    # -- HTTP app -----------------------------------------------------------------------

    def _app(self) -> web.Application:
        app = web.Application(middlewares=[self._auth])
        api = "/api/v10"
        app.router.add_get("/gateway", self._gateway)
        app.router.add_get(f"{api}/gateway/bot", self._gateway_bot)
        app.router.add_get(f"{api}/users/@me", self._me)
        app.router.add_get(f"{api}/oauth2/applications/@me", self._application)
        app.router.add_get(f"{api}/applications/@me", self._application)
        app.router.add_put(f"{api}/applications/{{app}}/commands", self._bulk_overwrite)
        app.router.add_post(f"{api}/channels/{{channel}}/messages", self._create_message)
        app.router.add_post(f"{api}/channels/{{channel}}/typing", self._typing)
        app.router.add_patch(f"{api}/channels/{{channel}}/messages/{{id}}", self._edit_message)
        app.router.add_delete(f"{api}/channels/{{channel}}/messages/{{id}}", self._delete_message)
        app.router.add_patch(f"{api}/webhooks/{{app}}/{{token}}/messages/{{id}}", self._edit_message)
        app.router.add_delete(f"{api}/webhooks/{{app}}/{{token}}/messages/{{id}}", self._delete_message)
        app.router.add_get(f"{api}/users/{{user}}", self._get_user)
        app.router.add_post(f"{api}/users/@me/channels", self._create_dm)
        app.router.add_post(f"{api}/interactions/{{id}}/{{token}}/callback", self._callback)
        app.router.add_post(f"{api}/webhooks/{{app}}/{{token}}", self._followup)
        app.router.add_get("/cdn/{tail:.*}", self._cdn)
        return app

    @web.middleware
    async def _auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.requests.append((request.method, request.path))
        public = request.path.startswith(("/gateway", "/cdn", "/api/v10/webhooks", "/api/v10/interactions"))
        if not public and request.headers.get("Authorization") != f"Bot {self.token}":
            return _json({"message": "401: Unauthorized", "code": 0}, status=401)
        return await handler(request)

    async def _gateway_bot(self, request: web.Request) -> web.Response:
        return _json({"url": self.gateway_url, "shards": 1, "session_start_limit": {
            "total": 1000, "remaining": 999, "reset_after": 0, "max_concurrency": 1}})

    async def _me(self, request: web.Request) -> web.Response:
        return _json({**USERS[BOT_ID], "verified": True, "mfa_enabled": False, "flags": 0})

    async def _application(self, request: web.Request) -> web.Response:
        return _json({
            "id": str(BOT_ID), "name": "Mnemo", "description": "", "icon": None, "bot_public": True,
            "bot_require_code_grant": False, "owner": USERS[BOB], "verify_key": "0" * 64, "flags": 0,
            "team": None, "summary": "", "rpc_origins": [], "interactions_endpoint_url": None,
        })

    async def _bulk_overwrite(self, request: web.Request) -> web.Response:
        payload = await request.json()
        registered = [{**c, "id": str(self.next_id()), "application_id": str(BOT_ID), "version": "1",
                       "default_member_permissions": None, "type": c.get("type", 1)} for c in payload]
        self.commands = registered
        return _json(registered)

    async def _body(self, request: web.Request) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """JSON body, or multipart (payload_json + files[n]) when a file is attached."""
        if request.content_type.startswith("multipart/"):
            payload: dict[str, Any] = {}
            files: list[dict[str, Any]] = []
            reader = await request.multipart()
            async for part in reader:
                if not isinstance(part, BodyPartReader):
                    continue
                if part.name == "payload_json":
                    payload = json.loads(await part.text())
                else:
                    files.append({"name": part.filename, "data": await part.read()})
            return payload, files
        return await request.json(), []

    def _message_object(self, channel_id: str, payload: dict[str, Any], author: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": str(self.next_id()), "channel_id": channel_id, "author": author,
            "content": payload.get("content") or "", "timestamp": _now(), "edited_timestamp": None, "tts": False,
            "mention_everyone": False, "mentions": [], "mention_roles": [], "attachments": [], "embeds": [],
            "pinned": False, "type": 19 if payload.get("message_reference") else 0, "flags": payload.get("flags", 0),
            "components": [],
        }

    async def _create_message(self, request: web.Request) -> web.Response:
        self.message_posts += 1
        if self.rate_limit_next > 0:
            self.rate_limit_next -= 1
            headers = {"Via": "1.1 google", "Retry-After": str(self.retry_after), "X-RateLimit-Limit": "5",
                       "X-RateLimit-Remaining": "0", "X-RateLimit-Reset-After": str(self.retry_after),
                       "X-RateLimit-Bucket": "fake-messages", "X-RateLimit-Scope": "user"}
            return _json({"message": "You are being rate limited.", "retry_after": self.retry_after,
                                      "global": False}, status=429, headers=headers)
        fault = self.faults.pop(self.message_posts, None)
        if fault == "unavailable":
            return _json({"message": "Service Unavailable", "code": 0}, status=503)
        payload, files = await self._body(request)
        channel_id = request.match_info["channel"]
        nonce = payload.get("nonce")
        if nonce and payload.get("enforce_nonce") and (channel_id, nonce) in self._nonces:
            return _json(self._nonces[(channel_id, nonce)])  # the one already created
        message = self._message_object(channel_id, payload, USERS[BOT_ID])
        with self.lock:
            self.sent.append({**payload, "channel_id": channel_id, "id": message["id"], "files": files,
                              "at": time.monotonic()})
        if nonce:
            self._nonces[(channel_id, nonce)] = message
        with self.lock:
            self.shown[message["id"]] = message
        if fault == "lost":
            return _json({"message": "Bad Gateway", "code": 0}, status=502)
        return _json(message)

    async def _typing(self, request: web.Request) -> web.Response:
        self.typing.append(int(request.match_info["channel"]))
        return web.Response(status=204)

    async def _get_user(self, request: web.Request) -> web.Response:
        found = USERS.get(int(request.match_info["user"]))
        if found is None:
            return _json({"message": "Unknown User", "code": 10013}, status=404)
        return _json(found)

    async def _create_dm(self, request: web.Request) -> web.Response:
        recipient = int((await request.json())["recipient_id"])
        return _json({"id": str(dm_channel_id(recipient)), "type": 1, "last_message_id": None,
                                  "recipients": [USERS[recipient]], "flags": 0})

    async def _callback(self, request: web.Request) -> web.Response:
        payload, _files = await self._body(request)
        with self.lock:
            self.callbacks.append({**payload, "interaction_id": request.match_info["id"]})
        flags = (payload.get("data") or {}).get("flags", 0)
        return _json({"interaction": {
            "id": request.match_info["id"], "type": 2, "response_message_loading": payload.get("type") == 5,
            "response_message_ephemeral": bool(flags & EPHEMERAL)}})

    async def _followup(self, request: web.Request) -> web.Response:
        payload, files = await self._body(request)
        token = request.match_info["token"]
        message = self._message_object("0", payload, USERS[BOT_ID])
        message["webhook_id"] = str(BOT_ID)
        with self.lock:
            self.followups.append({**payload, "token": token, "id": message["id"], "files": files})
            self.shown[message["id"]] = message
        return _json(message)

    async def _edit_message(self, request: web.Request) -> web.Response:
        if self.rate_limit_edits > 0:
            self.rate_limit_edits -= 1
            headers = {"Retry-After": str(self.retry_after), "X-RateLimit-Limit": "5", "X-RateLimit-Remaining": "0",
                       "X-RateLimit-Reset-After": str(self.retry_after), "X-RateLimit-Bucket": "fake-edits",
                       "X-RateLimit-Scope": "user"}
            with self.lock:
                self.edits.append({"id": request.match_info["id"], "status": 429, "at": time.monotonic()})
            return _json({"message": "You are being rate limited.", "retry_after": self.retry_after,
                          "global": False}, status=429, headers=headers)
        payload, _files = await self._body(request)
        with self.lock:
            found = self.shown.get(request.match_info["id"])
            if found is None:
                return _json({"message": "Unknown Message", "code": 10008}, status=404)
            if "content" in payload:
                found["content"] = payload["content"] or ""
            found["edited_timestamp"] = _now()
            self.edits.append({**payload, "id": found["id"], "status": 200, "at": time.monotonic()})
            return _json(dict(found))

    async def _delete_message(self, request: web.Request) -> web.Response:
        with self.lock:
            if self.shown.pop(request.match_info["id"], None) is None:
                return _json({"message": "Unknown Message", "code": 10008}, status=404)
        return web.Response(status=204)

    async def _cdn(self, request: web.Request) -> web.Response:
        self.cdn_hits.append(request.path)
        data = self.cdn.get(request.path)
        if data is None:
            return web.Response(status=404)
        return web.Response(body=data)

    # -- gateway ------------------------------------------------------------------------

    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_json({"op": 10, "d": {"heartbeat_interval": 41250}, "s": None, "t": None})
        async for frame in ws:
            if frame.type != web.WSMsgType.TEXT:
                continue
            message = json.loads(frame.data)
            op, data = message.get("op"), message.get("d")
            if op == 1:
                await ws.send_json({"op": 11, "d": None})
            elif op == 2:
                await self._identify(ws, data)
            elif op == 6:
                await self._resume(ws, data)
        if ws in self._sockets:
            self._sockets.remove(ws)
        return ws

    async def _identify(self, ws: web.WebSocketResponse, data: dict[str, Any]) -> None:
        self.identifies.append(data)
        if data.get("token") != self.token:
            await ws.close(code=4004, message=b"Authentication failed.")
            return
        if self.refuse_message_content and data.get("intents", 0) & MESSAGE_CONTENT_INTENT:
            await ws.close(code=4014, message=b"Disallowed intent(s).")
            return
        self._sockets.append(ws)
        await self._send(ws, "READY", {
            "v": 10, "user": {**USERS[BOT_ID], "verified": True, "mfa_enabled": False, "flags": 0},
            "guilds": [{"id": str(GUILD_ID), "unavailable": True}], "session_id": "fake-session",
            "resume_gateway_url": self.gateway_url, "shard": [0, 1], "private_channels": [], "relationships": [],
            "application": {"id": str(BOT_ID), "flags": 0},
        })
        await self._send(ws, "GUILD_CREATE", guild_create())

    async def _resume(self, ws: web.WebSocketResponse, data: dict[str, Any]) -> None:
        self.resumes.append(data)
        self._sockets.append(ws)
        replay, self.replay_on_resume = self.replay_on_resume, []
        for event in replay:  # events Discord (re)sends on resume
            await self._send(ws, event["t"], event["d"])
        await self._send(ws, "RESUMED", {})

    async def _send(self, ws: web.WebSocketResponse, event: str, data: dict[str, Any]) -> None:
        self._seq += 1
        await ws.send_json({"op": 0, "t": event, "s": self._seq, "d": data})

    async def _dispatch(self, event: str, data: dict[str, Any]) -> None:
        for ws in list(self._sockets):
            await self._send(ws, event, data)

    async def _send_all(self, payload: dict[str, Any]) -> None:
        for ws in list(self._sockets):
            await ws.send_json(payload)

    async def _close_all(self, code: int) -> None:
        for ws in list(self._sockets):
            self._sockets.remove(ws)
            await ws.close(code=code)
