"""The Slack adapter: slack-bolt's AsyncApp in Socket Mode or HTTP mode, on the shared core.

- Socket Mode when an app token (`SLACK_APP_TOKEN`) is given, otherwise HTTP mode: events and
  slash commands arrive at `POST /slack/events` on the one aiohttp server. Bolt verifies each
  request's signature (constant-time; timestamps more than 5 minutes off -> 401) and answers
  url_verification.
- Store first, then acknowledge: listeners `core.submit` the message (a MongoDB insert, dedupe
  on slack:channel:ts — so a retried event, or the `message` + `app_mention` pair for one
  message, is processed once) before Slack gets its 200 / Socket Mode ack. Nothing on that path
  waits for the Web API: the author's name comes from the cache (or is the user id) and the link
  is the constructed permalink; the real ones are looked up after the store and written over
  the stored message (see `_refine`).
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass
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
from slack_sdk.http_retry.request import HttpRequest
from slack_sdk.http_retry.response import HttpResponse
from slack_sdk.http_retry.state import RetryState
from slack_sdk.signature import SignatureVerifier
from slack_sdk.web.async_client import AsyncWebClient

from adapters.slack.delivery import DmChannels, ReplySender, retry_after
from adapters.slack.directory import Identity, Permalinks, Users
from adapters.slack.events import classify, constructed_permalink, slash_message, to_message
from adapters.slack.live import EditedAnswer
from core.engine import Core
from core.errors import FatalPlatformError, MediaError
from core.models import Message, PlatformLimits, Reply
from core.outbound import KeyedPacer, Limits
from core.streaming import LiveTarget

log = logging.getLogger(__name__)

DEFAULT_API_BASE = "https://slack.com/api/"
EVENTS_PATH = "/slack/events"
# Slack truncates message text beyond 40,000 characters (DESIGN.md "Limits").
MAX_MESSAGE_CHARS = 40_000
# Where Slack serves url_private downloads (commercial and GovSlack); also the API base's host.
_SLACK_FILE_DOMAINS = (".slack.com", ".slack-gov.com", ".slack-edge.com")
# How long a listener waits for the store before giving up on the request: Slack wants its
# answer within 3 s. A store that is merely slow still completes; Slack's redelivery of the
# refused request is then a duplicate, dropped by the unique event key.
STORE_BUDGET_S = 2.0
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


class _CountedRateLimitRetries(AsyncRateLimitErrorRetryHandler):
    """The SDK's 429 handling (sleep for Retry-After, then retry the call), with each wait
    reported to the core's metrics (mnemo_rate_limit_waits_total)."""

    def __init__(self, report: Callable[[float], None], max_retry_count: int) -> None:
        super().__init__(max_retry_count=max_retry_count)
        self.report = report

    async def prepare_for_next_attempt_async(
        self,
        *,
        state: RetryState,
        request: HttpRequest,
        response: HttpResponse | None = None,
        error: Exception | None = None,
    ) -> None:
        if response is not None:
            self.report(retry_after(response.headers))
        await super().prepare_for_next_attempt_async(state=state, request=request, response=response, error=error)


@dataclass(frozen=True)
class _Refinement:
    """What to look up for a message after it is stored."""

    name: bool = False  # the author's display name was not cached (or is past its time to live)
    dm: bool = False  # a slash command in a D... channel: is it the DM with the bot?
    permalink: bool = False  # chat.getPermalink (Enterprise Grid links differ from the constructed one)

    @property
    def needed_before_processing(self) -> bool:
        # The name is indexed with the memory and shown to the model; DM-ness decides scopes.
        return self.name or self.dm


class SlackAdapter:
    name = "slack"
    limits = PlatformLimits(max_message_chars=MAX_MESSAGE_CHARS)
    fences_sends = True  # every post goes through the pacer (or enter_fence for response_url)
    checks_posted = True  # posted parts carry metadata, read back after a crash

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
                _CountedRateLimitRetries(self._note_rate_limit, max_retry_count=5),
            ],
        )
        self.users = Users(self.client)
        self.permalinks = Permalinks(self.client)
        self.dm_channels = DmChannels(self.client)
        self.sender = ReplySender(self.client, self.dm_channels, KeyedPacer(Limits(interval_s=pacing_s)), MAX_MESSAGE_CHARS,
                                  on_rate_limit=self._note_rate_limit)
        self.app = self._build_app(signing_secret or "")
        # Only HTTP mode receives signed requests (Socket Mode needs no signing secret).
        self._verifier = SignatureVerifier(signing_secret) if signing_secret else None
        self._identity: Identity | None = None
        self._identity_lock = asyncio.Lock()
        self._tasks: set[asyncio.Future[Any]] = set()
        self._stopped = asyncio.Event()
        self._socket: Any = None
        self._status_unavailable = False

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
            await self._intake(event)

        async def on_command(ack: Callable[..., Awaitable[Any]], command: dict[str, Any]) -> None:
            await self._intake_command(command)
            await ack()  # stored; the answer follows from the core

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
            # Stores in flight and post-store lookups are short; let them finish.
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

        self._own(asyncio.create_task(logged(), name=name))

    def _own(self, task: asyncio.Future[Any]) -> None:
        """Keep `task` until it is done; `stop()` waits for what is left."""
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _note_rate_limit(self, seconds: float) -> None:
        self.core.note_rate_limit(self.name, seconds)

    # -- intake -------------------------------------------------------------------------

    async def _intake(self, event: dict[str, Any]) -> None:
        """A `message`/`app_mention` event: stored before this returns (and bolt acks)."""
        said = classify(event)
        if said is None:
            return
        me = await self.identity()  # auth.test, called once when run() starts: no call here
        author = str(said.event["user"])
        if author == me.bot_user_id:
            return
        ts = str(said.event["ts"])
        name, current = self.users.known_name(author, said.event)
        message = to_message(
            said, bot_user_id=me.bot_user_id, author_name=name or author,
            link=constructed_permalink(me.team_url, said.channel, ts, said.event.get("thread_ts")),
            fetcher=self._fetcher,
        )
        # An edit only replaces the stored text; name and link were settled when it was new.
        refine = _Refinement() if said.edited else _Refinement(name=not current, permalink=True)
        await self._store(message, refine)

    async def _intake_command(self, form: dict[str, Any]) -> None:
        """A slash command: stored before this returns (and the listener acks)."""
        channel, user = str(form.get("channel_id") or ""), str(form.get("user_id") or "")
        if not channel or not user:
            log.warning("slash command without channel_id/user_id ignored")
            return
        # A slash command typed in a DM between two people also has a D... channel; only the
        # DM with the bot is the user's private scope. Unknown yet: a shared DM (group scope)
        # until the lookup after the store says otherwise.
        known_dm = self.dm_channels.known(user)
        message = slash_message(form, is_dm=known_dm == channel,
                                message_id=str(form.get("trigger_id") or uuid.uuid4().hex))
        name, current = self.users.known_name(user)
        if name:
            message.author_name = name
        await self._store(message, _Refinement(name=not current, dm=channel.startswith("D") and known_dm is None))

    async def _store(self, message: Message, refine: _Refinement) -> None:
        """`core.submit` within STORE_BUDGET_S, then the lookups in `refine` in the background.

        Raises when the message could not be stored in time: bolt then answers 500 (HTTP) or
        sends no ack (Socket Mode), and Slack delivers the event again."""
        submitted = asyncio.ensure_future(self.core.submit(message))
        self._own(submitted)
        if refine.needed_before_processing:
            # The core processes a conversation's messages one at a time, as jobs of its runner
            # in submission order. Queued now, ahead of this message's own job, the lookup
            # finishes before the message is indexed and answered under the author's name.
            # (A message that overtakes an earlier-queued later one is processed first and is
            # indexed under the fallback name; the stored name is still corrected.)
            try:
                self.core.run_in_conversation(message.conversation_key, lambda: self._refine(message, refine, submitted))
            except RuntimeError:
                pass  # shutting down: stored with what is known
        elif refine.permalink:
            self._spawn(self._refine(message, refine, submitted), "slack-refine")
        try:
            # Shielded: a store that outlasts the budget still completes (the task is owned).
            await asyncio.wait_for(asyncio.shield(submitted), STORE_BUDGET_S)
        except Exception as exc:
            log.warning("could not store Slack message %s in time (%s); Slack will deliver it again",
                        message.event_key, type(exc).__name__)
            raise

    async def _refine(self, message: Message, refine: _Refinement, submitted: asyncio.Future[Any]) -> None:
        """After the store: look up the author's name, DM-ness and permalink, and write what
        changed over the stored message (and the in-memory one the core is about to process)."""
        try:
            if await asyncio.shield(submitted) is None:
                return  # a redelivery (already stored and refined), an edit, or shutting down
        except Exception:  # noqa: BLE001 - not stored: Slack redelivers it, refined then
            return
        channel, user = message.conversation_id, message.author_id

        async def name() -> str | None:
            found = await self.users.name(user) if refine.name else user
            return found if found != user else None  # the id is the fallback already stored

        async def is_dm() -> bool:
            if not refine.dm:
                return message.is_dm
            try:
                return await self.dm_channels.with_user(user) == channel
            except Exception as exc:  # noqa: BLE001 - unknown: stays a shared DM (group scope)
                log.warning("conversations.open failed: %s", type(exc).__name__)
                return False

        async def permalink() -> str | None:
            if not refine.permalink:
                return None
            return await self.permalinks.get(channel, message.message_id, None)

        found_name, dm, link = await asyncio.gather(name(), is_dm(), permalink())
        fields: dict[str, Any] = {}
        if found_name and found_name != message.author_name:
            message.author_name = fields["author_name"] = found_name
        if dm and not message.is_dm:
            message.is_dm = fields["is_dm"] = True
            fields["scope"] = message.scope.key
        if link and link != message.link:
            message.link = fields["link"] = link
        if fields:
            await self.core.amend_message(message.event_key, fields)

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

    def live_reply(self, message: Message) -> LiveTarget | None:
        if message.reply_context.get("slash") or message.is_command:
            return None  # slash commands answer through their own paths, sent whole
        return EditedAnswer(self.sender, message)

    @asynccontextmanager
    async def typing(self, message: Message) -> AsyncIterator[None]:
        """Slack has no typing indicator for bots; in an assistant thread (a DM with an app
        that has the Agents & Assistants feature) its status line says Mnemo is thinking."""
        thread = message.thread_id or message.message_id
        if not message.is_dm or self._status_unavailable or message.reply_context.get("slash"):
            yield
            return
        shown = await self._set_status(message.conversation_id, thread, "is thinking…")
        try:
            yield
        finally:
            if shown:
                await self._set_status(message.conversation_id, thread, "")

    async def _set_status(self, channel: str, thread: str, status: str) -> bool:
        try:
            await self.client.assistant_threads_setStatus(channel_id=channel, thread_ts=thread, status=status)
            return True
        except SlackApiError as exc:
            # Not an assistant app (or not such a thread): stop asking, say so once.
            self._status_unavailable = True
            log.info("Slack: no assistant status (%s); answering without it", exc.response.get("error"))
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            log.debug("Slack: assistant status failed: %s", type(exc).__name__)
        return False
