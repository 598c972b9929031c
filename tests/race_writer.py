"""One "machine" of the two-writer race tests: a process with its own cache that indexes
folders into an object-store URI on command, and can stop at a chosen point.

Run as ``python -m tests.race_writer`` with ``MMSEARCH_CACHE`` and the ``AWS_*``
variables set. It reads one JSON command a line from stdin::

    {"folder": "...", "uri": "s3://...", "wait": 30, "pause": "commit" | "upload" | "put" | null}

and indexes the folder with the tests' fake encoder. With ``pause``, it stops once at
that point (before its first table commit, after its first ANN upload, before the
snapshot PUT), prints ``paused`` and waits for a line on stdin. It answers ``done
<report JSON>``, or ``refused <the one-line error>`` for an :class:`MMSearchError`.
Anything else is a traceback on stderr and the process ends.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

from mmsearch.errors import MMSearchError

POINTS = ("commit", "upload", "put")
_pause: dict[str, Any] = {"at": None}


def _stop_here(point: str) -> None:
    if _pause["at"] == point:
        _pause["at"] = None
        print("paused", flush=True)
        sys.stdin.readline()


def _install_hooks() -> None:
    from mmsearch.storage import publish
    from mmsearch.storage.table import ItemStore

    def before(point: str, method: Callable[..., Any]) -> Callable[..., Any]:
        def hooked(*args: Any, **kwargs: Any) -> Any:
            _stop_here(point)
            return method(*args, **kwargs)

        return hooked

    def after(point: str, method: Callable[..., Any]) -> Callable[..., Any]:
        def hooked(*args: Any, **kwargs: Any) -> Any:
            out = method(*args, **kwargs)
            _stop_here(point)
            return out

        return hooked

    ItemStore.upsert = before("commit", ItemStore.upsert)  # type: ignore[method-assign]
    publish.upload_once = after("upload", publish.upload_once)  # type: ignore[assignment]
    publish.put_snapshot = before("put", publish.put_snapshot)  # type: ignore[assignment]


def main() -> None:
    from mmsearch.indexer.pipeline import IndexOptions, run_index

    from tests.conftest import FakeEncoder

    _install_hooks()
    encoder = FakeEncoder()
    print("ready", flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        job = json.loads(line)
        _pause["at"] = job.get("pause")
        opts = IndexOptions(workers=1, batch_size=4, commit_every=2, lock_wait_s=job.get("wait", 0))
        try:
            report = run_index(
                [job["folder"]], job["uri"], encoder.spec, options=opts, encoder=encoder
            )
        except MMSearchError as exc:
            print("refused " + json.dumps(str(exc)), flush=True)
            continue
        summary = {"added": report.added, "unchanged": report.unchanged, "failed": report.failed}
        print("done " + json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
