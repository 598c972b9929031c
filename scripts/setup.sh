#!/usr/bin/env bash
# Creates .venv (if missing) and installs mmsearch with the given extras (default: dev).
# demo.sh asks for "onnx" (what the main job runs on: the library, the CLI and ONNX
# Runtime); test.sh for "dev" (every extra plus the test tools), which covers the rest.
# torch is installed with plain pip: its pinned wheels are what the lock expects.
# A stamp keyed on pyproject.toml and the extras skips the install when nothing changed,
# so a second run reinstalls nothing (and prints none of pip's or setuptools' chatter).
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-dev}"
python="${PYTHON:-python3}"
started=$SECONDS
step() { printf '==> [%s/3] %s (%ss)\n' "$1" "$2" "$((SECONDS - started))" >&2; }
if [ ! -x .venv/bin/python ]; then
  step 1 "creating .venv"
  "$python" -m venv .venv
fi
. .venv/bin/activate
stamp=.venv/.mmsearch-install-stamp
hash="$(sha256sum pyproject.toml | cut -d' ' -f1)"
key="${hash} ${extras}"
if [ -f "$stamp" ] && (cd / && python -c "import mmsearch") 2>/dev/null; then
  installed="$(cat "$stamp")"
  # dev installs every extra the other commands ask for (all but gpu and heif)
  case "$extras" in gpu|heif|*,*) covered=0 ;; *) covered=1 ;; esac
  if [ "$installed" = "$key" ] || { [ "$installed" = "${hash} dev" ] && [ "$covered" = 1 ]; }; then
    exit 0
  fi
fi
# pip's notes about index locations absent on this machine are noise, not errors; so are
# setuptools' deprecation warnings while it builds the editable install (PYTHONWARNINGS
# reaches the build backend's process too). pip's own progress (packages collected,
# download bars on a terminal) stays visible: a first install takes minutes.
pip_install() {
  PYTHONWARNINGS=ignore python -m pip install --progress-bar on "$@" \
    2> >(grep -v "^WARNING: Location 'file:" >&2) | { grep -v "^Requirement already satisfied" || true; }
}
# The venv's own pip (23.x with Python 3.11) installs everything here; upgrading it first
# cost a minute of index look-ups on every first install.
step 2 "installing torch 2.14.1 and torchvision (the largest wheels)"
pip_install "torch==2.14.1" "torchvision==0.29.1"
step 3 "installing mmsearch[${extras}]"
pip_install -e ".[${extras}]"
echo "$key" > "$stamp"
step 3 "done: .venv ready"
