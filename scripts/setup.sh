#!/usr/bin/env bash
# Installs everything raypipe needs, from nothing, into a project-local .venv.
# Idempotent: re-running is fast unless pyproject.toml or this script changed.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
TORCH_PAIR="torch==2.14.1 torchvision==0.29.1"  # DESIGN section 9: the pair that installs here
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
