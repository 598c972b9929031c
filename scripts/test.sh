#!/usr/bin/env bash
# Quick start, tests: set up, lint (scripts/lint.sh: ruff, vulture, import-linter, mypy),
# run the whole test suite. Exits non-zero when anything fails, and also when no test
# ran (pytest exit status 5).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev
# Browser tests drive the system Chromium (never a browser downloaded by a tool).
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "warning: could not install chromium; browser tests will be skipped" >&2
fi
. .venv/bin/activate
bash scripts/lint.sh
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
python -m pytest -q -p no:cacheprovider "$@"
