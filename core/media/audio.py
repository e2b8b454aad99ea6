"""Decoding any audio container to 16 kHz mono samples, with the duration cap enforced.

PyAV (bundled with faster-whisper) carries its own FFmpeg libraries, so OGG/Opus, MP3,
M4A/AAC, WAV and WebM decode without a system ffmpeg. The cap is checked twice: against the
container's declared duration before any decoding, and while decoding, so a file that lies
about its length (or has none) still cannot make us decode hours of audio into memory.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass

import av
import numpy as np

from core.errors import MediaError

log = logging.getLogger(__name__)

SAMPLE_RATE = 16_000  # what Whisper expects


@dataclass
class Audio:
    samples: np.ndarray  # float32 mono at SAMPLE_RATE
    seconds: float


def too_long(filename: str, seconds: float, max_seconds: float) -> MediaError:
    return MediaError(
        f"“{filename}” is {_minutes(seconds)} long; I can transcribe up to {_minutes(max_seconds)}. "
        "Your message is saved."
    )


def _minutes(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} seconds"
    return f"{seconds / 60:.1f} minutes".replace(".0 ", " ")


def _unreadable(filename: str) -> MediaError:
    return MediaError(
        f"I couldn't read “{filename}” as audio (it may be damaged or in a format I don't know; I read "
        "OGG/Opus, MP3, M4A/AAC, WAV and WebM). Your message is saved."
    )


def decode(data: bytes, filename: str, max_seconds: float) -> Audio:
    """Decode `data` to float32 mono samples. Raises MediaError for unreadable, silent-empty or
    too-long audio. CPU-bound: call it off the event loop."""
    chunks: list[np.ndarray] = []
    total = 0
    limit = int(max_seconds * SAMPLE_RATE) + SAMPLE_RATE  # one second of slack for rounding in containers
    try:
        with av.open(io.BytesIO(data), mode="r", metadata_errors="ignore") as container:
            if not container.streams.audio:
                raise _unreadable(filename)
            declared = container.duration / av.time_base if container.duration else None
            if declared is not None and declared > max_seconds + 1:
                raise too_long(filename, declared, max_seconds)
            resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
            for frame in _frames(container):
                for out in resampler.resample(frame):
                    total += _append(chunks, out)
                if total > limit:
                    raise too_long(filename, declared or total / SAMPLE_RATE, max_seconds)
            for out in resampler.resample(None):  # flush
                total += _append(chunks, out)
    except MediaError:
        raise
    except (av.FFmpegError, ValueError, IndexError, OSError) as exc:
        log.info("audio decode failed: %s", type(exc).__name__)
        raise _unreadable(filename) from exc
    if total == 0:
        raise _unreadable(filename)
    if total > limit:
        raise too_long(filename, total / SAMPLE_RATE, max_seconds)
    samples = np.concatenate(chunks).astype(np.float32) / 32768.0
    return Audio(samples, total / SAMPLE_RATE)


def _frames(container: av.container.InputContainer):  # type: ignore[no-untyped-def]
    """Audio frames of the first audio stream; a few damaged packets in an otherwise good file
    are skipped (as faster-whisper does), a file that is all damage decodes to nothing."""
    frames = container.decode(audio=0)
    while True:
        try:
            frame = next(frames)
        except StopIteration:
            return
        except av.InvalidDataError:
            continue
        frame.pts = None  # resampler must not reject gaps in timestamps
        yield frame


def _append(chunks: list[np.ndarray], frame: av.AudioFrame) -> int:
    array = frame.to_ndarray().reshape(-1)
    chunks.append(array)
    return int(array.shape[0])
