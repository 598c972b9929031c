"""Load a BLIP image-text-matching model and its processor for re-ranking.

A model is named by

* a registered name: ``mmsearch-tiny-itm`` (ships inside the package; trained on
  the synthetic catalog only, see docs/TRAINING.md),
* a local directory holding ``config.json``, ``model.safetensors`` and the
  processor files (what ``save_pretrained`` writes), or
* a Hugging Face id such as ``Salesforce/blip-itm-base-coco`` (downloaded where a
  network exists; ``HF_HUB_OFFLINE=1`` uses the local cache only).

Weights are read from safetensors only and no remote code is ever run.

A model folder may also hold ``mmsearch_rerank.json`` with the settings it was
measured with, e.g. ``{"blend": 0.2}``: the default weight of the ITM probability
when a query asks for re-ranking without a ``blend`` of its own
(:func:`rerank_defaults`). A model without the file is used on its ITM score alone.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from mmsearch.errors import RerankModelError

DEFAULT_RERANK_MODEL = "Salesforce/blip-itm-base-coco"
TINY_ITM_NAME = "mmsearch-tiny-itm"
_WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "models" / "weights"

# Registered names -> shipped model folders.
REGISTERED_RERANK_MODELS: dict[str, Path] = {TINY_ITM_NAME: _WEIGHTS_DIR / TINY_ITM_NAME}

_FIX = (
    f"use --rerank-model {TINY_ITM_NAME} (ships with mmsearch), a folder written by "
    "save_pretrained, or a Hugging Face id in the local cache"
)


def resolve_rerank_source(name: str) -> tuple[str, bool]:
    """``(what to pass to from_pretrained, is_local)`` for a model name, folder or hub id."""
    if name in REGISTERED_RERANK_MODELS:
        return str(REGISTERED_RERANK_MODELS[name]), True
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path), True
    looks_local = name.startswith((".", "~", os.sep)) or name.count("/") > 1
    if looks_local:
        raise RerankModelError(f"rerank model folder not found: {name}; {_FIX}")
    return name, False


RERANK_DEFAULTS_FILE = "mmsearch_rerank.json"


def rerank_defaults(name: str) -> dict[str, float]:
    """The settings a local model folder recommends (``blend``), or ``{}`` when it has none.

    Raises :class:`~mmsearch.errors.RerankModelError` when the file is unreadable or a
    value is out of range.
    """
    source, local = resolve_rerank_source(name)
    path = Path(source) / RERANK_DEFAULTS_FILE
    if not local or not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        blend = data.get("blend") if isinstance(data, dict) else None
        if blend is not None and not (isinstance(blend, int | float) and 0.0 <= blend <= 1.0):
            raise ValueError(f"blend must be a number in [0, 1], got {blend!r}")
    except (OSError, ValueError) as exc:
        raise RerankModelError(
            f"unreadable {path}: {_one_line(exc)}; fix or delete the file"
        ) from exc
    return {} if blend is None else {"blend": float(blend)}


def _one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else type(exc).__name__)[:160]


def load_itm_model(name: str, device: str) -> tuple[Any, Any]:
    """``(BlipForImageTextRetrieval, BlipProcessor)`` for ``name``, in eval mode on ``device``.

    Raises :class:`~mmsearch.errors.RerankModelError` (one line naming the fix) when
    transformers is missing or the model cannot be found or read.
    """
    try:
        from transformers import BlipForImageTextRetrieval, BlipProcessor
        from transformers.utils import logging as hf_logging
    except ImportError as exc:
        raise RerankModelError(
            "re-ranking needs transformers: pip install 'mmsearch[rerank]'"
        ) from exc
    source, local = resolve_rerank_source(name)
    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()  # the library reports failures as one error, not log lines
    hf_logging.disable_progress_bar()  # and never prints
    try:
        model: Any = BlipForImageTextRetrieval.from_pretrained(
            source, use_safetensors=True, trust_remote_code=False, local_files_only=local
        )
        processor = BlipProcessor.from_pretrained(
            source, trust_remote_code=False, local_files_only=local
        )
    except Exception as exc:  # OSError, ValueError, EnvironmentError, safetensors errors ...
        text = str(exc).lower()
        if not local and (
            "offline" in text or "connect" in text or "couldn't" in text or "not" in text
        ):
            reason = "not in the local Hugging Face cache and could not be downloaded"
        else:
            reason = f"{type(exc).__name__}: {_one_line(exc)}"
        raise RerankModelError(f"cannot load rerank model {name!r} ({reason}); {_FIX}") from exc
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    model.requires_grad_(False)
    model.eval()
    return model.to(device), processor
