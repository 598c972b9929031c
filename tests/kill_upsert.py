"""SIGKILL harness for record upserts: kill a backend mid-upsert, upsert again, verify.

Used by ``tests/test_kill.py`` and ``benchmarks/kill.py --upserts``. One trial:

1. a child process upserts the records in batches (``fresh``: into a new index;
   ``change``: an index holding the original records gets changed titles, replaced
   and dropped images), in its own process group;
2. after a random delay drawn from an uninterrupted run's duration, SIGKILL;
3. the same upserts run again to completion (as the backend's retry would);
4. verify: exactly the expected rows (one text row per record, one per distinct
   image), ids and uris unique, every vector the fresh embedding of its own text or
   image, every row carrying its record's id, the published snapshot at the table's
   version, and the ANN index returning each row for its own vector.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BATCH = 25

_CHILD = r"""
import sys, json
sys.path.insert(0, {root!r})
from mmsearch.indexer.upsert import create_index, upsert_records
from tests.kill_harness import make_encoder
enc = make_encoder("fake")
records = json.loads(open({records!r}).read())
create_index({index!r}, enc.spec, encoder=enc)
print("ready", flush=True)
for start in range(0, len(records), {batch}):
    upsert_records({index!r}, records[start:start + {batch}], encoder=enc)
print("done", flush=True)
"""


def make_records(catalog: Any, *, changed: bool = False) -> list[dict[str, Any]]:
    """One record per catalog row; every fourth has a second image. ``changed``: every
    fifth title is new, every seventh record's main image is another, every fourth
    drops its second image."""
    rows = catalog.rows
    out = []
    for i, row in enumerate(rows):
        images = [str(catalog.root / row["file"])]
        if i % 4 == 0 and not changed:
            images.append(str(catalog.root / rows[(i + 1) % len(rows)]["file"]))
        title = row["caption"]
        if changed and i % 5 == 0:
            title = f"renamed {i} {title}"
        if changed and i % 7 == 0:
            images[0] = str(catalog.root / rows[(i + 3) % len(rows)]["file"])
        out.append({"id": f"r{i}", "title": title, "price": row["price"], "images": images})
    return out


@dataclass
class UpsertTrial:
    trial: int
    kill_after_s: float
    rows_after_kill: int
    embedded_on_rerun: int
    problems: list[str] = field(default_factory=list)


def expected_rows(records: list[dict[str, Any]], enc: Any) -> dict[tuple[str, str], np.ndarray]:
    """(record id, "text" or image sha256) → the vector its row must hold."""
    import hashlib

    from mmsearch.indexer.decode import decode_bytes

    out: dict[tuple[str, str], np.ndarray] = {}
    texts = enc.encode_texts([r["title"] for r in records])
    for record, vector in zip(records, texts, strict=True):
        out[(record["id"], "text")] = vector
        for path in record["images"]:
            data = Path(path).read_bytes()
            sha = hashlib.sha256(data).hexdigest()
            array = decode_bytes(data, enc.image_size)
            out[(record["id"], sha)] = enc.encode_images(array[None])[0]
    return out


def verify(index: Path, records: list[dict[str, Any]], enc: Any) -> list[str]:
    from mmsearch.engine import SearchIndex
    from mmsearch.storage.schema import fixed_list_to_numpy
    from mmsearch.storage.table import ItemStore

    want = expected_rows(records, enc)
    store = ItemStore.open(index)
    tbl = store.scan(["id", "uri", "kind", "sha256", "metadata", "vector"])
    vectors = fixed_list_to_numpy(tbl.column("vector"), store.dim)
    rows = tbl.drop(["vector"]).to_pylist()
    problems = []
    if len(rows) != len(want):
        problems.append(f"{len(rows)} rows, expected {len(want)}")
    if len({r["id"] for r in rows}) != len(rows) or len({r["uri"] for r in rows}) != len(rows):
        problems.append("duplicate ids or uris")
    seen = set()
    for row, vector in zip(rows, vectors, strict=True):
        key = (
            json.loads(row["metadata"])["id"],
            "text" if row["kind"] == "text" else row["sha256"],
        )
        seen.add(key)
        if key not in want:
            problems.append(f"unexpected row {row['uri']}")
        elif not np.allclose(vector, want[key], atol=1e-4):
            problems.append(f"row {row['uri']} holds another vector")
    if missing := set(want) - seen:
        problems.append(f"{len(missing)} rows missing, e.g. {sorted(missing)[0]}")
    engine = SearchIndex(index, encoder=enc)
    if engine.snapshot.table_version != store.version:
        problems.append("the published snapshot is not the table's version")
    ids = np.asarray([r["id"] for r in rows], np.int64)
    for kind in ("image", "text"):
        pick = np.asarray([r["kind"] == kind for r in rows])
        for vector, row_id in zip(vectors[pick][::7], ids[pick][::7], strict=True):
            hit = engine.search_vector(vector, k=1, kind=kind, exact=True)[0]
            if hit.id != row_id and hit.score < float(vector @ vector) - 1e-4:
                problems.append(f"the {kind} index does not return row {row_id} for its vector")
    return problems[:5]


def _start(index: Path, records_file: Path) -> subprocess.Popen[str]:
    code = _CHILD.format(root=str(ROOT), records=str(records_file), index=str(index), batch=BATCH)
    return subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        text=True, start_new_session=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip


def run_upsert_trials(
    catalog: Any, workdir: Path, *, trials: int, seed: int = 0, mode: str = "fresh", log: Any = None
) -> list[UpsertTrial]:
    """Runs ``trials`` kill / upsert again / verify cycles (see the module docstring)."""
    from mmsearch.indexer.upsert import create_index, upsert_records

    from mmsearch.storage.table import ItemStore
    from tests.kill_harness import make_encoder

    enc = make_encoder("fake")
    workdir.mkdir(parents=True, exist_ok=True)
    records = make_records(catalog, changed=mode == "change")
    records_file = workdir / "records.json"
    records_file.write_text(json.dumps(records))
    base = None
    if mode == "change":
        base = workdir / "base"
        create_index(base, enc.spec, encoder=enc)
        upsert_records(base, make_records(catalog), encoder=enc)

    def fresh(path: Path) -> None:
        if base is not None:
            shutil.copytree(base, path)

    fresh(workdir / "timing")
    proc = _start(workdir / "timing", records_file)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    t0 = time.perf_counter()
    proc.wait(timeout=900)
    window = time.perf_counter() - t0
    rng = random.Random(seed)
    results = []
    for trial in range(trials):
        index = workdir / f"trial-{trial}"
        fresh(index)
        proc = _start(index, records_file)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        delay = rng.uniform(0.0, window * 1.05)
        time.sleep(delay)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=60)
        rows = ItemStore.open(index).count()
        embedded = 0
        for start in range(0, len(records), BATCH):
            embedded += upsert_records(index, records[start : start + BATCH], encoder=enc).embedded
        result = UpsertTrial(trial, round(delay, 3), rows, embedded)
        result.problems = verify(index, records, enc)
        results.append(result)
        if log is not None:
            log(json.dumps(result.__dict__))
        shutil.rmtree(index, ignore_errors=True)
    return results
