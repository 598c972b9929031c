"""The ``mmsearch`` namespace: a clean ``dir()``, real signatures and return types."""

from __future__ import annotations

import inspect
import subprocess
import sys

import pytest

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


def test_index_takes_the_cli_index_options_with_the_cli_defaults():
    """``mmsearch.index`` and ``mmsearch index`` build IndexOptions through one function,
    with the same names and the defaults the CLI documents."""
    from mmsearch.indexer.options import index_options

    from mmsearch.cli.index import index_cmd

    cli = inspect.signature(index_cmd).parameters
    lib = inspect.signature(mmsearch.index).parameters
    built = inspect.signature(index_options).parameters
    presentation = {"json_out", "quiet", "no_progress", "strict", "reembed"}
    renamed = {
        "index": "index_dir",
        "no_ann": "build_index",
        "pretrained": "model",
        "wait": "lock_wait_s",
    }
    for name in cli.keys() - presentation:
        assert renamed.get(name, name) in lib, name
    for name in built:
        assert name in lib, name
        default = (
            not cli["no_ann"].default if name == "build_index" else cli.get(name, lib[name]).default
        )
        assert lib[name].default == built[name].default == default, name
    assert lib["backend"].default == "auto" and lib["batch_size"].default is None


def test_index_passes_its_options_through(tmp_path):
    """An option of ``mmsearch.index`` reaches the run: ``lock_wait_s`` waits for another writer."""
    import time

    from mmsearch.errors import StorageError
    from mmsearch.storage.locks import index_write_lock

    folder = tmp_path / "photos"
    folder.mkdir()
    idx = tmp_path / "idx"
    with index_write_lock(idx):
        started = time.monotonic()
        with pytest.raises(StorageError, match=r"waited 0\.4 s"):
            mmsearch.index(
                folder, idx, model=mmsearch.ModelSpec("mmsearch-tiny", ""), lock_wait_s=0.4
            )
        assert time.monotonic() - started >= 0.4
