#!/usr/bin/env bash
# Quick start, tests: set up, lint, run the whole test suite. Exits non-zero when
# anything fails, and also when no test ran (pytest exit status 5).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev
. .venv/bin/activate
ruff check mmsearch indexer tests benchmarks
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
python -m pytest -q -p no:cacheprovider "$@"
