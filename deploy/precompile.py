"""Import what Mnemo loads at run time, so Python writes its bytecode now rather than on the
first start (deploy/install.sh installs with `pip --no-compile`: the rest of the dependencies'
modules are never imported, or compiled when they first are)."""

from __future__ import annotations

import importlib
import logging
import sys

logging.disable(logging.CRITICAL)  # import-time chatter (litellm) is not the install's output

MODULES = [
    "bot.cli", "bot.app", "bot.web", "bot.importer", "bot.doctor", "core.engine",
    "adapters.console", "adapters.telegram", "adapters.discord", "adapters.slack", "adapters.web",
    "litellm", "chromadb", "onnxruntime", "onnx", "onnxruntime.quantization", "tokenizers",
    "faster_whisper", "pytesseract", "PIL.Image", "secantus", "pymongo", "aiogram", "discord",
    "slack_bolt", "slack_sdk", "aiohttp", "numpy",
]

failed = []
for name in MODULES:
    try:
        importlib.import_module(name)
    except Exception as exc:  # noqa: BLE001 - an optional part missing: compiled when (if) it is first used
        failed.append(f"{name} ({type(exc).__name__})")
if failed:
    print(f"not precompiled: {', '.join(failed)}", file=sys.stderr)
