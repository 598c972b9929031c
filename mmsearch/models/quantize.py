"""int8 dynamic quantisation of exported ONNX towers, kept only where it keeps recall.

:func:`quantize_export` copies an fp32 export, quantises the MatMul/Gemm weights of
both graphs to int8 (ONNX Runtime's ``quantize_dynamic``; activations stay float) and
measures, on a generated collection, how many of each query's top 10 under fp32
embeddings the int8 embeddings still find (text→image and image→image). Below
:data:`MIN_RECALL_AT_10` the export is refused with the figure.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from mmsearch.errors import ModelLoadError
from mmsearch.models.prompts import calibration_prompts

MIN_RECALL_AT_10 = 0.99
COLLECTION_SIZE = 400
QUERY_COUNT = 100


def generated_images(n: int, size: int, seed: int = 0) -> npt.NDArray[np.uint8]:
    """Photo-like uint8 images: colour gradients with a few solid rectangles."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0.0, 1.0, size, dtype=np.float32)
    out = np.empty((n, size, size, 3), dtype=np.uint8)
    for i in range(n):
        a, b = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        img = a + (b - a) * (ramp[None, :, None] if i % 2 else ramp[:, None, None])
        img = np.broadcast_to(img, (size, size, 3)).copy()
        for _ in range(int(rng.integers(1, 5))):
            x0, y0 = rng.integers(0, size - size // 4, 2)
            w, h = rng.integers(size // 8, size // 2, 2)
            img[y0 : y0 + h, x0 : x0 + w] = rng.uniform(0, 255, 3)
        out[i] = img.astype(np.uint8)
    return out


def recall_at_10(reference_db: Any, reference_q: Any, test_db: Any, test_q: Any) -> float:
    """Mean fraction of each query's exact top 10 (reference vectors) found by the test vectors."""
    k = 10
    ref = np.argsort(-(np.asarray(reference_q) @ np.asarray(reference_db).T), axis=1)[:, :k]
    got = np.argsort(-(np.asarray(test_q) @ np.asarray(test_db).T), axis=1)[:, :k]
    return float(np.mean([len(set(r) & set(g)) / k for r, g in zip(ref, got, strict=True)]))


def measure_int8_recall(fp32: Any, int8: Any, prompts: list[str]) -> dict[str, float]:
    """recall@10 of int8 against fp32 embeddings: text→image and image→image."""
    images = generated_images(COLLECTION_SIZE, fp32.image_size)
    db32, db8 = fp32.encode_images(images), int8.encode_images(images)
    texts = prompts[:QUERY_COUNT]
    t32, t8 = fp32.encode_texts(texts), int8.encode_texts(texts)
    qi = generated_images(QUERY_COUNT, fp32.image_size, seed=1)
    i32, i8 = fp32.encode_images(qi), int8.encode_images(qi)
    return {
        "text_to_image": recall_at_10(db32, t32, db8, t8),
        "image_to_image": recall_at_10(db32, i32, db8, i8),
    }


def quantized_matmuls(path: Path) -> int:
    """How many integer matrix products (``MatMulInteger``/``DynamicQuantizeMatMul``) ``path`` has."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return sum(n.op_type in ("MatMulInteger", "DynamicQuantizeMatMul") for n in graph.node)


def quantize_graphs(export_dir: Path) -> None:
    """Quantises ``text.onnx`` and ``image.onnx`` of a copied export in place (no recall check).

    MatMul/Gemm weights become int8 (ONNX Runtime's ``quantize_dynamic``; activations
    stay float) and ``meta.json`` says ``"quantize": "int8"``.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    for tower in ("text", "image"):
        src, dst = export_dir / f"{tower}.onnx", export_dir / f"{tower}.int8.onnx"
        quantize_dynamic(
            str(src), str(dst), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"]
        )
        if not quantized_matmuls(dst):
            # quantize_dynamic quantises initializers only: weights held in Constant nodes
            # (an old export) pass through untouched, and "int8" would be fp32 in disguise.
            raise ModelLoadError(
                f"int8 quantisation changed no weight of the {tower} graph ({src}); "
                "delete the ONNX cache directory and export again"
            )
        os.replace(dst, src)
    meta = json.loads((export_dir / "meta.json").read_text())
    meta["quantize"] = "int8"
    (export_dir / "meta.json").write_text(json.dumps(meta, indent=1))


def quantize_export(fp32_dir: Path, target: Path, *, spec: Any) -> dict[str, float]:
    """Writes the int8 export of ``fp32_dir`` to ``target``; refuses it when recall drops.

    Returns the measured recalls. Raises :class:`ModelLoadError` (and records the
    refusal in ``target/refused.json`` so it is not measured again) below the bar.
    """
    from mmsearch.models.onnx_encoder import OnnxEncoder

    refused = target / "refused.json"
    if refused.is_file():
        raise ModelLoadError(json.loads(refused.read_text())["message"])
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(fp32_dir, tmp, ignore=shutil.ignore_patterns("*.opt-*"))
    try:
        quantize_graphs(tmp)
        meta = json.loads((tmp / "meta.json").read_text())
        recalls = measure_int8_recall(
            OnnxEncoder(fp32_dir, spec), OnnxEncoder(tmp, spec), calibration_prompts(0)
        )
        worst = min(recalls.values())
        if worst < MIN_RECALL_AT_10:
            message = (
                f"int8 quantisation of {spec.key} keeps recall@10 {worst:.3f} < {MIN_RECALL_AT_10} "
                f"against fp32 ({recalls}); use the fp32 ONNX backend (drop --quantize)"
            )
            target.mkdir(parents=True, exist_ok=True)
            refused.write_text(json.dumps({"message": message, "recall_at_10": recalls}))
            raise ModelLoadError(message)
        meta["int8_recall_at_10"] = recalls
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        os.replace(tmp, target)
        return recalls
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
