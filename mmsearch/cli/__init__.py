"""The ``mmsearch`` command line (presentation layer): the typer app and its entry point.

``mmsearch.cli:main`` is the console script; ``python -m mmsearch.cli`` runs the same.
"""

from mmsearch.cli.app import app, main
from mmsearch.cli.common import EXIT_ITEMS_FAILED, EXIT_NO_RESULTS

__all__ = ["EXIT_ITEMS_FAILED", "EXIT_NO_RESULTS", "app", "main"]
