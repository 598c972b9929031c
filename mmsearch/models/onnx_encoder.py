"""`OnnxEncoder`: the CLIP encoder on ONNX Runtime (CPU), without importing torch.

Same public surface as :class:`mmsearch.models.encoder.ClipEncoder` (``spec``,
``dim``, ``image_size``, ``device``, ``encode_texts``, ``encode_images``,
``encode_pil``). Each tower's session is created on first use, so a text query loads
only the text graph. Graphs come from :func:`mmsearch.models.onnx_export.export_onnx`;
finding an existing export (:mod:`mmsearch.models.exports`) reads one small JSON file
and stats the weights file.
"""

from __future__ import annotations

import html
import json
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from mmsearch.errors import BadQueryError
from mmsearch.models.base import checked_texts
from mmsearch.models.exports import derived_dir
from mmsearch.models.openvino_session import cpu_runtime
from mmsearch.models.spec import ModelSpec

DEFAULT_BATCH_SIZE = 128


def clean_text(text: str) -> str:
    """open_clip's ``basic_clean``: ftfy repair (when installed) and double HTML unescape.

    Printable ASCII without ``&`` is returned stripped without importing ftfy: there is
    nothing for ftfy (mojibake, control characters, line breaks, HTML entities) or the
    unescape to change in it (``tests/test_onnx.py`` checks the two paths agree).
    """
    if text.isascii() and text.isprintable() and "&" not in text:
        return text.strip()
    try:
        import ftfy

        text = ftfy.fix_text(text)
    except ImportError:  # ftfy ships with open_clip; without it only mojibake repair is lost
        pass
    return html.unescape(html.unescape(text)).strip()


def onnx_threads() -> int:
    """Intra-op threads: ``OMP_NUM_THREADS`` when set, else the cores this process may run on.

    ONNX Runtime's own thread pool ignores the OpenMP variables; following them lets a
    deployment (or ``mmsearch serve --workers N``) cap every math runtime in one place.
    """
    configured = os.environ.get("OMP_NUM_THREADS", "").strip()
    if configured.isdigit() and int(configured) > 0:
        return int(configured)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def used_length(tokens: npt.NDArray[np.int64]) -> int:
    """One past the last non-zero column of ``tokens`` (the batch's last end-of-text
    token; the zero padding after it changes nothing in a causal text tower)."""
    nonzero = np.flatnonzero(np.any(tokens != 0, axis=0))
    return int(nonzero[-1]) + 1 if len(nonzero) else 1


class OnnxEncoder:
    """Embeds texts and images with exported ONNX graphs on CPU; unit float32 rows.

    >>> enc = load_encoder(ModelSpec("mmsearch-tiny"), backend="onnx")  # doctest: +SKIP
    >>> enc.encode_texts(["a red circle on the left"]).shape    # doctest: +SKIP
    (1, 64)
    """

    backend = "onnx"

    def __init__(
        self,
        export_dir: str | os.PathLike[str],
        spec: ModelSpec,
        *,
        threads: int | None = None,
        runtime: str | None = None,
    ) -> None:
        self.export_dir = Path(export_dir)
        meta = json.loads((self.export_dir / "meta.json").read_text(encoding="utf-8"))
        self.spec = spec
        self.device = "cpu"
        self.quantize: str | None = meta.get("quantize")
        self.dim: int = int(meta["dim"])
        self.image_size: int = int(meta["image_size"])
        self.mean: tuple[float, ...] = tuple(meta["mean"])
        self.std: tuple[float, ...] = tuple(meta["std"])
        self.context_length = int(meta["context_length"])
        #: The text graph takes rows cut after the batch's last end-of-text token.
        self.text_any_length = bool(meta.get("text_any_length", False))
        self._sot, self._eot = int(meta["sot_token_id"]), int(meta["eot_token_id"])
        self.threads = threads or onnx_threads()
        #: ``onnxruntime``, ``openvino`` or ``openvino-bf16`` (default: $MMSEARCH_CPU_RUNTIME,
        #: else what ``auto`` resolves to: :func:`~mmsearch.models.openvino_session.cpu_runtime`).
        self.runtime = cpu_runtime(runtime, quantized=bool(self.quantize))
        #: What the graphs compute in: ``bf16`` under ``openvino-bf16``, else ``fp32``.
        self.precision = "bf16" if self.runtime == "openvino-bf16" else "fp32"
        self._sessions: dict[str, Any] = {}
        self._tokenizer: Any = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        q = f", quantize={self.quantize!r}" if self.quantize else ""
        return f"OnnxEncoder({self.spec.key!r}, dim={self.dim}, image_size={self.image_size}{q})"

    def _session(self, tower: str) -> Any:
        with self._lock:
            session = self._sessions.get(tower)
            if session is None:
                from mmsearch.models.openvino_session import OpenVinoSession

                graph = self.export_dir / f"{tower}.onnx"
                derived = derived_dir(self.export_dir)
                if self.runtime.startswith("openvino"):
                    session = OpenVinoSession(
                        graph, self.threads, derived, precision=self.precision
                    )
                else:
                    from mmsearch.models.ort_session import create_session

                    session = create_session(graph, self.threads, derived)
                self._sessions[tower] = session
            return session

    def warm_up(self, tower: str) -> None:
        """Creates ``tower``'s session now (e.g. on a thread while the first images decode).

        Errors are left for the first real use to raise, where the caller handles them.
        """
        try:
            self._session(tower)
        except Exception:  # noqa: BLE001 - re-raised by the first encode
            pass

    def tokenize(self, texts: Sequence[str]) -> npt.NDArray[np.int64]:
        """open_clip-equal token ids: ``[sot] + bpe[: ctx - 2] + [eot]``, zero padded."""
        with self._lock:
            if self._tokenizer is None:
                from tokenizers import Tokenizer

                self._tokenizer = Tokenizer.from_file(str(self.export_dir / "tokenizer.json"))
        encoded = self._tokenizer.encode_batch(
            [clean_text(t) for t in texts], add_special_tokens=False
        )
        out = np.zeros((len(texts), self.context_length), dtype=np.int64)
        for row, enc in enumerate(encoded):
            ids = [self._sot, *enc.ids[: self.context_length - 2], self._eot]
            out[row, : len(ids)] = ids
        return out

    def encode_tokens(
        self, tokens: npt.NDArray[np.int64], *, batch_size: int = DEFAULT_BATCH_SIZE
    ) -> npt.NDArray[np.float32]:
        """Embeds token ids from :meth:`tokenize`; float32 ``(N, dim)``, unit rows."""
        out = np.empty((len(tokens), self.dim), dtype=np.float32)
        if not len(tokens):
            return out
        session = self._session("text")
        for start in range(0, len(tokens), batch_size):
            chunk = tokens[start : start + batch_size]
            if self.text_any_length:
                chunk = chunk[:, : used_length(chunk)]
            chunk = np.ascontiguousarray(chunk, dtype=np.int64)
            out[start : start + len(chunk)] = session.run(None, {"tokens": chunk})[0]
        return out

    def encode_texts(
        self, texts: Sequence[str], *, batch_size: int = DEFAULT_BATCH_SIZE
    ) -> npt.NDArray[np.float32]:
        """Embeds texts (truncated to the context length); float32 ``(N, dim)``, unit rows."""
        texts = checked_texts(texts)
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(texts), batch_size):
            chunk = texts[start : start + batch_size]
            out[start : start + len(chunk)] = self.encode_tokens(self.tokenize(chunk))
        return out

    def encode_images(
        self, batch: Any, *, batch_size: int = DEFAULT_BATCH_SIZE
    ) -> npt.NDArray[np.float32]:
        """Embeds uint8 ``(N, S, S, 3)`` images (float input in [0, 1] is rounded to uint8)."""
        arr = np.asarray(batch)
        if arr.ndim != 4 or 3 not in (arr.shape[1], arr.shape[-1]):
            raise BadQueryError(f"expected images shaped (N, S, S, 3), got {tuple(arr.shape)}")
        if arr.dtype != np.uint8:
            if arr.shape[1] == 3 and arr.shape[-1] != 3:
                arr = arr.transpose(0, 2, 3, 1)
            arr = np.clip(np.rint(arr.astype(np.float32) * 255.0), 0, 255).astype(np.uint8)
        if arr.shape[1:3] != (self.image_size, self.image_size):
            from PIL import Image

            from mmsearch.models.preprocess import fit_square

            arr = np.stack([fit_square(Image.fromarray(a), self.image_size) for a in arr])
        out = np.empty((len(arr), self.dim), dtype=np.float32)
        if not len(arr):
            return out
        session = self._session("image")
        for start in range(0, len(arr), batch_size):
            chunk = np.ascontiguousarray(arr[start : start + batch_size])
            out[start : start + len(chunk)] = session.run(None, {"pixels": chunk})[0]
        return out

    def encode_pil(
        self, images: Sequence[Any], *, batch_size: int = DEFAULT_BATCH_SIZE
    ) -> npt.NDArray[np.float32]:
        """Convenience: :func:`fit_square` each PIL image, then :meth:`encode_images`."""
        from mmsearch.models.preprocess import fit_square

        if len(images) == 0:
            return np.empty((0, self.dim), dtype=np.float32)
        arr = np.stack([fit_square(im.convert("RGB"), self.image_size) for im in images])
        return self.encode_images(arr, batch_size=batch_size)
