"""Text embedding on the positions a batch uses vs the whole context, in one process.

A causal text tower's export takes any sequence length (``text_any_length`` in its
meta; :mod:`mmsearch.models.text_length`), and ``OnnxEncoder`` cuts each batch after
its last end-of-text token. This feeds the same graph both ways, side by side, rounds
interleaved: the token rows padded to the whole context (what every text cost before)
and cut (what it costs now), for one query text and for batches of catalog captions
(``mmsearch.datasets.synthetic``), and reports texts/s, milliseconds and the smallest
cosine between the two.

    HF_HUB_OFFLINE=1 python benchmarks/text_length.py --model ViT-B-32/laion2b_s34b_b79k
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmsearch.datasets.synthetic import generate_catalog  # noqa: E402
from mmsearch.models import ModelSpec  # noqa: E402
from mmsearch.models.backends import load_onnx_encoder  # noqa: E402
from mmsearch.models.onnx_encoder import used_length  # noqa: E402


def _timed(run, feed: np.ndarray) -> float:
    t0 = time.perf_counter()
    run(feed)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="ViT-B-32/laion2b_s34b_b79k")
    ap.add_argument("--texts", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--query", default="floral shirt")
    args = ap.parse_args()
    name, _, pretrained = args.model.partition("/")
    encoder = load_onnx_encoder(ModelSpec(name, pretrained))
    if not encoder.text_any_length:
        sys.exit(f"{args.model}: its text graph takes the whole context only (not causal)")
    session = encoder._session("text")

    def run(tokens: np.ndarray, cut: bool) -> np.ndarray:
        out = []
        for i in range(0, len(tokens), args.batch):
            chunk = tokens[i : i + args.batch]
            chunk = chunk[:, : used_length(chunk)] if cut else chunk  # as OnnxEncoder cuts
            out.append(session.run(None, {"tokens": np.ascontiguousarray(chunk)})[0])
        return np.concatenate(out)

    with tempfile.TemporaryDirectory() as tmp:
        rows = generate_catalog(Path(tmp), n=min(args.texts, 400), seed=0, image_size=16).rows
    captions = [str(r["caption"]) for r in rows]
    texts = (captions * (args.texts // len(captions) + 1))[: args.texts]
    tokens = encoder.tokenize(texts)
    query = encoder.tokenize([args.query])
    lengths = [used_length(tokens[i : i + 1]) for i in range(len(tokens))]
    cosine = float(np.sum(run(tokens, False) * run(tokens, True), axis=1).min())
    times: dict[str, list[float]] = {
        k: [] for k in ("batch whole", "batch cut", "q whole", "q cut")
    }
    print(f"load average at the start: {os.getloadavg()}")
    for _ in range(args.rounds):
        for label, cut in (("whole", False), ("cut", True)):
            times[f"batch {label}"].append(_timed(lambda t, c=cut: run(t, c), tokens))
        for _ in range(20):
            for label, cut in (("whole", False), ("cut", True)):
                times[f"q {label}"].append(_timed(lambda t, c=cut: run(t, c), query))
    n, ctx = len(texts), tokens.shape[1]
    print(f"{args.model}: {n} captions, tokens per caption median {statistics.median(lengths)}, "
          f"max {max(lengths)}; context {ctx}; batches of {args.batch}")  # fmt: skip
    for label in ("whole", "cut"):
        rate = n / statistics.median(times[f"batch {label}"])
        ms = 1e3 * statistics.median(times[f"q {label}"])
        print(f"  {label:5s}: {rate:8.0f} texts/s   one query ({args.query!r}) {ms:6.1f} ms")
    print(f"  smallest cosine whole vs cut: {cosine:.7f}")
    print(f"load average at the end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
