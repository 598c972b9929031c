"""Query limits and defaults shared by the library, the CLI and the HTTP API (no heavy imports)."""

from __future__ import annotations

from typing import Final

#: The kind searched when none is given, everywhere (library, CLI, HTTP API, gallery).
DEFAULT_KIND: Final = "any"
#: The most results one query returns, everywhere (library, CLI, HTTP API).
MAX_K = 1000
#: The deepest page: ``offset`` may be at most this.
MAX_OFFSET = 10_000
