"""The media entry point the pipeline calls. (Speech and image backends are filled in by the
media work; until then every attachment is refused with a clear message.)"""

from __future__ import annotations

from dataclasses import dataclass

from core.config import CoreConfig
from core.errors import MediaError
from core.models import Attachment


@dataclass
class MediaText:
    kind: str  # "voice" | "image" | "file": how a footnote labels the source
    text: str


class MediaReader:
    def __init__(self, config: CoreConfig) -> None:
        self.config = config

    async def read(self, attachment: Attachment, data: bytes) -> MediaText:
        raise MediaError(f"I can't read {attachment.kind} attachments yet; your message is saved.")

    async def close(self) -> None:
        return None
