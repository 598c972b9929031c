"""OpenVINO's resident memory by what the CPU plugin compiles from: ONNX graph or IR.

    HF_HUB_OFFLINE=1 python benchmarks/openvino_memory.py --model ViT-B-32/laion2b_s34b_b79k

Each variant runs in a fresh process, twice (the first fills its compiled-graph cache;
the second is reported): compile the model's exported image graph for the CPU in
``--precision`` (default bf16; needs a CPU with native bf16), embed one seeded batch of
``--batch`` images, and report the compile time, the process's RSS after the batch and
the worst per-image cosine against ONNX Runtime fp32 on the same batch.

Variants: ``onnx-cache`` (the ONNX graph with a compiled-graph cache: what
``OpenVinoSession`` did before it kept IRs), ``onnx`` (no cache), ``session`` (
``OpenVinoSession`` as indexing uses it: the IR, fp16 weights for bf16, with its cache),
``ir`` (that IR without a cache) and ``ir-fp32`` (an IR keeping fp32 weights).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

VARIANTS = ("onnx-cache", "onnx", "session", "ir", "ir-fp32")


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _batch(n: int, size: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _onnxruntime_fp32(graph: Path, x: np.ndarray) -> np.ndarray:
    """The reference: unit vectors of ONNX Runtime fp32 on the exported graph."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    out = session.run(None, {"pixels": x})[0]
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def child(variant: str, graph: Path, work: Path, precision: str, batch: int, size: int) -> None:
    """One variant in this process; prints one JSON line."""
    import openvino as ov

    from mmsearch.models.openvino_session import OpenVinoSession, compile_options, saved_ir

    options = compile_options(2, precision)
    x = _batch(batch, size)
    t0 = time.perf_counter()
    if variant == "session":
        session = OpenVinoSession(graph, 2, work, precision=precision)
        run = lambda: session.run(None, {"pixels": x})[0]  # noqa: E731
    else:
        core = ov.Core()
        source: Path | None = graph
        if variant.startswith("ir"):
            keep = work / variant
            keep.mkdir(exist_ok=True)
            source = saved_ir(graph, keep, "fp32" if variant == "ir-fp32" else precision)
        if variant == "onnx-cache":
            core.set_property({"CACHE_DIR": str(work / "onnx-cache")})
        compiled = core.compile_model(str(source), "CPU", options)
        run = lambda: np.asarray(compiled(x)[0])  # noqa: E731
    compile_s = time.perf_counter() - t0
    out = run()
    np.save(work / f"{variant}.npy", out)
    print(json.dumps({"compile_s": compile_s, "rss_mib": _rss_mib()}))


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", default="ViT-B-32/laion2b_s34b_b79k")
    ap.add_argument("--precision", default="bf16", choices=["bf16", "fp32"])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--graph", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--work", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--size", type=int, default=224, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.graph, args.work, args.precision, args.batch, args.size)
        return

    from mmsearch.models.backends import load_encoder
    from mmsearch.models.spec import ModelSpec

    name, _, pretrained = args.model.partition("/")
    encoder = load_encoder(ModelSpec.parse(name, pretrained or None), backend="onnx")
    graph = encoder.export_dir / "image.onnx"
    reference = _onnxruntime_fp32(graph, _batch(args.batch, encoder.image_size))
    with tempfile.TemporaryDirectory(prefix="ov-memory-") as tmp:
        work = Path(tmp)
        print(f"{args.model}, {args.precision}, batch {args.batch}; graph {graph}")
        print(f"{'variant':12s} {'compile s':>10s} {'RSS MiB':>8s} {'min cosine':>11s}")
        for variant in VARIANTS:
            for _ in range(2):  # the first run fills the variant's caches
                cmd = [sys.executable, __file__, "--child", variant, "--graph", str(graph)]
                cmd += ["--work", str(work), "--precision", args.precision]
                cmd += ["--batch", str(args.batch), "--size", str(encoder.image_size)]
                line = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            got = json.loads(line.strip().splitlines()[-1])
            out = np.load(work / f"{variant}.npy")
            out = out / np.linalg.norm(out, axis=1, keepdims=True)
            cosine = float(np.sum(out * reference, axis=1).min())
            print(f"{variant:12s} {got['compile_s']:10.2f} {got['rss_mib']:8.0f} {cosine:11.6f}")


if __name__ == "__main__":
    main()
