"""A loopback fake of the Slack Web API (and Socket Mode), plus helpers to sign requests as
Slack does.

The real slack-sdk talks to it through `base_url` (SLACK_API_BASE). It checks the bearer token
on every call (the app-level token for apps.connections.open), records what it was asked,
serves private file downloads only to the bot token (anything else gets Slack's HTML sign-in
page, as the real service does), can answer 429 with Retry-After or answer slowly, and offers a
Socket Mode websocket that sends `hello` and envelopes and collects the app's acks.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from aiohttp import WSMsgType, web

from tests.fakes.server import ServerThread

BOT_USER_ID = "UBOT0001"
TEAM_ID = "T0000001"


@dataclass
class Call:
    method: str
    args: dict[str, Any]
    status: int = 200
    at: float = field(default_factory=time.monotonic)


def sign(secret: str, body: str, timestamp: int | None = None) -> dict[str, str]:
    """Headers Slack sends with each HTTP request (v0 signature over `v0:ts:body`)."""
    ts = str(int(time.time()) if timestamp is None else timestamp)
    digest = hmac.new(secret.encode(), f"v0:{ts}:{body}".encode(), hashlib.sha256).hexdigest()
    return {"X-Slack-Request-Timestamp": ts, "X-Slack-Signature": f"v0={digest}"}


_ids = itertools.count(1)


def event_callback(event: dict[str, Any], event_id: str | None = None) -> dict[str, Any]:
    """An Events API envelope as Slack documents it."""
    return {
        "token": "legacy-verification-token",
        "team_id": TEAM_ID,
        "api_app_id": "A0000001",
        "event": event,
        "type": "event_callback",
        "event_id": event_id or f"Ev{next(_ids):08d}",
        "event_time": int(time.time()),
        "authorizations": [
            {"enterprise_id": None, "team_id": TEAM_ID, "user_id": BOT_USER_ID, "is_bot": True,
             "is_enterprise_install": False}
        ],
        "is_ext_shared_channel": False,
        "event_context": "4-eyJldCI6Im1lc3NhZ2UifQ",
    }


def new_ts() -> str:
    now = time.time()
    return f"{int(now)}.{next(_ids):06d}"


def channel_message(channel: str, user: str, text: str, ts: str | None = None, **extra: Any) -> dict[str, Any]:
    event = {"type": "message", "channel": channel, "user": user, "text": text, "ts": ts or new_ts(),
             "channel_type": "im" if channel.startswith("D") else "channel", "team": TEAM_ID}
    event["event_ts"] = event["ts"]
    event.update(extra)
    return event


def app_mention(message_event: dict[str, Any]) -> dict[str, Any]:
    """The `app_mention` event Slack sends alongside `message` for the same message."""
    event = {k: v for k, v in message_event.items() if k != "channel_type"}
    event["type"] = "app_mention"
    return event


class FakeSlack:
    def __init__(self, bot_token: str = "xoxb-test-token", app_token: str = "xapp-test-token") -> None:
        self.bot_token = bot_token
        self.app_token = app_token
        self.team_url = "https://fake-team.slack.com/"
        self.calls: list[Call] = []
        self.rate_limit: dict[str, int] = {}  # method -> how many 429s to answer next
        self.retry_after = 1
        self.delay: dict[str, float] = {}  # method -> seconds to wait before answering (a slow Web API)
        self.users: dict[str, dict[str, Any]] = {}
        self.files: dict[str, tuple[bytes, str]] = {}  # name -> (data, content type)
        self.downloads: list[tuple[str, str]] = []  # (name, authorization header)
        self.uploads: dict[str, bytes] = {}
        self.responses: list[dict[str, Any]] = []  # bodies POSTed to response_url
        self.not_in_channels: set[str] = set()
        self.files_read_granted = True  # False: the token lacks files:read
        self.acks: list[dict[str, Any]] = []
        # What channels show now: channel -> the bot's messages (chat.update applied, chat.delete
        # removed), each with its `metadata` as posted; read back by conversations.replies/history.
        self.messages: dict[str, list[dict[str, Any]]] = {}
        self.statuses: list[dict[str, Any]] = []  # assistant.threads.setStatus calls
        self._sockets: list[web.WebSocketResponse] = []
        self._lock = threading.Lock()
        self._ts = itertools.count(1)
        self._thread = ServerThread(self._app)

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> FakeSlack:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._thread.stop()

    @property
    def url(self) -> str:
        return self._thread.url

    @property
    def api_base(self) -> str:
        return f"{self.url}/api/"

    # -- test helpers -------------------------------------------------------------------

    def add_user(self, user_id: str, name: str, admin: bool = False) -> None:
        self.users[user_id] = {
            "id": user_id, "team_id": TEAM_ID, "name": name.lower(), "real_name": name, "is_admin": admin,
            "is_owner": False, "is_primary_owner": False, "is_bot": False,
            "profile": {"display_name": name, "real_name": name},
        }

    def add_file(self, file_id: str, name: str, data: bytes, mimetype: str) -> dict[str, Any]:
        """Host a file and return the file object Slack puts on a file_share message."""
        self.files[name] = (data, mimetype)
        url = f"{self.url}/files-pri/{TEAM_ID}-{file_id}/{name}"
        return {
            "id": file_id, "name": name, "title": name, "mimetype": mimetype, "filetype": name.rsplit(".", 1)[-1],
            "size": len(data), "mode": "hosted", "is_external": False, "url_private": url,
            "url_private_download": url + "?download=1",
        }

    @staticmethod
    def permalink(channel: str, ts: str) -> str:
        # Deliberately not derived from auth.test's url (Enterprise Grid permalinks aren't),
        # so tests can tell a real chat.getPermalink answer from a constructed link.
        return f"https://fake-team.enterprise.slack.com/archives/{channel}/p{ts.replace('.', '')}"

    def calls_to(self, method: str, ok_only: bool = True) -> list[Call]:
        with self._lock:
            return [c for c in self.calls if c.method == method and (c.status == 200 or not ok_only)]

    def visible_texts(self, channel: str) -> list[str]:
        with self._lock:
            return [str(m.get("text")) for m in self.messages.get(channel, [])]

    def posts(self) -> list[Call]:
        """Successful chat.postMessage calls."""
        return self.calls_to("chat.postMessage")

    async def wait_for(self, predicate: Any, timeout: float = 30.0) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = predicate()
            if result:
                return result
            await asyncio.sleep(0.05)
        raise AssertionError("timed out waiting for the fake Slack to see it")

    def send_envelope(self, envelope: dict[str, Any]) -> None:
        """Push a Socket Mode envelope to every connected socket."""

        async def send() -> None:
            for ws in list(self._sockets):
                await ws.send_str(json.dumps(envelope))

        asyncio.run_coroutine_threadsafe(send(), self._thread.loop).result(10)

    @property
    def socket_count(self) -> int:
        return len([ws for ws in self._sockets if not ws.closed])

    # -- HTTP ---------------------------------------------------------------------------

    def _app(self) -> web.Application:
        app = web.Application(client_max_size=50 * 1024 * 1024)
        app.router.add_post("/api/{method}", self._api)
        app.router.add_get("/api/{method}", self._api)
        app.router.add_post("/upload/{file_id}", self._upload)
        app.router.add_get("/files-pri/{owner}/{name}", self._download)
        app.router.add_post("/response/{id}", self._response_url)
        app.router.add_get("/socket", self._socket)
        return app

    async def _args(self, request: web.Request) -> dict[str, Any]:
        args: dict[str, Any] = dict(request.query)
        if request.content_type == "application/json":
            args.update(await request.json())
        elif request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
            args.update({k: v for k, v in (await request.post()).items() if isinstance(v, str)})
        return args

    def _record(self, method: str, args: dict[str, Any], status: int = 200) -> None:
        with self._lock:
            self.calls.append(Call(method, args, status))

    async def _api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        args = await self._args(request)
        if self.delay.get(method):
            await asyncio.sleep(self.delay[method])
        token = request.headers.get("Authorization", "").removeprefix("Bearer ") or args.get("token", "")
        if self.rate_limit.get(method, 0) > 0:
            self.rate_limit[method] -= 1
            self._record(method, args, 429)
            return web.json_response({"ok": False, "error": "ratelimited"}, status=429,
                                     headers={"Retry-After": str(self.retry_after)})
        expected = self.app_token if method == "apps.connections.open" else self.bot_token
        if token != expected:
            self._record(method, args, 401)
            error = "not_allowed_token_type" if token.startswith("xapp-") != expected.startswith("xapp-") else "invalid_auth"
            return web.json_response({"ok": False, "error": error})
        handler = getattr(self, "_m_" + method.replace(".", "_"), None)
        if handler is None:
            self._record(method, args, 404)
            return web.json_response({"ok": False, "error": "unknown_method"}, status=404)
        body = handler(args)
        self._record(method, args, 200 if body.get("ok") else 400)
        return web.json_response(body)

    # Web API methods (as documented at docs.slack.dev/reference/methods) ----------------

    def _m_auth_test(self, args: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "url": self.team_url, "team": "Fake Team", "user": "mnemo", "team_id": TEAM_ID,
                "user_id": BOT_USER_ID, "bot_id": "B0000001", "is_enterprise_install": False}

    def _new_ts(self) -> str:
        return f"{int(time.time())}.{next(self._ts):06d}"

    def _m_chat_postMessage(self, args: dict[str, Any]) -> dict[str, Any]:
        channel = str(args.get("channel"))
        if channel in self.not_in_channels:
            return {"ok": False, "error": "not_in_channel"}
        ts = self._new_ts()
        message = {"type": "message", "text": args.get("text"), "user": BOT_USER_ID, "bot_id": "B0000001", "ts": ts}
        if args.get("thread_ts"):
            message["thread_ts"] = args["thread_ts"]
        metadata = _metadata(args.get("metadata"))
        with self._lock:
            self.messages.setdefault(channel, []).append({**message, **({"metadata": metadata} if metadata else {})})
        return {"ok": True, "channel": channel, "ts": ts, "message": message}

    def _find(self, channel: str, ts: str) -> dict[str, Any] | None:
        return next((m for m in self.messages.get(channel, []) if m["ts"] == ts), None)

    def _m_chat_update(self, args: dict[str, Any]) -> dict[str, Any]:
        channel, ts = str(args.get("channel")), str(args.get("ts"))
        with self._lock:
            found = self._find(channel, ts)
            if found is None:
                return {"ok": False, "error": "message_not_found"}
            found["text"] = args.get("text")
            found["edited"] = {"user": BOT_USER_ID, "ts": self._new_ts()}
            metadata = _metadata(args.get("metadata"))
            if metadata:
                found["metadata"] = metadata
        return {"ok": True, "channel": channel, "ts": ts, "text": args.get("text")}

    def _m_chat_delete(self, args: dict[str, Any]) -> dict[str, Any]:
        channel, ts = str(args.get("channel")), str(args.get("ts"))
        with self._lock:
            found = self._find(channel, ts)
            if found is None:
                return {"ok": False, "error": "message_not_found"}
            self.messages[channel].remove(found)
        return {"ok": True, "channel": channel, "ts": ts}

    def _listed(self, messages: list[dict[str, Any]], args: dict[str, Any]) -> dict[str, Any]:
        with_metadata = str(args.get("include_all_metadata")).lower() in ("1", "true")
        shown = [m if with_metadata else {k: v for k, v in m.items() if k != "metadata"} for m in messages]
        return {"ok": True, "messages": shown, "has_more": False}

    def _m_conversations_replies(self, args: dict[str, Any]) -> dict[str, Any]:
        channel, ts = str(args.get("channel")), str(args.get("ts"))
        with self._lock:
            thread = [m for m in self.messages.get(channel, []) if m.get("thread_ts") == ts or m["ts"] == ts]
        return self._listed(thread, args)

    def _m_conversations_history(self, args: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            found = list(reversed(self.messages.get(str(args.get("channel")), [])))  # newest first
        return self._listed(found, args)

    def _m_assistant_threads_setStatus(self, args: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            self.statuses.append(dict(args))
        return {"ok": True}

    def _m_chat_postEphemeral(self, args: dict[str, Any]) -> dict[str, Any]:
        if str(args.get("channel")) in self.not_in_channels:
            return {"ok": False, "error": "channel_not_found"}
        return {"ok": True, "message_ts": self._new_ts()}

    def _m_chat_getPermalink(self, args: dict[str, Any]) -> dict[str, Any]:
        channel, ts = str(args.get("channel")), str(args.get("message_ts"))
        return {"ok": True, "channel": channel, "permalink": self.permalink(channel, ts)}

    def _m_users_info(self, args: dict[str, Any]) -> dict[str, Any]:
        user = self.users.get(str(args.get("user")))
        if user is None:
            return {"ok": False, "error": "user_not_found"}
        return {"ok": True, "user": user}

    def _m_conversations_open(self, args: dict[str, Any]) -> dict[str, Any]:
        user = str(args.get("users"))
        return {"ok": True, "channel": {"id": "D" + user.removeprefix("U")}}

    def _m_files_getUploadURLExternal(self, args: dict[str, Any]) -> dict[str, Any]:
        file_id = "F" + uuid.uuid4().hex[:8].upper()
        return {"ok": True, "upload_url": f"{self.url}/upload/{file_id}", "file_id": file_id}

    def _m_files_completeUploadExternal(self, args: dict[str, Any]) -> dict[str, Any]:
        files = json.loads(args.get("files") or "[]")
        missing = [f["id"] for f in files if f["id"] not in self.uploads]
        if missing:
            return {"ok": False, "error": "file_not_found"}
        return {"ok": True, "files": [{"id": f["id"], "title": f.get("title"), "channels": [args.get("channel_id")]}
                                      for f in files]}

    def _m_apps_connections_open(self, args: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "url": f"ws://127.0.0.1:{self._thread.port}/socket"}

    # non-API endpoints ------------------------------------------------------------------

    async def _upload(self, request: web.Request) -> web.Response:
        self.uploads[request.match_info["file_id"]] = await request.read()
        return web.Response(text="OK - 1")

    async def _download(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        auth = request.headers.get("Authorization", "")
        with self._lock:
            self.downloads.append((name, auth))
        if auth != f"Bearer {self.bot_token}" or not self.files_read_granted:
            # What Slack does for a missing/insufficient token: its sign-in page, status 200.
            return web.Response(text="<!DOCTYPE html><html>Sign in to Slack</html>", content_type="text/html")
        if name not in self.files:
            return web.Response(status=404, text="not found")
        data, mimetype = self.files[name]
        return web.Response(body=data, content_type=mimetype)

    async def _response_url(self, request: web.Request) -> web.Response:
        body = await request.json()
        with self._lock:
            self.responses.append(body)
        return web.Response(text="ok")

    async def _socket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self._sockets.append(ws)
        await ws.send_str(json.dumps({
            "type": "hello", "num_connections": len(self._sockets),
            "debug_info": {"host": "fake", "build_number": 1, "approximate_connection_time": 18060},
            "connection_info": {"app_id": "A0000001"},
        }))
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                with self._lock:
                    self.acks.append(json.loads(msg.data))
        self._sockets.remove(ws)
        return ws


def _metadata(value: Any) -> dict[str, Any] | None:
    """`metadata` as chat.postMessage takes it: an object, or its JSON in a form field."""
    if isinstance(value, str) and value:
        value = json.loads(value)
    return value if isinstance(value, dict) else None


def socket_envelope(payload: dict[str, Any], kind: str = "events_api", retry_attempt: int = 0,
                    envelope_id: str | None = None) -> dict[str, Any]:
    return {
        "envelope_id": envelope_id or str(uuid.uuid4()),
        "payload": payload,
        "type": kind,
        "accepts_response_payload": kind != "events_api",
        "retry_attempt": retry_attempt,
        "retry_reason": "timeout" if retry_attempt else "",
    }


def slash_form(text: str, *, user: str, channel: str, response_url: str, command: str = "/mnemo") -> str:
    """A slash command POST body (application/x-www-form-urlencoded) as Slack sends it."""
    return urlencode({
        "token": "legacy-verification-token", "team_id": TEAM_ID, "team_domain": "fake-team",
        "channel_id": channel, "channel_name": "directmessage" if channel.startswith("D") else "general",
        "user_id": user, "user_name": user.lower(), "command": command, "text": text,
        "api_app_id": "A0000001", "is_enterprise_install": "false", "response_url": response_url,
        "trigger_id": f"{next(_ids)}.{uuid.uuid4().hex[:10]}",
    })
