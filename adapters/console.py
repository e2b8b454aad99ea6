"""The console platform (`mnemo chat`): stdin lines in, replies on stdout.

Each line is one message from the user; `/attach PATH [caption]` sends a file. stdout carries
replies only, so the session can be scripted from a pipe.
"""

from __future__ import annotations

import asyncio
import mimetypes
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import TextIO

from core.engine import Core
from core.kinds import visible
from core.models import Attachment, AttachmentKind, Message, PlatformLimits, Reply
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
        core: Core,
        user: str,
        channel: str | None = None,
        admin: bool = False,
        out: TextIO | None = None,
        exports_dir: Path | None = None,
    ) -> None:
        self.core = core
        self.user = user
        self.channel = channel
        self.admin = admin
        self.out = out or sys.stdout
        self.exports_dir = exports_dir or core.config.data_dir / "exports"

    # -- Platform -----------------------------------------------------------------------

    async def send_reply(self, message: Message, reply: Reply) -> list[str]:
        text = render_plain(reply)
        if reply.file is not None:
            self.exports_dir.mkdir(parents=True, exist_ok=True)
            path = (self.exports_dir / reply.file.filename).resolve()
            path.write_bytes(reply.file.data)
            text = f"{text}\nWritten to {path}"
        if reply.private and not message.is_dm:
            text = f"(only you can see this) {text}"
        self.out.write(text.rstrip("\n") + "\n")
        self.out.flush()
        return [uuid.uuid4().hex]

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
        if text.startswith("/attach"):
            parts = text.split(maxsplit=2)
            if len(parts) < 2:
                self.out.write("Usage: /attach PATH [caption]\n")
                self.out.flush()
                return None
            path = Path(parts[1]).expanduser()
            caption = parts[2] if len(parts) > 2 else ""
            if not path.is_file():
                self.out.write(f"No such file: {path}\n")
                self.out.flush()
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
            conversation_id=f"dm-{self.user}" if is_dm else self.channel or "",
            message_id=uuid.uuid4().hex,
            author_id=self.user,
            author_name=self.user,
            text=text,
            is_dm=is_dm,
            mentions_bot=BOT_HANDLE in text.lower(),
            attachments=attachments,
            conversation_title=self.channel,
        )

    async def run(self, stdin: TextIO | None = None) -> None:
        """Read lines until end of input; each is handled fully before the next is read."""
        source = stdin or sys.stdin
        loop = asyncio.get_running_loop()
        while True:
            line = await loop.run_in_executor(None, source.readline)
            if line == "":
                return
            message = self.to_message(line)
            if message is None:
                continue
            await self.core.handle(message)
