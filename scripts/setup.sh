#!/usr/bin/env bash
# Creates .venv (if missing) and installs mmsearch with the given extras (default: dev).
# torch is installed with plain pip: its pinned wheels are what the lock expects.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-dev}"
python="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip >/dev/null
python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
python -m pip install -q -e ".[${extras}]"
