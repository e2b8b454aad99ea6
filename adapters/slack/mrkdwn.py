"""Slack's text formats, both ways.

Outgoing: Slack treats `&`, `<` and `>` as control characters in message text, so everything we
send is escaped (which also stops a model's output from pinging `<!channel>`), and links use
`<url|label>`. Incoming: mentions, channel references and links arrive in the same angle-bracket
syntax; we turn them into readable text before storing, except user mentions, which the core
recognises (and removes from questions) as they are.
"""

from __future__ import annotations

import re

# Slack documents that only these three need escaping in message text.
_ESCAPES = (("&", "&amp;"), ("<", "&lt;"), (">", "&gt;"))

_ENTITY = re.compile(r"<([^<>]+)>")


def escape(text: str) -> str:
    for raw, escaped in _ESCAPES:
        text = text.replace(raw, escaped)
    return text


def unescape(text: str) -> str:
    for raw, escaped in reversed(_ESCAPES):
        text = text.replace(escaped, raw)
    return text


def link(url: str, label: str) -> str:
    # A `|` or `>` in the URL would end the link early; percent-encode them.
    safe_url = escape(url.replace("|", "%7C"))
    return f"<{safe_url}|{escape(label)}>"


def _entity_text(match: re.Match[str]) -> str:
    body = match.group(1)
    target, _, label = body.partition("|")
    if target.startswith("@"):  # user mention: kept whole, the core strips bot mentions
        return f"<{target}>"
    if target.startswith("#"):  # channel reference
        return f"#{unescape(label)}" if label else target
    if target.startswith("!"):  # <!here>, <!channel>, <!subteam^ID|@team>, <!date^...|fallback>
        if label:
            return unescape(label)
        return "@" + target[1:].split("^", 1)[0]
    if label:  # a link with a label
        return f"{unescape(label)} ({unescape(target)})"
    return unescape(target)


def to_plain(text: str) -> str:
    """Slack message text -> the plain text we remember and answer (each part unescaped once)."""
    parts: list[str] = []
    position = 0
    for match in _ENTITY.finditer(text):
        parts.append(unescape(text[position : match.start()]))
        parts.append(_entity_text(match))
        position = match.end()
    parts.append(unescape(text[position:]))
    return "".join(parts)
