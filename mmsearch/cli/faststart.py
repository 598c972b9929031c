"""Process-wide settings for a one-shot CLI query: answer, print, exit.

A one-shot ``mmsearch query`` runs one text or image through one tower and exits, so
what speeds up long-lived processes only slows it down:

- ONNX Runtime's weight pre-packing (done at session creation to make every later run
  faster) is turned off (:func:`mmsearch.models.ort_session.set_prepacking`);
- the default CPU runtime is ONNX Runtime even where OpenVINO bf16 would embed
  faster (:func:`mmsearch.models.openvino_session.prefer_fast_start`): one text's
  arithmetic is milliseconds, OpenVINO's start a tenth of a second more;
- pyarrow's pandas shim imports pandas (0.3-1.4 s here) the first time anything builds
  an Arrow array or converts one to NumPy, although a query never converts to pandas.
  :func:`arrow_without_pandas` lets the shim find no pandas once, which it remembers
  for the rest of the process; a later ``import pandas`` by other code still works,
  but pyarrow's own pandas conversions (``Table.to_pandas``) are then unavailable in
  this process, which is why only the one-shot query command and ``mmsearch index``
  (without Ray) call this: they never convert to pandas, and an index run's first
  ``import lancedb`` is 0.6 s with pandas and 0.37 s without.
"""

from __future__ import annotations

import sys


class _NoPandas:
    """A meta-path finder under which ``import pandas`` raises ImportError."""

    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        if name == "pandas" or name.startswith("pandas."):
            raise ModuleNotFoundError("pandas is not used by a one-shot query", name=name)
        return None


def arrow_without_pandas() -> None:
    """Makes pyarrow's pandas shim settle on "no pandas" without importing it (see above)."""
    if "pandas" in sys.modules:  # already paid for: nothing to save
        return
    blocker = _NoPandas()
    sys.meta_path.insert(0, blocker)
    try:
        import pyarrow as pa

        # The Python shim and the C++ conversion code each try to import pandas once.
        pa.chunked_array([pa.array([0], pa.int64())]).to_numpy()
    finally:
        sys.meta_path.remove(blocker)


def prepare_one_shot_query() -> None:
    """Settings for a process that answers one query and exits (see the module doc)."""
    from mmsearch.models.openvino_session import prefer_fast_start
    from mmsearch.models.ort_session import set_prepacking

    set_prepacking(False)
    prefer_fast_start()
    arrow_without_pandas()
