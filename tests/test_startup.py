"""One-shot start-up: what `mmsearch --help`, `info` and an ONNX text query import, and
that a one-shot command's output survives the fast exit. Checked in fresh interpreters."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mmsearch.models import ModelSpec

HEAVY = ("torch", "open_clip", "faiss", "lancedb", "transformers", "ray", "torchvision", "PIL")
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


def _imported(args: list[str], env: dict[str, str] | None = None) -> tuple[list[str], str]:
    code = _PROBE.format(args=args, heavy=HEAVY)
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out, _, modules = proc.stdout.rpartition("MODULES=")
    return json.loads(modules), out


@pytest.fixture(scope="module")
def tiny_index(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mmsearch.indexer.pipeline import IndexOptions, run_index

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
    modules, out = _imported(args)  # hybrid: the lexical leg runs on LanceDB's native core
    assert len(json.loads(out.strip().splitlines()[0])) == 10
    assert "torch" not in modules and "open_clip" not in modules and "lancedb" not in modules
    assert "PIL" not in modules  # a text query opens no image
    modules, out = _imported([*args, "--mode", "vector"])
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


_ONE_SHOT = """
import json, os, sys
from mmsearch import cli
real_exit = os._exit
def exit_(code):
    sys.stdout.write("\\nPANDAS=" + json.dumps("pandas" in sys.modules) + "\\n")
    sys.stdout.flush()
    real_exit(code)
os._exit = exit_
sys.argv = ["mmsearch", *{args!r}]
cli.main()
"""


def test_one_shot_vector_query_never_imports_pandas(tiny_index: Path) -> None:
    """The console entry point's query (mmsearch.cli.faststart) answers as the plain app
    does, without importing pandas; pandas still imports afterwards when asked for."""
    args = ["query", "a red circle", "--index", str(tiny_index), "--backend", "onnx"]
    args += ["--mode", "vector", "--json"]
    proc = subprocess.run(
        [sys.executable, "-c", _ONE_SHOT.format(args=args)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out, _, pandas_loaded = proc.stdout.rpartition("PANDAS=")
    assert json.loads(pandas_loaded) is False
    # the plain app on the runtime a one-shot query starts (auto may pick bf16 elsewhere)
    _, plain = _imported(args, {"MMSEARCH_CPU_RUNTIME": "onnxruntime"})
    fast, slow = (json.loads(text.strip().splitlines()[0]) for text in (out, plain))
    assert [h["id"] for h in fast] == [h["id"] for h in slow]  # weights not pre-packed: same hits
    assert max(abs(a["score"] - b["score"]) for a, b in zip(fast, slow, strict=True)) < 1e-5
    after = "from mmsearch.cli.faststart import arrow_without_pandas as a; a(); import pandas; print(pandas.DataFrame({'x': [1]}).shape)"
    done = subprocess.run(
        [sys.executable, "-c", after], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and done.stdout.strip() == "(1, 1)", done.stderr[-1000:]


def test_index_run_never_imports_pandas_even_with_a_parquet_sidecar(tmp_path: Path) -> None:
    """`mmsearch index` settles pyarrow on "no pandas" (a third of `import lancedb`); the
    metadata sidecar, in any format, is read without it, and its values arrive."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mmsearch.datasets.synthetic import generate_catalog

    catalog = generate_catalog(tmp_path / "catalog", n=6, seed=5)
    files = [row["file"] for row in catalog.rows]
    sidecar = catalog.root / "meta.parquet"
    pq.write_table(pa.table({"file": files, "brand": [f"b{i}" for i in range(6)]}), sidecar)
    index_dir = tmp_path / "index"
    args = ["index", str(catalog.image_dir), "-i", str(index_dir), "--metadata", str(sidecar)]
    code = _PROBE.format(args=[*args, "--model", "mmsearch-tiny", "-q"], heavy=("pandas",))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.rpartition("MODULES=")[2]) == []
    _, out = _imported(["query", "x", "-i", str(index_dir), "--json", "-k", "6"])
    hits = json.loads(out.strip().splitlines()[0])
    assert sorted(h["metadata"]["brand"] for h in hits) == [f"b{i}" for i in range(6)]
