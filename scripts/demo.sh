#!/usr/bin/env bash
# Quick start, main job: set up, then index the bundled sample catalog and query it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev
. .venv/bin/activate
mmsearch demo "${1:-demo-out}" "${@:2}"   # e.g. bash scripts/demo.sh demo-out --n 50
