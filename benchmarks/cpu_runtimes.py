"""CPU runtimes for the image tower: ONNX Runtime settings and OpenVINO, against the CPU's peak.

    HF_HUB_OFFLINE=1 python benchmarks/cpu_runtimes.py --model ViT-B-32 --batch 32 --rounds 3

On the model's exported image graph (uint8 pixels in, unit vectors out; from
``load_encoder(..., backend="onnx")``), each variant embeds the same seeded batch,
interleaved round by round (best round kept, the others are noise from the shared
machine). Reported: images/s, the share of the CPU's fp32 peak that rate is
(``--gflop`` per image, default ViT-B-32's 8.8 at 224 px: 4.4 GMAC), and the worst
cosine against the ONNX Runtime default per image. The peak is measured in the same
run: the best of a few large float32 matrix products on every core, by numpy's BLAS and by
ONNX Runtime's GEMM (:func:`matmul_peak_gflops`).

Variants: ``ort`` (the saved optimised graph as indexing loads it: pre-packed
weights), ``ort-all`` (the exported graph at ONNX Runtime's ``ALL`` level, CPU-specific
layouts), ``openvino`` (OpenVINO's CPU plugin, fp32, latency hint, one stream) and
``openvino-tput`` (throughput hint). OpenVINO is optional (``pip install openvino``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _best_gflops(product, n: int, repeats: int) -> float:
    product()  # warm-up: thread pool, page faults, packing
    best = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        product()
        best = max(best, 2 * n**3 / (time.perf_counter() - t0) / 1e9)
    return best


def matmul_gflops(n: int = 4096, repeats: int = 5) -> dict[str, float]:
    """Best float32 GFLOP/s of an ``n``×``n`` product on every core, per library: numpy's
    BLAS and ONNX Runtime's own GEMM (MLAS, the kernels the image tower runs on)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    out = {"numpy": _best_gflops(lambda: a @ b, n, repeats)}
    try:
        import onnxruntime as ort
        from onnx import TensorProto, helper
    except ImportError:
        return out
    spec = [n, n]
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["A", "B"], ["C"])],
        "matmul",
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, spec) for x in "AB"],
        [helper.make_tensor_value_info("C", TensorProto.FLOAT, spec)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = len(os.sched_getaffinity(0))
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    out["onnxruntime"] = _best_gflops(lambda: session.run(None, {"A": a, "B": b}), n, repeats)
    return out


def matmul_peak_gflops(n: int = 4096, repeats: int = 5) -> float:
    """The CPU's fp32 peak as the best large matrix product of :func:`matmul_gflops`.

    numpy's BLAS alone is not the peak: on the AVX-512 EPYC of the test machine its
    OpenBLAS (AVX2 kernels) reached 250 GFLOP/s where ONNX Runtime's GEMM reached 430-445,
    and the image tower itself ran at about 340 (benchmarks/RESULTS.md, "Quiet machine,
    second pass")."""
    return max(matmul_gflops(n, repeats).values())


def ort_variant(graph: Path, level: str, threads: int):
    import onnxruntime as ort

    from mmsearch.models.ort_session import create_session, session_options

    if level == "saved":
        session = create_session(graph, threads)
    else:
        options = session_options(threads, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
        session = ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {"pixels": x})[0]


def openvino_variant(graph: Path, hint: str, threads: int):
    import openvino as ov

    core = ov.Core()
    config = {
        "PERFORMANCE_HINT": hint,
        "INFERENCE_NUM_THREADS": threads,
        "INFERENCE_PRECISION_HINT": "f32",
    }
    if hint == "LATENCY":
        config["NUM_STREAMS"] = 1
    compiled = core.compile_model(core.read_model(str(graph)), "CPU", config)
    if hint == "LATENCY":
        return lambda x: compiled(x)[0]
    queue = ov.AsyncInferQueue(compiled)  # one request a stream, each on part of the batch
    streams = max(1, compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))

    def run(x: np.ndarray) -> np.ndarray:
        parts = np.array_split(x, min(streams, len(x)))
        out: list[np.ndarray] = [np.empty(0)] * len(parts)

        def done(request, i: int) -> None:
            out[i] = request.get_output_tensor(0).data.copy()

        queue.set_callback(done)
        for i, part in enumerate(parts):
            queue.start_async({0: part}, i)
        queue.wait_all()
        return np.concatenate(out)

    return run


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--gflop", type=float, default=8.8, help="GFLOP per image of the model")
    ap.add_argument("--variants", default="ort,ort-all,openvino,openvino-tput")
    args = ap.parse_args()

    from mmsearch.models.backends import load_encoder
    from mmsearch.models.onnx_encoder import onnx_threads
    from mmsearch.models.spec import ModelSpec

    encoder = load_encoder(ModelSpec.parse(args.model, None), backend="onnx")
    graph = encoder.export_dir / "image.onnx"
    threads = onnx_threads()
    size = encoder.image_size
    pixels = np.random.default_rng(0).integers(0, 256, (args.batch, size, size, 3), dtype=np.uint8)
    makers = {
        "ort": lambda: ort_variant(graph, "saved", threads),
        "ort-all": lambda: ort_variant(graph, "all", threads),
        "openvino": lambda: openvino_variant(graph, "LATENCY", threads),
        "openvino-tput": lambda: openvino_variant(graph, "THROUGHPUT", threads),
    }
    runs = {}
    for name in args.variants.split(","):
        try:
            runs[name] = makers[name]()
        except ImportError as exc:
            print(f"{name}: skipped ({exc})")
    reference = runs[next(iter(runs))](pixels)
    for run in runs.values():
        run(pixels[: min(4, args.batch)])  # warm-up
    print(f"load average at the start: {os.getloadavg()}; {threads} threads, batch {args.batch}")
    peak = 0.0
    rates: dict[str, float] = {name: 0.0 for name in runs}
    cosines: dict[str, float] = {}
    for _ in range(args.rounds):
        peak = max(peak, matmul_peak_gflops())
        for name, run in runs.items():
            t0 = time.perf_counter()
            out = run(pixels)
            rates[name] = max(rates[name], args.batch / (time.perf_counter() - t0))
            cosines[name] = float(np.sum(out * reference, axis=1).min())
    print(f"fp32 matmul peak: {peak:.1f} GFLOP/s (best of {args.rounds} rounds)")
    print(f"{'variant':16s} {'images/s':>9s} {'GFLOP/s':>8s} {'of peak':>8s} {'min cosine':>11s}")
    for name, rate in rates.items():
        gflops = rate * args.gflop
        print(f"{name:16s} {rate:9.2f} {gflops:8.1f} {gflops / peak:8.1%} {cosines[name]:11.6f}")
    print(f"load average at the end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
