"""A decode function for tests: hangs on files whose name contains "hang" (runs in workers)."""

from __future__ import annotations

import os
import time

from mmsearch.indexer.decode import decode_file


def decode_or_hang(path: str, size: int, max_pixels: int):  # noqa: ANN201
    if "hang" in os.path.basename(path):
        time.sleep(3600)
    return decode_file(path, size, max_pixels)


def decode_or_die(path: str, size: int, max_pixels: int):  # noqa: ANN201
    if "die" in os.path.basename(path):
        os._exit(9)  # the worker process dies, as if killed by the OS
    return decode_file(path, size, max_pixels)
