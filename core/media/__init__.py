"""Reading attachments: voice/audio -> transcript, image -> description or OCR text."""

from core.media.reader import MediaReader, MediaText

__all__ = ["MediaReader", "MediaText"]
