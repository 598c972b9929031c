"""Turn a decoded RGB image into the model's square uint8 input.

Decode workers call :func:`fit_square` so that only small uint8 arrays cross
process boundaries; normalisation happens on the embedding device.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from PIL import Image


def fit_square(img: Image.Image, size: int) -> npt.NDArray[np.uint8]:
    """Resize the shorter side to ``size`` (bicubic) and centre-crop to ``size``×``size``.

    Matches open_clip's default eval transform (Resize + CenterCrop). Returns an
    ``(size, size, 3)`` uint8 array. ``img`` must already be RGB.
    """
    if img.mode != "RGB":
        img = img.convert("RGB")
    w, h = img.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), Image.Resampling.BICUBIC)
    left, top = (nw - size) // 2, (nh - size) // 2
    img = img.crop((left, top, left + size, top + size))
    return np.array(img, dtype=np.uint8)  # writable: torch.as_tensor warns on read-only arrays
