"""Which reader an attachment goes to: audio or image.

Adapters say what they know (`Attachment.kind`, a MIME type); a platform's "file" can still be
a voice recording or a photo sent as a document, so the bytes' signature has the last word.
"""

from __future__ import annotations

from typing import Literal

from core.errors import MediaError
from core.models import Attachment

Family = Literal["audio", "image"]

SUPPORTED = "voice notes and audio (OGG/Opus, MP3, M4A/AAC, WAV, WebM) and images (PNG, JPEG, WebP, GIF)"


def sniff(data: bytes) -> Family | None:
    """The family a file's leading bytes announce, or None when they announce neither."""
    head = data[:16]
    if head.startswith((b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF8")):
        return "image"
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "image"
    if head.startswith(b"RIFF") and head[8:12] == b"WAVE":
        return "audio"
    if head.startswith((b"OggS", b"ID3", b"fLaC", b"\x1a\x45\xdf\xa3")):  # Ogg, MP3 tag, FLAC, Matroska/WebM
        return "audio"
    if head[4:8] == b"ftyp":  # MP4 family: M4A/AAC voice memos (and videos, whose audio we read)
        return "audio"
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0:  # bare MPEG/AAC ADTS frame sync
        return "audio"
    return None


def family_of(attachment: Attachment, data: bytes) -> Family:
    """Route by the bytes first, then by what the platform declared."""
    found = sniff(data)
    if found is not None:
        return found
    if attachment.kind in ("voice", "audio"):
        return "audio"  # e.g. raw formats without a signature; the decoder decides
    if attachment.kind == "image":
        return "image"  # an unknown image format: the image loader gives the clear refusal
    mime = (attachment.mime_type or "").lower()
    if mime.startswith("audio/"):
        return "audio"
    if mime.startswith("image/"):
        return "image"
    raise MediaError(
        f"I can read {SUPPORTED}; “{attachment.filename}” is none of those. Your message is saved."
    )
