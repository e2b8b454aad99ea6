"""The web platform: chat with Mnemo in a browser, and everyone's dashboard, served on the
one HTTP server. As a `Platform` it is a DM with Mnemo whose replies the chat page reads back
from the `replies` collection (so a reply delivered by any worker, or after a crash, shows)."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from aiohttp import web

from adapters.web import admin, chat, people
from adapters.web.auth import guard_get, guard_post, login_route, logout_handler, session_of
from adapters.web.html import error_page, page, secure
from core.models import Message, PlatformLimits, Reply
from core.platform import CorePort
from core.web_links import WebSession

log = logging.getLogger(__name__)

STATIC = Path(__file__).with_name("static")
_ASSETS = {"mnemo.css": "text/css", "mnemo.js": "text/javascript"}


class WebAdapter:
    name = "web"
    limits = PlatformLimits(max_message_chars=100_000)

    def __init__(self, core: CorePort) -> None:
        self.core = core
        self.errors = admin.RecentErrors()
        self._stopped = asyncio.Event()
        logging.getLogger().addHandler(self.errors)

    # -- Platform -----------------------------------------------------------------------

    async def send_reply(self, message: Message, reply: Reply) -> list[str]:
        # The core stores every reply it sends; the chat page renders them from there.
        return [uuid.uuid4().hex]

    async def is_admin(self, message: Message) -> bool:
        return bool(message.reply_context.get("operator"))

    @asynccontextmanager
    async def typing(self, message: Message) -> AsyncIterator[None]:
        yield  # the page shows "Mnemo is thinking…" while the form is being answered

    # -- lifecycle (core.platform.Adapter) -----------------------------------------------

    async def run(self) -> None:
        await self.ensure_indexes()
        await self._stopped.wait()

    async def stop_intake(self) -> None:
        self._stopped.set()

    async def close(self) -> None:
        logging.getLogger().removeHandler(self.errors)

    async def stop(self) -> None:
        await self.stop_intake()
        await self.close()

    async def ensure_indexes(self) -> None:
        await self.core.web_logins.ensure_indexes()

    # -- HTTP ---------------------------------------------------------------------------

    def routes(self) -> list[tuple[str, str, Any]]:
        core = self.core
        return [
            ("GET", "/", self._home),
            ("GET", "/login", login_route(core, self._landing)),
            ("POST", "/logout", guard_post(core, logout_handler(core))),
            ("GET", "/static/{name}", self._static),
            ("GET", "/chat", guard_get(core, self._chat)),
            ("POST", "/chat", guard_post(core, self._chat_post)),
            ("GET", "/message/{memory_id}", guard_get(core, self._message)),
            ("GET", "/me", guard_get(core, self._me)),
            ("GET", "/me/export", guard_get(core, self._export)),
            ("POST", "/me/forget", guard_post(core, self._forget)),
            ("POST", "/me/forget-all", guard_post(core, self._forget_all)),
            ("POST", "/me/optout", guard_post(core, self._optout)),
            ("GET", "/admin", guard_get(core, self._admin)),
            ("POST", "/admin/settings", guard_post(core, self._admin_post)),
        ]

    async def _landing(self, session: WebSession) -> web.Response:
        if session.platform == "web":
            return await chat.chat_page(self.core, session, refresh_to="/chat")
        return await people.people_page(self.core, session, {}, refresh_to="/me")

    async def _home(self, request: web.Request) -> web.StreamResponse:
        session = await session_of(self.core, request)
        if session is None:
            return page("Welcome", "<h1>Mnemo</h1><p>Log in with the one-time link that <code>mnemo web</code> "
                        "printed, or send /dashboard to Mnemo in a DM to get a link to your own page.</p>")
        return _see_other("/chat" if session.platform == "web" else "/me")

    async def _static(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name not in _ASSETS:
            return error_page(404, "Not found", "No such file.")
        response = web.Response(body=(STATIC / name).read_bytes(), content_type=_ASSETS[name], charset="utf-8")
        response.headers["Cache-Control"] = "max-age=300"
        return secure(response, cache=True)

    async def _chat(self, request: web.Request, session: WebSession) -> web.StreamResponse:
        if session.platform != "web":
            return error_page(403, "Chat is for the web platform",
                              f"You're logged in from {session.platform}; talk to Mnemo there. "
                              "Your data is on the My data page.", session)
        return await chat.chat_page(self.core, session)

    async def _chat_post(self, request: web.Request, session: WebSession, form: Any) -> web.StreamResponse:
        if session.platform != "web":
            return error_page(403, "Chat is for the web platform", "Talk to Mnemo on your platform.", session)
        text = str(form.get("text", ""))
        problem = await chat.send_message(self.core, session, text)
        if problem:
            return await chat.chat_page(self.core, session, error=problem, draft=text)
        return _see_other("/chat#composer")

    async def _message(self, request: web.Request, session: WebSession) -> web.StreamResponse:
        return await chat.message_page(self.core, session, request.match_info["memory_id"])

    async def _me(self, request: web.Request, session: WebSession) -> web.StreamResponse:
        return await people.people_page(self.core, session, dict(request.query))

    def _platform(self, session: WebSession) -> Any:
        return self.core.platforms.get(session.platform, self)

    async def _export(self, request: web.Request, session: WebSession) -> web.StreamResponse:
        reply = await people.run_command(self.core, self._platform(session), session, "export")
        if reply.file is None:
            return error_page(500, "Export failed", reply.text, session)
        return web.Response(
            body=reply.file.data, content_type=reply.file.mime_type,
            headers={"Content-Disposition": f'attachment; filename="{reply.file.filename}"'},
        )

    async def _forget(self, request: web.Request, session: WebSession, form: Any) -> web.StreamResponse:
        text, failed = await people.forget(self.core, self._platform(session), session, form)
        return await people.people_page(self.core, session, {}, text, failed)

    async def _forget_all(self, request: web.Request, session: WebSession, form: Any) -> web.StreamResponse:
        if form.get("confirm") != "yes":
            return await people.people_page(self.core, session, {}, "Tick the box to confirm first.", True)
        reply = await people.run_command(self.core, self._platform(session), session, "forget", "all")
        return await people.people_page(self.core, session, {}, reply.text, reply.is_error)

    async def _optout(self, request: web.Request, session: WebSession, form: Any) -> web.StreamResponse:
        choice = form.get("choice")
        if choice not in ("optout", "optin"):
            return await people.people_page(self.core, session, {}, "Choose opt out or opt in.", True)
        reply = await people.run_command(self.core, self._platform(session), session, str(choice))
        return await people.people_page(self.core, session, {}, reply.text, reply.is_error)

    async def _admin(self, request: web.Request, session: WebSession) -> web.StreamResponse:
        return await admin.admin_page(self.core, session, self.errors)

    async def _admin_post(self, request: web.Request, session: WebSession, form: Any) -> web.StreamResponse:
        status, text, failed = await admin.save_settings(self.core, session, form)
        if status == 403:
            return error_page(403, "Refused", text, session)
        response = await admin.admin_page(self.core, session, self.errors, text, failed,
                                          rejected=form if failed else None)
        response.set_status(status)
        return response


def _see_other(location: str) -> web.StreamResponse:
    return secure(web.Response(status=303, headers={"Location": location}))
