"""Media figures on this machine: speech-to-text real-time factor, OCR latency per image, and
peak memory with the models loaded. Runs the same code path the bot uses (`MediaReader`).

    python bench/media.py [--seconds 60] [--runs 3] [--images 5]

Figures go to stdout; progress to stderr. Needs espeak-ng and ffmpeg (to make the speech) and
tesseract-ocr; nothing from the network.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from PIL import Image, ImageDraw, ImageFont

from core.config import CoreConfig
from core.media import MediaReader
from core.models import Attachment

# Varied sentences, never repeated: Whisper treats repeated text as a decoding failure and
# falls back to slow temperature sampling, which would misstate the real-time factor.
PARAGRAPH = (
    "My sister's birthday is on March third and she likes orchids. The plumber comes on Friday at nine. "
    "Remember that the spare key is under the blue flowerpot by the back door. We agreed to split the "
    "rent for the cabin in June, and Sam will bring the tent. The dentist moved my appointment to the "
    "twelfth of April at half past two. Our team retrospective is every second Thursday, right after lunch. "
    "Grandma's lasagna recipe needs fresh basil, ricotta and a lot of patience. The car is due for an oil "
    "change at forty five thousand miles. Lena prefers window seats and never drinks coffee after noon. "
    "The library books are due back on the twentieth, and one of them is already late. We parked on level "
    "three of the airport garage, row F, next to the elevators. The new office wifi network is called "
    "Harbor, and the guest password changes every Monday. Tom is allergic to peanuts, so please check the "
    "labels on anything you bring to the party. The quarterly report goes to the board on the last Friday "
    "of the month. My running goal this year is a half marathon in under two hours."
)
LINES = [
    "Shopping list for Saturday",
    "eggs, flour, two lemons, basil",
    "Call the dentist before noon",
    "Wifi password: tangerine42",
    "Train leaves platform 4 at 7:15",
]
FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"


def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def current_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def make_speech(directory: Path, seconds: float) -> Path:
    text_path = directory / "speech.txt"
    text_path.write_text(PARAGRAPH)
    wav, ogg = directory / "speech.wav", directory / "speech.ogg"
    subprocess.run(["espeak-ng", "-w", str(wav), "-f", str(text_path)], check=True)
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-i", str(wav), "-t", str(seconds), "-ac", "1",
                    "-c:a", "libopus", "-b:a", "24k", str(ogg)], check=True)
    return ogg


def make_images(directory: Path, count: int) -> list[Path]:
    font = ImageFont.truetype(FONT, 36)
    paths = []
    for i in range(count):
        image = Image.new("RGB", (1280, 720), "white")
        draw = ImageDraw.Draw(image)
        for row, line in enumerate(LINES[i % len(LINES):] + LINES[: i % len(LINES)]):
            draw.text((60, 60 + row * 110), line, fill="black", font=font)
        path = directory / f"note{i}.{'jpeg' if i % 2 else 'png'}"
        image.save(path, quality=85)
        paths.append(path)
    return paths


def tesseract_peak_mb(image: Path) -> float | None:
    """Peak RSS of one tesseract run, measured by GNU time (a fork of this big process would
    report this process's size instead)."""
    if not Path("/usr/bin/time").exists():
        return None
    done = subprocess.run(["/usr/bin/time", "-f", "%M", "tesseract", str(image), "stdout"],
                          check=False, capture_output=True, text=True)
    try:
        return int(done.stderr.strip().splitlines()[-1]) / 1024
    except (ValueError, IndexError):
        return None


async def run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        progress(f"making {args.seconds:.0f}s of speech with espeak-ng...")
        ogg = make_speech(directory, args.seconds)
        images = make_images(directory, args.images)
        reader = MediaReader(CoreConfig(data_dir=directory))
        baseline = current_rss_mb()
        data = ogg.read_bytes()
        voice = Attachment("voice", ogg.name)

        progress("first voice note (loads the model)...")
        started = time.perf_counter()
        first = await reader.read(voice, data)
        cold = time.perf_counter() - started
        from core.media.audio import decode

        duration = decode(data, ogg.name, 3600).seconds
        timings, cpu = [], []
        for i in range(args.runs):
            progress(f"transcription run {i + 1}/{args.runs}...")
            started, cpu_started = time.perf_counter(), time.process_time()
            await reader.read(voice, data)
            timings.append(time.perf_counter() - started)
            cpu.append(time.process_time() - cpu_started)

        ocr_times = []
        for i, path in enumerate(images):
            progress(f"OCR image {i + 1}/{len(images)}...")
            started = time.perf_counter()
            read = await reader.read(Attachment("image", path.name), path.read_bytes())
            ocr_times.append(time.perf_counter() - started)
        await reader.close()
        tesseract_mb = tesseract_peak_mb(images[0])

    best = min(timings)
    load = os.getloadavg()[0]
    print(f"machine: {os.cpu_count()} CPUs, load average {load:.2f} during the run")
    print(f"speech: {duration:.1f}s OGG/Opus, faster-whisper tiny.en int8 on CPU, beam 5")
    print(f"  first note incl. model load: {cold:.2f}s")
    print(f"  warm: median {statistics.median(timings):.2f}s, best {best:.2f}s "
          f"-> real-time factor {statistics.median(timings) / duration:.3f} (median), {best / duration:.3f} (best)")
    print(f"  CPU time: median {statistics.median(cpu):.2f} CPU-s -> {statistics.median(cpu) / duration:.3f} CPU-s "
          "per audio second (independent of other load on the machine)")
    print(f"  sample: {first.text[:90]!r}")
    print(f"OCR: {len(ocr_times)} images 1280x720 (PNG/JPEG), tesseract 5 via pytesseract")
    print(f"  per image: median {statistics.median(ocr_times) * 1000:.0f} ms, "
          f"max {max(ocr_times) * 1000:.0f} ms")
    print(f"  sample: {read.text.splitlines()[0] if read.text else ''!r}")
    print(f"memory: RSS before models {baseline:.0f} MB, peak {peak_rss_mb():.0f} MB with the speech model loaded "
          "(in this process)")
    if tesseract_mb is not None:
        print(f"  plus tesseract, a short-lived child process per image: peak {tesseract_mb:.0f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the voice note (at most ~65)")
    parser.add_argument("--runs", type=int, default=3, help="warm transcription runs")
    parser.add_argument("--images", type=int, default=5, help="images to OCR")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
