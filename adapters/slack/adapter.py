"""The Slack adapter: slack-bolt's AsyncApp in Socket Mode or HTTP mode, on the shared core.

- Socket Mode when an app token (`SLACK_APP_TOKEN`) is given, otherwise HTTP mode: events and
  slash commands arrive at `POST /slack/events` on the one aiohttp server. Bolt verifies each
  request's signature (constant-time; timestamps more than 5 minutes off -> 401), answers
  url_verification, and acknowledges before our listener's work (process_before_response=False).
- Listeners only hand the event to an owned background task (awaited in `stop()`): look up the
  author's name and the message's permalink, then `core.submit` (store first, dedupe on
  slack:channel:ts — so a retried event, or the `message` + `app_mention` pair for one
  message, is processed once).
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlparse

import aiohttp
from aiohttp import web
from slack_bolt.adapter.aiohttp import to_aiohttp_response, to_bolt_request
from slack_bolt.app.async_app import AsyncApp
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncConnectionErrorRetryHandler,
    AsyncRateLimitErrorRetryHandler,
)
from slack_sdk.signature import SignatureVerifier
from slack_sdk.web.async_client import AsyncWebClient

from adapters.slack.delivery import DmChannels, ReplySender
from adapters.slack.directory import Identity, Permalinks, Users, constructed_permalink
from adapters.slack.events import Said, classify, slash_message, to_message
from adapters.slack.pacing import ChannelPacer
from core.engine import Core
from core.errors import FatalPlatformError, MediaError
from core.models import Message, PlatformLimits, Reply

log = logging.getLogger(__name__)

DEFAULT_API_BASE = "https://slack.com/api/"
EVENTS_PATH = "/slack/events"
# Slack truncates message text beyond 40,000 characters (DESIGN.md "Limits").
MAX_MESSAGE_CHARS = 40_000
# Where Slack serves url_private downloads (commercial and GovSlack); also the API base's host.
_SLACK_FILE_DOMAINS = (".slack.com", ".slack-gov.com", ".slack-edge.com")
# Errors only a person can fix: the token is wrong, revoked, or of the wrong kind.
_AUTH_ERRORS = {
    "invalid_auth", "not_authed", "account_inactive", "token_revoked", "token_expired",
    "not_allowed_token_type", "invalid_token", "no_permission", "missing_scope",
}


class _SameTokenNotice(logging.Filter):
    """Bolt also reads SLACK_BOT_TOKEN from the environment and then warns that our client
    (built from that same token) takes precedence: true and harmless, so not logged."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "`token` will be unused" not in record.getMessage()


class SlackAdapter:
    name = "slack"
    limits = PlatformLimits(max_message_chars=MAX_MESSAGE_CHARS)

    def __init__(
        self,
        core: Core,
        *,
        bot_token: str,
        app_token: str | None = None,
        signing_secret: str | None = None,
        api_base: str | None = None,
        pacing_s: float = 1.0,
    ) -> None:
        if not app_token and not signing_secret:
            raise ValueError("SlackAdapter needs an app token (Socket Mode) or a signing secret (HTTP mode)")
        self.core = core
        self.bot_token = bot_token
        self.app_token = app_token
        self.api_base = (api_base or DEFAULT_API_BASE).rstrip("/") + "/"
        self.client = AsyncWebClient(
            token=bot_token,
            base_url=self.api_base,
            retry_handlers=[
                AsyncConnectionErrorRetryHandler(max_retry_count=2),
                AsyncRateLimitErrorRetryHandler(max_retry_count=5),
            ],
        )
        self.users = Users(self.client)
        self.permalinks = Permalinks(self.client)
        self.dm_channels = DmChannels(self.client)
        self.sender = ReplySender(self.client, self.dm_channels, ChannelPacer(pacing_s), MAX_MESSAGE_CHARS)
        self.app = self._build_app(signing_secret or "")
        # Only HTTP mode receives signed requests (Socket Mode needs no signing secret).
        self._verifier = SignatureVerifier(signing_secret) if signing_secret else None
        self._identity: Identity | None = None
        self._identity_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopped = asyncio.Event()
        self._socket: Any = None

    @property
    def socket_mode(self) -> bool:
        return bool(self.app_token)

    # -- bolt ---------------------------------------------------------------------------

    def _build_app(self, signing_secret: str) -> AsyncApp:
        # Bolt logs request bodies at INFO on a bad signature; message content stays out of
        # INFO logs, so its logger starts at WARNING unless configured otherwise.
        bolt_log = logging.getLogger("adapters.slack.bolt")
        if bolt_log.level == logging.NOTSET:
            bolt_log.setLevel(logging.WARNING)
        if not any(isinstance(f, _SameTokenNotice) for f in bolt_log.filters):
            bolt_log.addFilter(_SameTokenNotice())
        app = AsyncApp(
            name="mnemo",
            client=self.client,
            signing_secret=signing_secret,
            logger=bolt_log,
            process_before_response=False,
        )

        async def on_message(event: dict[str, Any]) -> None:
            self._spawn(self._intake(event), "slack-intake")

        async def on_command(ack: Callable[..., Awaitable[Any]], command: dict[str, Any]) -> None:
            await ack()  # within Slack's 3 s; the answer follows from the background task
            self._spawn(self._intake_command(command), "slack-command")

        app.event("message")(on_message)
        app.event("app_mention")(on_message)
        app.command(re.compile(r"^/"))(on_command)  # /mnemo, or whatever the workspace named it
        return app

    def routes(self) -> list[tuple[str, str, Any]]:
        if self.socket_mode:
            return []
        return [("POST", EVENTS_PATH, self._http_endpoint)]

    async def _http_endpoint(self, request: web.Request) -> web.Response:
        try:
            bolt_request = await to_bolt_request(request)
            well_formed = isinstance(bolt_request.body, dict)
        except ValueError:  # not JSON / not UTF-8
            well_formed = False
        if not well_formed:
            # Bolt would fail with a 500 on a body it cannot parse; answer 401 if it is not
            # even signed by Slack, else 400.
            body = await request.text() if request.can_read_body or request.body_exists else ""
            signed = self._verifier is not None and self._verifier.is_valid(
                body,
                request.headers.get("X-Slack-Request-Timestamp", "0"),
                request.headers.get("X-Slack-Signature", ""),
            )
            return web.json_response({"error": "malformed request"}, status=400 if signed else 401)
        if bolt_request.headers.get("x-slack-retry-num"):
            log.info("Slack redelivery (retry %s, %s)", bolt_request.headers["x-slack-retry-num"][0],
                     (bolt_request.headers.get("x-slack-retry-reason") or ["?"])[0])
        bolt_response = await self.app.async_dispatch(bolt_request)
        return await to_aiohttp_response(bolt_response)

    # -- lifecycle ----------------------------------------------------------------------

    async def identity(self) -> Identity:
        """Who the bot is (auth.test), looked up once."""
        if self._identity is not None:
            return self._identity
        async with self._identity_lock:
            if self._identity is None:
                response = await self.client.auth_test()
                self._identity = Identity(
                    bot_user_id=str(response.get("user_id") or ""),
                    team_id=str(response.get("team_id") or ""),
                    team_url=str(response.get("url") or ""),
                )
        return self._identity

    async def _check_token(self) -> Identity:
        delay = 1.0
        for _ in range(6):
            try:
                return await self.identity()
            except SlackApiError as exc:
                error = str(exc.response.get("error") or exc.response.status_code)
                if error in _AUTH_ERRORS:
                    raise FatalPlatformError(
                        f"SLACK_BOT_TOKEN was refused by Slack ({error}): use the Bot User OAuth Token "
                        "(xoxb-...) from the app's OAuth & Permissions page, reinstalling the app if needed"
                    ) from None
                log.warning("auth.test failed (%s), retrying", error)
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                log.warning("Slack Web API unreachable at %s (%s), retrying", self.api_base, type(exc).__name__)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30)
        raise FatalPlatformError(f"SLACK_API_BASE: could not reach the Slack Web API at {self.api_base}")

    async def run(self) -> None:
        me = await self._check_token()
        log.info("Slack: signed in as bot user %s (%s)", me.bot_user_id,
                 "Socket Mode" if self.socket_mode else f"HTTP mode, events at POST {EVENTS_PATH}")
        if self.socket_mode:
            await self._connect_socket()
        await self._stopped.wait()

    async def _connect_socket(self) -> None:
        from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler

        assert self.app_token is not None
        try:
            # Opening the first connection URL ourselves turns a bad app token into one clear
            # error instead of the SDK's endless reconnect loop.
            opened = await self.client.apps_connections_open(app_token=self.app_token)
        except SlackApiError as exc:
            error = str(exc.response.get("error") or exc.response.status_code)
            if error in _AUTH_ERRORS:
                raise FatalPlatformError(
                    f"SLACK_APP_TOKEN was refused by Slack ({error}): use an app-level token (xapp-...) "
                    "with the connections:write scope, and enable Socket Mode for the app"
                ) from None
            raise
        self._socket = AsyncSocketModeHandler(self.app, app_token=self.app_token, web_client=self.client)
        self._socket.client.wss_uri = opened["url"]
        await self._socket.connect_async()
        log.info("Slack: Socket Mode connected")

    async def stop(self) -> None:
        self._stopped.set()
        if self._socket is not None:
            await self._socket.close_async()
            self._socket = None
        if self._tasks:
            # Intake tasks are short (two lookups and a store); let them finish.
            _, pending = await asyncio.wait(set(self._tasks), timeout=10)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    def _spawn(self, work: Coroutine[Any, Any, None], name: str) -> None:
        async def logged() -> None:
            try:
                await work
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("Slack %s failed", name)

        task = asyncio.create_task(logged(), name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- intake -------------------------------------------------------------------------

    async def _intake(self, event: dict[str, Any]) -> None:
        said = classify(event)
        if said is None:
            return
        me = await self.identity()
        if said.event.get("user") == me.bot_user_id:
            return
        message = await self._message_for(said, me)
        await self._submit(message)

    async def _message_for(self, said: Said, me: Identity) -> Message:
        event = said.event
        ts = str(event["ts"])
        thread_ts = event.get("thread_ts")
        fallback = constructed_permalink(me.team_url, said.channel, ts, thread_ts)
        name, link = await asyncio.gather(
            self.users.name(str(event["user"]), event),
            self.permalinks.get(said.channel, ts, fallback),
        )
        return to_message(said, bot_user_id=me.bot_user_id, author_name=name, link=link,
                          fetcher=self._fetcher)

    async def _intake_command(self, form: dict[str, Any]) -> None:
        channel, user = str(form.get("channel_id") or ""), str(form.get("user_id") or "")
        if not channel or not user:
            log.warning("slash command without channel_id/user_id ignored")
            return
        is_dm = False
        if channel.startswith("D"):
            # A slash command typed in a DM between two people also has a D... channel; only
            # the DM with the bot is the user's private scope.
            try:
                is_dm = await self.dm_channels.with_user(user) == channel
            except Exception as exc:  # noqa: BLE001 - unknown: treat as a shared DM (group scope)
                log.warning("conversations.open failed: %s", type(exc).__name__)
        message = slash_message(form, is_dm=is_dm, message_id=str(form.get("trigger_id") or uuid.uuid4().hex))
        message.author_name = await self.users.name(user)
        if message.author_name == user and form.get("user_name"):
            message.author_name = str(form["user_name"])
        await self._submit(message)

    async def _submit(self, message: Message) -> None:
        """Hand the message to the core. Slack already has its 200, so a failing store is
        retried here rather than losing the message."""
        delay = 1.0
        for attempt in range(6):
            try:
                await self.core.submit(message)
                return
            except Exception as exc:  # noqa: BLE001 - retried, then logged
                if isinstance(exc, RuntimeError) and "shutting down" in str(exc):
                    return  # stored already; recovery picks it up on the next start
                log.warning("storing a Slack message failed (attempt %d): %s", attempt + 1, type(exc).__name__)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30)
        log.error("gave up storing Slack message %s", message.event_key)

    def _fetcher(self, file: dict[str, Any]) -> Callable[[], Awaitable[bytes]]:
        url = str(file.get("url_private_download") or file.get("url_private") or "")
        name = str(file.get("name") or "file")
        cap = self.core.config.max_file_bytes

        async def fetch() -> bytes:
            if not url:
                raise MediaError(f"Slack did not give me a download link for “{name}”. Your message is saved.")
            if not self._is_slack_file_host(url):
                # External files (Google Drive links and the like) carry their own URLs: the
                # bot token is never sent anywhere but Slack.
                raise MediaError(f"“{name}” is stored outside Slack, so I can't read it. Your message is saved.")
            headers = {"Authorization": f"Bearer {self.bot_token}"}
            session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120))
            async with session, session.get(url, headers=headers) as response:
                if response.status != 200:
                    raise MediaError(f"I couldn't download “{name}” from Slack (HTTP {response.status}). "
                                     "Your message is saved.")
                if response.content_type == "text/html" and not name.lower().endswith((".html", ".htm")):
                    # Slack answers a token without files:read with its sign-in page.
                    raise MediaError(f"I couldn't download “{name}”: the Slack app needs the files:read "
                                     "scope. Your message is saved.")
                data = bytearray()
                async for block in response.content.iter_chunked(64 * 1024):
                    data.extend(block)
                    if len(data) > cap:
                        break  # the core reports the size; no need to read the rest
                return bytes(data)

        return fetch

    def _is_slack_file_host(self, url: str) -> bool:
        host = (urlparse(url).hostname or "").lower()
        api_host = (urlparse(self.api_base).hostname or "").lower()
        return host == api_host or host.endswith(_SLACK_FILE_DOMAINS)

    # -- Platform -----------------------------------------------------------------------

    async def send_reply(self, message: Message, reply: Reply) -> list[str]:
        return await self.sender.send(message, reply)

    async def is_admin(self, message: Message) -> bool:
        return await self.users.is_admin(message.author_id)

    @asynccontextmanager
    async def typing(self, message: Message) -> AsyncIterator[None]:
        # Slack has no typing indicator for bot users.
        yield
