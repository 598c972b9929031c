"""Image previews in the terminal (``mmsearch query -p``), as rclip's ``--preview`` does.

Two inline-image protocols cover the terminals that show pictures: kitty's graphics
protocol (kitty, Ghostty, recent WezTerm and Konsole) and iTerm2's ``File=`` sequence
(iTerm2, WezTerm, mintty). Anything else — including output that is not a terminal —
gets the plain listing: the previews are a bonus, never a requirement.
"""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Mapping
from typing import Literal

Protocol = Literal["kitty", "iterm"]

#: Longest side of a preview, in pixels.
PREVIEW_PX = 192
_KITTY_CHUNK = 4096


def detect_protocol(
    env: Mapping[str, str] | None = None, *, isatty: bool = True
) -> Protocol | None:
    """The inline-image protocol the terminal speaks, or None (plain output).

    ``MMSEARCH_PREVIEW=kitty|iterm|none`` overrides the guess from ``TERM``/``TERM_PROGRAM``.

    >>> detect_protocol({"TERM": "xterm-kitty"})
    'kitty'
    >>> detect_protocol({"TERM_PROGRAM": "iTerm.app"}, isatty=False) is None
    True
    """
    env = os.environ if env is None else env
    forced = env.get("MMSEARCH_PREVIEW", "").strip().lower()
    if forced in ("kitty", "iterm"):
        return forced  # type: ignore[return-value]
    if forced == "none" or not isatty:
        return None
    if (
        env.get("TERM") == "xterm-kitty"
        or "KITTY_WINDOW_ID" in env
        or env.get("TERM_PROGRAM") == "ghostty"
    ):
        return "kitty"
    if (
        env.get("TERM_PROGRAM") in ("iTerm.app", "WezTerm", "mintty")
        or env.get("LC_TERMINAL") == "iTerm2"
    ):
        return "iterm"
    return None


def thumbnail_png(path: str | os.PathLike[str], max_px: int = PREVIEW_PX) -> bytes:
    """A small PNG of the image at ``path``, decoded by the project's one safe loader."""
    from mmsearch.imageio import load_image

    with open(path, "rb") as fh:
        image = load_image(fh.read())
    image.thumbnail((max_px, max_px))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def encode_inline(png: bytes, protocol: Protocol) -> str:
    """The escape sequence that shows ``png`` inline, for ``protocol``."""
    data = base64.standard_b64encode(png).decode("ascii")
    if protocol == "iterm":
        return f"\x1b]1337;File=inline=1;size={len(png)};preserveAspectRatio=1:{data}\x07\n"
    chunks = [data[i : i + _KITTY_CHUNK] for i in range(0, len(data), _KITTY_CHUNK)] or [""]
    parts = []
    for i, chunk in enumerate(chunks):
        more = 1 if i < len(chunks) - 1 else 0
        head = f"f=100,a=T,m={more}" if i == 0 else f"m={more}"
        parts.append(f"\x1b_G{head};{chunk}\x1b\\")
    return "".join(parts) + "\n"
