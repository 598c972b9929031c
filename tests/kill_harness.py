"""SIGKILL harness: kill an indexing run at random points, re-run, verify the state.

Used by ``tests/test_kill.py`` (≥ 20 trials) and ``benchmarks/kill.py`` (≥ 200).

One trial:
1. start ``mmsearch``-style indexing of a collection in a child process (own
   process group, so decode workers die with it);
2. once the child reports it is ready, wait a random time drawn from the measured
   duration of an uninterrupted run, then SIGKILL the whole group;
3. record what the table holds, re-run the indexing to completion;
4. verify: row count = item count, ids and uris unique, every row's vector equals
   a fresh embedding of its file, the completing run embedded exactly the items the
   killed run had not committed, the published snapshot matches the table, and the
   ANN index returns each item for its own vector.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

_CHILD = r"""
import sys, json
sys.path.insert(0, {root!r})
from mmsearch.indexer.pipeline import IndexOptions, run_index
from tests.kill_harness import make_encoder
enc = make_encoder({encoder!r})
print("ready", flush=True)
report = run_index([{collection!r}], {index_dir!r}, enc.spec,
                   options=IndexOptions(workers=2, batch_size=32, commit_every=128, index_type={index_type!r}),
                   encoder=enc)
print(json.dumps({{"embedded": report.embedded}}), flush=True)
"""


def make_encoder(kind: str) -> Any:
    """``fake`` (tests.conftest.FakeEncoder) or ``tiny`` (the real mmsearch-tiny)."""
    if kind == "fake":
        from tests.conftest import FakeEncoder

        return FakeEncoder()
    from mmsearch.models import load_encoder
    from mmsearch.models.spec import ModelSpec

    return load_encoder(ModelSpec("mmsearch-tiny", ""), device="cpu")


@dataclass
class TrialResult:
    trial: int
    kill_after_s: float
    rows_after_kill: int
    embedded_on_rerun: int
    #: the killed run had already published its snapshot (the kill came after the ANN update)
    published_before_kill: bool = False
    problems: list[str] = field(default_factory=list)


def _options(incremental: bool) -> Any:
    from mmsearch.indexer.pipeline import IndexOptions

    return IndexOptions(
        workers=2, batch_size=32, commit_every=128, index_type="ivfpq" if incremental else "auto"
    )


def _start_child(
    collection: Path, index_dir: Path, encoder: str, incremental: bool = False
) -> subprocess.Popen[str]:
    code = _CHILD.format(
        root=str(ROOT),
        encoder=encoder,
        collection=str(collection),
        index_dir=str(index_dir),
        index_type=_options(incremental).index_type,
    )
    return subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)},
    )


def _wait_ready(proc: subprocess.Popen[str]) -> None:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if line.strip() != "ready":
        proc.kill()
        raise RuntimeError(f"indexing child did not start: {line!r}")


def prepare_base_index(collection: Path, workdir: Path, enc: Any) -> Path:
    """An IVF-PQ index of the collection without every 10th image (moved away while
    indexing, then put back with its mtime): the starting state of incremental trials."""
    import shutil

    from mmsearch.indexer.discover import walk_images
    from mmsearch.indexer.pipeline import run_index

    held = workdir / "held"
    held.mkdir(parents=True, exist_ok=True)
    items = sorted(walk_images(collection).items, key=lambda item: item.path)
    moved = [
        (Path(item.path), held / f"{i}-{Path(item.path).name}")
        for i, item in enumerate(items[::10])
    ]
    for src, dst in moved:
        shutil.move(src, dst)
    base = workdir / "base-index"
    try:
        run_index([collection], base, enc.spec, options=_options(True), encoder=enc)
    finally:
        for src, dst in moved:
            shutil.move(dst, src)
    return base


def _fresh_index_dir(index_dir: Path, base: Path | None) -> None:
    if base is not None:
        import shutil

        shutil.copytree(base, index_dir)


def measure_run_seconds(
    collection: Path, workdir: Path, encoder: str, base: Path | None = None
) -> float:
    """Duration of one uninterrupted run after the child is ready (the kill window)."""
    _fresh_index_dir(workdir / "baseline-index", base)
    proc = _start_child(collection, workdir / "baseline-index", encoder, base is not None)
    _wait_ready(proc)
    t0 = time.perf_counter()
    proc.wait(timeout=900)
    if proc.returncode != 0:
        raise RuntimeError("baseline indexing run failed")
    return time.perf_counter() - t0


def reference_vectors(collection: Path, enc: Any) -> dict[str, np.ndarray]:
    """uri → fresh embedding of every image file of the collection."""
    from mmsearch.indexer.decode import decode_file
    from mmsearch.indexer.discover import path_to_uri, walk_images

    walk = walk_images(collection)
    uris = [path_to_uri(item.path) for item in walk.items]
    arrays = [decode_file(item.path, enc.image_size)[0] for item in walk.items]
    out: dict[str, np.ndarray] = {}
    for start in range(0, len(arrays), 256):
        vecs = enc.encode_images(np.stack(arrays[start : start + 256]))
        out.update(zip(uris[start : start + 256], vecs, strict=True))
    return out


def verify(
    index_dir: Path, enc: Any, reference: dict[str, np.ndarray], *, incremental: bool = False
) -> list[str]:
    """Checks an index directory against the reference embeddings; returns problems."""
    from mmsearch.engine import SearchIndex
    from mmsearch.storage.schema import fixed_list_to_numpy
    from mmsearch.storage.table import ItemStore

    problems: list[str] = []
    store = ItemStore.open(index_dir)
    tbl = store.scan(["id", "uri", "vector"])
    ids = tbl.column("id").to_numpy()
    uris = tbl.column("uri").to_pylist()
    vecs = fixed_list_to_numpy(tbl.column("vector"), store.dim)
    if len(uris) != len(reference):
        problems.append(f"row count {len(uris)} != item count {len(reference)}")
    if len(set(ids.tolist())) != len(ids):
        problems.append("duplicate ids")
    if len(set(uris)) != len(uris):
        problems.append("duplicate uris")
    missing = set(reference) - set(uris)
    if missing:
        problems.append(f"{len(missing)} items missing")
    mismatched = [
        u
        for u, v in zip(uris, vecs, strict=True)
        if u in reference and not np.allclose(v, reference[u], atol=1e-4)
    ]
    if mismatched:
        problems.append(
            f"{len(mismatched)} rows hold another vector than their file's, e.g. {mismatched[0]}"
        )
    engine = SearchIndex(index_dir, encoder=enc)
    if engine.snapshot.table_version != store.version:
        problems.append(
            f"snapshot version {engine.snapshot.table_version} != table version {store.version}"
        )
    ann = engine.current.ann.get("image")
    if ann is None:
        problems.append("no image ANN index")
    else:
        if incremental and ann.info["refine_segments"] < 2:
            problems.append(
                "the incremental update rewrote the refine vectors instead of adding a segment"
            )
        # every list probed and every row a candidate: what is missing is misaligned
        # (FAISS ids vs refine store), not approximate
        wide = (
            {"nprobe": 1 << 20, "refine": len(ann) // 10 + 1} if ann.info["type"] == "ivfpq" else {}
        )
        self_scores = np.einsum("ij,ij->i", vecs, vecs)
        for label, kwargs in (("ANN", wide), ("exact refine store", {"exact": True})):
            scores, found = ann.search(vecs, 1, **kwargs)
            # identical images share a vector: accept a tie with the same score
            bad = (found[:, 0] != ids) & (scores[:, 0] < self_scores - 1e-4)
            if bad.any():
                problems.append(
                    f"{label} does not return {int(bad.sum())} items for their own vector"
                )
    return problems


def _snapshot_matches_table(index_dir: Path) -> bool:
    from mmsearch.storage.snapshot import read_snapshot
    from mmsearch.storage.table import ItemStore

    snapshot = read_snapshot(index_dir) if index_dir.exists() else None
    return snapshot is not None and snapshot.table_version == ItemStore.open(index_dir).version


def run_trials(
    collection: Path,
    workdir: Path,
    *,
    trials: int,
    seed: int = 0,
    encoder: str = "fake",
    log: Any = None,
    incremental: bool = False,
) -> list[TrialResult]:
    """Runs ``trials`` kill/re-run/verify cycles; returns one result per trial."""
    from mmsearch.indexer.pipeline import run_index

    from mmsearch.storage.table import ItemStore

    rng = random.Random(seed)
    enc = make_encoder(encoder)
    reference = reference_vectors(collection, enc)
    base = prepare_base_index(collection, workdir, enc) if incremental else None
    window = measure_run_seconds(collection, workdir, encoder, base)
    results: list[TrialResult] = []
    for trial in range(trials):
        index_dir = workdir / f"trial-{trial}"
        _fresh_index_dir(index_dir, base)
        proc = _start_child(collection, index_dir, encoder, incremental)
        _wait_ready(proc)
        delay = rng.uniform(0.0, window * 1.05)
        time.sleep(delay)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=60)
        rows = ItemStore.open(index_dir).count() if ItemStore.exists(index_dir) else 0
        published = _snapshot_matches_table(index_dir)
        report = run_index(
            [collection], index_dir, enc.spec, options=_options(incremental), encoder=enc
        )
        result = TrialResult(trial, round(delay, 3), rows, report.embedded, published)
        if rows + report.embedded != len(reference):
            result.problems.append(
                f"re-run embedded {report.embedded} but {len(reference) - rows} were uncommitted"
            )
        if report.failed:
            result.problems.append(f"{report.failed} failures on re-run")
        result.problems.extend(verify(index_dir, enc, reference, incremental=incremental))
        results.append(result)
        if log is not None:
            log(json.dumps(result.__dict__))
        import shutil

        shutil.rmtree(index_dir, ignore_errors=True)
    return results
