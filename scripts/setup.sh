#!/usr/bin/env bash
# Creates .venv (if missing) and installs mmsearch with the given extras (default: dev).
# demo.sh asks for "demo": what the main job runs on and nothing more (the packages of
# scripts/demo-requirements.txt, then mmsearch with --no-deps: ONNX Runtime and the shipped
# mmsearch-tiny export instead of torch, open_clip and gigabytes of CUDA wheels).
# test.sh asks for "dev" (torch, every extra and the test tools), which covers the demo.
# Other extras install torch first (its pinned wheels are what the lock expects), then
# mmsearch[extras]. A stamp keyed on pyproject.toml, the demo list and the extras skips the
# install when nothing changed, so a second run reinstalls nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-dev}"
python="${PYTHON:-python3}"
started=$SECONDS
step() { printf '==> [%s/3] %s (%ss)\n' "$1" "$2" "$((SECONDS - started))" >&2; }
if [ "$extras" = demo ]; then
  # No byte-compiling of every installed module (pip, pandas, pyarrow, LanceDB...): about
  # half of the install's CPU time; the demo compiles the few modules it imports, once.
  export PIP_NO_COMPILE=1
fi
if [ ! -x .venv/bin/python ]; then
  step 1 "creating .venv"
  "$python" -m venv .venv
fi
. .venv/bin/activate
# mmsearch's own bytecode, written whatever PYTHONDONTWRITEBYTECODE says: an editable
# install is not byte-compiled by pip, and without it every command would compile the
# modules it imports from source, every time (60-70 ms of a one-shot query). Up to date
# after a pull too (compileall skips what is current: a fraction of a second).
compile_own() { python -m compileall -q mmsearch indexer > /dev/null; }
stamp=.venv/.mmsearch-install-stamp
hash="$(cat pyproject.toml scripts/demo-requirements.txt | sha256sum | cut -d' ' -f1)"
key="${hash} ${extras}"
if [ -f "$stamp" ] && (cd / && python -c "import mmsearch") 2>/dev/null; then
  installed="$(cat "$stamp")"
  # dev installs every extra the other commands ask for (all but gpu and heif)
  case "$extras" in gpu|heif|*,*) covered=0 ;; *) covered=1 ;; esac
  if [ "$installed" = "$key" ] || { [ "$installed" = "${hash} dev" ] && [ "$covered" = 1 ]; }; then
    compile_own
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
if [ "$extras" = demo ]; then
  step 2 "installing what the demo runs on: ONNX Runtime, LanceDB, FAISS (no torch)"
  # setuptools (the build backend pyproject.toml names) comes in the same pass, so that the
  # editable install below needs no isolated build environment of its own.
  pip_install -r scripts/demo-requirements.txt "setuptools>=77"
  step 3 "installing mmsearch (its torch dependencies left out)"
  pip_install --no-deps --no-build-isolation -e .
else
  step 2 "installing torch 2.14.1 and torchvision (the largest wheels)"
  pip_install "torch==2.14.1" "torchvision==0.29.1"
  step 3 "installing mmsearch[${extras}]"
  pip_install -e ".[${extras}]"
fi
compile_own
echo "$key" > "$stamp"
step 3 "done: .venv ready"
