"""A ``spawn`` multiprocessing context whose workers never import the caller's ``__main__``.

multiprocessing's spawn start method rebuilds the parent's ``__main__`` in every
child: :func:`multiprocessing.spawn.get_preparation_data` records the main script's
path (``init_main_from_path``) or module name (``init_main_from_name``), and the
child's :func:`multiprocessing.spawn.prepare` runs that script again as
``__mp_main__`` (``_fixup_main_from_path``). So a script without an
``if __name__ == "__main__":`` guard re-runs itself in each worker, and ``python -``
fails outright (its ``__file__`` is ``'<stdin>'``, which ``runpy`` cannot open).

Decode workers only run functions of importable modules (:func:`mmsearch.indexer.decode.decode_chunk`
and the decode function it is given), so they need nothing from ``__main__``. This
context hands its children a preparation without those two keys: they start from
multiprocessing's own clean entry point (``python -c "from multiprocessing.spawn import
spawn_main; ..."``) with the parent's ``sys.path`` and working directory, and never
execute the caller's script, REPL or notebook.

Workers also end with their parent: :func:`exit_with_parent`, run as the pool's
initializer, watches the process that started the worker, so a SIGKILLed indexer
leaves no decode worker behind (nor multiprocessing's resource tracker, which exits
once the last process holding its pipe is gone).

>>> from concurrent.futures import ProcessPoolExecutor
>>> pool = ProcessPoolExecutor(  # doctest: +SKIP
...     2, mp_context=MainlessSpawnContext(), initializer=exit_with_parent, initargs=(os.getpid(),)
... )
"""

from __future__ import annotations

import io
import os
import threading
from multiprocessing import context, popen_spawn_posix, reduction, spawn, util
from typing import Any

#: Preparation keys that make a spawned child re-run the parent's ``__main__``.
MAIN_KEYS = ("init_main_from_path", "init_main_from_name")
#: How often a worker checks that the process that started it is still its parent.
PARENT_POLL_S = 0.5


def exit_with_parent(parent_pid: int) -> None:
    """Worker initializer: ends this process as soon as ``parent_pid`` is no longer its parent.

    A killed parent (SIGKILL runs no clean-up) leaves its workers to init, which changes
    their parent pid; a daemon thread notices within :data:`PARENT_POLL_S` and exits the
    worker, even while its main thread waits for work that will never come. (Linux's
    ``PR_SET_PDEATHSIG`` would fire when the *thread* that started the worker ends, which
    is not the parent's death when a pool is made outside the main thread.)
    """
    if os.getppid() != parent_pid:  # died before this worker started
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent_pid:
            threading.Event().wait(PARENT_POLL_S)
        os._exit(1)

    threading.Thread(target=watch, name="mmsearch-parent-watch", daemon=True).start()


def mainless_preparation_data(name: str) -> dict[str, Any]:
    """``spawn.get_preparation_data(name)`` without the keys that re-run ``__main__``."""
    data = spawn.get_preparation_data(name)
    for key in MAIN_KEYS:
        data.pop(key, None)
    return data


class _MainlessPopen(popen_spawn_posix.Popen):
    """``popen_spawn_posix.Popen`` that sends :func:`mainless_preparation_data`."""

    def _launch(self, process_obj: Any) -> None:
        # Same steps as popen_spawn_posix.Popen._launch (Python 3.10-3.13); only the
        # preparation data differs.
        from multiprocessing import resource_tracker

        tracker_fd = resource_tracker.getfd()
        self._fds.append(tracker_fd)
        prep_data = mainless_preparation_data(process_obj._name)
        fp = io.BytesIO()
        context.set_spawning_popen(self)
        try:
            reduction.dump(prep_data, fp)
            reduction.dump(process_obj, fp)
        finally:
            context.set_spawning_popen(None)

        parent_r = child_w = child_r = parent_w = None
        try:
            parent_r, child_w = os.pipe()
            child_r, parent_w = os.pipe()
            cmd = spawn.get_command_line(tracker_fd=tracker_fd, pipe_handle=child_r)
            self._fds.extend([child_r, child_w])
            self.pid = util.spawnv_passfds(spawn.get_executable(), cmd, self._fds)
            self.sentinel = parent_r
            with open(parent_w, "wb", closefd=False) as fh:
                fh.write(fp.getbuffer())
        finally:
            self.finalizer = util.Finalize(
                self, util.close_fds, [fd for fd in (parent_r, parent_w) if fd is not None]
            )
            for fd in (child_r, child_w):
                if fd is not None:
                    os.close(fd)


class MainlessSpawnProcess(context.SpawnProcess):
    """A spawned process that does not import the parent's ``__main__``."""

    @staticmethod
    def _Popen(process_obj: Any) -> _MainlessPopen:
        return _MainlessPopen(process_obj)


class MainlessSpawnContext(context.SpawnContext):
    """The ``spawn`` context, with :class:`MainlessSpawnProcess` as its ``Process``."""

    Process = MainlessSpawnProcess  # type: ignore[assignment]
