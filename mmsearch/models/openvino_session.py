"""OpenVINO as the CPU runtime of the exported ONNX graphs (``MMSEARCH_CPU_RUNTIME=openvino``).

OpenVINO's CPU plugin runs the same exported graphs as ONNX Runtime, with the same
outputs (cosine ≥ 0.999999 per item on ViT-B-32 and mmsearch-tiny; ``tests/test_onnx.py``)
and, on the image tower, more of the CPU's peak: about 1.2-1.5× ONNX Runtime's
images/s on a 2-core AVX2 machine (``benchmarks/cpu_runtimes.py``), for 180-320 MB
more resident memory while indexing (``benchmarks/RESULTS.md``). ONNX Runtime stays
the default; OpenVINO is used when asked for and installed (``pip install openvino``).
``MMSEARCH_CPU_RUNTIME=openvino-bf16`` computes in bfloat16 on CPUs that do so natively
(AVX512_BF16, AMX): on a 2-core AVX-512 EPYC, ViT-B-32's image tower ran 2.0× ONNX
Runtime's fp32 images/s with per-image cosine ≥ 0.9999 to it, and a 300-photo index
run 1.8× faster for about 300 MiB more memory (``benchmarks/RESULTS.md``).
Compiled graphs are cached beside the export (or in ``cache_root``), so later runs skip
most of compiling.

:class:`OpenVinoSession` answers ``run(None, {name: array})`` like an ONNX Runtime
session, so :class:`mmsearch.models.onnx_encoder.OnnxEncoder` uses either alike.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from pathlib import Path
from typing import Any

import numpy as np

RUNTIME_ENV = "MMSEARCH_CPU_RUNTIME"
#: ``openvino-bf16``: OpenVINO computing in bfloat16, on CPUs that do so natively
#: (AVX512_BF16 or AMX); never chosen unless asked for.
RUNTIMES = ("onnxruntime", "openvino", "openvino-bf16")


def cpu_runtime(wanted: str | None = None) -> str:
    """``wanted``, else the runtime ``$MMSEARCH_CPU_RUNTIME`` asks for (default
    ``onnxruntime``); an unknown value, OpenVINO not installed, or bf16 on a CPU without
    native bf16 is an error, not a silent fallback."""
    from mmsearch.errors import ModelLoadError

    wanted = (wanted or os.environ.get(RUNTIME_ENV, "")).strip().lower() or "onnxruntime"
    if wanted not in RUNTIMES:
        raise ModelLoadError(f"{RUNTIME_ENV}={wanted!r}: choose one of {', '.join(RUNTIMES)}")
    if wanted.startswith("openvino") and importlib.util.find_spec("openvino") is None:
        raise ModelLoadError(f"{RUNTIME_ENV}={wanted} needs OpenVINO: pip install openvino")
    if wanted == "openvino-bf16" and not native_bf16():
        raise ModelLoadError(
            f"{RUNTIME_ENV}=openvino-bf16: this CPU computes bf16 only by emulation "
            "(no AVX512_BF16 or AMX); use openvino or onnxruntime"
        )
    return wanted


@functools.cache
def native_bf16() -> bool:
    """Whether OpenVINO's CPU plugin computes bfloat16 natively on this CPU (asked once)."""
    import openvino as ov

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


class OpenVinoSession:
    """One graph compiled for the CPU (one stream, ``threads`` threads), computing in
    ``precision``: ``fp32``, or ``bf16`` where asked for (``openvino-bf16``)."""

    def __init__(
        self,
        graph: str | os.PathLike[str],
        threads: int,
        cache_root: str | os.PathLike[str] | None = None,
        *,
        precision: str = "fp32",
    ) -> None:
        import openvino as ov

        graph = Path(graph)
        core = ov.Core()
        root = Path(cache_root) if cache_root is not None else graph.parent
        tag = "" if precision == "fp32" else f"-{precision}"
        cache = root / f"{graph.stem}.openvino{tag}-{ov.__version__.split('-')[0]}"
        try:
            cache.mkdir(exist_ok=True)
            core.set_property({"CACHE_DIR": str(cache)})
        except OSError:  # a read-only cache: compile every time (only slower)
            pass
        self._compiled = core.compile_model(
            str(graph),
            "CPU",
            {
                "PERFORMANCE_HINT": "LATENCY",
                "NUM_STREAMS": 1,
                "INFERENCE_NUM_THREADS": int(threads),
                # never bf16/fp16 behind the caller's back: only when asked for
                "INFERENCE_PRECISION_HINT": {"fp32": "f32", "bf16": "bf16"}[precision],
            },
        )
        self._request = self._compiled.create_infer_request()
        self._inputs = [port.get_any_name() for port in self._compiled.inputs]

    def run(self, output_names: Any, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        """The graph's first output for ``feed`` (ONNX Runtime's ``Session.run`` shape)."""
        results = self._request.infer({name: feed[name] for name in self._inputs})
        return [np.array(results[self._compiled.outputs[0]], dtype=np.float32, copy=True)]
