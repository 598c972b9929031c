"""ONNX Runtime session start-up: the exported graph vs its saved optimised form.

    HF_HUB_OFFLINE=1 python benchmarks/ort_sessions.py --model ViT-B-32 --tower text --rounds 3

For one tower of the model's ONNX export, each variant runs in a fresh process
(interleaved round by round, median): session creation seconds, the first run's seconds
(one text or one image) and the process's peak RSS.

- ``exported, ALL``: the exported graph, optimised in memory at every start (the old way);
- ``saved, prepack``: the optimised graph saved by ``create_session`` (weights in a
  memory-mapped external file), optimisers off (indexing, serving);
- ``saved, no prepack``: the same without weight pre-packing (one-shot queries).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CHILD = r"""
import json, resource, sys, time
import numpy as np
import onnxruntime as ort
from mmsearch.models import ort_session
graph, variant, tower, tokens = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
levels = ort.GraphOptimizationLevel
t0 = time.perf_counter()
if variant == "exported, ALL":
    session = ort.InferenceSession(
        graph, ort_session.session_options(2, levels.ORT_ENABLE_ALL), providers=["CPUExecutionProvider"]
    )
else:
    ort_session.set_prepacking(variant == "saved, prepack")
    session = ort_session.create_session(graph, 2)
t1 = time.perf_counter()
if tower == "text":
    feed = {"tokens": np.asarray([tokens], np.int64)}
else:
    feed = {"pixels": np.zeros((1, tokens, tokens, 3), np.uint8)}
session.run(None, feed)
t2 = time.perf_counter()
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"session": t1 - t0, "first_run": t2 - t1, "rss": rss}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--tower", default="text", choices=["text", "image"])
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    from mmsearch.models.backends import load_encoder
    from mmsearch.models.spec import ModelSpec

    encoder = load_encoder(ModelSpec.parse(args.model, None), backend="onnx")
    graph = str(encoder.export_dir / f"{args.tower}.onnx")
    variants = ["exported, ALL", "saved, prepack", "saved, no prepack"]
    run = [sys.executable, "-c", CHILD, graph]
    probe = (
        encoder.tokenize(["a photo"])[0].tolist() if args.tower == "text" else encoder.image_size
    )
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    subprocess.run(
        [*run, "saved, prepack", args.tower, json.dumps(probe)],
        env=env,
        check=True,
        capture_output=True,
    )
    rows: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
    print(f"{graph}; load average at the start {os.getloadavg()[0]:.2f}")
    for _ in range(args.rounds):
        for v in variants:
            out = subprocess.run(
                [*run, v, args.tower, json.dumps(probe)], env=env, check=True, capture_output=True
            )
            rows[v].append(json.loads(out.stdout.decode().strip().splitlines()[-1]))
    print(
        f"{'variant':20s} {'session s':>10s} {'first run s':>12s} {'sum s':>8s} {'peak RSS MiB':>13s}"
    )
    for v, got in rows.items():
        med = {k: statistics.median(r[k] for r in got) for k in ("session", "first_run", "rss")}
        total = med["session"] + med["first_run"]
        print(
            f"{v:20s} {med['session']:10.3f} {med['first_run']:12.3f} {total:8.3f} {med['rss']:13.0f}"
        )
    print(f"load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
