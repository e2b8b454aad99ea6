"""The console platform (`mnemo chat`): stdin lines in, replies on stdout.

Each line is one message from the user; `/attach PATH [caption]` sends a file (PATH may be
quoted, shell-style). From a pipe, stdout carries replies only, so the session can be
scripted; in a terminal (adapters/console_terminal.py) replies are set off by a `mnemo>`
prefix under a prompt with line editing.
"""

from __future__ import annotations

import asyncio
import io
import mimetypes
import os
import shlex
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import TextIO

from core.kinds import visible
from core.models import Attachment, AttachmentKind, Message, PlatformLimits, Reply
from core.platform import CorePort
from core.render import render_plain

_AUDIO = {".ogg", ".oga", ".opus", ".mp3", ".m4a", ".aac", ".wav", ".webm", ".flac"}
_IMAGE = {".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff"}
BOT_HANDLE = "@mnemo"


def attachment_kind(path: Path) -> AttachmentKind:
    suffix = path.suffix.lower()
    if suffix in _AUDIO:
        return "voice"
    if suffix in _IMAGE:
        return "image"
    return "file"


class ConsoleAdapter:
    name = "console"
    limits = PlatformLimits(max_message_chars=1_000_000)

    def __init__(
        self,
        core: CorePort,
        user: str,
        channel: str | None = None,
        admin: bool = False,
        out: TextIO | None = None,
        exports_dir: Path | None = None,
        reply_prefix: str = "",
    ) -> None:
        self.core = core
        self.user = user
        self.channel = channel
        self.admin = admin
        self.out = out or sys.stdout
        self.exports_dir = exports_dir or core.config.data_dir / "exports"
        self.reply_prefix = reply_prefix  # the terminal's "mnemo> " (continuation lines indented)

    def say(self, text: str) -> None:
        """One reply or notice: with the terminal's prefix and a blank line after it."""
        text = text.rstrip("\n")
        if self.reply_prefix:
            indent = "\n" + " " * len(self.reply_prefix)
            text = self.reply_prefix + indent.join(text.split("\n")) + "\n"
        self.out.write(text + "\n")
        self.out.flush()

    @property
    def conversation_id(self) -> str:
        return f"dm-{self.user}" if self.channel is None else self.channel

    @property
    def conversation_key(self) -> str:
        return f"{self.name}:{self.conversation_id}"

    # -- Platform -----------------------------------------------------------------------

    async def send_reply(self, message: Message, reply: Reply) -> list[str]:
        text = render_plain(reply)
        if reply.file is not None:
            path = await asyncio.to_thread(self._write_private_file, reply.file.filename, reply.file.data)
            text = f"{text}\nWritten to {path}"
        if reply.private and not message.is_dm:
            text = f"(only you can see this) {text}"
        self.say(text)
        return [uuid.uuid4().hex]

    def _write_private_file(self, filename: str, data: bytes) -> Path:
        """An export holds someone's memories: created owner-only (0600) in an owner-only folder."""
        self.exports_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = (self.exports_dir / Path(filename).name).resolve()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as file:
            os.fchmod(file.fileno(), 0o600)  # also when it existed with wider permissions
            file.write(data)
        return path

    async def is_admin(self, message: Message) -> bool:
        return self.admin

    @asynccontextmanager
    async def typing(self, message: Message) -> AsyncIterator[None]:
        yield

    # -- input --------------------------------------------------------------------------

    def to_message(self, line: str) -> Message | None:
        text = line.rstrip("\r\n")
        if not visible(text):
            return None  # a blank line: nothing said, nothing to answer
        attachments: list[Attachment] = []
        if text == "/attach" or text.startswith("/attach "):
            path, caption = attach_arguments(text[len("/attach"):])
            if path is None:
                self.say('Usage: /attach PATH [caption]  (quote a PATH with spaces: /attach "my note.ogg")')
                return None
            if not path.is_file():
                self.say(f"No such file: {path}")
                return None
            attachments.append(
                Attachment(
                    kind=attachment_kind(path),
                    filename=path.name,
                    mime_type=mimetypes.guess_type(path.name)[0],
                    size=path.stat().st_size,
                    fetch=partial(asyncio.to_thread, path.read_bytes),
                )
            )
            text = caption
        is_dm = self.channel is None
        return Message(
            platform="console",
            conversation_id=self.conversation_id,
            message_id=uuid.uuid4().hex,
            author_id=self.user,
            author_name=self.user,
            text=text,
            is_dm=is_dm,
            mentions_bot=BOT_HANDLE in text.lower(),
            attachments=attachments,
            conversation_title=self.channel,
        )

    async def handle_line(self, line: str) -> None:
        """One input line, handled fully (stored, answered, reply printed)."""
        message = self.to_message(line)
        if message is not None:
            await self.core.handle(message)

    async def run(self, stdin: TextIO | None = None) -> None:
        """Read lines until end of input; each is handled fully before the next is read.
        First, lines an earlier `mnemo chat` stored but never finished (it was killed) are
        answered, in their place in the conversation."""
        await self.core.recover_stale(self.conversation_key)
        source = stdin or sys.stdin
        loop = asyncio.get_running_loop()
        while True:
            line = await loop.run_in_executor(None, source.readline)
            if line == "":
                return
            await self.handle_line(line)


def attach_arguments(rest: str) -> tuple[Path | None, str]:
    """`/attach`'s PATH and caption. PATH is one shell-style word ("my note.ogg", my\\ note.ogg);
    an unquoted path with spaces is found too when a prefix of the line names a file. The
    caption is the rest of the line as typed (quotes and apostrophes kept)."""
    rest = rest.strip()
    if not rest:
        return None, ""
    words = rest.split(" ")
    for cut in range(len(words), 1, -1):  # unquoted path with spaces: the longest existing prefix
        candidate = Path(" ".join(words[:cut])).expanduser()
        if " " in candidate.name and candidate.is_file():
            return candidate, " ".join(words[cut:]).strip()
    stream = io.StringIO(rest)
    lexer = shlex.shlex(stream, posix=True)
    lexer.whitespace_split = True
    lexer.commenters = ""
    try:
        path = lexer.get_token()
    except ValueError:  # an unclosed quote: take the first word as it is
        path = words[0]
        return Path(path).expanduser(), rest[len(path):].strip()
    caption = stream.read().strip()  # what the lexer has not read: the rest, quotes and all
    return (Path(path).expanduser(), caption) if path else (None, "")
