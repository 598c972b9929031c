"""`ClipEncoder`: batched, thread-safe image and text embedding with one CLIP model."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from PIL import Image

from mmsearch.errors import BadQueryError
from mmsearch.models.base import checked_texts
from mmsearch.models.preprocess import fit_square
from mmsearch.models.spec import ModelSpec

if TYPE_CHECKING:
    from mmsearch.models.fastload import TowerLoader

DEFAULT_BATCH_SIZE = 128


class ClipEncoder:
    """Embeds images and texts into one L2-normalised space.

    Images arrive as uint8 ``(N, S, S, 3)`` arrays (already :func:`fit_square`'d to
    :attr:`image_size`); scaling and mean/std normalisation run on :attr:`device`.
    Every output is float32 ``(N, dim)`` with unit rows. Calls are serialised by a
    lock so one encoder can be shared by threads.

    >>> enc = load_encoder(ModelSpec("mmsearch-tiny"))          # doctest: +SKIP
    >>> enc.encode_texts(["a red circle on the left"]).shape   # doctest: +SKIP
    (1, 64)
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Callable[[list[str]], torch.Tensor],
        spec: ModelSpec,
        device: str,
        *,
        autocast_dtype: torch.dtype | None = None,
        towers: TowerLoader | None = None,
    ) -> None:
        # open_clip's CLIP (untyped): encode_image, encode_text, visual, logit_scale.
        self.model: Any = model.eval()
        self._towers = towers  # loads each tower's weights on first use, when given
        self.tokenizer = tokenizer
        self.spec = spec
        self.device = device
        self.autocast_dtype = autocast_dtype
        visual: Any = model.visual
        size = visual.image_size
        self.image_size: int = int(size[0] if isinstance(size, (tuple, list)) else size)
        pp: dict[str, Any] = dict(getattr(visual, "preprocess_cfg", {}) or {})
        mean = pp.get("mean", (0.48145466, 0.4578275, 0.40821073))
        std = pp.get("std", (0.26862954, 0.26130258, 0.27577711))
        self.mean: tuple[float, float, float] = (float(mean[0]), float(mean[1]), float(mean[2]))
        self.std: tuple[float, float, float] = (float(std[0]), float(std[1]), float(std[2]))
        proj = getattr(model, "text_projection", None)
        proj_dim = int(proj.shape[-1]) if isinstance(proj, torch.Tensor) and proj.ndim == 2 else 0
        self.dim: int = int(getattr(model, "embed_dim", 0) or proj_dim or self._probe_dim())
        self._mean_t = torch.tensor(self.mean, device=device).view(1, 3, 1, 1)
        self._std_t = torch.tensor(self.std, device=device).view(1, 3, 1, 1)
        self._lock = threading.Lock()

    backend = "torch"
    quantize: str | None = None

    def _ensure(self, tower: str) -> None:
        if self._towers is not None:
            self._towers.ensure(tower)

    def _probe_dim(self) -> int:
        self._ensure("text")
        with torch.inference_mode():
            out = self.model.encode_text(self.tokenizer(["a"]).to(self.device))
        return int(out.shape[-1])

    def __repr__(self) -> str:
        return f"ClipEncoder({self.spec.key!r}, dim={self.dim}, image_size={self.image_size}, device={self.device!r})"

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        device_type = "cuda" if self.device.startswith("cuda") else "cpu"
        return torch.autocast(device_type=device_type, dtype=self.autocast_dtype)

    def _to_pixels(self, chunk: npt.NDArray[Any] | torch.Tensor) -> torch.Tensor:
        """uint8 NHWC, or float in [0, 1] (NHWC or NCHW) -> normalised float NCHW on device."""
        x = torch.as_tensor(chunk) if not isinstance(chunk, torch.Tensor) else chunk
        if self.device.startswith("cuda") and x.device.type == "cpu":
            # uint8 crosses the bus (4x less than float); pinned memory lets the copy
            # run asynchronously, and normalisation then happens on the device.
            x = x.pin_memory().to(self.device, non_blocking=True)
        else:
            x = x.to(self.device)
        if x.dtype == torch.uint8:
            x = x.permute(0, 3, 1, 2).float().div_(255.0)
        else:
            x = x.float()
            if x.shape[1] != 3 and x.shape[-1] == 3:
                x = x.permute(0, 3, 1, 2)
        if x.shape[-2:] != (self.image_size, self.image_size):
            # Callers should fit_square first; resizing here keeps odd inputs usable.
            x = F.interpolate(
                x,
                size=(self.image_size, self.image_size),
                mode="bicubic",
                antialias=True,
                align_corners=False,
            ).clamp_(0.0, 1.0)
        x = (x - self._mean_t) / self._std_t
        if self.device.startswith("cuda"):
            x = x.contiguous(memory_format=torch.channels_last)  # matches the conv weights' layout
        return x

    def encode_images(
        self, batch: npt.NDArray[Any] | torch.Tensor, *, batch_size: int = DEFAULT_BATCH_SIZE
    ) -> npt.NDArray[np.float32]:
        """Embeds images: uint8 ``(N, S, S, 3)`` or float in [0, 1] ``(N, 3, S, S)``/``(N, S, S, 3)``.

        Returns float32 ``(N, dim)`` L2-normalised rows, in input order.
        """
        if batch.ndim != 4 or 3 not in (batch.shape[1], batch.shape[-1]):
            raise BadQueryError(f"expected images shaped (N, S, S, 3), got {tuple(batch.shape)}")
        n = int(batch.shape[0])
        out = np.empty((n, self.dim), dtype=np.float32)
        self._ensure("image")
        for start in range(0, n, batch_size):
            with self._lock, torch.inference_mode():
                pixels = self._to_pixels(batch[start : start + batch_size])
                with self._autocast():
                    feats = self.model.encode_image(pixels)
                out[start : start + len(pixels)] = F.normalize(feats.float(), dim=-1).cpu().numpy()
        return out

    def tokenize(self, texts: Sequence[str]) -> npt.NDArray[np.int64]:
        """Token ids ``(N, context_length)`` for :meth:`encode_tokens` (truncated, zero padded)."""
        texts = checked_texts(texts)
        return np.asarray(self.tokenizer(texts), dtype=np.int64)

    def encode_tokens(
        self, tokens: npt.NDArray[np.int64], *, batch_size: int = DEFAULT_BATCH_SIZE
    ) -> npt.NDArray[np.float32]:
        """Embeds token ids from :meth:`tokenize`; float32 ``(N, dim)``, unit rows.

        Tokenising and embedding are separate steps so that an indexing pipeline can
        tokenise the next batch while this one runs.
        """
        out = np.empty((len(tokens), self.dim), dtype=np.float32)
        self._ensure("text")
        for start in range(0, len(tokens), batch_size):
            chunk = torch.from_numpy(np.ascontiguousarray(tokens[start : start + batch_size]))
            with self._lock, torch.inference_mode():
                with self._autocast():
                    feats = self.model.encode_text(chunk.to(self.device))
                out[start : start + len(chunk)] = F.normalize(feats.float(), dim=-1).cpu().numpy()
        return out

    def encode_texts(
        self, texts: Sequence[str], *, batch_size: int = DEFAULT_BATCH_SIZE
    ) -> npt.NDArray[np.float32]:
        """Embeds texts (truncated to the model's context length); float32 ``(N, dim)``, unit rows."""
        texts = checked_texts(texts)
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(texts), batch_size):
            chunk = texts[start : start + batch_size]
            out[start : start + len(chunk)] = self.encode_tokens(self.tokenize(chunk))
        return out

    def encode_pil(
        self, images: Sequence[Image.Image], *, batch_size: int = DEFAULT_BATCH_SIZE
    ) -> npt.NDArray[np.float32]:
        """Convenience: :func:`fit_square` each PIL image, then :meth:`encode_images`."""
        if len(images) == 0:
            return np.empty((0, self.dim), dtype=np.float32)
        arr = np.stack([fit_square(im.convert("RGB"), self.image_size) for im in images])
        return self.encode_images(arr, batch_size=batch_size)
