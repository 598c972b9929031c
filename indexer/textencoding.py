"""Encodings of CSV/JSONL text collections: which codec to read with, and a precise
message (byte, offset, line) when a file is not valid in it.

UTF-8 with or without BOM is the default, a UTF-16 BOM is honoured; nothing else is
guessed, so a cp1252/latin-1 file fails loudly instead of being indexed as mojibake.
"""

from __future__ import annotations

import codecs
from pathlib import Path


def detect_encoding(path: Path) -> str:
    with open(path, "rb") as fh:
        head = fh.read(4)
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"
    return "utf-8-sig"  # also reads files without a BOM


def encoding_message(path: Path, encoding: str, exc: UnicodeDecodeError) -> str:
    if encoding.replace("_", "-").lower() in ("utf-8", "utf-8-sig", "utf8"):
        offset, line = _first_bad_utf8(path)
        byte = ""
        if offset is not None:
            with open(path, "rb") as fh:
                fh.seek(offset)
                byte = f"byte 0x{fh.read(1).hex().upper()} at offset {offset} (line {line})"
        return (
            f"{path} is not valid UTF-8: {byte or exc.reason}; re-save it as UTF-8 or pass "
            "encoding='cp1252' (or the file's real encoding)"
        )
    return f"{path} cannot be decoded as {encoding}: {exc.reason}"


def _first_bad_utf8(path: Path, chunk_size: int = 1 << 20) -> tuple[int | None, int]:
    """Byte offset and 1-based line of the first invalid UTF-8 sequence (None if all valid)."""
    offset, line, carry = 0, 1, b""
    with open(path, "rb") as fh:
        while True:
            chunk = fh.read(chunk_size)
            data, base = carry + chunk, offset - len(carry)
            if not data:
                return None, line
            try:
                data.decode("utf-8")
                line, carry = line + data.count(b"\n"), b""
            except UnicodeDecodeError as exc:
                incomplete_tail = exc.end == len(data) and exc.reason == "unexpected end of data"
                line += data.count(b"\n", 0, exc.start)
                if not (incomplete_tail and chunk):
                    return base + exc.start, line
                carry = data[exc.start :]  # a character split across chunks
            offset += len(chunk)
