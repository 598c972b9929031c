#!/usr/bin/env bash
# The static checks CI runs before the tests (scripts/test.sh calls this), configured in
# pyproject.toml: ruff (lint and formatting), vulture (dead code), import-linter (layers, cycles,
# private modules) and mypy (types). Runs every check, then fails if any failed.
# Needs the dev extra in the active environment (bash scripts/setup.sh dev).
set -uo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"
failed=()
run() {
  local name="$1"
  shift
  echo "--- $name" >&2
  "$@" || failed+=("$name")
}
run ruff ruff check mmsearch indexer tests benchmarks
run ruff-format ruff format --check --quiet mmsearch indexer tests benchmarks scripts
run vulture vulture
# import-linter and mypy read the package as it installs, with indexer/ at
# mmsearch/indexer (see package_view.sh); import-linter puts its working directory
# first on sys.path, so both run inside the view.
view="$(bash scripts/package_view.sh)" || exit 1
run import-linter bash -c 'cd "$1" && lint-imports --no-cache --no-logo "$2/pyproject.toml"' _ "$view" "$repo"
run mypy bash -c 'cd "$1" && mypy --config-file "$2/pyproject.toml" --cache-dir "$2/.venv/mypy-cache"' _ "$view" "$repo"
if [ "${#failed[@]}" -gt 0 ]; then
  echo "lint failed: ${failed[*]}" >&2
  exit 1
fi
