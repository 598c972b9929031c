"""How many images go through the model at once: fixed on a CPU, sized to memory on a GPU.

On a CPU a batch of :data:`CPU_BATCH_SIZE` already keeps every core busy. On a GPU the
batch that fits is a pure function of the free device memory and the vision tower's
shape (:func:`choose_batch_size`, :func:`vision_bytes_per_image`); :func:`batch_size_for`
reads both from a loaded encoder. torch is imported only on the CUDA path.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mmsearch.models.base import Encoder

#: Images per forward pass on a CPU (and on a GPU when nothing else is known).
CPU_BATCH_SIZE = 64
#: Largest GPU batch: past a few hundred images a ViT forward pass is no faster per image.
MAX_GPU_BATCH = 1024
#: Device memory left alone (CUDA context, allocator fragmentation, other tenants).
RESERVE_BYTES = 2 << 30
#: Share of the remaining free memory one batch may take (the decode of the next
#: batch and the allocator's caching need the rest).
MEMORY_FRACTION = 0.5


def vision_bytes_per_image(
    image_size: int, *, width: int, patch_size: int, heads: int, dtype_bytes: int = 2
) -> int:
    """Peak device bytes one image adds to a ViT inference batch (an upper estimate).

    Pixels: the uint8 upload, its float32 normalised copy and the channels_last copy.
    Activations in ``dtype_bytes`` (bf16: 2): tokens × width × 16 (residual stream,
    layer-norm output, q/k/v, attention output, the 4×-wide MLP hidden layer and its
    GELU copy, with slack). Attention probabilities: heads × tokens² in float32 (the
    unfused path; fused kernels need less).
    """
    if min(image_size, width, patch_size, heads, dtype_bytes) <= 0:
        raise ValueError("image_size, width, patch_size, heads and dtype_bytes must be positive")
    tokens = (image_size // patch_size) ** 2 + 1
    pixels = 3 * image_size * image_size * (1 + 4 + 4)
    activations = tokens * width * dtype_bytes * 16
    scores = heads * tokens * tokens * 4
    return pixels + activations + scores


def choose_batch_size(
    free_bytes: int,
    per_image_bytes: int,
    *,
    reserve_bytes: int = RESERVE_BYTES,
    fraction: float = MEMORY_FRACTION,
    multiple: int = 32,
    cap: int = MAX_GPU_BATCH,
) -> int:
    """Largest batch whose activations fit ``fraction`` of the free memory left after
    ``reserve_bytes``, rounded down to a ``multiple`` (when at least one), at most
    ``cap`` and at least 1.

    >>> choose_batch_size(80 << 30, 3 << 20)
    1024
    >>> choose_batch_size(3 << 30, 3 << 20)
    160
    """
    if per_image_bytes <= 0:
        raise ValueError(f"per_image_bytes must be positive, got {per_image_bytes}")
    usable = max(0, free_bytes - reserve_bytes) * fraction
    n = int(usable // per_image_bytes)
    if n >= multiple:
        n -= n % multiple
    return max(1, min(cap, n))


def batch_size_for(encoder: Encoder, requested: int | None = None) -> int:
    """``requested`` when given; else :data:`CPU_BATCH_SIZE` off CUDA, and on CUDA the
    batch :func:`choose_batch_size` fits into the device's free memory."""
    if requested is not None:
        return requested
    device = str(getattr(encoder, "device", "cpu"))
    model = getattr(encoder, "model", None)
    if not device.startswith("cuda") or model is None:
        return CPU_BATCH_SIZE
    import torch  # pragma: no cover - CUDA only

    free, _total = torch.cuda.mem_get_info(torch.device(device))  # pragma: no cover
    return choose_batch_size(free, _tower_bytes(model, encoder.image_size))  # pragma: no cover


def _tower_bytes(model: Any, image_size: int) -> int:
    """:func:`vision_bytes_per_image` for an open_clip vision tower (ViT-B defaults when its
    shape cannot be read, e.g. a ResNet tower)."""
    visual = getattr(model, "visual", None)
    transformer = getattr(visual, "transformer", None)
    width = int(getattr(transformer, "width", 0) or 768)
    patch = getattr(visual, "patch_size", None) or 16
    patch = int(patch[0] if isinstance(patch, (tuple, list)) else patch)
    blocks = getattr(transformer, "resblocks", None)
    heads = int(getattr(getattr(blocks[0], "attn", None), "num_heads", 0) or 12) if blocks else 12
    return vision_bytes_per_image(image_size, width=width, patch_size=patch, heads=heads)
