"""Turn a `Reply` into platform-sized chunks of text.

Adapters pass their escaping and link syntax; the core owns where to split: paragraph, then
sentence, then word boundaries, and footnotes are never cut in half.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from core.models import Footnote, Reply

Escape = Callable[[str], str]
LinkFormat = Callable[[str, str], str]  # (url, label) -> rendered link

_KIND_LABEL = {"voice": "voice note", "audio": "audio", "image": "image", "file": "file"}


def plain_escape(text: str) -> str:
    return text


def plain_link(url: str, label: str) -> str:
    return f"{label} {url}"


def shorten(text: str, limit: int = 80) -> str:
    flat = " ".join(text.split())
    if len(flat) <= limit:
        return flat
    cut = flat[: limit - 1].rsplit(" ", 1)[0] if " " in flat[: limit - 1] else flat[: limit - 1]
    return cut + "…"


def footnote_line(note: Footnote, escape: Escape = plain_escape, link: LinkFormat = plain_link) -> str:
    """`[n] Author (voice note), 2026-03-01: "quote" <link>`; a learned fact:
    `[n] Fact "fact" (earlier), learned from Author, 2026-03-01: "quote" <link>`."""
    kind = _KIND_LABEL.get(note.source_kind)
    who = f"{note.author} ({kind})" if kind else note.author
    said = f"{who}, {note.date:%Y-%m-%d}: \u201c{shorten(note.quote)}\u201d"
    if note.fact is not None:
        earlier = " (earlier)" if note.earlier else ""
        said = f"Fact \u201c{shorten(note.fact)}\u201d{earlier}, learned from {said}"
    head = escape(f"[{note.number}] {said}")
    if note.link:
        return f"{head} {link(note.link, 'link')}"
    return head


def _pieces(text: str, limit: int, escape: Escape) -> list[str]:
    """Split raw text into pieces whose escaped length fits `limit`, at the coarsest boundary
    that works. Each piece keeps its trailing separator so joining restores the text."""

    def fits(s: str) -> bool:
        return len(escape(s)) <= limit

    if fits(text):
        return [text]
    for splitter in (
        lambda s: re.split(r"(?<=\n\n)", s),
        lambda s: re.split(r"(?<=\n)", s),
        lambda s: re.split(r"(?<=[.!?…]\s)", s),
        lambda s: re.split(r"(?<=\s)", s),
    ):
        parts = [p for p in splitter(text) if p]
        if len(parts) > 1:
            out: list[str] = []
            for part in parts:
                out.extend(_pieces(part, limit, escape))
            return out
    # One unbreakable run: cut by characters.
    out = []
    buf = ""
    for ch in text:
        if not fits(buf + ch):
            out.append(buf)
            buf = ""
        buf += ch
    if buf:
        out.append(buf)
    return out


def _pack(pieces: list[str], limit: int, escape: Escape) -> list[str]:
    chunks: list[str] = []
    buf = ""
    for piece in pieces:
        if buf and len(escape(buf + piece)) > limit:
            chunks.append(buf)
            buf = ""
        buf += piece
    if buf:
        chunks.append(buf)
    return chunks


def render_chunks(
    reply: Reply,
    limit: int,
    escape: Escape = plain_escape,
    link: LinkFormat = plain_link,
) -> list[str]:
    """Render `reply` as a list of messages, each at most `limit` characters once escaped.

    The body is split on paragraph/sentence/word boundaries; footnote lines follow the body
    and are kept whole (a footnote that alone exceeds the limit is shortened, not split)."""
    body = reply.text.strip() or ("…" if not reply.footnotes else "")
    chunks = [escape(c).strip() for c in _pack(_pieces(body, limit, escape), limit, escape)]
    chunks = [c for c in chunks if c]
    lines = [footnote_line(n, escape, link) for n in reply.footnotes]
    for line in lines:
        if len(line) > limit:
            line = line[: limit - 1] + "…"
        if chunks and len(chunks[-1]) + 2 + len(line) <= limit:
            sep = "\n\n" if chunks[-1] and not _is_footnote_block(chunks[-1], lines) else "\n"
            chunks[-1] = f"{chunks[-1]}{sep}{line}"
        else:
            chunks.append(line)
    return chunks or ["…"]


def _is_footnote_block(chunk: str, lines: list[str]) -> bool:
    last = chunk.rsplit("\n", 1)[-1]
    return last in lines


def render_plain(reply: Reply) -> str:
    """The whole reply as one string (console)."""
    return "\n".join(render_chunks(reply, limit=1_000_000))
