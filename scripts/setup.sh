#!/usr/bin/env bash
# Installs everything raypipe needs, from nothing, into a project-local .venv.
# Idempotent: re-running is fast unless pyproject.toml or this script changed.
#   --test  also what only the test suite needs: Debian's chromium for the web-page test
#           (installed with apt-get when /usr/bin/chromium is missing; needs root or sudo).
set -euo pipefail
cd "$(dirname "$0")/.."

with_test=0
for arg in "$@"; do
  case "$arg" in
    --test) with_test=1 ;;
    *) echo "usage: $0 [--test]" >&2; exit 2 ;;
  esac
done

PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
TORCH_PAIR="torch==2.14.1 torchvision==0.29.1"  # a matching pair, known to install here
OPENCV="opencv-contrib-python-headless==5.0.0.93"

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
stamp=".venv/.setup-$(cat pyproject.toml scripts/setup.sh | sha1sum | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  echo "setup: installing into .venv (first run takes a few minutes)" >&2
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet $TORCH_PAIR
  .venv/bin/python -m pip install --quiet -e ".[test]"
  # mediapipe requires opencv-contrib-python and grad-cam requires opencv-python-headless:
  # both own the cv2 module and overwrite each other's files. We keep exactly one owner,
  # the headless contrib build (every module either needs, no Qt/libGL on servers).
  .venv/bin/python -m pip uninstall --quiet -y opencv-python opencv-python-headless opencv-contrib-python || true
  .venv/bin/python -m pip install --quiet --no-deps --force-reinstall "$OPENCV"
  .venv/bin/python -c "import cv2, mediapipe, ray, torch, mlflow; print('setup: cv2', cv2.__version__, 'torch', torch.__version__, 'ray', ray.__version__)" >&2
  rm -f .venv/.setup-*
  touch "$stamp"
fi
# The BlazeFace model is not in mediapipe 1.x: fetch (sha256-verified) into the cache once.
.venv/bin/raypipe fetch-models >/dev/null

# The web-page test drives the real page in headless chromium. The package lists are
# refreshed only when something is to be installed, so a re-run stays offline and fast.
if [ "$with_test" = 1 ] && [ ! -x /usr/bin/chromium ]; then
  echo "setup: installing chromium (apt-get) for the web-page test" >&2
  as_root=""
  [ "$(id -u)" = 0 ] || as_root="sudo"
  $as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  [ -x /usr/bin/chromium ] || { echo "setup: apt-get installed no /usr/bin/chromium" >&2; exit 1; }
fi
