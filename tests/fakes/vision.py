"""Vision behaviour for the loopback model server (tests/fakes/llm.py).

`VisionResponder` plugs into `FakeLLM.responder`: a chat request that carries an image (an
OpenAI `image_url` part holding a data URL) is answered like a vision model would, after
really decoding the image, so a test can check the picture itself reached the server. Every
other request falls through to the grounded text answers.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from tests.fakes.llm import grounded_answer


@dataclass
class SeenImage:
    mime_type: str
    width: int
    height: int
    format: str


@dataclass
class VisionResponder:
    """What the "model" says it sees; `seen` lists every image it was shown."""

    sees: str = "a handwritten note"
    seen: list[SeenImage] = field(default_factory=list)

    def __call__(self, messages: list[dict[str, Any]]) -> str:
        urls = [
            part["image_url"]["url"]
            for message in messages
            if isinstance(message.get("content"), list)
            for part in message["content"]
            if isinstance(part, dict) and part.get("type") == "image_url"
        ]
        if not urls:
            return grounded_answer(messages)
        header, payload = urls[-1].split(",", 1)
        image = Image.open(io.BytesIO(base64.b64decode(payload)))  # fails loudly if it isn't one
        self.seen.append(SeenImage(header[5:].split(";")[0], image.width, image.height, str(image.format)))
        return f"A photo, {image.width}x{image.height} pixels, of {self.sees}."
