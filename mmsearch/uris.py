"""Lossless ``str`` path <-> UTF-8-safe text, as stored in an index's ``uri`` column.

Shared by the indexer (which writes uris) and the query engine (which maps image hits
back to files).
"""

from __future__ import annotations

import os
import re

_ESCAPE_RE = re.compile("[%\udc80-\udcff]")
_UNESCAPE_RE = re.compile("%([0-9A-Fa-f]{2})|%")


def path_to_uri(path: str | os.PathLike[str]) -> str:
    """Text form of a path that is valid UTF-8 and maps back losslessly with :func:`uri_to_path`.

    The file-system bytes of ``path`` are decoded as UTF-8; only bytes that are not
    valid UTF-8 become ``%XX`` and ``%`` itself becomes ``%25``. Every other character,
    including ``/``, spaces and non-ASCII letters, is kept, so ordinary paths are
    stored unchanged and stay readable. This is not an RFC 3986 URI (no ``file://``).

    >>> path_to_uri("/photos/café 100%.jpg")
    '/photos/café 100%25.jpg'
    >>> path_to_uri(os.fsdecode(b"/photos/caf\\xe9.jpg"))
    '/photos/caf%E9.jpg'
    """
    raw = os.fsencode(path)  # surrogateescape: lone surrogates -> original bytes
    text = raw.decode("utf-8", "surrogateescape")
    return _ESCAPE_RE.sub(_escape_char, text)


def _escape_char(match: re.Match[str]) -> str:
    char = match.group()
    return "%25" if char == "%" else f"%{ord(char) - 0xDC00:02X}"


def uri_to_path(uri: str) -> str:
    """Inverse of :func:`path_to_uri`: the ``str`` path whose ``os.fsencode`` is the original bytes.

    Raises ``ValueError`` for a ``%`` not followed by two hex digits (never produced by
    :func:`path_to_uri`).

    >>> uri_to_path('/photos/caf%E9.jpg') == os.fsdecode(b"/photos/caf\\xe9.jpg")
    True
    """
    out = bytearray()
    pos = 0
    for match in _UNESCAPE_RE.finditer(uri):
        out += uri[pos : match.start()].encode("utf-8")
        if match.group(1) is None:
            raise ValueError(f"not a path_to_uri() string: stray '%' at {match.start()} in {uri!r}")
        out.append(int(match.group(1), 16))
        pos = match.end()
    out += uri[pos:].encode("utf-8")
    return os.fsdecode(bytes(out))
