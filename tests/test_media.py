"""Voice notes and images, read for real: espeak-ng speech encoded by ffmpeg, text rendered by
Pillow, recognized by faster-whisper and tesseract (or by litellm models on the loopback server),
remembered and recalled through `mnemo chat` with footnotes that say what the source was."""

from __future__ import annotations

import asyncio
import base64
import os
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image, ImageDraw, ImageFont

from core.config import CoreConfig
from core.errors import MediaError
from core.media import MediaReader
from core.models import Attachment
from tests.conftest import run_chat
from tests.fakes.llm import FakeLLM
from tests.fakes.vision import VisionResponder

SPEECH = "my sister's birthday is on March third and she likes orchids"
LONG_SPEECH = ("The plumber comes on Friday at nine. Remember that the spare key is under the blue flowerpot by "
               "the back door. We agreed to split the rent for the cabin in June, and Sam will bring the tent.")
NOTE = "The wifi password is tangerine42"
FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"  # Debian fonts-dejavu-core
AUDIO_FORMATS = {"ogg": ["-c:a", "libopus", "-b:a", "24k"], "mp3": [], "m4a": ["-c:a", "aac"],
                 "webm": ["-c:a", "libopus"], "wav": []}
slow = pytest.mark.slow


@dataclass
class Samples:
    dir: Path

    def __getitem__(self, name: str) -> Path:
        return self.dir / name


def _ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", *args], check=True)


@pytest.fixture(scope="session")
def samples(tmp_path_factory: pytest.TempPathFactory) -> Samples:
    out = tmp_path_factory.mktemp("media")
    subprocess.run(["espeak-ng", "-w", str(out / "espeak.wav"), SPEECH], check=True)
    for ext, codec in AUDIO_FORMATS.items():
        _ffmpeg("-i", str(out / "espeak.wav"), "-ac", "1", *codec, str(out / f"speech.{ext}"))
    # ~11 s of varied speech (a looped clip would make Whisper fall back to slow sampling)
    subprocess.run(["espeak-ng", "-w", str(out / "long.wav"), LONG_SPEECH], check=True)
    _ffmpeg("-i", str(out / "long.wav"), "-c:a", "libopus", str(out / "long.ogg"))
    # 70 s of 16 kHz PCM ≈ 2.2 MB: over a 1 MB cap
    _ffmpeg("-i", str(out / "espeak.wav"), "-af", "apad=whole_dur=70", "-ar", "16000", "-ac", "1",
             str(out / "big.wav"))
    (out / "corrupt.ogg").write_bytes(b"OggS" + os.urandom(4000))  # an Ogg signature, then noise
    (out / "empty.png").write_bytes(b"")
    (out / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(500))

    note = Image.new("RGB", (900, 200), "white")
    ImageDraw.Draw(note).text((30, 70), NOTE, fill="black", font=ImageFont.truetype(FONT, 44))
    for ext in ("png", "jpeg", "webp"):
        note.save(out / f"note.{ext}")
    # animated GIF: only the first frame carries the text
    blank = Image.new("RGB", note.size, "white")
    note.save(out / "note.gif", save_all=True, append_images=[blank], duration=500, loop=0)
    return Samples(out)


def _footnote(out: str, kind: str, words: str) -> re.Match[str] | None:
    """`[n] alice (voice note), 2026-03-01: “...words...”` on a line of its own."""
    return re.search(rf"^\[\d+\] alice \({kind}\), \d{{4}}-\d{{2}}-\d{{2}}: “[^\n]*{words}", out,
                     re.MULTILINE | re.IGNORECASE)


# -- through `mnemo chat` -----------------------------------------------------------------


@slow
def test_attach_takes_a_quoted_path_with_spaces_and_says_what_it_read(
    base_env: dict[str, str], samples: Samples, tmp_path: Path
) -> None:
    spaced = tmp_path / "office wifi note.png"
    spaced.write_bytes(samples["note.png"].read_bytes())
    result = run_chat([f'/attach "{spaced}"', f"/attach {tmp_path}/office wifi note.png", "/attach"], base_env,
                      "--user", "alice")
    assert result.returncode == 0, result.stderr
    read = "Read in the image: “The wifi password is tangerine42”. I'll remember it [1]."
    assert result.stdout.count(read) == 2, result.stdout  # quoted, and unquoted when the file exists
    assert "Usage: /attach PATH [caption]" in result.stdout


def test_voice_note_and_photo_are_remembered_and_recalled_with_footnotes(
    base_env: dict[str, str], fake_llm: FakeLLM, samples: Samples
) -> None:
    env = {**base_env, **fake_llm.env(), "MNEMO_MAX_FILE_MB": "1"}
    result = run_chat(
        [
            f"/attach {samples['speech.ogg']}",
            f"/attach {samples['note.png']}",
            f"/attach {samples['corrupt.ogg']}",
            f"/attach {samples['big.wav']} listen to this",
            f"/attach {samples['empty.png']}",
            "When is my sister's birthday?",
            "What is the wifi password?",
            "/memory",
        ],
        env, "--user", "alice",
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    # bad files: a clear reply each, and the session goes on
    assert "I couldn't read “corrupt.ogg” as audio" in out
    assert re.search(r"“big\.wav” is 2\.\d MB; I can read files up to 1 MB", out), out
    assert "“empty.png” is empty (0 bytes)" in out
    # the image without a question is acknowledged with what was read, and cited as an image
    assert "Read in the image: “The wifi password is tangerine42”. I'll remember it [1]." in out
    # recall from the voice note, cited as a voice note
    assert re.search(r"From what I remember: .*March (3rd|third).*\[\d\]", out, re.IGNORECASE), out
    assert _footnote(out, "voice note", "March (3rd|third)"), out
    # recall from the photo's text, cited as an image
    assert re.search(r"From what I remember: The wifi password is tangerine42 \[\d\]", out), out
    assert _footnote(out, "image", "tangerine42"), out
    # the model saw them as labelled sources
    prompts = fake_llm.all_prompt_text()
    assert re.search(r"alice \(voice note\): my sister.{0,4} birthday", prompts, re.IGNORECASE), prompts
    assert "alice (image): The wifi password is tangerine42" in prompts
    # /memory lists what was heard and read, and the caption of the refused file is kept
    memory = out[out.index("What I remember from you"):]
    assert re.search(r"· my sister.{0,4} birthday.* March (3rd|third)", memory, re.IGNORECASE), memory
    assert "· The wifi password is tangerine42" in memory
    assert "· listen to this" in memory


@slow
def test_retrieval_only_mode_lists_voice_and_image_memories(
    base_env: dict[str, str], fake_llm: FakeLLM, samples: Samples
) -> None:
    # No chat model (retrieval-only); the loopback server only embeds, to keep this run short.
    env = {**base_env, "MNEMO_EMBEDDING_MODEL": "openai/fake-embedding", "MNEMO_LLM_API_BASE": fake_llm.api_base,
           "MNEMO_LLM_API_KEY": "sk-test"}
    result = run_chat(
        [f"/attach {samples['speech.m4a']}", f"/attach {samples['note.webp']} my router", "my sister's birthday?",
         "wifi password"],
        env, "--user", "alice",
    )
    assert result.returncode == 0, result.stderr
    assert fake_llm.chat_requests() == []
    replies = result.stdout.split("Retrieval-only")
    birthday, wifi = replies[-2], replies[-1]
    assert _footnote(birthday, "voice note", "March (3rd|third)"), result.stdout
    # a captioned photo is cited as an image, by its caption and its text
    assert _footnote(wifi, "image", "my router The wifi password is tangerine42"), result.stdout


def test_litellm_models_hear_and_see_when_configured(
    base_env: dict[str, str], fake_llm: FakeLLM, samples: Samples
) -> None:
    vision = VisionResponder(sees="a yellow sticky note that reads: the spare key is under the blue flowerpot")
    fake_llm.responder = vision
    fake_llm.transcript = "remind me that the plumber comes on Friday at nine"
    env = {
        **base_env, **fake_llm.env(),
        "MNEMO_STT_MODEL": "whisper-1",
        "MNEMO_VISION_MODEL": "openai/fake-vision",
        "MNEMO_EMBEDDING_MODEL": "openai/fake-embedding",  # no local model in this run at all
    }
    result = run_chat(
        [f"/attach {samples['speech.ogg']}", f"/attach {samples['note.gif']}",
         "when does the plumber come?", "where is the spare key?"],
        env, "--user", "alice",
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    transcriptions = [r for r in fake_llm.requests if r["_path"].endswith("audio/transcriptions")]
    assert [r["model"] for r in transcriptions] == ["whisper-1"]
    assert transcriptions[0]["file_bytes"] == samples["speech.ogg"].read_bytes()
    vision_calls = [r for r in fake_llm.chat_requests() if r["model"] == "fake-vision"]
    assert len(vision_calls) == 1
    # the GIF's first frame went out as a PNG data URL the model could decode
    assert [(s.mime_type, s.width, s.height) for s in vision.seen] == [("image/png", 900, 200)]
    assert _footnote(out, "voice note", "plumber comes on Friday"), out
    assert _footnote(out, "image", "sticky note"), out
    assert "spare key is under the blue flowerpot" in out


# -- the reader in process ------------------------------------------------------------------


def _reader(tmp_path: Path, **config: object) -> MediaReader:
    return MediaReader(CoreConfig(data_dir=tmp_path, **config))  # type: ignore[arg-type]


@slow
async def test_every_audio_format_is_transcribed(tmp_path: Path, samples: Samples) -> None:
    reader = _reader(tmp_path)
    try:
        for ext in AUDIO_FORMATS:
            got = await reader.read(Attachment("voice", f"speech.{ext}"), samples[f"speech.{ext}"].read_bytes())
            assert got.kind == "voice"
            # the whole sentence, give or take what tiny.en makes of espeak's "orchids"
            assert re.search(r"sister.*birthday.*march (3rd|third).* she likes \w", got.text, re.IGNORECASE), (
                ext, got.text)
        got = await reader.read(Attachment("audio", "speech.mp3"), samples["speech.mp3"].read_bytes())
        assert got.kind == "audio"  # an audio file, not a voice note: footnotes say "(audio)"
    finally:
        await reader.close()


@slow
async def test_every_image_format_is_read(tmp_path: Path, samples: Samples) -> None:
    reader = _reader(tmp_path)
    try:
        for ext in ("png", "jpeg", "webp", "gif"):
            got = await reader.read(Attachment("image", f"note.{ext}"), samples[f"note.{ext}"].read_bytes())
            assert (got.kind, got.text) == ("image", NOTE), ext
        # a photo sent as a generic file is still recognized by its bytes
        got = await reader.read(Attachment("file", "scan"), samples["note.png"].read_bytes())
        assert got.text == NOTE
    finally:
        await reader.close()


async def test_unreadable_and_unsupported_files_get_clear_messages(tmp_path: Path, samples: Samples) -> None:
    reader = _reader(tmp_path)
    try:
        with pytest.raises(MediaError, match=r"couldn't read “broken.png” as an image"):
            await reader.read(Attachment("image", "broken.png"), samples["broken.png"].read_bytes())
        with pytest.raises(MediaError, match=r"“report.pdf” is none of those"):
            await reader.read(Attachment("file", "report.pdf"), b"%PDF-1.7\n" + b"0" * 100)
        with pytest.raises(MediaError, match=r"is empty"):
            await reader.read(Attachment("image", "empty.png"), b"")
        blank = tmp_path / "blank.png"
        Image.new("RGB", (400, 300), "white").save(blank)
        with pytest.raises(MediaError, match=r"found none in “blank.png”"):
            await reader.read(Attachment("image", "blank.png"), blank.read_bytes())
    finally:
        await reader.close()


async def test_duration_cap_is_checked_before_transcribing(tmp_path: Path, samples: Samples) -> None:
    reader = _reader(tmp_path, max_audio_seconds=2.0)
    try:
        started = time.monotonic()
        with pytest.raises(MediaError, match=r"“speech.ogg” is [34] seconds long; I can transcribe up to 2 seconds"):
            await reader.read(Attachment("voice", "speech.ogg"), samples["speech.ogg"].read_bytes())
        with pytest.raises(MediaError, match=r"is 70 seconds long"):  # declared by the container
            await reader.read(Attachment("audio", "big.wav"), samples["big.wav"].read_bytes())
        async def must_not_download() -> bytes:
            raise AssertionError("a note whose declared length is over the cap was downloaded")

        with pytest.raises(MediaError, match=r"is 1\.5 minutes long"):  # declared by the platform
            await reader.fetch_and_read(Attachment("voice", "v.ogg", duration_s=90, fetch=must_not_download), 10**7)
        assert time.monotonic() - started < 2, "refused without loading the speech model"
    finally:
        await reader.close()


@slow
async def test_event_loop_keeps_flowing_during_a_long_transcription(tmp_path: Path, samples: Samples) -> None:
    reader = _reader(tmp_path, media_concurrency=1)
    worst_lag = 0.0
    done = asyncio.Event()

    async def ticker() -> None:
        nonlocal worst_lag
        while not done.is_set():
            before = time.monotonic()
            await asyncio.sleep(0.02)
            worst_lag = max(worst_lag, time.monotonic() - before - 0.02)

    tick = asyncio.create_task(ticker())
    try:
        started = time.monotonic()
        # two notes at once with one slot: both finish, one after the other
        long_note, short_note = await asyncio.gather(
            reader.read(Attachment("voice", "long.ogg"), samples["long.ogg"].read_bytes()),
            reader.read(Attachment("voice", "speech.ogg"), samples["speech.ogg"].read_bytes()),
        )
        elapsed = time.monotonic() - started
    finally:
        done.set()
        await tick
        await reader.close()
    assert re.search(r"plumber .* blue flower ?pot .* cabin in June", long_note.text, re.IGNORECASE), long_note.text
    assert re.search(r"sister.*march 3rd", short_note.text, re.IGNORECASE), short_note.text
    # The loop never stalled for more than a scheduling hiccup (generous: several helpers share
    # these 2 cores). Run on the loop, the model load alone would have stalled it for seconds.
    assert worst_lag < min(1.0, elapsed / 3), f"event loop blocked for {worst_lag:.2f}s of {elapsed:.1f}s"


def test_remote_vision_payload_is_a_data_url(samples: Samples) -> None:
    from core.media.images import data_url, load_image

    data = samples["note.webp"].read_bytes()
    url = data_url(load_image(data, "note.webp"), data)
    header, payload = url.split(",", 1)
    assert header == "data:image/png;base64"  # WebP re-encoded to what every vision API takes
    assert base64.b64decode(payload).startswith(b"\x89PNG")


@slow
async def test_a_model_directory_can_replace_the_bundled_model(tmp_path: Path, samples: Samples) -> None:
    from core.media.speech import bundled_model_path

    # Any CTranslate2 Whisper directory works (a multilingual one detects the language); the
    # bundled tiny.en stands in for one here, as no other model is available offline.
    reader = _reader(tmp_path, stt_model=bundled_model_path())
    try:
        got = await reader.read(Attachment("voice", "speech.wav"), samples["speech.wav"].read_bytes())
    finally:
        await reader.close()
    assert re.search(r"sister.*march 3rd", got.text, re.IGNORECASE), got.text


def test_a_missing_model_directory_stops_start_up_naming_the_variable(base_env: dict[str, str]) -> None:
    result = run_chat([], {**base_env, "MNEMO_STT_MODEL": "/nonexistent/whisper-small"})
    assert result.returncode == 2
    assert "MNEMO_STT_MODEL" in result.stderr and "model.bin" in result.stderr
