#!/usr/bin/env bash
# Quick start, main job: set up, then index the bundled sample catalog and query it.
# Installs only what the demo runs on (scripts/demo-requirements.txt: ONNX Runtime with
# the shipped mmsearch-tiny export, no torch); torch, the test tools and the other extras
# (server, re-ranking, Ray, S3) come with scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh demo
. .venv/bin/activate
mmsearch demo "${1:-demo-out}" "${@:2}"   # e.g. bash scripts/demo.sh demo-out --n 50
