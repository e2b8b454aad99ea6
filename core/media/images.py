"""Reading images: OCR with tesseract by default, a litellm vision model when configured.

Images are opened with Pillow (PNG, JPEG, WebP, GIF; a GIF is read from its first frame).
"""

from __future__ import annotations

import base64
import io
import logging
import warnings
from typing import Any

from PIL import Image, ImageOps

from core.config import CoreConfig
from core.errors import MediaError
from core.llm import import_litellm, provider_kwargs

log = logging.getLogger(__name__)

FORMATS = {"PNG", "JPEG", "WEBP", "GIF"}
MAX_PIXELS = 50_000_000  # a 20 MB cap still admits decompression bombs; refuse them before decoding
VISION_MAX_SIDE = 2048  # larger images cost tokens without helping the description
OCR_MIN_SIDE = 1000  # tesseract reads small text far better after upscaling
OCR_MIN_CONFIDENCE = 40  # drops the noise tesseract "reads" in photos without text
OCR_TIMEOUT_S = 120

VISION_PROMPT = (
    "Describe this image in a few sentences for someone who cannot see it, so it can be remembered "
    "and searched later. If it contains any text (a note, sign, screenshot, receipt), transcribe that "
    "text exactly. Reply with the description only."
)


def _unreadable(filename: str) -> MediaError:
    return MediaError(
        f"I couldn't read “{filename}” as an image (it may be damaged, or not PNG, JPEG, WebP or GIF). "
        "Your message is saved."
    )


def load_image(data: bytes, filename: str) -> Image.Image:
    """Decode to an RGB image (first frame for animations). CPU-bound: call off the event loop."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=sorted(FORMATS))
            if image.width * image.height > MAX_PIXELS:
                raise MediaError(
                    f"“{filename}” is {image.width}×{image.height} pixels; that's more than I can read. "
                    "Your message is saved."
                )
            image.seek(0)  # animated GIF/WebP: the first frame
            image.load()
    except MediaError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise MediaError(f"“{filename}” is too large an image for me to read. Your message is saved.") from exc
    except (OSError, ValueError, SyntaxError, EOFError) as exc:  # Pillow's ways of saying "not an image"
        log.info("image decode failed: %s", type(exc).__name__)
        raise _unreadable(filename) from exc
    return flatten(image)


def flatten(image: Image.Image) -> Image.Image:
    """RGB on white: transparent pixels would otherwise turn black and hide black text."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def ocr(image: Image.Image) -> str:
    """The text tesseract reads with some confidence, line by line. Blocking (a subprocess)."""
    import pytesseract

    gray = ImageOps.grayscale(image)
    if max(gray.size) < OCR_MIN_SIDE:
        scale = OCR_MIN_SIDE / max(gray.size)
        gray = gray.resize((round(gray.width * scale), round(gray.height * scale)), Image.Resampling.LANCZOS)
    try:
        found = pytesseract.image_to_data(
            gray, lang="eng", timeout=OCR_TIMEOUT_S, output_type=pytesseract.Output.DICT
        )
    except pytesseract.TesseractNotFoundError as exc:
        log.error("tesseract is not installed (Debian: apt-get install tesseract-ocr)")
        raise MediaError("I can't read images right now (OCR is not installed). Your message is saved.") from exc
    except RuntimeError as exc:  # pytesseract's timeout
        raise MediaError("Reading that image took too long. Your message is saved.") from exc
    lines: dict[tuple[int, int, int], list[str]] = {}
    for i, word in enumerate(found["text"]):
        word = word.strip()
        if word and float(found["conf"][i]) >= OCR_MIN_CONFIDENCE:
            key = (found["block_num"][i], found["par_num"][i], found["line_num"][i])
            lines.setdefault(key, []).append(word)
    return "\n".join(" ".join(words) for words in lines.values()).strip()


def data_url(image: Image.Image, data: bytes) -> str:
    """The image as a data URL a vision model accepts: the original PNG/JPEG when it is small
    enough, otherwise (GIF, WebP, huge) a re-encoded first frame."""
    original = (image.width <= VISION_MAX_SIDE and image.height <= VISION_MAX_SIDE
                and (data.startswith((b"\x89PNG", b"\xff\xd8\xff"))))
    if original:
        mime = "image/png" if data.startswith(b"\x89PNG") else "image/jpeg"
        payload = data
    else:
        copy = image.copy()
        copy.thumbnail((VISION_MAX_SIDE, VISION_MAX_SIDE))
        buffer = io.BytesIO()
        copy.save(buffer, format="PNG", optimize=True)
        mime, payload = "image/png", buffer.getvalue()
    return f"data:{mime};base64,{base64.b64encode(payload).decode('ascii')}"


class VisionReader:
    def __init__(self, config: CoreConfig) -> None:
        self.config = config

    async def describe(self, url: str, filename: str) -> str:
        litellm = import_litellm()

        kwargs: dict[str, Any] = {
            "model": self.config.vision_model,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": VISION_PROMPT},
                        {"type": "image_url", "image_url": {"url": url}},
                    ],
                }
            ],
            "num_retries": self.config.llm_retries,
            **provider_kwargs(self.config),
        }
        try:
            response = await litellm.acompletion(**kwargs)
            text = response.choices[0].message.content or ""
        except Exception as exc:  # litellm maps every provider failure to its own types
            log.warning("vision model failed: %s", type(exc).__name__)
            raise MediaError(f"I couldn't reach the vision model for “{filename}”. Your message is saved.") from exc
        return str(text).strip()
