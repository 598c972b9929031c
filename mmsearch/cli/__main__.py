"""``python -m mmsearch.cli``: the same as the ``mmsearch`` console script."""

from mmsearch.cli.app import main

main()
