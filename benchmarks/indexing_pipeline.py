"""Pipeline efficiency: model-only images/s vs end-to-end indexing from JPEG files.

    python benchmarks/indexing_pipeline.py --n 200 --n-large 8 --models mmsearch-tiny,ViT-B-32

On one generated folder of photo-sized JPEGs (``--n`` at 800×600 plus ``--n-large``
at 4000×3000), for each model and backend (torch, onnx): model-only images/s on
pre-decoded uint8 arrays, then end-to-end images/s of ``run_index`` (decode workers,
embedding, LanceDB writes, ANN build) from the files, with the model already loaded.
Efficiency = end-to-end / model-only. Also: ONNX-vs-torch agreement (min cosine per
item), and with ``--rclip PATH`` the images/s of ``rclip`` indexing the same folder
in the same run. With ``--texts N``: texts/s of a generated N-row CSV, model only
(pre-tokenised), tokenise-then-embed in one thread, and end-to-end ``run_index``
(tokenised ahead on the prefetch thread). ``--skip-images`` times texts only.
ViT-B-32 needs random weights in the HF cache (offline_weights.py).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmsearch.indexer.decode import decode_file  # noqa: E402
from mmsearch.indexer.pipeline import IndexOptions, run_index  # noqa: E402

from benchmarks.rclip_offline import fresh_datadir, prepare  # noqa: E402
from benchmarks.startup import make_photos  # noqa: E402
from mmsearch.models.backends import load_encoder  # noqa: E402
from mmsearch.models.spec import ModelSpec  # noqa: E402


def model_only_rate(encoder, arrays: np.ndarray, batch_size: int) -> float:
    encoder.encode_images(arrays[:batch_size])  # warm-up (first-call allocations)
    t0 = time.perf_counter()
    for start in range(0, len(arrays), batch_size):
        encoder.encode_images(arrays[start : start + batch_size])
    return len(arrays) / (time.perf_counter() - t0)


def end_to_end_rate(
    encoder, spec: ModelSpec, folder: Path, work: Path, backend: str, batch_size: int
) -> float:
    index_dir = Path(tempfile.mkdtemp(prefix=f"idx-{backend}-", dir=work))
    opts = IndexOptions(batch_size=batch_size, backend=backend)
    t0 = time.perf_counter()
    report = run_index([folder], index_dir, spec, options=opts, encoder=encoder)
    elapsed = time.perf_counter() - t0
    shutil.rmtree(index_dir, ignore_errors=True)
    return report.added / elapsed


def text_rates(encoder, spec: ModelSpec, work: Path, n: int) -> tuple[float, float, float]:
    """Texts/s of a text collection: (model only on pre-tokenised batches, tokenise then
    embed in one thread, end-to-end ``run_index`` from a CSV with the prefetch thread)."""
    from mmsearch.indexer.textindex import TEXT_BATCH_SIZE

    rng = np.random.default_rng(0)
    words = ["red", "blue", "floral", "striped", "linen", "shirt", "dress", "hat", "café", "left"]
    texts = [" ".join(rng.choice(words, size=int(rng.integers(3, 14)))) + f" {i}" for i in range(n)]
    batches = [texts[i : i + TEXT_BATCH_SIZE] for i in range(0, n, TEXT_BATCH_SIZE)]
    tokens = [encoder.tokenize(b) for b in batches]
    encoder.encode_tokens(tokens[0][:8])  # warm-up
    t0 = time.perf_counter()
    for t in tokens:
        encoder.encode_tokens(t)
    model = n / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for b in batches:
        encoder.encode_tokens(encoder.tokenize(b))
    serial = n / (time.perf_counter() - t0)
    csv_path = work / f"texts-{n}.csv"
    csv_path.write_text("caption\n" + "\n".join(texts) + "\n", encoding="utf-8")
    index_dir = Path(tempfile.mkdtemp(prefix="idx-text-", dir=work))
    opts = IndexOptions(build_index=False, backend=getattr(encoder, "backend", "torch"))
    t0 = time.perf_counter()
    report = run_index([csv_path], index_dir, spec, options=opts, encoder=encoder)
    e2e = report.added / (time.perf_counter() - t0)
    shutil.rmtree(index_dir, ignore_errors=True)
    return model, serial, e2e


def rclip_rate(rclip: str, models: Path, folder: Path, n: int, work: Path) -> float:
    """Images/s of ``rclip`` indexing ``folder`` into a fresh database (then one query)."""
    data = fresh_datadir(models, work)
    env = dict(os.environ, RCLIP_DATADIR=str(data), HF_HUB_OFFLINE="1")
    t0 = time.perf_counter()
    subprocess.run([rclip, "-f", "x"], cwd=folder, env=env, check=True, stdout=subprocess.DEVNULL)
    return n / (time.perf_counter() - t0)


def report_int8(spec: ModelSpec, arrays: np.ndarray, batch_size: int, fp32: object | None) -> None:
    """int8 ONNX: accepted (recall@10 vs fp32 >= 0.99, measured at export) or refused."""
    import json

    from mmsearch.errors import ModelLoadError

    try:
        int8 = load_encoder(spec, device="cpu", backend="onnx", quantize="int8")
    except ModelLoadError as exc:
        print(f"{spec.name:16s} int8     refused: {exc}")
        return
    recall = json.loads((int8.export_dir / "meta.json").read_text()).get("int8_recall_at_10")
    rate = model_only_rate(int8, arrays, batch_size)
    speedup = (
        f", {rate / model_only_rate(fp32, arrays, batch_size):.2f}x fp32 ONNX"
        if fp32 is not None
        else ""
    )
    print(
        f"{spec.name:16s} int8     {rate:17.1f} {'':17s} accepted: recall@10 vs fp32 {recall}{speedup}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--n-large", type=int, default=8)
    ap.add_argument("--models", default="mmsearch-tiny,ViT-B-32")
    ap.add_argument("--backends", default="torch,onnx")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--rclip", default=None, help="rclip executable (its own venv)")
    ap.add_argument("--int8", action="store_true", help="also try int8 ONNX (recall-gated)")
    ap.add_argument("--skip-images", action="store_true", help="no image figures")
    ap.add_argument(
        "--texts", type=int, default=0, help="also time a text collection of this many rows"
    )
    ap.add_argument(
        "--rclip-models", type=Path, default=Path("/tmp/rclip-models"), help="see rclip_offline.py"
    )
    ap.add_argument("--work", type=Path, default=Path("/tmp/mmsearch-indexing-bench"))
    args = ap.parse_args()

    folder = args.work / "photos"
    make_photos(folder, args.n, (800, 600))
    make_photos(args.work / "large", args.n_large, (4000, 3000), seed=1)
    for path in (args.work / "large").glob("*.jpg"):
        if not (folder / f"large-{path.name}").exists():
            shutil.copy(path, folder / f"large-{path.name}")
    total = len(list(folder.glob("*.jpg")))
    print(
        f"folder: {total} JPEGs ({args.n} at 800x600, {args.n_large} at 4000x3000); cores={os.cpu_count()}"
    )
    print(
        f"{'model':16s} {'backend':8s} {'model-only img/s':>17s} {'end-to-end img/s':>17s} {'efficiency':>11s}"
    )
    for name in args.models.split(","):
        spec = ModelSpec.parse(name, None)
        encoders = {
            b: load_encoder(spec, device="cpu", backend=b) for b in args.backends.split(",")
        }
        size = next(iter(encoders.values())).image_size
        paths = sorted(str(p) for p in folder.glob("*.jpg"))
        arrays = np.stack([decode_file(p, size)[0] for p in paths])
        vectors = {}
        for backend, encoder in encoders.items() if not args.skip_images else ():
            model = model_only_rate(encoder, arrays, args.batch_size)
            e2e = end_to_end_rate(encoder, spec, folder, args.work, backend, args.batch_size)
            vectors[backend] = encoder.encode_images(arrays[:32])
            print(
                f"{name:16s} {backend:8s} {model:17.1f} {e2e:17.1f} {e2e / model:11.2f}", flush=True
            )
        if args.texts:
            for backend, encoder in encoders.items():
                model, serial, e2e = text_rates(encoder, spec, args.work, args.texts)
                print(
                    f"{name:16s} {backend:8s} texts/s: model-only {model:.1f}, tokenise+embed "
                    f"serial {serial:.1f}, end-to-end {e2e:.1f} (efficiency {e2e / model:.2f})",
                    flush=True,
                )
        if args.int8:
            report_int8(spec, arrays, args.batch_size, encoders.get("onnx"))
        if {"torch", "onnx"} <= set(vectors):
            cos = np.sum(vectors["torch"] * vectors["onnx"], axis=1)
            print(f"{name:16s} onnx vs torch: min cosine per image {cos.min():.6f} (32 images)")
    if args.rclip:
        prepare(args.rclip_models)
        rate = rclip_rate(args.rclip, args.rclip_models, folder, total, args.work)
        print(f"{'rclip B-32-256':16s} {'onnx':8s} {'':17s} {rate:17.1f}")


if __name__ == "__main__":
    main()
