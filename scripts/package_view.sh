#!/usr/bin/env bash
# Prints the path of a folder holding ``mmsearch`` as it installs: links to every entry
# of mmsearch/ plus the repo's indexer/ folder as mmsearch/indexer (setuptools maps it
# there; tools that read the source tree, import-linter and mypy, cannot). The folder is
# .venv/package-view, refreshed on every call and kept in the same place so that mypy's
# cache stays valid between runs.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
view="$repo/.venv/package-view"
rm -rf "$view"
mkdir -p "$view/mmsearch"
for entry in "$repo"/mmsearch/*; do
  ln -s "$entry" "$view/mmsearch/"
done
ln -s "$repo/indexer" "$view/mmsearch/indexer"
echo "$view"
