"""The media entry point the pipeline calls: `await MediaReader(config).read(attachment, data)`.

Voice/audio -> transcript (local faster-whisper, or a litellm transcription model); image ->
OCR text (tesseract), or a description from a litellm vision model. Decoding, transcription and
OCR are CPU-heavy: they run on a small executor of their own, `media_concurrency` jobs at a
time, so the event loop (and every other chat) keeps flowing while a long note is transcribed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

from core.config import CoreConfig
from core.errors import MediaError
from core.media import audio, images
from core.media.formats import family_of
from core.media.speech import LocalSpeech, RemoteSpeech, local_model_path
from core.models import Attachment

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass
class MediaText:
    kind: str  # "voice" | "audio" | "image" | "file": how a footnote labels the source
    text: str


class MediaReader:
    def __init__(self, config: CoreConfig) -> None:
        self.config = config
        workers = max(1, config.media_concurrency)
        self._slots = asyncio.Semaphore(workers)
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mnemo-media")
        model_path = local_model_path(config.stt_model)
        # Split the cores between concurrent jobs rather than oversubscribing them.
        threads = max(1, (os.cpu_count() or 1) // workers)
        self._local = LocalSpeech(model_path, cpu_threads=threads) if model_path else None
        self._remote = RemoteSpeech(config) if model_path is None else None
        self._vision = images.VisionReader(config) if config.vision_model else None

    async def fetch_and_read(self, attachment: Attachment, max_bytes: int) -> MediaText:
        """Download and read an attachment. What the platform declared (size, length) is
        checked before anything is downloaded."""
        if attachment.size is not None and attachment.size > max_bytes:
            raise _too_big(attachment.filename, attachment.size, max_bytes)
        if attachment.duration_s is not None and attachment.duration_s > self.config.max_audio_seconds + 1:
            raise audio.too_long(attachment.filename, attachment.duration_s, self.config.max_audio_seconds)
        try:
            data = await attachment.read()
        except MediaError:
            raise
        except Exception as exc:  # any transport failure: the sender gets one clear line
            log.warning("attachment download failed: %s", type(exc).__name__)
            raise MediaError(f"I couldn't download “{attachment.filename}”. Your message is saved.") from exc
        if len(data) > max_bytes:
            raise _too_big(attachment.filename, len(data), max_bytes)
        return await self.read(attachment, data)

    async def read(self, attachment: Attachment, data: bytes) -> MediaText:
        """Read one attachment. Raises MediaError (phrased for the sender) when it can't."""
        if not data:
            raise MediaError(f"“{attachment.filename}” is empty (0 bytes). Your message is saved.")
        family = family_of(attachment, data)
        started = time.monotonic()
        if family == "audio":
            result = await self._read_audio(attachment, data)
        else:
            result = await self._read_image(attachment, data)
        log.info("read %s attachment (%d bytes) in %.2fs", result.kind, len(data), time.monotonic() - started)
        return result

    async def _read_audio(self, attachment: Attachment, data: bytes) -> MediaText:
        kind = "audio" if attachment.kind == "audio" else "voice"
        name = attachment.filename
        decoded = await self._cpu(audio.decode, data, name, self.config.max_audio_seconds)
        if self._local is not None:
            text = await self._cpu(self._local.transcribe, decoded.samples)
        else:
            assert self._remote is not None
            text = await self._remote.transcribe(data, name)
        if not text:
            raise MediaError(f"I couldn't hear any words in “{name}”. Your message is saved.")
        return MediaText(kind, text)

    async def _read_image(self, attachment: Attachment, data: bytes) -> MediaText:
        name = attachment.filename
        image = await self._cpu(images.load_image, data, name)
        if self._vision is not None:
            url = await self._cpu(images.data_url, image, data)
            text = await self._vision.describe(url, name)
            if not text:
                raise MediaError(f"The vision model said nothing about “{name}”. Your message is saved.")
        else:
            text = await self._cpu(images.ocr, image)
            if not text:
                raise MediaError(
                    f"I can read the text in images, and I found none in “{name}”. Your message is saved."
                )
        return MediaText("image", text)

    async def _cpu(self, fn: Callable[..., T], *args: object) -> T:
        """Run blocking work on the media executor, at most `media_concurrency` at once."""
        async with self._slots:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._executor, fn, *args)

    async def close(self) -> None:
        """Wait for running jobs, drop queued ones, release the speech model."""
        await asyncio.to_thread(self._executor.shutdown, wait=True, cancel_futures=True)
        if self._local is not None:
            self._local.close()


def _too_big(filename: str, size: int, cap: int) -> MediaError:
    return MediaError(
        f"“{filename}” is {size / 1_048_576:.1f} MB; I can read files up to {cap / 1_048_576:.0f} MB. "
        "Your message is saved."
    )
