"""Which backend embeds (torch or ONNX Runtime), and which backends an index has seen.

``auto`` picks ONNX Runtime on a CPU when it is installed and torch on a GPU. An index
records, in ``backends.json``, every backend (and quantisation) that wrote to it or
queried it, with that backend's embeddings of a few fixed probe texts. A different
backend of the same model spec is accepted only when its probe embeddings agree with
the first recorded ones within :data:`AGREEMENT_MIN_COSINE` per text, so vectors from
torch and ONNX (or fp32 and int8) never mix silently. This module imports neither
torch nor onnxruntime.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mmsearch.errors import ModelLoadError, ModelMismatchError
from mmsearch.models.cache import read_json, write_json_atomic
from mmsearch.models.hub import check_weights_reachable
from mmsearch.models.spec import ModelSpec

if TYPE_CHECKING:
    from mmsearch.models.base import Encoder

BACKENDS = ("auto", "torch", "onnx")
#: Per-item cosine two backends' embeddings must reach to share an index.
AGREEMENT_MIN_COSINE = 0.999
RECORD_NAME = "backends.json"
PROBE_TEXTS = (
    "a red circle on the left",
    "a photo of a dog on the beach",
    "floral summer dress, size M",
    "Blue running shoes — 42% off!",
    "a small green triangle in the center",
    "black leather bag",
)


def cuda_visible() -> bool:
    """Whether an NVIDIA GPU is visible, judged without importing torch."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return False
    gpus = Path("/proc/driver/nvidia/gpus")
    try:
        return gpus.is_dir() and any(gpus.iterdir())
    except OSError:
        return False


def choose_backend(backend: str | None, device: str | None) -> str:
    """``torch`` or ``onnx`` for a requested backend and device.

    ``auto``: ONNX Runtime on a CPU when onnxruntime is installed, else torch (torch on a
    GPU, unless torch is not installed: the demo's installation has ONNX Runtime only).
    ``onnx`` requires a CPU device.
    """
    name = (backend or "auto").lower()
    if name not in BACKENDS:
        raise ModelLoadError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    on_gpu = (device or "auto").startswith("cuda") or (
        device in (None, "", "auto") and cuda_visible()
    )
    if name == "onnx":
        if on_gpu and device not in (None, "", "auto"):
            raise ModelLoadError("the ONNX backend runs on the CPU; use --backend torch for a GPU")
        return "onnx"
    if name == "torch":
        return "torch"
    has_ort = importlib.util.find_spec("onnxruntime") is not None
    if has_ort and (not on_gpu or not torch_installed()):
        return "onnx"
    return "torch"


def torch_installed() -> bool:
    """Whether torch and open_clip can be imported (checked without importing them)."""
    return all(importlib.util.find_spec(name) is not None for name in ("torch", "open_clip"))


#: What a torch-less installation (``scripts/demo.sh``) lacks for a torch step.
FULL_INSTALL = "pip install mmsearch (the full installation; the demo's has ONNX Runtime only)"


def load_encoder(
    spec: ModelSpec,
    device: str | None = None,
    *,
    dtype: str | None = None,
    backend: str | None = "torch",
    quantize: str | None = None,
) -> Any:
    """An encoder for ``spec`` on the chosen backend (see :func:`choose_backend`).

    Both kinds have the same methods: ``encode_texts``, ``encode_images``,
    ``encode_pil``, and ``spec``, ``dim``, ``image_size``, ``backend``.

    >>> enc = load_encoder(ModelSpec("mmsearch-tiny"), backend="onnx")  # doctest: +SKIP
    """
    chosen = choose_backend(backend, device)
    if chosen == "onnx":
        if dtype not in (None, "fp32", "float32"):
            raise ModelLoadError(
                "the ONNX backend runs in fp32 (optionally --quantize int8); drop --dtype"
            )
        return load_onnx_encoder(spec, quantize=quantize)
    if quantize:
        raise ModelLoadError("--quantize applies to the ONNX backend; add --backend onnx")
    check_weights_reachable(spec)  # in a second, before torch and open_clip load
    if not torch_installed():
        raise ModelLoadError(
            f"the torch backend needs torch and open_clip: {FULL_INSTALL}; or use --backend onnx"
        )
    from mmsearch.models.loader import load_torch_encoder

    return load_torch_encoder(spec, device, dtype=dtype)


def check_encoder_available(
    spec: ModelSpec,
    *,
    backend: str | None,
    device: str | None,
    quantize: str | None = None,
    offline: bool = False,
) -> None:
    """Fails at once when the encoder of ``spec`` cannot load for want of its weights
    (see :func:`~mmsearch.models.hub.check_weights_reachable`). An ONNX encoder whose
    export is at hand needs no weights: nothing is looked up (no hub client imported).
    """
    from mmsearch.models.exports import find_export

    if choose_backend(backend, device) == "onnx" and find_export(spec, quantize) is not None:
        return
    check_weights_reachable(spec, offline=offline)


def backend_label(encoder: Encoder) -> str:
    """``torch``, ``onnx`` or ``onnx-int8``: what produced an encoder's vectors.

    bfloat16 arithmetic is not told apart from float32 (torch's CUDA autocast, OpenVINO's
    bf16 on CPU): it agrees with float32 to a cosine of 0.9999 per vector (checked by
    ``tests/test_onnx.py``), well above :data:`AGREEMENT_MIN_COSINE`, so probing it on
    every query of an index embedded the other way would cost a second model load and
    find nothing. Indexes written before this rule may name ``onnx-bf16``: still read.
    """
    name = str(getattr(encoder, "backend", "torch"))
    quantize = getattr(encoder, "quantize", None)
    return f"{name}-{quantize}" if quantize else name


def runtime_label(encoder: Encoder) -> str:
    """What computes an encoder's vectors, for reports (finer than :func:`backend_label`):
    the CPU runtime of an ONNX encoder (``onnxruntime``, ``openvino``, ``openvino-bf16``,
    ``onnxruntime-int8``), else ``torch-<device>``."""
    runtime = getattr(encoder, "runtime", None)
    if not runtime:
        return f"{getattr(encoder, 'backend', 'torch')}-{getattr(encoder, 'device', 'cpu')}"
    quantize = getattr(encoder, "quantize", None)
    return f"{runtime}-{quantize}" if quantize else str(runtime)


def read_backend_record(index_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The index's backend record (``{}`` when none was written yet)."""
    return read_json(Path(index_dir) / RECORD_NAME)


def check_backend(index_dir: str | os.PathLike[str], encoder: Encoder, *, record: bool) -> str:
    """Refuses an encoder whose backend disagrees with the index's recorded vectors.

    A backend already recorded passes at once (no encoding). The first backend of an
    index is recorded without encoding anything: until a second backend comes, there
    is nothing to compare, and an image-only run would otherwise load the text tower
    for the probes alone (about a second for ViT-B-32). A second backend embeds the
    probe texts, and so does the reference backend (loaded then, once; its probes
    are recorded); per text, a cosine below :data:`AGREEMENT_MIN_COSINE` raises
    :class:`ModelMismatchError`. With ``record`` (writers), the new backend is added
    to the record. Returns the encoder's label.
    """
    label = backend_label(encoder)
    path = Path(index_dir) / RECORD_NAME
    data = read_json(path)
    backends: dict[str, Any] = dict(data.get("backends", {}))
    spec_key = encoder.spec.key
    if data.get("model") not in (None, spec_key):
        return label  # another model altogether: the model check reports that
    if label in backends:
        return label
    if not backends:
        if record:
            write_json_atomic(
                path, {"model": spec_key, "reference": label, "backends": {label: {}}}
            )
        return label
    first_label = str(data.get("reference") or next(iter(backends)))
    probes = np.asarray(encoder.encode_texts(list(PROBE_TEXTS)), dtype=np.float32)
    stored = backends.get(first_label, {}).get("probe")
    if stored is None:  # recorded before anything needed its probes: embed them now
        stored = _probes_of(first_label, encoder.spec).round(6).tolist()
        backends[first_label] = {"probe": stored}
    reference = np.asarray(stored, dtype=np.float32)
    if reference.shape == probes.shape:
        cosines = np.sum(reference * probes, axis=1)
        worst = float(cosines.min())
        if worst < AGREEMENT_MIN_COSINE:
            raise ModelMismatchError(
                f"the index was embedded with the {first_label} backend and {label} disagrees with it "
                f"(cosine {worst:.4f} < {AGREEMENT_MIN_COSINE}); use {_options_of(first_label)}"
            )
    if record:
        backends[label] = {"probe": probes.round(6).tolist()}
        write_json_atomic(path, {"model": spec_key, "reference": first_label, "backends": backends})
    return label


def _options_of(label: str) -> str:
    """The options that choose the backend ``label`` names."""
    backend, _, variant = label.partition("-")
    if variant == "bf16":
        return f"--backend {backend} with MMSEARCH_CPU_RUNTIME=openvino-bf16"
    return f"--backend {backend}" + (f" --quantize {variant}" if variant else "")


def _probes_of(label: str, spec: ModelSpec) -> np.ndarray:
    """The probe texts embedded by the backend ``label`` names (``torch``, ``onnx``,
    ``onnx-int8``, ``onnx-bf16``)."""
    backend, _, variant = label.partition("-")
    if variant == "bf16":
        encoder = load_onnx_encoder(spec, runtime="openvino-bf16")
    else:
        encoder = load_encoder(spec, "cpu", backend=backend, quantize=variant or None)
    return np.asarray(encoder.encode_texts(list(PROBE_TEXTS)), dtype=np.float32)


def load_onnx_encoder(
    spec: ModelSpec,
    *,
    quantize: str | None = None,
    threads: int | None = None,
    runtime: str | None = None,
) -> Any:
    """The ONNX encoder (:class:`~mmsearch.models.onnx_encoder.OnnxEncoder`) of ``spec``: the cached export, or a new one (imports torch once)."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        raise ModelLoadError(
            "the ONNX backend needs onnxruntime: pip install 'mmsearch[onnx]'"
        ) from exc
    from mmsearch.models.exports import find_export
    from mmsearch.models.onnx_encoder import OnnxEncoder

    target = find_export(spec, quantize)
    if target is None:
        check_weights_reachable(spec)  # in a second, before the export imports torch
        if not torch_installed():
            raise ModelLoadError(
                f"{spec.key} has no ONNX export on this machine, and making one needs torch and "
                f"open_clip: {FULL_INSTALL}; mmsearch-tiny's export ships with mmsearch"
            )
        from mmsearch.models.onnx_export import export_onnx

        target = export_onnx(spec, quantize=quantize)
    return OnnxEncoder(target, spec, threads=threads, runtime=runtime)
