"""What the adapter looks up in Slack and caches: who the bot is, who people are, and where
messages live (permalinks).

A message is stored before any of these lookups: with what is already known (`known_name`, a
constructed permalink), then corrected afterwards. The lookups are bounded by a short timeout
and fall back to something sensible, so a slow Web API never holds an answer back for long.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import aiohttp
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

# Pure helpers live with the payload mapping (the history importer uses them without the SDK).
from adapters.slack.events import display_name as _display_name

log = logging.getLogger(__name__)

LOOKUP_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class Identity:
    """The bot, from auth.test."""

    bot_user_id: str
    team_id: str
    team_url: str  # e.g. https://acme.slack.com/


class Lru(OrderedDict[str, Any]):
    """A small bounded cache (oldest entries go first)."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def put(self, key: str, value: Any) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.size:
            self.popitem(last=False)


class Users:
    """users.info, cached for a few minutes: display names and workspace admin flags."""

    def __init__(self, client: AsyncWebClient, ttl_s: float = 300.0) -> None:
        self.client = client
        self.ttl_s = ttl_s
        self._cache: Lru = Lru(5000)

    async def info(self, user_id: str) -> dict[str, Any]:
        cached = self._cache.get(user_id)
        if cached is not None and time.monotonic() - cached[0] < self.ttl_s:
            return dict(cached[1])
        response = await self.client.users_info(user=user_id)
        user = dict(response.get("user") or {})
        self._cache.put(user_id, (time.monotonic(), user))
        return user

    def known_name(self, user_id: str, event: dict[str, Any] | None = None) -> tuple[str | None, bool]:
        """The author's name without a network call: (name or None, whether it is current).
        From the event's own `user_profile`, or the cache even when past its time to live."""
        profile = (event or {}).get("user_profile")
        if isinstance(profile, dict):
            found = _display_name(profile, profile)
            if found:
                return found, True
        cached = self._cache.get(user_id)
        if cached is None:
            return None, False
        found = _display_name(cached[1].get("profile") or {}, cached[1])
        return found or None, bool(found) and time.monotonic() - cached[0] < self.ttl_s

    async def name(self, user_id: str, event: dict[str, Any] | None = None) -> str:
        found, current = self.known_name(user_id, event)
        if found and current:
            return found
        try:
            user = await asyncio.wait_for(self.info(user_id), LOOKUP_TIMEOUT_S)
        except (TimeoutError, SlackApiError, OSError, aiohttp.ClientError) as exc:
            log.warning("users.info failed for a message author: %s", _reason(exc))
            return found or user_id  # a name past its time to live beats the bare id
        return _display_name(user.get("profile") or {}, user) or found or user_id

    async def is_admin(self, user_id: str) -> bool:
        """Workspace admins and owners may change channel settings."""
        try:
            user = await self.info(user_id)
        except Exception as exc:  # noqa: BLE001 - unknown means "not an admin": nothing changes
            log.warning("users.info failed for an admin check: %s", _reason(exc))
            return False
        return bool(user.get("is_admin") or user.get("is_owner") or user.get("is_primary_owner"))


class Permalinks:
    """chat.getPermalink, cached per channel/ts. Concurrent lookups of the same message (its
    `message` and `app_mention` events arrive together) share one call."""

    def __init__(self, client: AsyncWebClient) -> None:
        self.client = client
        self._cache: Lru = Lru(10_000)
        self._inflight: dict[str, asyncio.Future[str | None]] = {}

    async def get(self, channel: str, ts: str, fallback: str | None) -> str | None:
        key = f"{channel}:{ts}"
        if key in self._cache:
            return str(self._cache[key])
        pending = self._inflight.get(key)
        if pending is None:
            pending = asyncio.ensure_future(self._fetch(channel, ts))
            self._inflight[key] = pending
            pending.add_done_callback(lambda done: self._settled(key, done))
        try:
            found = await asyncio.wait_for(asyncio.shield(pending), LOOKUP_TIMEOUT_S)
        except (TimeoutError, SlackApiError, OSError, aiohttp.ClientError) as exc:
            log.warning("chat.getPermalink failed, using the constructed link: %s", _reason(exc))
            return fallback
        return found or fallback

    def _settled(self, key: str, done: asyncio.Future[str | None]) -> None:
        self._inflight.pop(key, None)
        if not done.cancelled():
            done.exception()  # retrieved here: a caller that timed out may never look at it

    async def _fetch(self, channel: str, ts: str) -> str | None:
        response = await self.client.chat_getPermalink(channel=channel, message_ts=ts)
        permalink = response.get("permalink")
        if not permalink:
            return None
        # Cached before the in-flight future resolves, so no later caller starts a second call.
        self._cache.put(f"{channel}:{ts}", str(permalink))
        return str(permalink)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, SlackApiError):
        return str(exc.response.get("error") or exc.response.status_code)
    return type(exc).__name__
