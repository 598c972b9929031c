#!/usr/bin/env bash
# Creates .venv (if missing) and installs mmsearch with the given extras (default: dev).
# torch is installed with plain pip: its pinned wheels are what the lock expects.
# A stamp keyed on pyproject.toml and the extras skips the install when nothing changed,
# so a second run reinstalls nothing (and prints none of pip's or setuptools' chatter).
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-dev}"
python="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
. .venv/bin/activate
stamp=.venv/.mmsearch-install-stamp
key="$(sha256sum pyproject.toml | cut -d' ' -f1) ${extras}"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$key" ] && (cd / && python -c "import mmsearch") 2>/dev/null; then
  exit 0
fi
# pip's notes about index locations absent on this machine are noise, not errors; so are
# setuptools' deprecation warnings while it builds the editable install (PYTHONWARNINGS
# reaches the build backend's process too).
pip_install() {
  PYTHONWARNINGS=ignore python -m pip install -q "$@" 2> >(grep -v "^WARNING: Location 'file:" >&2)
}
pip_install --upgrade pip >/dev/null
pip_install "torch==2.14.1" "torchvision==0.29.1"
pip_install -e ".[${extras}]"
echo "$key" > "$stamp"
