"""Build a :class:`ClipEncoder` from a :class:`ModelSpec`, never with random weights.

``spec.pretrained`` may be an open_clip tag (fetched by open_clip from the HF hub,
honouring ``HF_HUB_OFFLINE`` and the HF cache), a local checkpoint file
(``.safetensors`` preferred; ``.pt``/``.bin``/``.pth`` are read with
``torch.load(weights_only=True)``), or empty for ``hf-hub:org/name`` models and for
``mmsearch-tiny``, whose weights ship in ``mmsearch/models/weights/``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeAlias

import torch

from mmsearch.errors import ModelLoadError
from mmsearch.models.encoder import ClipEncoder
from mmsearch.models.fastload import TowerLoader
from mmsearch.models.hub import ALTERNATIVES, looks_like_path
from mmsearch.models.spec import TINY_MODEL_NAME, ModelSpec

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
TINY_WEIGHTS = WEIGHTS_DIR / f"{TINY_MODEL_NAME}.safetensors"

_DTYPES = {
    "fp32": None,
    "float32": None,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
}

_register_lock = threading.Lock()
_registered = False


def register_model_configs() -> None:
    """Adds ``mmsearch/models/configs/`` to open_clip's registry (idempotent)."""
    global _registered
    with _register_lock:
        if not _registered:
            import open_clip

            open_clip.add_model_config(CONFIG_DIR)
            _registered = True


def available_models() -> list[str]:
    """open_clip architecture names, including ``mmsearch-tiny``."""
    import open_clip

    register_model_configs()
    return sorted(open_clip.list_models())


def resolve_device(device: str | None) -> str:
    """``None``/``"auto"`` -> ``cuda`` when available, else ``cpu``; otherwise as given."""
    if device in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(
            f"device {device!r} requested but CUDA is not available; use --device cpu"
        )
    return device


def _autocast_dtype(device: str, dtype: str | None) -> torch.dtype | None:
    if dtype is None:
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return None  # fp32 on CPU
    key = dtype.lower()
    if key not in _DTYPES:
        raise ModelLoadError(f"unknown dtype {dtype!r}; choose one of fp32, bf16, fp16")
    return _DTYPES[key]


def check_architecture(name: str) -> None:
    """Raises :class:`ModelLoadError` naming some known architectures when open_clip has no
    config for ``name`` (``hf-hub:`` and ``local-dir:`` names carry their own)."""
    import open_clip

    if name.startswith(("hf-hub:", "local-dir:")):
        return
    if open_clip.get_model_config(name.replace("/", "-")) is None:
        names = available_models()
        some = ", ".join([TINY_MODEL_NAME, "ViT-B-32", "ViT-B-16", "ViT-L-14", "RN50"])
        raise ModelLoadError(
            f"unknown model architecture {name!r}; available include {some} ({len(names)} in total)"
        )


def resolve_pretrained(spec: ModelSpec) -> str:
    """The value for open_clip's ``pretrained``: a tag or an existing file path."""
    import open_clip

    name, pretrained = spec.name, spec.pretrained
    if name.startswith(("hf-hub:", "local-dir:")):
        return ""
    if name == TINY_MODEL_NAME and not pretrained:
        if not TINY_WEIGHTS.is_file():
            raise ModelLoadError(f"shipped weights missing: {TINY_WEIGHTS}; reinstall mmsearch")
        return str(TINY_WEIGHTS)
    if not pretrained:
        raise ModelLoadError(f"no weights given for {name!r}; {ALTERNATIVES}")
    if looks_like_path(pretrained) or os.path.exists(pretrained):
        path = Path(pretrained).expanduser()
        if not path.is_file():
            raise ModelLoadError(f"checkpoint file not found: {path}; {ALTERNATIVES}")
        return str(path)
    if not open_clip.get_pretrained_cfg(name, pretrained):
        tags = open_clip.list_pretrained_tags_by_model(name)
        shown = ", ".join(tags[:6]) + (", ..." if len(tags) > 6 else "") if tags else "none"
        raise ModelLoadError(
            f"unknown pretrained tag {pretrained!r} for {name!r} (known tags: {shown}); {ALTERNATIVES}"
        )
    return pretrained


def checkpoint_path(spec: ModelSpec, pretrained: str) -> str | None:
    """The local file holding ``spec``'s weights (a tag resolves through the HF cache)."""
    import open_clip

    if not pretrained:
        return None
    if os.path.isfile(pretrained):
        return pretrained
    cfg = open_clip.get_pretrained_cfg(spec.name, pretrained)
    path = open_clip.download_pretrained(cfg) if cfg else ""
    return str(path) if path else None


def _tower_loader(spec: ModelSpec, pretrained: str, device: str) -> TowerLoader | None:
    """A lazy per-tower loader (no random init) when the architecture allows it."""
    import open_clip

    path = checkpoint_path(spec, pretrained)
    if path is None:
        return None
    towers = TowerLoader.create(spec.name, path, device)
    if towers is None:
        return None
    cfg = (
        open_clip.get_pretrained_cfg(spec.name, pretrained)
        if not os.path.isfile(pretrained)
        else {}
    )
    visual: Any = towers.model.visual  # open_clip's vision tower (untyped)
    pp = dict(getattr(visual, "preprocess_cfg", {}) or {})
    pp.update({k: cfg[k] for k in ("mean", "std") if k in cfg})
    visual.preprocess_cfg = pp
    return towers


class _OpenClipLogFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return f"{os.sep}open_clip{os.sep}" not in record.pathname


@contextlib.contextmanager
def quiet_open_clip() -> Iterator[None]:
    """Drops open_clip's records from the root logger (only) while the block runs."""
    root = logging.getLogger()
    quiet = _OpenClipLogFilter()
    root.addFilter(quiet)
    try:
        yield
    finally:
        root.removeFilter(quiet)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:160]


#: An open_clip ``CLIP`` as :func:`load_model` returns it: a torch Module with
#: ``encode_image``, ``encode_text``, ``visual`` and ``logit_scale`` (open_clip is untyped).
ClipModel: TypeAlias = Any


def load_model(spec: ModelSpec, device: str | None = None) -> tuple[ClipModel, Any]:
    """(open_clip model in fp32 on ``device``, tokenizer) for ``spec``; raises :class:`ModelLoadError`.

    The model is returned as open_clip builds it (train mode, gradients on): the
    fine-tuning loop starts from here, :func:`load_torch_encoder` wraps it for inference.
    """
    import open_clip

    register_model_configs()
    dev = resolve_device(device)
    check_architecture(spec.name)
    pretrained = resolve_pretrained(spec)
    check_checkpoint_model(pretrained, spec.name)
    # open_clip logs through the root logger; its records are dropped while loading,
    # since failures surface as ModelLoadError instead.
    try:
        with quiet_open_clip():
            model = open_clip.create_model(
                spec.name,
                pretrained=pretrained or None,
                precision="fp32",
                device=dev,
                require_pretrained=True,
                weights_only=True,
            )
            tokenizer = open_clip.get_tokenizer(spec.name)
    except ModelLoadError:
        raise
    except Exception as exc:  # open_clip raises RuntimeError/OSError/pickle errors/...
        if "download" in str(exc).lower():
            reason = "not in the local Hugging Face cache and could not be downloaded"
        else:
            reason = f"{type(exc).__name__}: {_one_line(exc)}"
        raise ModelLoadError(
            f"cannot load weights {spec.key!r} ({reason}); {ALTERNATIVES}"
        ) from exc
    return model, tokenizer


#: safetensors metadata key naming the architecture a checkpoint was trained as.
CHECKPOINT_MODEL_KEY = "mmsearch.model"


def check_checkpoint_model(pretrained: str, name: str) -> None:
    """Refuses a checkpoint whose recorded architecture is not ``name`` (one clear line)."""
    if not pretrained.endswith(".safetensors") or not os.path.isfile(pretrained):
        return
    from safetensors import safe_open

    try:
        with safe_open(pretrained, framework="pt") as fh:
            recorded = (fh.metadata() or {}).get(CHECKPOINT_MODEL_KEY)
    except Exception:  # unreadable files fail with a clearer message in open_clip's loader
        return
    if recorded and recorded != name:
        raise ModelLoadError(
            f"checkpoint {pretrained} is a fine-tuned {recorded!r}, not {name!r}; use --model {recorded}"
        )


def load_torch_encoder(
    spec: ModelSpec, device: str | None = None, *, dtype: str | None = None
) -> ClipEncoder:
    """Loads ``spec``'s architecture and weights; raises :class:`ModelLoadError` when it cannot.

    ``device`` defaults to CUDA when available, else CPU. ``dtype`` defaults to fp32
    on CPU and bf16 (fp16 where bf16 is unsupported) autocast on CUDA.

    >>> enc = load_torch_encoder(ModelSpec("mmsearch-tiny"), device="cpu")   # doctest: +SKIP
    >>> enc.dim, enc.image_size                                      # doctest: +SKIP
    (64, 64)
    """
    dev = resolve_device(device)
    autocast = _autocast_dtype(dev, dtype)
    register_model_configs()
    check_architecture(spec.name)
    pretrained = resolve_pretrained(spec)
    check_checkpoint_model(pretrained, spec.name)
    # Only the towers a command uses are built, straight from the weights (no random init).
    towers = None
    try:
        with quiet_open_clip():
            towers = _tower_loader(spec, pretrained, dev)
            if towers is not None:
                import open_clip

                tokenizer = open_clip.get_tokenizer(spec.name)
    except ModelLoadError:
        raise
    except Exception as exc:  # open_clip raises RuntimeError/OSError/pickle errors/...
        raise ModelLoadError(
            f"cannot load weights {spec.key!r} ({type(exc).__name__}: {_one_line(exc)}); {ALTERNATIVES}"
        ) from exc
    if towers is not None:
        return ClipEncoder(
            towers.model, tokenizer, spec, dev, autocast_dtype=autocast, towers=towers
        )
    model, tokenizer = load_model(spec, dev)
    model.requires_grad_(False)
    return ClipEncoder(model, tokenizer, spec, dev, autocast_dtype=autocast)


#: The torch loader under its historical name (``mmsearch.models.load_encoder`` picks a backend).
load_encoder = load_torch_encoder
