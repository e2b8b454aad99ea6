"""Server-rendered HTML: one layout, escaping everywhere, no inline script or style (the CSP
forbids both), so every page works with JavaScript off."""

from __future__ import annotations

import html
import re
from datetime import datetime
from typing import Any

from aiohttp import web

from core.web_links import WebSession

# Only Mnemo's own assets; no inline script or style, no frames, forms post only here.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",  # a login token in the address bar never leaks onward
    "Cross-Origin-Opener-Policy": "same-origin",
}


def e(value: object) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def when(moment: Any) -> str:
    if isinstance(moment, datetime):
        return f"{moment:%Y-%m-%d %H:%M} UTC"
    return e(moment)


def secure(response: web.StreamResponse, cache: bool = False) -> web.StreamResponse:
    for name, value in SECURITY_HEADERS.items():
        response.headers[name] = value
    if not cache:
        response.headers["Cache-Control"] = "no-store"
    return response


def csrf_field(session: WebSession) -> str:
    return f'<input type="hidden" name="csrf" value="{e(session.csrf)}">'


def _nav(session: WebSession | None, current: str) -> str:
    if session is None:
        return ""
    links = []
    if session.platform == "web":
        links.append(("/chat", "Chat"))
    links.append(("/me", "My data"))
    links.append(("/admin", "Channels"))
    current_mark = ' aria-current="page"'
    items = "".join(
        f'<li><a href="{href}"{current_mark if href == current else ""}>{label}</a></li>' for href, label in links
    )
    logout = (
        f'<li><form method="post" action="/logout" class="inline">{csrf_field(session)}'
        '<button type="submit" class="link">Log out</button></form></li>'
    )
    who = f'<p class="who-am-i">{e(session.name)} · {e(session.platform)}</p>'
    return f'<nav aria-label="Main"><ul>{items}{logout}</ul></nav>{who}'


def page(
    title: str, body: str, session: WebSession | None = None, current: str = "", status: int = 200,
    script: bool = False, refresh_to: str | None = None,
) -> web.Response:
    refresh = f'<meta http-equiv="refresh" content="0;url={e(refresh_to)}">' if refresh_to else ""
    js = '<script src="/static/mnemo.js" defer></script>' if script else ""
    doc = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{e(title)} · Mnemo</title>
<link rel="stylesheet" href="/static/mnemo.css">
{refresh}{js}
</head>
<body>
<a class="skip" href="#main">Skip to content</a>
<header class="top"><a class="brand" href="/">Mnemo</a>{_nav(session, current)}</header>
<main id="main" tabindex="-1">
{body}
</main>
</body>
</html>
"""
    response = web.Response(text=doc, content_type="text/html", charset="utf-8", status=status)
    secure(response)
    return response


def notice(text: str | None, error: bool = False) -> str:
    if not text:
        return ""
    role = "alert" if error else "status"
    kind = "error" if error else "ok"
    return f'<p class="notice {kind}" role="{role}">{e(text)}</p>'


def error_page(status: int, title: str, text: str, session: WebSession | None = None) -> web.Response:
    return page(title, f"<h1>{e(title)}</h1>{notice(text, error=True)}", session, status=status)


_MARKER = re.compile(r"\[(\d+)\]")
_URL = re.compile(r"\bhttps?://[^\s<>\"']+[^\s<>\"'.,;:!?)\]]")


def linkify(escaped: str) -> str:
    """Links for the web addresses in already-escaped text (a /dashboard link, say)."""
    return _URL.sub(lambda m: f'<a href="{m.group(0)}" rel="noopener noreferrer">{m.group(0)}</a>', escaped)


def cited_text(text: str, links: dict[int, str]) -> str:
    """Escape a reply, link its web addresses, and turn each `[n]` with a known source into a
    link to it."""
    escaped = linkify(e(text))

    def link(match: re.Match[str]) -> str:
        href = links.get(int(match.group(1)))
        if href is None:
            return match.group(0)
        return f'<a class="cite" href="{e(href)}" aria-label="source {match.group(1)}">[{match.group(1)}]</a>'

    return _MARKER.sub(link, escaped)
