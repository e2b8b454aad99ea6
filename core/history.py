"""What every chat-history export parser shares: the parsed result and the one-line error.

The parsers themselves (adapters/<platform>/history.py) are pure functions from export files
to `core.Message`s, mapped exactly as a live message of that platform would be (same event
key, conversation and scope), so an imported message and the same message arriving live are
one message. They read and check every file before anything is written: a malformed export
is refused whole, never half-imported.
"""

from __future__ import annotations

import json
import mimetypes
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.models import Attachment, AttachmentKind, Message


class ExportError(Exception):
    """A file the importer refuses, phrased as one line: the file, where, and what is wrong."""

    def __init__(self, file: str, where: str, problem: str) -> None:
        self.file, self.where, self.problem = file, where, problem
        super().__init__(f"{file}: {where}: {problem}" if where else f"{file}: {problem}")


@dataclass
class History:
    """An export, parsed: its messages in order, and what was left out (by reason)."""

    messages: list[Message] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)  # reason -> how many messages
    missing_media: list[str] = field(default_factory=list)  # media the export names but lacks
    workspace_url: str | None = None  # Slack: the team URL, when the export reveals it

    def extend(self, other: History) -> None:
        self.messages.extend(other.messages)
        self.skipped.update(other.skipped)
        self.missing_media.extend(other.missing_media)
        self.workspace_url = self.workspace_url or other.workspace_url


def parse_json(data: bytes | str, file: str) -> Any:
    """json.loads with the failure as an ExportError naming the line and column."""
    try:
        return json.loads(data)
    except json.JSONDecodeError as exc:
        truncated = exc.pos >= len(exc.doc.rstrip()) or exc.msg.startswith("Unterminated string")
        problem = f"{exc.msg} (the file ends early: truncated?)" if truncated else exc.msg
        raise ExportError(file, f"line {exc.lineno}, column {exc.colno}", f"not valid JSON: {problem}") from None
    except UnicodeDecodeError as exc:
        raise ExportError(file, f"byte {exc.start}", "not UTF-8 text") from None


def read_json(path: Path, shown: str | None = None) -> Any:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ExportError(shown or str(path), "", f"cannot be read ({exc.strerror or exc})") from None
    return parse_json(data, shown or str(path))


def field_of(obj: Any, key: str, kinds: type | tuple[type, ...], file: str, where: str) -> Any:
    """obj[key], which must be of `kinds`; otherwise the ExportError saying so."""
    if not isinstance(obj, dict):
        raise ExportError(file, where, f"expected an object, found {type(obj).__name__}")
    if key not in obj:
        raise ExportError(file, where, f"no '{key}'")
    value = obj[key]
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in _as_tuple(kinds)):
        raise ExportError(file, f"{where}.{key}" if where else key, f"expected {_names(kinds)}, "
                          f"found {type(value).__name__}")
    return value


def _as_tuple(kinds: type | tuple[type, ...]) -> tuple[type, ...]:
    return kinds if isinstance(kinds, tuple) else (kinds,)


def _names(kinds: type | tuple[type, ...]) -> str:
    names = {str: "text", int: "a number", float: "a number", list: "a list", dict: "an object", bool: "true/false"}
    return " or ".join(dict.fromkeys(names.get(k, k.__name__) for k in _as_tuple(kinds)))


def media_kind(filename: str, mime: str | None) -> AttachmentKind:
    mime = mime or mimetypes.guess_type(filename)[0] or ""
    if mime.startswith("image/"):
        return "image"
    if mime.startswith("audio/"):
        return "audio"
    return "file"


def file_attachment(path: Path, kind: AttachmentKind, mime: str | None) -> Attachment:
    """An attachment read from a file of the export, only when the core asks for it."""

    async def read() -> bytes:
        import asyncio

        return await asyncio.to_thread(path.read_bytes)

    return Attachment(kind=kind, filename=path.name, mime_type=mime or mimetypes.guess_type(path.name)[0],
                      size=path.stat().st_size, fetch=read)


def local_file(root: Path, relative: str) -> Path | None:
    """A file the export references by a relative path, if it is there (and inside `root`)."""
    if not relative or relative.startswith("(") or "://" in relative:
        return None  # "(File not included. ...)", or a remote URL
    from urllib.parse import unquote

    candidate = (root / unquote(relative)).resolve()
    try:
        candidate.relative_to(root.resolve())
    except ValueError:
        return None
    return candidate if candidate.is_file() else None

