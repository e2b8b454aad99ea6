"""One-time dashboard links and the web sessions they open (DESIGN.md "Web chat and dashboard").

Links and sessions live in MongoDB, stored only as SHA-256 hashes of their tokens, so every
worker agrees on them and a database dump cannot be replayed as a login. A link works once
(redeemed by one atomic update) and expires after 15 minutes. It carries who it is for (one
person on one platform) and which channels that person administers, as checked by the platform
(`Platform.is_admin`) when the link was made; a session can reach nothing else.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from core.models import Message, Reply, Scope, utcnow
from core.platform import Platform

if TYPE_CHECKING:
    from core.services import Services as Core  # stages get the services, never the facade

LINK_TTL = timedelta(minutes=15)
SESSION_TTL = timedelta(hours=8)
# Admin-ness is asked of the platform when /dashboard is sent in a group; a link made elsewhere
# trusts that answer for a week (a revoked admin loses the page within a week, or at once by
# sending /dashboard in the group again).
ADMIN_RECORD_TTL = timedelta(days=7)
NOT_CONFIGURED = (
    "The dashboard isn't configured on this server (MNEMO_PUBLIC_URL is not set). "
    "/memory, /forget and /export work here in chat."
)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class WebSession:
    """Who a browser is: one person on one platform, and the channels they administer."""

    id_hash: str
    platform: str
    author_id: str
    name: str
    csrf: str
    operator: bool = False  # the local operator of `mnemo web`: admin of the web platform
    admin_of: tuple[str, ...] = field(default_factory=tuple)  # groups, as conversation keys
    dm_conversation: str | None = None  # the DM the link was asked for in: theirs to administer

    @property
    def user_key(self) -> str:
        return f"{self.platform}:{self.author_id}"

    @property
    def dm_scope(self) -> Scope:
        return Scope("dm", self.platform, self.author_id)


class WebLogins:
    """The dashboard's logins over the store: what the web pages (through CorePort) and
    /dashboard use. Bound to the services; holds no state of its own."""

    def __init__(self, core: Core) -> None:
        self.core = core

    async def create_link(
        self, platform: str, author_id: str, name: str, *, operator: bool = False,
        admin_of: list[str] | None = None, dm_conversation: str | None = None, base_url: str | None = None,
    ) -> str:
        """A one-time login URL for this person (stored hashed)."""
        token = secrets.token_urlsafe(32)
        now = utcnow()
        await self.core.store.web.insert_link({
            "_id": token_hash(token), "platform": platform, "author_id": author_id, "name": name,
            "operator": operator, "admin_of": sorted(set(admin_of or [])), "dm_conversation": dm_conversation,
            "created_at": now,
            "expires_at": now + LINK_TTL, "used_at": None,
        })
        base = (base_url or self.core.config.public_url or "").rstrip("/")
        return f"{base}/login?token={token}"

    async def redeem(self, token: str) -> tuple[str, WebSession] | None:
        """Use a link: returns (session cookie value, session), or None when the link is unknown,
        expired or already used. One atomic update, so two workers never both accept it."""
        link = await self.core.store.web.redeem_link(token_hash(token))
        if link is None:
            return None
        now = utcnow()
        cookie = secrets.token_urlsafe(32)
        doc = {
            "_id": token_hash(cookie), "platform": link["platform"], "author_id": link["author_id"],
            "name": link["name"], "operator": bool(link.get("operator")), "admin_of": link.get("admin_of") or [],
            "dm_conversation": link.get("dm_conversation"),
            "csrf": secrets.token_urlsafe(24), "created_at": now, "expires_at": now + SESSION_TTL,
        }
        await self.core.store.web.insert_session(doc)
        return cookie, _session(doc)

    async def find_session(self, cookie: str | None) -> WebSession | None:
        if not cookie:
            return None
        doc = await self.core.store.web.live_session(token_hash(cookie))
        return _session(doc) if doc else None

    async def end_session(self, session: WebSession) -> None:
        await self.core.store.web.end_session(session.id_hash)

    async def ensure_indexes(self) -> None:
        await self.core.store.web.ensure_indexes()


def _session(doc: dict[str, Any]) -> WebSession:
    return WebSession(
        id_hash=doc["_id"], platform=doc["platform"], author_id=doc["author_id"], name=doc["name"],
        csrf=doc["csrf"], operator=bool(doc.get("operator")), admin_of=tuple(doc.get("admin_of") or ()),
        dm_conversation=doc.get("dm_conversation"),
    )


async def admin_channels(core: Core, message: Message, platform: Platform) -> list[str]:
    """Record whether the author administers this group (asked of the platform now), and
    return every channel they were last seen administering: the link's admin rights."""
    web = core.store.web
    if not message.is_dm:
        if await platform.is_admin(message):
            await web.record_admin(message.user_key, message.conversation_key, message.conversation_title)
        else:
            await web.drop_admin(message.user_key, message.conversation_key)
    return await web.administered_since(message.user_key, utcnow() - ADMIN_RECORD_TTL)


async def dashboard_reply(core: Core, message: Message, platform: Platform) -> Reply:
    """`/dashboard`: a one-time link to the asker's own page, always privately."""
    if not core.config.public_url:
        return Reply(NOT_CONFIGURED, private=True)
    operator = message.platform == "web" and await platform.is_admin(message)
    admin_of = await admin_channels(core, message, platform)
    # Their DM is theirs to administer (as /settings in a DM already allows).
    url = await WebLogins(core).create_link(
        message.platform, message.author_id, message.author_name, operator=operator, admin_of=admin_of,
        dm_conversation=message.conversation_key if message.is_dm else None,
    )
    minutes = int(LINK_TTL.total_seconds() // 60)
    return Reply(
        f"Your dashboard: {url}\nThe link works once, for {minutes} minutes, and only for you: "
        "don't share it.",
        private=True,
    )
