"""int8 ONNX acceptance and speed: recall@10 against fp32 embeddings, and the speed ratio.

    HF_HUB_OFFLINE=1 python benchmarks/quantize_int8.py --model ViT-B-32 --rounds 3

Exports the model's fp32 ONNX towers (cached), quantises a copy to int8 exactly as
``--quantize int8`` does (:func:`mmsearch.models.quantize.quantize_graphs`), measures
recall@10 of the int8 embeddings against fp32 on the generated collection the
acceptance uses (:func:`mmsearch.models.quantize.measure_int8_recall`: 400 images,
100 text and 100 image queries), then times both encoders on the same inputs,
interleaved round by round (median): texts/s and images/s, int8 / fp32.
ViT-B-32 needs random weights in the HF cache (offline_weights.py): they make the
speed figures real and say nothing about how a trained model quantises.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmsearch.models.onnx_encoder import OnnxEncoder  # noqa: E402
from mmsearch.models.onnx_export import export_onnx  # noqa: E402
from mmsearch.models.prompts import calibration_prompts  # noqa: E402
from mmsearch.models.quantize import (  # noqa: E402
    MIN_RECALL_AT_10,
    generated_images,
    measure_int8_recall,
    quantize_graphs,
)
from mmsearch.models.spec import ModelSpec  # noqa: E402


def timed(fn, *args) -> float:
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--texts", type=int, default=128)
    ap.add_argument("--images", type=int, default=32)
    args = ap.parse_args()

    spec = ModelSpec.parse(args.model, None)
    fp32_dir = export_onnx(spec)
    work = Path(tempfile.mkdtemp(prefix="int8-"))
    try:
        int8_dir = work / "int8"
        shutil.copytree(fp32_dir, int8_dir, ignore=shutil.ignore_patterns("*.opt-*"))
        quantize_graphs(int8_dir)
        fp32, int8 = OnnxEncoder(fp32_dir, spec), OnnxEncoder(int8_dir, spec)
        sizes = {
            t: os.path.getsize(d / f"{t}.onnx") for d in (int8_dir,) for t in ("text", "image")
        }
        print(
            f"model {spec.key}; int8 graphs: text {sizes['text'] / 2**20:.0f} MiB, "
            f"image {sizes['image'] / 2**20:.0f} MiB; load average {os.getloadavg()[0]:.2f}"
        )
        recalls = measure_int8_recall(fp32, int8, calibration_prompts(0))
        worst = min(recalls.values())
        verdict = "accepted" if worst >= MIN_RECALL_AT_10 else "refused"
        print(f"recall@10 int8 vs fp32: {recalls} -> {verdict} (bar {MIN_RECALL_AT_10})")

        texts = (calibration_prompts(0) * 4)[: args.texts]
        images = generated_images(args.images, fp32.image_size, seed=2)
        times: dict[tuple[str, str], list[float]] = {}
        for _ in range(args.rounds):
            for name, enc in (("fp32", fp32), ("int8", int8)):
                times.setdefault((name, "text"), []).append(timed(enc.encode_texts, texts))
                times.setdefault((name, "image"), []).append(timed(enc.encode_images, images))
        for kind, n in (("text", len(texts)), ("image", len(images))):
            f32 = statistics.median(times[("fp32", kind)][1:] or times[("fp32", kind)])
            i8 = statistics.median(times[("int8", kind)][1:] or times[("int8", kind)])
            print(
                f"{kind:5s}: fp32 {n / f32:8.1f}/s  int8 {n / i8:8.1f}/s  int8/fp32 {f32 / i8:.2f}x"
            )
        print(f"load average at the end {os.getloadavg()[0]:.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
