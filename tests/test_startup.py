"""One-shot start-up: what `mmsearch --help`, `info` and an ONNX text query import, and
that a one-shot command's output survives the fast exit. Checked in fresh interpreters."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mmsearch.models import ModelSpec

HEAVY = ("torch", "open_clip", "faiss", "lancedb", "transformers", "ray", "torchvision")
_PROBE = """
import json, sys
from mmsearch.cli import app
try:
    app({args!r}, standalone_mode=False)
except SystemExit:
    pass
sys.stdout.flush()
print("\\nMODULES=" + json.dumps(sorted(m for m in {heavy!r} if m in sys.modules)))
"""


def _imported(args: list[str]) -> tuple[list[str], str]:
    code = _PROBE.format(args=args, heavy=HEAVY)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out, _, modules = proc.stdout.rpartition("MODULES=")
    return json.loads(modules), out


@pytest.fixture(scope="module")
def tiny_index(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from indexer.pipeline import IndexOptions, run_index
    from mmsearch.datasets.synthetic import generate_catalog
    from mmsearch.models import load_encoder

    root = tmp_path_factory.mktemp("startup")
    catalog = generate_catalog(root / "catalog", n=12, seed=3)
    index_dir = root / "index"
    opts = IndexOptions(workers=1, backend="onnx")
    run_index([catalog.image_dir], index_dir, ModelSpec("mmsearch-tiny"), options=opts)
    load_encoder(ModelSpec("mmsearch-tiny"), backend="onnx")  # the export exists (same cache)
    return index_dir


def test_help_imports_nothing_heavy() -> None:
    modules, out = _imported(["--help"])
    assert modules == [] and "query" in out


def test_info_imports_nothing_heavy(tiny_index: Path) -> None:
    modules, out = _imported(["info", "--index", str(tiny_index), "--json"])
    info = json.loads(out.strip().splitlines()[0])
    assert modules == []
    assert info["rows"] == 12 and info["model"] == "mmsearch-tiny" and info["backends"] == ["onnx"]
    assert info["stale"] is False and info["ann"]["image"]["n"] == 12


def test_onnx_text_query_imports_no_torch(tiny_index: Path) -> None:
    args = ["query", "a red circle", "--index", str(tiny_index), "--backend", "onnx", "--json"]
    modules, out = _imported(args)  # hybrid by default: the lexical leg reads LanceDB
    assert len(json.loads(out.strip().splitlines()[0])) == 10
    assert "torch" not in modules and "open_clip" not in modules
    modules, out = _imported([*args, "--mode", "vector"])  # the vector leg alone needs no LanceDB
    assert len(json.loads(out.strip().splitlines()[0])) == 10
    assert "torch" not in modules and "open_clip" not in modules and "lancedb" not in modules


def test_one_shot_exit_flushes_output(tiny_index: Path) -> None:
    cmd = [sys.executable, "-m", "mmsearch.cli", "query", "a red circle", "-k", "3", "--json"]
    proc = subprocess.run(
        [*cmd, "--index", str(tiny_index), "--backend", "onnx"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert [h["rank"] for h in json.loads(proc.stdout)] == [1, 2, 3]
    bad = subprocess.run(
        [*cmd, "--index", str(tiny_index / "nope")], capture_output=True, text=True, timeout=300
    )
    assert bad.returncode == 2 and "no mmsearch index" in bad.stderr
