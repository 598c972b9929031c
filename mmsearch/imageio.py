"""The one safe image loader: every image mmsearch reads goes through :func:`load_image`.

Indexer workers, text+image queries and the server all call it, so a bad file is
rejected the same way everywhere: with :class:`~mmsearch.errors.ImageDecodeError`
carrying a short ``reason`` and the class of the underlying exception.

What it guarantees (see ``/work/shared/ROBUSTNESS.md``, "Bad images"):

* The format is sniffed from the first bytes, never trusted from the file name, and
  must be on an allow-list (JPEG, PNG, WebP, GIF, BMP, TIFF, HEIF/HEIC, AVIF). Pillow
  is told to try only the sniffed format, so exotic plugins (EPS → Ghostscript, …)
  are never reached.
* Our own pixel limit is checked from the header, before any pixel is decoded.
* Truncated or corrupt data is rejected at ``load()`` (we never set
  ``ImageFile.LOAD_TRUNCATED_IMAGES``; if some other code sets it to ``True``
  process-wide, Pillow will pad truncated images instead of failing).
* The result is a fully loaded ``"RGB"`` image: EXIF orientation applied first,
  transparency composited onto a fixed background, 16-bit greyscale rescaled,
  CMYK converted, the first frame of animations.

Nothing here changes Pillow's global settings. The one process-wide effect is that,
the first time a HEIF file is met, ``pillow_heif.register_heif_opener()`` is called
(when pillow-heif is installed) - it only *adds* a format to Pillow. Which bytes are
which format, and which Pillow plugins each may use, is :mod:`mmsearch.imageformats`.
"""

from __future__ import annotations

import io
import math
import os
import stat
import time
from typing import BinaryIO, cast

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from mmsearch.errors import ImageDecodeError
from mmsearch.imageformats import (
    FORMAT_PLUGINS,
    IMAGE_EXTENSIONS,
    SNIFF_BYTES,
    SUPPORTED_FORMATS,
    sniff_image_format,
)

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_EXTENSIONS",
    "SUPPORTED_FORMATS",
    "load_image",
    "sniff_image_format",
]

DEFAULT_MAX_PIXELS = 64_000_000
"""Our own limit (width × height), checked from the header before decoding."""


class _DeadlineReader(io.RawIOBase):
    """File wrapper that raises TimeoutError from ``read`` once a deadline has passed.

    Pillow's decoders pull data in blocks (64 KiB for JPEG/PNG), so this bounds the
    work done after the deadline to about one block. It deliberately has no
    ``fileno()``, so no plugin can bypass it by reading the descriptor directly.
    """

    def __init__(self, raw: BinaryIO, deadline: float) -> None:
        super().__init__()
        self._raw = raw
        self._deadline = deadline

    def _check(self) -> None:
        if time.monotonic() > self._deadline:
            raise TimeoutError("image decoding took longer than timeout_s")

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        self._check()
        return self._raw.read(-1 if size is None else size)

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._raw.seek(offset, whence)

    def tell(self) -> int:
        return self._raw.tell()


def _open_source(source: str | os.PathLike[str] | bytes | BinaryIO) -> BinaryIO:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return io.BytesIO(bytes(source))
    if isinstance(source, (str, os.PathLike)):
        try:
            # Checked first because open() on a FIFO would block forever.
            if not stat.S_ISREG(os.stat(source).st_mode):
                raise ImageDecodeError("not a regular file (directory, FIFO, device or socket)")
            return open(source, "rb")  # noqa: SIM115 - closed by load_image
        except OSError as exc:
            raise ImageDecodeError(f"cannot open file: {exc.strerror or exc}", cause=exc) from exc
    if hasattr(source, "read"):
        try:
            # Streams (uploads) are read whole: their size is the caller's to cap.
            return io.BytesIO(source.read())
        except OSError as exc:
            raise ImageDecodeError(f"cannot read stream: {exc}", cause=exc) from exc
    raise TypeError(f"load_image needs a path, bytes or a binary file, not {type(source).__name__}")


def _check_arguments(
    max_pixels: int, background: tuple[int, int, int], timeout_s: float | None
) -> None:
    if not isinstance(max_pixels, int) or max_pixels <= 0:
        raise ValueError(f"max_pixels must be a positive int, got {max_pixels!r}")
    if len(background) != 3 or not all(isinstance(c, int) and 0 <= c <= 255 for c in background):
        raise ValueError(f"background must be three ints in 0..255, got {background!r}")
    if timeout_s is not None and not timeout_s > 0:
        raise ValueError(f"timeout_s must be positive or None, got {timeout_s!r}")


def load_image(
    source: str | os.PathLike[str] | bytes | BinaryIO,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    background: tuple[int, int, int] = (255, 255, 255),
    timeout_s: float | None = None,
    draft_size: int | None = None,
) -> Image.Image:
    """Decode one image safely into a fully loaded ``"RGB"`` :class:`PIL.Image.Image`.

    ``source`` is a path (``str``/``PathLike``), the encoded image as ``bytes``, or a
    binary file object (read whole). A ``bytes`` value is always image *content*,
    never a path: pass ``os.fsdecode(p)`` for a bytes path.

    Every bad input raises :class:`~mmsearch.errors.ImageDecodeError` with a short
    ``reason`` (and ``cause_class``, the class of the underlying exception):
    unreadable file, empty file, unrecognised or refused format, missing HEIF/AVIF
    plugin, more than ``max_pixels`` pixels (checked from the header, before any
    decoding; Pillow's own ``Image.MAX_IMAGE_PIXELS`` bomb check may refuse even
    earlier and is reported the same way), truncated or corrupt data, timeout.
    Wrong arguments (``max_pixels <= 0``, a bad ``background``) raise ``ValueError``.

    ``timeout_s`` bounds decoding time cooperatively: the deadline is checked every
    time a decoder pulls another block of input (about every 64 KiB for JPEG/PNG) and
    between the decoding steps, so a slow decode stops within about one block of the
    deadline. It cannot interrupt one C call that never returns or a ``read`` stuck
    on a dead network mount; that needs a killable worker process, which is what the
    indexer's decode pool (``mmsearch.indexer.decode``) provides. No signals are used, so this
    is safe off the main thread.

    >>> import io
    >>> from PIL import Image
    ``draft_size`` lets a JPEG decode at a reduced scale (Pillow's ``draft``: DCT
    scaling by 1/2, 1/4 or 1/8) while both sides stay at least ``draft_size`` pixels;
    a 4000×3000 photo for a 224-pixel model then decodes at 500×375, several times
    faster. Other formats ignore it.

    >>> buf = io.BytesIO(); Image.new("RGBA", (4, 2), (255, 0, 0, 0)).save(buf, "PNG")
    >>> img = load_image(buf.getvalue(), background=(0, 0, 255))
    >>> img.mode, img.size, img.getpixel((0, 0))
    ('RGB', (4, 2), (0, 0, 255))
    """
    _check_arguments(max_pixels, background, timeout_s)
    deadline = math.inf if timeout_s is None else time.monotonic() + timeout_s
    raw = _open_source(source)
    try:
        return _decode(
            raw,
            max_pixels=max_pixels,
            background=background,
            deadline=deadline,
            draft_size=draft_size,
        )
    finally:
        raw.close()


def _decode(
    raw: BinaryIO,
    *,
    max_pixels: int,
    background: tuple[int, int, int],
    deadline: float,
    draft_size: int | None = None,
) -> Image.Image:
    try:
        head = raw.read(SNIFF_BYTES)
        raw.seek(0)
    except OSError as exc:
        raise ImageDecodeError(f"cannot read file: {exc}", cause=exc) from exc
    if not head:
        raise ImageDecodeError("empty file (0 bytes)", cause=UnidentifiedImageError("empty file"))
    fmt = sniff_image_format(head)
    if fmt is None:
        raise ImageDecodeError(
            "not an image: content matches no supported format (checked by content, not name)",
            cause=UnidentifiedImageError("unrecognised content"),
        )
    if fmt not in FORMAT_PLUGINS:
        raise ImageDecodeError(
            f"unsupported image format {fmt} (supported: {', '.join(SUPPORTED_FORMATS)})",
            cause=UnidentifiedImageError(fmt),
        )
    pillow_formats = FORMAT_PLUGINS[fmt]()
    try:
        stream = cast(BinaryIO, _DeadlineReader(raw, deadline))  # a RawIOBase: read, seek, tell
        with Image.open(stream, formats=pillow_formats) as img:
            width, height = img.size
            if width <= 0 or height <= 0:
                raise ImageDecodeError(f"{fmt} header gives an empty size {width}x{height}")
            if width * height > max_pixels:
                raise ImageDecodeError(
                    f"{width}x{height} = {width * height} pixels is over the limit of "
                    f"{max_pixels} (refused before decoding)",
                    cause=Image.DecompressionBombError("over mmsearch max_pixels"),
                )
            img.seek(0)  # first frame of an animation, whatever the plugin did on open
            if draft_size and img.format == "JPEG":
                img.draft(None, (draft_size, draft_size))  # DCT scaling; sides stay >= draft_size
            img.load()  # truncated/corrupt data fails here (Pillow opens lazily)
            _check_deadline(deadline)
            img = _apply_exif_orientation(img)
            _check_deadline(deadline)
            rgb = _to_rgb(img, background)
    except ImageDecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # DecompressionBombError is not an OSError; the warning arrives as an
        # exception only when the caller runs with warnings as errors.
        raise ImageDecodeError(f"refused as a decompression bomb: {exc}", cause=exc) from exc
    except TimeoutError as exc:
        raise ImageDecodeError("decoding took longer than timeout_s", cause=exc) from exc
    except UnidentifiedImageError as exc:
        raise ImageDecodeError(
            f"header says {fmt} but the file is corrupt or truncated (Pillow cannot identify it)",
            cause=exc,
        ) from exc
    except Exception as exc:  # noqa: BLE001 - any decoder failure is a bad image, not a crash
        raise ImageDecodeError(f"corrupt or truncated {fmt}: {exc}", cause=exc) from exc
    return rgb


def _check_deadline(deadline: float) -> None:
    if time.monotonic() > deadline:
        raise TimeoutError("image decoding took longer than timeout_s")


def _apply_exif_orientation(img: Image.Image) -> Image.Image:
    """Rotate/flip per the EXIF Orientation tag; always returns a detached copy."""
    try:
        return ImageOps.exif_transpose(img)
    except Exception:  # noqa: BLE001
        # Unparseable EXIF on otherwise good pixels: orientation is unknown, so keep
        # the image as stored rather than losing it from the index.
        return img.copy()


def _to_rgb(img: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    mode = img.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        return _rescale_to_8bit(img).convert("RGB")
    has_alpha = mode in ("RGBA", "RGBa", "LA", "La", "PA") or (
        mode in ("P", "L", "RGB", "1") and "transparency" in img.info
    )
    if has_alpha:
        rgba = img.convert("RGBA")
        base = Image.new("RGBA", rgba.size, (*background, 255))
        return Image.alpha_composite(base, rgba).convert("RGB")
    if mode == "RGB":
        return img
    return img.convert("RGB")  # L, 1, P, CMYK, YCbCr, ...


def _rescale_to_8bit(img: Image.Image) -> Image.Image:
    """Map high-bit-depth greyscale to 8-bit ``"L"`` without clipping to white.

    16-bit modes map the full range 0..65535 linearly onto 0..255 (so absolute
    brightness is kept). For 32-bit ``I`` and float ``F`` images the range is not
    implied by the mode: values already in 0..255 are kept, values in 0..65535 are
    treated as 16-bit, anything else is stretched from its own min..max.
    """
    arr = np.asarray(img).astype(np.float64)
    if img.mode.startswith("I;16"):
        lo, hi = 0.0, 65535.0
    else:
        finite = arr[np.isfinite(arr)]
        vmin = float(finite.min()) if finite.size else 0.0
        vmax = float(finite.max()) if finite.size else 0.0
        if vmin >= 0 and vmax <= 255:
            lo, hi = 0.0, 255.0
        elif vmin >= 0 and vmax <= 65535:
            lo, hi = 0.0, 65535.0
        else:
            lo, hi = vmin, vmax if vmax > vmin else vmin + 1.0
    arr = np.nan_to_num(arr, nan=lo, posinf=hi, neginf=lo)
    scaled = np.clip(np.rint((arr - lo) * (255.0 / (hi - lo))), 0, 255).astype(np.uint8)
    return Image.fromarray(scaled)  # 2-D uint8 -> mode "L"
