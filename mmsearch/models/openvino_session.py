"""OpenVINO as a CPU runtime of the exported ONNX graphs, and the choice of runtime.

OpenVINO's CPU plugin runs the same exported graphs as ONNX Runtime, with the same
outputs in fp32 (cosine >= 0.999999 per item on ViT-B-32 and mmsearch-tiny;
``tests/test_onnx.py``). In bfloat16 (``openvino-bf16``), on CPUs that compute it
natively (AVX512_BF16, AMX), ViT-B-32's image tower ran 2.0x ONNX Runtime's fp32
images/s on a 2-core AVX-512 EPYC with per-image cosine >= 0.9999 to it, and a
300-photo index run about 1.8x faster for no more memory than ONNX Runtime fp32
(``benchmarks/RESULTS.md``). :func:`cpu_runtime` chooses: ``auto`` (the default) is
bf16 on OpenVINO where it can run, else ONNX Runtime.

Each graph is converted to OpenVINO's IR once (:func:`saved_ir`) and its compiled form
cached beside it, so later sessions start in about 0.1 s and memory-map their weights.

:class:`OpenVinoSession` answers ``run(None, {name: array})`` like an ONNX Runtime
session, so :class:`mmsearch.models.onnx_encoder.OnnxEncoder` uses either alike.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np

from mmsearch.models.exports import publish_derived

RUNTIME_ENV = "MMSEARCH_CPU_RUNTIME"
#: ``auto`` (the default) resolves to one of the others (:func:`cpu_runtime`);
#: ``openvino-bf16``: OpenVINO computing in bfloat16, on CPUs that do so natively
#: (AVX512_BF16 or AMX).
RUNTIMES = ("auto", "onnxruntime", "openvino", "openvino-bf16")

_fast_start = False


def prefer_fast_start(enabled: bool = True) -> None:
    """Process-wide: ``auto`` resolves to ONNX Runtime even where OpenVINO bf16 would be
    chosen. For a process that embeds one query and exits, whose time is the runtime's
    start, not its arithmetic: a one-shot ViT-B-32 text query took 0.45 s on ONNX Runtime
    and 0.62 s on OpenVINO bf16 (importing OpenVINO is 0.12 s of it)."""
    global _fast_start
    _fast_start = bool(enabled)


def cpu_runtime(wanted: str | None = None, *, quantized: bool = False) -> str:
    """The runtime to run graphs on: ``wanted``, else what ``$MMSEARCH_CPU_RUNTIME`` asks
    for, else ``auto``.

    ``auto`` is ``openvino-bf16`` where OpenVINO is installed and the CPU computes
    bfloat16 natively (about twice ONNX Runtime's fp32 images/s for ViT-B-32, vectors
    within cosine 0.9999; ``benchmarks/RESULTS.md``), unless the graphs are ``quantized``
    (int8 is ONNX Runtime's) or the process asked for a fast start
    (:func:`prefer_fast_start`); else ``onnxruntime``. A named runtime that cannot run
    (unknown, OpenVINO not installed, bf16 on a CPU without native bf16) is an error,
    not a silent fallback.
    """
    from mmsearch.errors import ModelLoadError

    wanted = (wanted or os.environ.get(RUNTIME_ENV, "")).strip().lower() or "auto"
    if wanted not in RUNTIMES:
        raise ModelLoadError(f"{RUNTIME_ENV}={wanted!r}: choose one of {', '.join(RUNTIMES)}")
    if wanted == "auto":  # cheapest test first: a one-shot query looks nothing up
        bf16 = not (quantized or _fast_start) and _has_openvino() and native_bf16()
        return "openvino-bf16" if bf16 else "onnxruntime"
    if wanted.startswith("openvino") and not _has_openvino():
        raise ModelLoadError(f"{RUNTIME_ENV}={wanted} needs OpenVINO: pip install openvino")
    if wanted == "openvino-bf16" and not native_bf16():
        raise ModelLoadError(
            f"{RUNTIME_ENV}=openvino-bf16: this CPU computes bf16 only by emulation "
            "(no AVX512_BF16 or AMX); use openvino or onnxruntime"
        )
    return wanted


def _has_openvino() -> bool:
    return importlib.util.find_spec("openvino") is not None


@functools.cache
def native_bf16() -> bool:
    """Whether OpenVINO's CPU plugin computes bfloat16 natively on this CPU (asked once)."""
    import openvino as ov

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def ir_dir(graph: Path, root: Path, precision: str) -> Path:
    """Where ``graph``'s IR for ``precision`` is kept: named after the graph's size and
    mtime and OpenVINO's version, so a re-made export or another OpenVINO never meets a
    stale one."""
    import openvino as ov

    st = graph.stat()
    version = ov.__version__.split("-")[0]
    return root / f"{graph.stem}.ir-{precision}-{st.st_size}-{st.st_mtime_ns}-ov{version}"


def saved_ir(graph: Path, root: Path, precision: str) -> Path | None:
    """``graph`` as OpenVINO IR (its ``.xml``; the weights beside it), converted now when
    not kept yet; None when it cannot be written (a read-only cache, a full disk: the
    caller compiles the ONNX graph, which raises if the graph itself is bad).

    For ``bf16`` the weights are stored in float16 (half the bytes: the CPU plugin widens
    them to bf16 once at compile time), for ``fp32`` as they are. Reading an IR
    memory-maps its weights, where compiling the ONNX graph (or its cached blob) held the
    float32 weights besides the compiled ones: on ViT-B-32's image tower in bf16, 822 ->
    515 MiB after a batch (``benchmarks/RESULTS.md``).
    """
    import openvino as ov

    saved = ir_dir(graph, root, precision)
    xml = saved / f"{graph.stem}.xml"
    if xml.is_file():
        return xml
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{saved.name}.", dir=root))
    except OSError:
        return None
    try:
        # read by the Core's ONNX frontend, not ``ov.convert_model``: that tool reports
        # usage over the network (from a forked process) unless the user opted out
        model = ov.Core().read_model(str(graph))
        ov.save_model(model, str(tmp / xml.name), compress_to_fp16=precision != "fp32")
        del model
    except Exception:  # noqa: BLE001 - a full disk, say: the ONNX graph is compiled instead
        shutil.rmtree(tmp, ignore_errors=True)
        return None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    # the IRs of older graphs or OpenVINO versions, and the compiled-blob caches of the
    # ONNX graphs that the IRs replaced (which held every weight in float32)
    publish_derived(tmp, saved, [f"{graph.stem}.ir-{precision}-*", f"{graph.stem}.openvino*"])
    return xml


def compile_options(threads: int, precision: str) -> dict[str, Any]:
    """The CPU plugin's settings for one graph: latency, one stream, ``threads`` threads,
    arithmetic in ``precision`` (``fp32`` or ``bf16``)."""
    return {
        "PERFORMANCE_HINT": "LATENCY",
        "NUM_STREAMS": 1,
        "INFERENCE_NUM_THREADS": int(threads),
        # never bf16/fp16 behind the caller's back: only when asked for
        "INFERENCE_PRECISION_HINT": {"fp32": "f32", "bf16": "bf16"}[precision],
    }


class OpenVinoSession:
    """One graph compiled for the CPU (one stream, ``threads`` threads), computing in
    ``precision``: ``fp32``, or ``bf16`` where asked for (``openvino-bf16``).

    The ONNX graph is converted to OpenVINO's IR once and kept (:func:`saved_ir`); the IR's
    weights file is memory-mapped and its compiled form cached beside it, so later
    sessions start in about 0.1 s. A read-only cache compiles the ONNX graph every time.
    """

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
        root = Path(cache_root) if cache_root is not None else graph.parent
        options = compile_options(threads, precision)
        core = ov.Core()
        xml = saved_ir(graph, root, precision)
        if xml is None:
            self._compiled = core.compile_model(str(graph), "CPU", options)
        else:
            core.set_property({"CACHE_DIR": str(xml.parent / "compiled")})
            try:
                self._compiled = core.compile_model(str(xml), "CPU", options)
            except RuntimeError:  # damaged (e.g. a truncated weights file): made again
                shutil.rmtree(xml.parent, ignore_errors=True)
                xml = saved_ir(graph, root, precision)
                self._compiled = core.compile_model(str(xml or graph), "CPU", options)
        self._request = self._compiled.create_infer_request()
        # An infer request is not safe to share between threads (a server embeds queries
        # on several); with one stream, concurrent requests would run one after another
        # anyway, so they take turns on this one and its buffers.
        self._lock = threading.Lock()
        self._inputs = [port.get_any_name() for port in self._compiled.inputs]

    def run(self, output_names: Any, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        """The graph's first output for ``feed`` (ONNX Runtime's ``Session.run`` shape);
        callable from any thread."""
        with self._lock:
            results = self._request.infer({name: feed[name] for name in self._inputs})
            out = np.array(results[self._compiled.outputs[0]], dtype=np.float32, copy=True)
        return [out]
