"""Logging in with a one-time link, session cookies, CSRF checks, and what a session may see.

Every route goes through `guard`: it sets the security headers, finds the session from its
cookie (HttpOnly, SameSite=Strict), and refuses a POST without the session's CSRF token.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from adapters.web.html import error_page, page, secure
from core.web_links import SESSION_TTL, WebSession

if TYPE_CHECKING:
    from core.platform import CorePort

COOKIE = "mnemo_session"
# Link-preview fetchers (chat apps unfurl URLs) must not use up a one-time link.
_PREVIEW_AGENTS = ("telegrambot", "slackbot", "discordbot", "twitterbot", "facebookexternalhit", "whatsapp")

Page = Callable[[web.Request, WebSession], Awaitable[web.StreamResponse]]
Landing = Callable[[WebSession], Awaitable[web.Response]]
Form = Callable[[web.Request, WebSession, Any], Awaitable[web.StreamResponse]]

NOT_LOGGED_IN = (
    "You're not logged in. Open the one-time link that `mnemo web` printed, or send /dashboard to "
    "Mnemo in a DM for a new link."
)


async def session_of(core: CorePort, request: web.Request) -> WebSession | None:
    return await core.web_logins.find_session(request.cookies.get(COOKIE))


def guard_get(core: CorePort, handler: Page) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def route(request: web.Request) -> web.StreamResponse:
        session = await session_of(core, request)
        if session is None:
            return error_page(401, "Not logged in", NOT_LOGGED_IN)
        return secure(await handler(request, session))

    return route


def guard_post(core: CorePort, handler: Form) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def route(request: web.Request) -> web.StreamResponse:
        session = await session_of(core, request)
        if session is None:
            return error_page(401, "Not logged in", NOT_LOGGED_IN)
        form = await request.post()
        token = form.get("csrf")
        if not isinstance(token, str) or not hmac.compare_digest(token, session.csrf):
            return error_page(403, "Refused", "This form has expired or did not come from this page "
                              "(missing or wrong CSRF token). Nothing was changed; reload and try again.", session)
        return secure(await handler(request, session, form))

    return route


def login_route(core: CorePort, landing: Landing) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """`/login?token=…`: answers with the person's first page (chat, or their data) and moves
    the address on to it. Not a redirect: after a link opened from another site (a chat app),
    browsers send a SameSite=Strict cookie only on a navigation started by this site."""

    async def login(request: web.Request) -> web.StreamResponse:
        token = request.query.get("token", "")
        agent = request.headers.get("User-Agent", "").lower()
        if any(bot in agent for bot in _PREVIEW_AGENTS):
            return page("Log in", "<h1>Mnemo</h1><p>Open this link in your browser to log in.</p>")
        redeemed = await core.web_logins.redeem(token) if token else None
        if redeemed is None:
            return error_page(
                403, "Link not valid",
                "This login link has expired or was already used (a link works once, for 15 minutes). "
                "Send /dashboard to Mnemo for a new one.",
            )
        cookie, session = redeemed
        response = await landing(session)
        response.set_cookie(
            COOKIE, cookie, max_age=int(SESSION_TTL.total_seconds()), path="/", httponly=True, samesite="Strict",
            secure=(core.config.public_url or "").startswith("https://"),
        )
        return response

    return login


def logout_handler(core: CorePort) -> Form:
    async def logout(request: web.Request, session: WebSession, form: Any) -> web.StreamResponse:
        await core.web_logins.end_session(session)
        response = page("Logged out", "<h1>Logged out</h1><p>You can close this page.</p>")
        response.del_cookie(COOKIE, path="/")
        return response

    return logout


async def readable_scope_keys(core: CorePort, session: WebSession) -> set[str]:
    """Scopes whose messages this session may open in context: the person's own DM scope, the
    groups they administer, and groups where they have said something themselves."""
    keys = {session.dm_scope.key}
    for conversation_key in session.admin_of:
        platform, _, conversation_id = conversation_key.partition(":")
        keys.add(f"group:{platform}:{conversation_id}")
    keys.update(await core.dashboard.group_scopes_spoken_in(session.user_key))
    return keys


async def may_administer(core: CorePort, session: WebSession, conversation_key: str) -> bool:
    if conversation_key in session.admin_of or conversation_key == session.dm_conversation:
        return True
    # The local operator of `mnemo web` administers the web platform.
    return session.operator and conversation_key.startswith("web:")
