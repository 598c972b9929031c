"""Tests of mmsearch.imageio: every "Bad images" case of ROBUSTNESS.md builds its own input."""

from __future__ import annotations

import io
import os
import struct
import sys
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmsearch import imageformats
from mmsearch.errors import ImageDecodeError
from mmsearch.imageio import IMAGE_EXTENSIONS, load_image, sniff_image_format


def encode(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def noisy_rgb(size: tuple[int, int] = (64, 48), seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width×height but carries almost no pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + png_chunk(b"IEND", b"")
    )


# --- good images of every allowed format --------------------------------------------


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"])
def test_allowed_formats_load_as_rgb(fmt: str) -> None:
    data = encode(Image.new("RGB", (40, 30), (10, 200, 30)), fmt)
    img = load_image(data)
    assert img.mode == "RGB" and img.size == (40, 30)
    assert all(abs(a - b) <= 3 for a, b in zip(img.getpixel((5, 5)), (10, 200, 30), strict=True))


def test_compressed_tiff_loads() -> None:
    data = encode(Image.new("RGB", (33, 17), (1, 2, 3)), "TIFF", compression="tiff_lzw")
    assert load_image(data).getpixel((3, 3)) == (1, 2, 3)


def test_path_and_file_object_sources(tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    path.write_bytes(encode(Image.new("RGB", (8, 8), (9, 9, 9)), "PNG"))
    assert load_image(path).getpixel((0, 0)) == (9, 9, 9)
    assert load_image(str(path)).getpixel((0, 0)) == (9, 9, 9)
    with open(path, "rb") as fh:
        assert load_image(fh).getpixel((0, 0)) == (9, 9, 9)


def test_returned_image_is_detached_from_the_file(tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    path.write_bytes(encode(Image.new("RGB", (8, 8), (7, 7, 7)), "PNG"))
    img = load_image(path)
    path.unlink()  # the file is closed and the pixels already in memory
    assert np.asarray(img).shape == (8, 8, 3)


# --- truncated, empty, not an image ---------------------------------------------------


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_image_is_rejected_quickly(fmt: str) -> None:
    data = encode(noisy_rgb((256, 256)), fmt)
    cut = data[: len(data) // 2]
    t0 = time.perf_counter()
    with pytest.raises(ImageDecodeError) as err:
        load_image(cut)
    assert time.perf_counter() - t0 < 5
    assert "truncated" in err.value.reason
    assert err.value.cause_class == "OSError"


def test_truncated_file_on_disk(tmp_path: Path) -> None:
    path = tmp_path / "cut.jpg"
    path.write_bytes(encode(noisy_rgb(), "JPEG")[:300])
    with pytest.raises(ImageDecodeError, match="truncated"):
        load_image(path)


def test_zero_byte_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    with pytest.raises(ImageDecodeError) as err:
        load_image(path)
    assert "empty file" in err.value.reason
    assert err.value.cause_class == "UnidentifiedImageError"


def test_text_file_named_jpg(tmp_path: Path) -> None:
    path = tmp_path / "notes.jpg"
    path.write_text("these are my holiday notes, not a photo\n")
    with pytest.raises(ImageDecodeError) as err:
        load_image(path)
    assert "not an image" in err.value.reason
    assert err.value.cause_class == "UnidentifiedImageError"


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(ImageDecodeError, match="cannot open"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(ImageDecodeError, match="not a regular file"):
        load_image(tmp_path)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs mkfifo")
def test_fifo_path_refused_without_blocking(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.jpg")  # open() for reading would wait for a writer forever
    with pytest.raises(ImageDecodeError, match="not a regular file"):
        load_image(tmp_path / "pipe.jpg")


def test_content_sniffed_not_name(tmp_path: Path) -> None:
    path = tmp_path / "really_a_png.jpg"
    path.write_bytes(encode(Image.new("RGB", (5, 5), (1, 2, 3)), "PNG"))
    assert load_image(path).getpixel((0, 0)) == (1, 2, 3)


@pytest.mark.parametrize(
    ("head", "name"),
    [
        (b"%PDF-1.7\n", "PDF"),
        (b"%!PS-Adobe-3.0 EPSF-3.0\n", "PostScript/EPS"),
        (b"8BPS\x00\x01" + bytes(30), "PSD"),
        (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"/>', "SVG"),
    ],
)
def test_refused_formats_are_named(head: bytes, name: str) -> None:
    assert sniff_image_format(head) == name
    with pytest.raises(ImageDecodeError) as err:
        load_image(head + bytes(64))
    assert f"unsupported image format {name}" in err.value.reason


def test_pillow_readable_but_not_allowed_format_is_refused() -> None:
    data = encode(Image.new("RGB", (4, 4)), "PPM")  # Pillow reads PPM; we do not
    with pytest.raises(ImageDecodeError, match="not an image"):
        load_image(data)


def test_corrupt_data_after_a_valid_header() -> None:
    data = bytearray(encode(noisy_rgb((128, 128), seed=3), "PNG"))
    data[60:400] = bytes(340)  # zero the compressed stream; header and length remain
    with pytest.raises(ImageDecodeError) as err:
        load_image(bytes(data))
    assert "PNG" in err.value.reason


# --- decompression bombs ---------------------------------------------------------------


def test_bomb_header_refused_before_decoding_and_quickly() -> None:
    data = png_header_only(30000, 30000)
    t0 = time.perf_counter()
    with pytest.raises(ImageDecodeError) as err:
        load_image(data)
    assert time.perf_counter() - t0 < 1.0
    assert "pixels" in err.value.reason
    assert err.value.cause_class == "DecompressionBombError"


def test_own_limit_holds_when_pillow_limit_is_disabled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    with pytest.raises(ImageDecodeError, match="over the limit of 64000000"):
        load_image(png_header_only(30000, 30000))


def test_own_limit_is_a_parameter() -> None:
    data = encode(Image.new("RGB", (20, 20)), "PNG")
    with pytest.raises(ImageDecodeError, match="400 pixels is over the limit of 399"):
        load_image(data, max_pixels=399)
    assert load_image(data, max_pixels=400).size == (20, 20)


def test_pillow_bomb_warning_as_error_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    import warnings

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 150 px: warning, not Pillow's error
    data = encode(Image.new("RGB", (15, 10)), "PNG")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with pytest.raises(ImageDecodeError) as err:
            load_image(data)
    assert err.value.cause_class == "DecompressionBombWarning"


def test_global_pil_settings_untouched() -> None:
    from PIL import ImageFile

    before = (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES)
    with pytest.raises(ImageDecodeError):
        load_image(png_header_only(30000, 30000))
    with pytest.raises(ImageDecodeError):
        load_image(encode(noisy_rgb(), "JPEG")[:200])
    assert (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES) == before


# --- transparency, bit depth, orientation, colour spaces, animation --------------------


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_alpha_composited_onto_background(mode: str) -> None:
    img = Image.new(mode, (10, 10), (200, 0) if mode == "LA" else (200, 0, 0, 0))
    img.putpixel((0, 0), (100, 255) if mode == "LA" else (100, 50, 25, 255))
    out = load_image(encode(img, "PNG"), background=(0, 128, 255))
    assert out.mode == "RGB" and len(out.getbands()) == 3
    assert out.getpixel((5, 5)) == (0, 128, 255)  # transparent -> background
    expect = (100, 100, 100) if mode == "LA" else (100, 50, 25)
    assert out.getpixel((0, 0)) == expect  # opaque pixel kept


def test_palette_with_transparency_composited() -> None:
    img = Image.new("P", (6, 6), 0)
    img.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    img.putpixel((1, 1), 1)
    data = encode(img, "PNG", transparency=0)
    out = load_image(data, background=(1, 2, 3))
    assert out.getpixel((0, 0)) == (1, 2, 3)
    assert out.getpixel((1, 1)) == (0, 255, 0)


def test_default_background_is_white() -> None:
    out = load_image(encode(Image.new("RGBA", (3, 3), (0, 0, 0, 0)), "PNG"))
    assert out.getpixel((1, 1)) == (255, 255, 255)


def test_16bit_greyscale_rescaled_not_clamped() -> None:
    ramp = np.tile(np.linspace(0, 65535, 256).astype(np.uint16), (8, 1))
    img = Image.fromarray(ramp)
    assert img.mode == "I;16"
    out = np.asarray(load_image(encode(img, "PNG")))[:, :, 0]
    assert out.min() == 0 and out.max() == 255
    assert (out < 255).mean() > 0.9  # a clamp would make almost everything white
    assert np.all(np.diff(out[0].astype(int)) >= 0)  # still a ramp
    assert abs(int(out[0, 128]) - 128) <= 1


def test_16bit_big_endian_tiff() -> None:
    ramp = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (4, 1))
    img = Image.frombytes("I;16B", (64, 4), ramp.astype(">u2").tobytes())
    out = np.asarray(load_image(encode(img, "TIFF")))[:, :, 0]
    assert out[0, 0] == 0 and out[0, -1] == 255 and 100 < out[0, 32] < 160


def test_32bit_int_greyscale_rescaled() -> None:
    arr = np.tile(np.arange(0, 64, dtype=np.int32) * 1_000_000, (4, 1))
    out = np.asarray(load_image(encode(Image.fromarray(arr, "I"), "TIFF")))[:, :, 0]
    assert out[0, 0] == 0 and out[0, -1] == 255 and len(np.unique(out)) > 32


def test_exif_orientation_applied() -> None:
    img = Image.new("RGB", (40, 20), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 10, 20))  # red band on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    out = load_image(encode(img, "JPEG", exif=exif.tobytes(), quality=95))
    assert out.size == (20, 40)
    r, g, b = out.getpixel((10, 3))  # the left band is now at the top
    assert r > 200 and b < 60


def test_cmyk_converted() -> None:
    img = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # pure red in CMYK
    out = load_image(encode(img, "JPEG", quality=95))
    assert out.mode == "RGB"
    r, g, b = out.getpixel((4, 4))
    assert r > 200 and g < 60 and b < 60


def test_animated_gif_first_frame_deterministic() -> None:
    frames = [Image.new("RGB", (12, 12), c) for c in [(255, 0, 0), (0, 255, 0), (0, 0, 255)]]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    assert Image.open(io.BytesIO(data)).n_frames == 3
    for _ in range(3):
        assert load_image(data).getpixel((6, 6)) == (255, 0, 0)


def test_animated_webp_first_frame() -> None:
    frames = [Image.new("RGB", (12, 12), c) for c in [(0, 200, 0), (200, 0, 0)]]
    data = encode(frames[0], "WEBP", save_all=True, append_images=frames[1:], lossless=True)
    r, g, b = load_image(data).getpixel((6, 6))
    assert g > 150 and r < 50


# --- HEIC / AVIF -----------------------------------------------------------------------


def heic_header() -> bytes:
    ftyp = b"ftyp" + b"heic" + bytes(4) + b"mif1" + b"heic"
    return struct.pack(">I", len(ftyp) + 4) + ftyp + bytes(64)


def test_sniff_heif_and_avif_brands() -> None:
    assert sniff_image_format(heic_header()) == "HEIF"
    ftyp = b"ftyp" + b"avif" + bytes(4) + b"avif" + b"mif1"
    assert sniff_image_format(struct.pack(">I", len(ftyp) + 4) + ftyp) == "AVIF"
    ftyp = b"ftyp" + b"isom" + bytes(4) + b"isom" + b"mp41"
    assert sniff_image_format(struct.pack(">I", len(ftyp) + 4) + ftyp) == "ISOBMFF:isom"


def test_heic_without_plugin_gives_clear_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    # Simulate absence even where pillow-heif is installed.
    monkeypatch.setitem(sys.modules, "pillow_heif", None)
    monkeypatch.delitem(Image.OPEN, "HEIF", raising=False)
    with pytest.raises(ImageDecodeError) as err:
        load_image(heic_header())
    assert "pip install 'mmsearch[heif]'" in err.value.reason
    assert "pillow-heif" in err.value.reason
    assert err.value.cause_class in ("ImportError", "ModuleNotFoundError")


def test_avif_without_support_gives_clear_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pillow_heif", None)
    monkeypatch.setattr(imageformats, "pillow_has_avif", lambda: False)
    data = encode(Image.new("RGB", (8, 8)), "AVIF") if imageformats.pillow_has_avif() else b""
    ftyp = b"ftyp" + b"avif" + bytes(4) + b"avif" + b"mif1"
    data = data or struct.pack(">I", len(ftyp) + 4) + ftyp + bytes(64)
    with pytest.raises(ImageDecodeError, match="AVIF needs"):
        load_image(data)


@pytest.mark.skipif(not imageformats.pillow_has_avif(), reason="this Pillow has no AVIF codec")
def test_avif_loads_with_pillow_support() -> None:
    out = load_image(encode(Image.new("RGB", (16, 16), (0, 0, 250)), "AVIF", quality=90))
    assert out.mode == "RGB" and out.getpixel((8, 8))[2] > 200


def test_heic_loads_with_pillow_heif() -> None:
    pillow_heif = pytest.importorskip("pillow_heif", reason="optional extra 'heif' not installed")
    pillow_heif.register_heif_opener()
    data = encode(Image.new("RGB", (16, 16), (250, 0, 0)), "HEIF", quality=90)
    assert sniff_image_format(data[:256]) == "HEIF"
    out = load_image(data)
    assert out.mode == "RGB" and out.getpixel((8, 8))[0] > 200


# --- time limit, arguments, constants ---------------------------------------------------


def test_timeout_stops_a_slow_decode() -> None:
    data = encode(noisy_rgb((1024, 1024), seed=1), "PNG")  # several 64 KiB blocks
    with pytest.raises(ImageDecodeError, match="timeout_s") as err:
        load_image(data, timeout_s=1e-9)
    assert err.value.cause_class == "TimeoutError"
    assert load_image(data, timeout_s=60).size == (1024, 1024)


def test_works_off_the_main_thread() -> None:
    data = encode(noisy_rgb(), "JPEG")
    results: list[object] = []
    worker = threading.Thread(target=lambda: results.append(load_image(data, timeout_s=30).size))
    worker.start()
    worker.join(30)
    assert results == [(64, 48)]


@pytest.mark.parametrize(
    "kwargs",
    [{"max_pixels": 0}, {"background": (0, 0)}, {"background": (0, 0, 300)}, {"timeout_s": 0}],
)
def test_bad_arguments_raise_value_error(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        load_image(encode(Image.new("RGB", (2, 2)), "PNG"), **kwargs)  # type: ignore[arg-type]


def test_image_extensions_are_lower_case_with_dot() -> None:
    assert {
        ".jpg",
        ".jpeg",
        ".png",
        ".webp",
        ".gif",
        ".bmp",
        ".tif",
        ".tiff",
        ".heic",
        ".avif",
    } <= IMAGE_EXTENSIONS
    assert all(e.startswith(".") and e == e.lower() for e in IMAGE_EXTENSIONS)
