"""Slack events and slash commands -> `core.Message`, stored before bolt acknowledges them.

Store first, then acknowledge: the listeners `core.submit` the message (a MongoDB insert,
dedupe on slack:channel:ts — so a retried event, or the `message` + `app_mention` pair for
one message, is processed once) before Slack gets its 200 / Socket Mode ack. Nothing on that
path waits for the Web API: the author's name comes from the cache (or is the user id) and
the link is the constructed permalink; the real ones are looked up after the store and
written over the stored message (see `Intake._refine`). Payload mapping: events.py.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import aiohttp

from adapters.slack.delivery import DmChannels
from adapters.slack.directory import Identity, Permalinks, Users
from adapters.slack.events import classify, constructed_permalink, slash_message, to_message
from core.errors import MediaError
from core.models import Message
from core.platform import CorePort

log = logging.getLogger(__name__)

# Where Slack serves url_private downloads (commercial and GovSlack); also the API base's host.
_SLACK_FILE_DOMAINS = (".slack.com", ".slack-gov.com", ".slack-edge.com")
# How long a listener waits for the store before giving up on the request: Slack wants its
# answer within 3 s. A store that is merely slow still completes; Slack's redelivery of the
# refused request is then a duplicate, dropped by the unique event key.
STORE_BUDGET_S = 2.0


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


class Intake:
    """The listeners' work: map, store within the budget, refine in the background."""

    def __init__(
        self,
        core: CorePort,
        *,
        identity: Callable[[], Awaitable[Identity]],
        users: Users,
        permalinks: Permalinks,
        dm_channels: DmChannels,
        bot_token: str,
        api_base: str,
        own: Callable[[asyncio.Future[Any]], None],
        spawn: Callable[[Coroutine[Any, Any, None], str], None],
    ) -> None:
        self.core = core
        self.identity = identity
        self.users = users
        self.permalinks = permalinks
        self.dm_channels = dm_channels
        self.bot_token = bot_token
        self.api_base = api_base
        self.own = own  # owned tasks: the adapter waits for them when it closes
        self.spawn = spawn

    async def event(self, event: dict[str, Any]) -> None:
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

    async def command(self, form: dict[str, Any]) -> None:
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
        self.own(submitted)
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
            self.spawn(self._refine(message, refine, submitted), "slack-refine")
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
