"""The ``mmsearch`` namespace: a clean ``dir()``, real signatures and return types."""

from __future__ import annotations

import inspect
import subprocess
import sys

import mmsearch


def test_dir_is_the_public_api():
    names = dir(mmsearch)
    assert names == sorted([*mmsearch.__all__, "__version__"])
    for noise in ("Any", "TYPE_CHECKING", "annotations", "typing"):
        assert noise not in names
    for name in mmsearch.__all__:
        assert getattr(mmsearch, name) is not None


def test_import_stays_light():
    code = "import sys, mmsearch; print(sorted(m for m in ('torch', 'lancedb', 'faiss', 'open_clip') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "[]", done.stderr


def test_index_and_open_have_real_signatures():
    for fn, returns in ((mmsearch.index, "IndexReport"), (mmsearch.open, "SearchIndex")):
        sig = inspect.signature(fn)
        assert all(p.kind is not p.VAR_KEYWORD for p in sig.parameters.values()), fn
        assert "Any" not in str(sig)
        assert sig.return_annotation == returns
        assert getattr(mmsearch, returns).__name__ == returns
    params = inspect.signature(mmsearch.index).parameters
    assert {"model", "device", "batch_size", "workers", "metadata", "offline"} <= params.keys()
    assert params["model"].kind is inspect.Parameter.KEYWORD_ONLY
