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
# pip's notes about index locations absent on this machine are noise, not errors.
pip_install() { python -m pip install -q "$@" 2> >(grep -v "^WARNING: Location 'file:" >&2); }
pip_install --upgrade pip >/dev/null
pip_install "torch==2.14.1" "torchvision==0.29.1"
pip_install -e ".[${extras}]"
