"""The Slack adapter: slack-bolt's AsyncApp in Socket Mode or HTTP mode, on the shared core.

- Socket Mode when an app token (`SLACK_APP_TOKEN`) is given, otherwise HTTP mode: events and
  slash commands arrive at `POST /slack/events` on the one aiohttp server. Bolt verifies each
  request's signature (constant-time; timestamps more than 5 minutes off -> 401) and answers
  url_verification.
- The listeners store first, then acknowledge (inbound.Intake); replies go out through
  outbound.Outbound (delivery.ReplySender). This module is the wiring and the lifecycle.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable, Coroutine
from contextlib import AbstractAsyncContextManager
from typing import Any

import aiohttp
from aiohttp import web
from slack_bolt.adapter.aiohttp import to_aiohttp_response, to_bolt_request
from slack_bolt.app.async_app import AsyncApp
from slack_sdk.errors import SlackApiError
from slack_sdk.signature import SignatureVerifier
from slack_sdk.web.async_client import AsyncWebClient

from adapters.slack.delivery import DmChannels, ReplySender
from adapters.slack.directory import Identity, Permalinks, Users
from adapters.slack.inbound import Intake
from adapters.slack.outbound import Outbound, retry_handlers
from core.errors import FatalPlatformError
from core.models import Message, PlatformLimits, Reply
from core.outbound import KeyedPacer, Limits, Stopped, retry
from core.platform import CorePort, Route
from core.streaming import LiveTarget

log = logging.getLogger(__name__)

DEFAULT_API_BASE = "https://slack.com/api/"
EVENTS_PATH = "/slack/events"
# Slack truncates message text beyond 40,000 characters (DESIGN.md "Limits").
MAX_MESSAGE_CHARS = 40_000
TOKEN_CHECKS = 6  # auth.test attempts at start-up before giving up on SLACK_API_BASE
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
    fences_sends = True  # every post goes through the pacer (or enter_fence for response_url)
    checks_posted = True  # posted parts carry metadata, read back after a crash

    def __init__(
        self,
        core: CorePort,
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
        # The SDK's retry handlers are the one retry layer of the Slack hop.
        self.client = AsyncWebClient(token=bot_token, base_url=self.api_base,
                                     retry_handlers=retry_handlers(self._note_rate_limit))
        self.users = Users(self.client)
        self.permalinks = Permalinks(self.client)
        self.dm_channels = DmChannels(self.client)
        self.sender = ReplySender(self.client, self.dm_channels, KeyedPacer(Limits(interval_s=pacing_s)),
                                  MAX_MESSAGE_CHARS, lambda: retry_handlers(self._note_rate_limit))
        self.outbound = Outbound(self.client, self.sender, self.users)
        self.intake = Intake(core, identity=self.identity, users=self.users, permalinks=self.permalinks,
                             dm_channels=self.dm_channels, bot_token=bot_token, api_base=self.api_base,
                             own=self._own, spawn=self._spawn)
        self.app = self._build_app(signing_secret or "")
        # Only HTTP mode receives signed requests (Socket Mode needs no signing secret).
        self._verifier = SignatureVerifier(signing_secret) if signing_secret else None
        self._identity: Identity | None = None
        self._identity_lock = asyncio.Lock()
        self._tasks: set[asyncio.Future[Any]] = set()
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
        # process_before_response=True: bolt runs the listener to its end before it answers the
        # HTTP request (200, or 500 if the listener raised) and before the Socket Mode handler
        # sends the envelope's ack (none on failure) — so "stored, then acknowledged" holds the
        # same way on both transports, after bolt's own signature check. Storing in our aiohttp
        # handler ahead of bolt instead would mean verifying signatures twice and would not
        # cover Socket Mode at all. The listeners are fast (one insert, no Web API calls); the
        # work after the store runs in owned tasks.
        app = AsyncApp(
            name="mnemo",
            client=self.client,
            signing_secret=signing_secret,
            logger=bolt_log,
            process_before_response=True,
        )

        async def on_message(event: dict[str, Any]) -> None:
            await self.intake.event(event)

        async def on_command(ack: Callable[..., Awaitable[Any]], command: dict[str, Any]) -> None:
            await self.intake.command(command)
            await ack()  # stored; the answer follows from the core

        app.event("message")(on_message)
        app.event("app_mention")(on_message)
        app.command(re.compile(r"^/"))(on_command)  # /mnemo, or whatever the workspace named it
        return app

    def routes(self) -> list[Route]:
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
        try:
            return await retry(self.identity, what="Slack: auth.test failed", logger=log, attempts=TOKEN_CHECKS,
                               stopping=self._stopped, transient=_worth_retrying, explain=_reason)
        except SlackApiError as exc:
            error = _reason(exc)
            if error in _AUTH_ERRORS:
                raise FatalPlatformError(
                    f"SLACK_BOT_TOKEN was refused by Slack ({error}): use the Bot User OAuth Token "
                    "(xoxb-...) from the app's OAuth & Permissions page, reinstalling the app if needed"
                ) from None
            raise FatalPlatformError(f"SLACK_API_BASE: could not reach the Slack Web API at {self.api_base}") from None
        except (TimeoutError, aiohttp.ClientError, OSError):
            raise FatalPlatformError(f"SLACK_API_BASE: could not reach the Slack Web API at {self.api_base}") from None

    async def run(self) -> None:
        try:
            me = await self._check_token()
        except Stopped:
            return
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

    async def stop_intake(self) -> None:
        self._stopped.set()
        if self._socket is not None:
            await self._socket.close_async()
            self._socket = None

    async def close(self) -> None:
        if self._tasks:
            # Stores in flight and post-store lookups are short; let them finish.
            _, pending = await asyncio.wait(set(self._tasks), timeout=10)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def stop(self) -> None:
        """Both steps for this adapter alone (tests, and a single platform)."""
        await self.stop_intake()
        await self.close()

    def _spawn(self, work: Coroutine[Any, Any, None], name: str) -> None:
        async def logged() -> None:
            try:
                await work
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("Slack %s failed", name)

        self._own(asyncio.create_task(logged(), name=name))

    def _own(self, task: asyncio.Future[Any]) -> None:
        """Keep `task` until it is done; `stop()` waits for what is left."""
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _note_rate_limit(self, seconds: float) -> None:
        self.core.note_rate_limit(self.name, seconds)

    # -- Platform (outbound.Outbound) ----------------------------------------------------

    async def send_reply(self, message: Message, reply: Reply) -> list[str]:
        return await self.outbound.send_reply(message, reply)

    async def is_admin(self, message: Message) -> bool:
        return await self.outbound.is_admin(message)

    def live_reply(self, message: Message) -> LiveTarget | None:
        return self.outbound.live_reply(message)

    def typing(self, message: Message) -> AbstractAsyncContextManager[None]:
        return self.outbound.typing(message)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, SlackApiError):
        return str(exc.response.get("error") or exc.response.status_code)
    return type(exc).__name__


def _worth_retrying(exc: BaseException) -> bool:
    """At start-up: the network, or any Web API error but a refused token."""
    if isinstance(exc, SlackApiError):
        return _reason(exc) not in _AUTH_ERRORS
    return isinstance(exc, (TimeoutError, aiohttp.ClientError, OSError))
