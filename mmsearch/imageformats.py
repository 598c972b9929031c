"""Image formats by content: which bytes are which format, which formats mmsearch accepts,
and the Pillow plugins each may use. Pillow itself is imported only by what opens images, so
a text query that checks whether a string names an image file imports none of it.

:func:`sniff_image_format` names a format from a file's first bytes, never from its name;
:data:`FORMAT_PLUGINS` maps each accepted format to the only Pillow plugins allowed to
open it (HEIF and AVIF register an optional plugin on first use, or raise
:class:`~mmsearch.errors.ImageDecodeError` saying what to install).
"""

from __future__ import annotations

from collections.abc import Callable

from mmsearch.errors import ImageDecodeError

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".heic", ".heif", ".avif"}
)
"""File name extensions the indexer picks up (lower-case, with the dot)."""

SUPPORTED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "HEIF", "AVIF")
"""Formats :func:`load_image` accepts, as named by :func:`sniff_image_format`."""

HEIF_MISSING_REASON = (
    "HEIC/HEIF needs the optional pillow-heif package: pip install 'mmsearch[heif]'"
)
AVIF_MISSING_REASON = (
    "AVIF needs Pillow built with AVIF support (Pillow >= 11.3 wheels) "
    "or the optional pillow-heif package: pip install 'mmsearch[heif]'"
)

# ISO-BMFF brands (the "ftyp" box) of HEIF and AVIF still images.
_AVIF_BRANDS = frozenset({b"avif", b"avis"})
_HEIF_BRANDS = frozenset(
    {
        b"heic",
        b"heix",
        b"heim",
        b"heis",
        b"hevc",
        b"hevx",
        b"hevm",
        b"hevs",
        b"mif1",
        b"msf1",
        b"mif2",
    }
)

# Magic numbers of formats we recognise but refuse, so that the reason names them.
_REFUSED_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"%PDF", "PDF"),
    (b"%!PS", "PostScript/EPS"),
    (b"\xc5\xd0\xd3\xc6", "EPS"),
    (b"8BPS", "PSD"),
    (b"\x00\x00\x01\x00", "ICO"),
    (b"\x00\x00\x02\x00", "CUR"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG2000"),
    (b"\xffO\xffQ", "JPEG2000"),
    (b"\x00\x00\x00\x0cJXL \r\n\x87\n", "JPEG-XL"),
    (b"\xff\n", "JPEG-XL"),
    (b"qoif", "QOI"),
    (b"DDS ", "DDS"),
    (b"v/1\x01", "OpenEXR"),
)

# How many leading bytes sniff_image_format wants (the ftyp box lists brands).
SNIFF_BYTES = 256


def sniff_image_format(head: bytes) -> str | None:
    """Name the image format of a file from its first bytes (at least 32; 256 is best).

    Returns one of :data:`SUPPORTED_FORMATS` for accepted formats, another name
    (``"PDF"``, ``"PSD"``, ``"SVG"``, ``"ISOBMFF:crx "``…) for a recognised format we
    refuse, or ``None`` when the bytes match no image format at all.

    >>> sniff_image_format(b"\\x89PNG\\r\\n\\x1a\\n" + bytes(24))
    'PNG'
    >>> sniff_image_format(b"hello, I am a text file") is None
    True
    """
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "TIFF"
    if head[:2] == b"BM" and len(head) >= 18:
        return "BMP"
    if head[4:8] == b"ftyp":
        return _sniff_isobmff(head)
    for magic, name in _REFUSED_MAGIC:
        if head.startswith(magic):
            return name
    stripped = head.lstrip()
    if stripped.startswith(b"<svg") or (stripped.startswith(b"<?xml") and b"<svg" in head):
        return "SVG"
    return None


def _sniff_isobmff(head: bytes) -> str:
    box_size = int.from_bytes(head[0:4], "big")
    major = head[8:12]
    # Compatible brands follow the major brand and minor version, up to the box end.
    end = min(len(head), box_size if box_size >= 16 else len(head))
    brands = {major} | {head[i : i + 4] for i in range(16, end - 3, 4)}
    if brands & _AVIF_BRANDS:
        return "AVIF"
    if brands & _HEIF_BRANDS:
        return "HEIF"
    return "ISOBMFF:" + major.decode("latin-1")


def _heif_formats() -> list[str]:
    from PIL import Image

    if "HEIF" not in Image.OPEN:
        try:
            import pillow_heif
        except ImportError as exc:
            raise ImageDecodeError(HEIF_MISSING_REASON, cause=exc) from exc
        pillow_heif.register_heif_opener()
    return ["HEIF"]


def pillow_has_avif() -> bool:
    """True when this Pillow decodes AVIF by itself (no pillow-heif needed)."""
    from PIL import features

    try:
        return bool(features.check_module("avif"))
    except Exception:  # older Pillow: no "avif" feature at all
        return False


def _avif_formats() -> list[str]:
    if pillow_has_avif():
        return ["AVIF"]
    try:
        import pillow_heif
    except ImportError as exc:
        raise ImageDecodeError(AVIF_MISSING_REASON, cause=exc) from exc
    register = getattr(pillow_heif, "register_avif_opener", None)
    if register is None:  # pillow-heif >= 1.0 dropped AVIF
        raise ImageDecodeError(AVIF_MISSING_REASON)
    register()
    return ["AVIF"]


#: Accepted format → the Pillow plugin names that may open it (registering an optional one).
FORMAT_PLUGINS: dict[str, Callable[[], list[str]]] = {
    "JPEG": lambda: ["JPEG"],  # Pillow turns multi-picture JPEGs into MPO by itself
    "PNG": lambda: ["PNG"],
    "GIF": lambda: ["GIF"],
    "WEBP": lambda: ["WEBP"],
    "BMP": lambda: ["BMP"],
    "TIFF": lambda: ["TIFF"],
    "HEIF": _heif_formats,
    "AVIF": _avif_formats,
}
