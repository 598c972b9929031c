"""Batched JPEG decoding on the GPU: ``torchvision.io.decode_jpeg(device="cuda")``.

With GPU decoding on (``IndexOptions.gpu_decode``; by default whenever the encoder runs
on CUDA), the decode workers run :func:`read_jpeg_or_decode`: a plain JPEG (baseline
or progressive, RGB or greyscale, within the pixel limit) is only read, hashed and
header-checked, and its compressed bytes travel to the embedding thread as a 1-D
uint8 array; every other file (PNG, CMYK JPEG, ...) is decoded by the worker as usual.
The embedding thread then decodes a batch's JPEGs in one ``decode_jpeg`` call on the
device (EXIF orientation applied), resizes and crops them there with the geometry of
:func:`mmsearch.models.preprocess.fit_square` (:func:`fit_square_tensor`), and falls
back to the CPU decoder for any file the device decoder refuses; a file neither can
decode is reported like any bad image.

Without CUDA (or without torchvision) GPU decoding is off and the workers decode on
the CPU. :func:`materialise_batch` runs on any torch device, so the same code is
tested on the CPU. torch is imported only by the functions that need it.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from mmsearch.indexer.decode import decode_bytes, read_file

from mmsearch.errors import ImageDecodeError
from mmsearch.imageio import DEFAULT_MAX_PIXELS

#: JPEG colour modes the device decoder handles (CMYK/YCCK go to the CPU decoder).
DEVICE_JPEG_MODES = ("RGB", "L")


def gpu_decode_enabled(option: bool | None, device: str) -> bool:
    """Whether to decode JPEGs on ``device``: never when ``option`` is False or the device
    is not CUDA (the CPU decodes instead), else when torch sees CUDA and torchvision is there."""
    if option is False or not device.startswith("cuda"):
        return False
    try:
        import torch
        import torchvision.io  # noqa: F401
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def is_device_jpeg(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> bool:
    """True for a JPEG the device decoder can take: header only, nothing decoded."""
    if not data.startswith(b"\xff\xd8\xff"):
        return False
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            w, h = img.size
            return img.format == "JPEG" and img.mode in DEVICE_JPEG_MODES and w * h <= max_pixels
    except Exception:  # noqa: BLE001 - the CPU path decodes it and reports why it fails
        return False


def read_jpeg_or_decode(
    path: str, size: int, max_pixels: int = DEFAULT_MAX_PIXELS
) -> tuple[npt.NDArray[np.uint8], str]:
    """Decode-worker function: a device-decodable JPEG's bytes as a 1-D uint8 array, any
    other image decoded to the model's ``(size, size, 3)`` input; with the sha256."""
    data, digest = read_file(path)
    if is_device_jpeg(data, max_pixels):
        return np.frombuffer(data, dtype=np.uint8).copy(), digest
    return decode_bytes(data, size, max_pixels), digest


def fit_square_tensor(img: Any, size: int) -> Any:
    """:func:`~mmsearch.models.preprocess.fit_square` on a ``(3, H, W)`` uint8 tensor on
    any device: shorter side to ``size`` (bicubic, antialiased), centre crop; returns
    ``(size, size, 3)`` uint8."""
    import torch.nn.functional as F

    _, h, w = img.shape
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    x = img
    if (nw, nh) != (w, h):
        x = F.interpolate(
            img[None].float(), size=(nh, nw), mode="bicubic", antialias=True, align_corners=False
        )[0]
        x = x.round_().clamp_(0, 255).to(img.dtype)
    left, top = (nw - size) // 2, (nh - size) // 2
    return x[:, top : top + size, left : left + size].permute(1, 2, 0)


def materialise_batch(
    arrays: Sequence[npt.NDArray[np.uint8]],
    size: int,
    device: str,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> tuple[Any, list[tuple[int, str, str]]]:
    """The batch as one ``(N, size, size, 3)`` uint8 tensor on ``device``, and the files
    that could not be decoded as ``(position, reason, exception class)``.

    1-D arrays are JPEG bytes (decoded here, in one ``decode_jpeg`` call on ``device``);
    the others are already decoded. Failed positions hold zeros: drop them.
    """
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    out = torch.zeros((len(arrays), size, size, 3), dtype=torch.uint8, device=device)
    jpegs = [i for i, a in enumerate(arrays) if a.ndim == 1]
    for i, a in enumerate(arrays):
        if a.ndim != 1:
            out[i] = _to_device(torch.from_numpy(np.ascontiguousarray(a)), device)
    decoded: list[Any] = [None] * len(jpegs)
    if jpegs:
        try:
            decoded = decode_jpeg(
                [torch.from_numpy(arrays[i]) for i in jpegs],
                mode=ImageReadMode.RGB,
                device=device,
                apply_exif_orientation=True,
            )
        except RuntimeError:  # one bad file fails the whole call: try each file alone
            decoded = [_decode_one(arrays[i], device) for i in jpegs]
    failures: list[tuple[int, str, str]] = []
    for i, img in zip(jpegs, decoded, strict=True):
        if img is not None:
            out[i] = fit_square_tensor(img, size)
            continue
        try:  # the device decoder refused it: the CPU decoder decides
            out[i] = _to_device(
                torch.from_numpy(decode_bytes(arrays[i].tobytes(), size, max_pixels)), device
            )
        except ImageDecodeError as exc:
            failures.append((i, exc.reason, exc.cause_class))
    return out, failures


def _decode_one(data: npt.NDArray[np.uint8], device: str) -> Any:
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    try:
        return decode_jpeg(
            torch.from_numpy(data),
            mode=ImageReadMode.RGB,
            device=device,
            apply_exif_orientation=True,
        )
    except RuntimeError:
        return None


def _to_device(t: Any, device: str) -> Any:
    """Host tensor to ``device``: through pinned memory, asynchronously, on CUDA."""
    if device.startswith("cuda"):  # pragma: no cover - CUDA only
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)
