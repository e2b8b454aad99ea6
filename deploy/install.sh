#!/usr/bin/env bash
# Install Mnemo into ./.venv on a fresh Debian/Ubuntu machine.
#   bash deploy/install.sh         the app (console chat, all platforms, embedded stores)
#   bash deploy/install.sh --dev   plus the test tools and what the tests use (espeak-ng, fonts, chromium)
# System packages come from apt (as root, or through sudo); the CPU build of PyTorch is pinned
# first (torch==2.13.0) so pip never pulls the multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."

dev=0
[ "${1:-}" = "--dev" ] && dev=1
python=${PYTHON:-python3}

log() { printf '[install] %s\n' "$*" >&2; }

packages=(tesseract-ocr tesseract-ocr-eng ffmpeg)
[ "$dev" = 1 ] && packages+=(espeak-ng fonts-dejavu-core docker-compose)  # tests: speech, images, compose check
[ "$dev" = 1 ] && packages+=(chromium chromium-driver)  # tests: the web pages in a real headless browser
if ! "$python" -c 'import ensurepip, venv' >/dev/null 2>&1; then
  packages+=(python3-venv)
fi
missing=()
for pkg in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then apt=(apt-get); elif command -v sudo >/dev/null; then apt=(sudo apt-get); else apt=(); fi
  if [ "${#apt[@]}" -gt 0 ] && command -v apt-get >/dev/null; then
    log "installing system packages: ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive "${apt[@]}" update -qq
    DEBIAN_FRONTEND=noninteractive "${apt[@]}" install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    log "warning: cannot install ${missing[*]} (need root or sudo with apt-get); voice/OCR may not work"
  fi
fi

"$python" - <<'PY'
import sys
if sys.version_info < (3, 11):
    sys.exit(f"Mnemo needs Python >= 3.11, found {sys.version.split()[0]}")
PY

if [ ! -x .venv/bin/python ]; then
  log "creating .venv"
  "$python" -m venv .venv
fi
pip=(.venv/bin/python -m pip --disable-pip-version-check -q)
if ! .venv/bin/python -c 'import torch' >/dev/null 2>&1; then
  log "installing PyTorch (CPU build)"
  "${pip[@]}" install torch==2.13.0
fi
extras="embedded"
[ "$dev" = 1 ] && extras="embedded,dev"
log "installing mnemo-bot[$extras] and its dependencies"
"${pip[@]}" install -e ".[$extras]"
log "building the local embedding model (int8 ONNX, once)"
.venv/bin/python -m core.memory.minilm_onnx
log "done: .venv/bin/mnemo is ready"
